"""What each budget of `ddpmlab reproduce` trains: the ladder's sizes and recipes, the sampling
each run is scored at, and the size of each study (ddpmlab.studies). Data only, and the one rule that
reads a run's progress (is_finished), shared by reproduce and the studies.

Budgets:
  full      the write-up's recipe: each preset as defined, 20 epochs of FashionMNIST; the studies
            at the standard budget's sizes.
  standard  the write-up's designs and recipe, sized by measurement to train, evaluate and report
            within 90 minutes on a 2-core CPU (docs/results.md gives the measured time): ResNets at
            48 channels and 10 blocks (0.4-0.7M parameters), UNets at 32 channels and one block per
            level (2.3M); most of the time goes to the UNet study, where the findings are.
  quick     a smoke run (minutes): the same designs at 32 channels, 3 epochs of the first 5,000
            training images, evaluated on 500 samples, and each study at a token size.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .config import SamplingConfig
from .run import read_metrics
from .recipes import make_run_config

LADDER = ["resnet-basic", "resnet-noise", "resnet-spatial", "resnet-class", "unet-input", "unet-cbn", "unet-block"]


@dataclass
class Budget:
    model: dict                 # model overrides by architecture ("resnet", "unet")
    train: dict                 # training overrides of every preset
    evaluation: dict            # how report evaluates every run (n, sampler, steps, ...)
    about: str                  # the report's first paragraph: what this budget can and cannot show
    per_preset: dict = field(default_factory=dict)   # preset -> {"model": {...}, "train": {...}, "sampling": {...}}
    studies: dict = field(default_factory=dict)      # study name (ddpmlab.studies.STUDIES) -> its parameters

    def run_config(self, preset: str, **train_overrides):
        arch = "unet" if preset.startswith("unet") else "resnet"
        own = self.per_preset.get(preset, {})
        rc = make_run_config(preset, {**self.model[arch], **own.get("model", {})},
                             **{**self.train, **own.get("train", {}), **train_overrides})
        if "sampling" in own:   # the run's own defaults (config.json "sampling"); report scores them too
            rc.sampling = SamplingConfig(**own["sampling"]).validate()
        return rc


# the shipped fmnist's sampling: 10 log-SNR steps, guidance 0.3 only for t in 100..700
UNET_BLOCK_SAMPLING = {"sampler": "dpm++2m", "steps": 10, "spacing": "logsnr", "guidance": 0.3,
                       "guidance_interval": [100, 700]}
_UNET_STANDARD = {"channels": 32, "channel_mults": (1, 2, 4), "blocks_per_level": 1, "time_dim": 128}

# The studies at the standard budget's sizes (the networks are the budget's own): (g) the first 100
# steps of resnet-basic, 3 seeds per initialisation; (h) the good bugs, 2 epochs of 10k images each;
# (f) the BatchNorm UNets under the collapse monitor for 25 epochs of 4k images.
STANDARD_STUDIES = {
    "init": {"steps": 100, "seeds": 3, "batch": 64, "model": {"channels": 48, "num_blocks": 10}},
    "good_bugs": {"epochs": 2, "subset": 10000, "n": 500,
                  "model": {**_UNET_STANDARD, "class_dim": 32}, "train": {"snapshot_steps": 20, "log_every": 5}},
    "collapse": {"presets": ["unet-cbn", "unet-input"], "epochs": 25, "subset": 4000,
                 "model": _UNET_STANDARD, "train": {"snapshot_steps": 20}},
}

BUDGETS = {
    "full": Budget({"resnet": {}, "unet": {}}, {}, {"n": 1000, "sampler": "ddim", "steps": 50},
                   "Full budget: the write-up's recipe, 20 epochs of FashionMNIST per model.",
                   studies=STANDARD_STUDIES),
    # Sized from the measured training speed of each design on a 2-core CPU in bf16
    # (benchmarks/preset_throughput.py, docs/results.md). Every ResNet sees the same 45k images, the
    # two BatchNorm UNets 120k, unet-block (the write-up's fix, the model that must draw
    # garments) 260k; it keeps the shipped model's guided sampling as its own, while the budget's
    # evaluation stays unguided so that every design is compared alike. Epochs are of a fixed
    # subset so that snapshots and the collapse monitor have several epochs to show.
    "standard": Budget(
        {"resnet": {"channels": 48, "num_blocks": 10}, "unet": _UNET_STANDARD},
        {"snapshot_steps": 20},
        {"n": 1000, "sampler": "dpm++2m", "steps": 20, "spacing": "logsnr", "guidance": 0.0},
        "Standard budget: the write-up's designs and recipe (Adam 1e-3 with plateau halving, batch 64, EMA 0.999), "
        "sized for a 2-core CPU: ResNets at 48 channels and 10 blocks see 45k images (3 epochs of 15k), the "
        "BatchNorm UNets at 32 channels 120k (6 epochs of 20k), unet-block 260k (13 epochs of 20k). The "
        "write-up trained every model for ~20 epochs of 60k images (1.2M), 5-25 times more: differences that "
        "need long training (the UNet collapse after epoch 5) cannot show here. Every model is scored "
        "unguided, so that designs are compared alike; unet-block is also scored at its own sampling (the shipped "
        "model's: 10 log-SNR steps, guidance 0.3 for t in 100..700, 13 network evaluations).",
        per_preset={**{p: {"train": {"epochs": 3, "subset": 15000}} for p in LADDER if p.startswith("resnet")},
                    "unet-input": {"train": {"epochs": 6, "subset": 20000}},
                    "unet-cbn": {"train": {"epochs": 6, "subset": 20000}},
                    "unet-block": {"model": {"class_dim": 32}, "train": {"epochs": 13, "subset": 20000},
                                   "sampling": UNET_BLOCK_SAMPLING}},
        studies=STANDARD_STUDIES),
    "quick": Budget({"resnet": {"channels": 32, "num_blocks": 4},
                     "unet": {"channels": 32, "channel_mults": (1, 2, 2), "blocks_per_level": 1}},
                    {"epochs": 3, "subset": 5000, "snapshot_steps": 10},
                    {"n": 500, "sampler": "dpm++2m", "steps": 20},
                    "Quick budget: every design at 32 channels, 3 epochs of 5,000 FashionMNIST images; the findings "
                    "below are what so little training can show, not the write-up's final quality.",
                    studies={"init": {"steps": 20, "seeds": 1, "batch": 64, "model": {"channels": 32, "num_blocks": 4}},
                             "good_bugs": {"epochs": 1, "subset": 2000, "n": 200,
                                           "model": {"channels": 32, "channel_mults": (1, 2, 4), "blocks_per_level": 1,
                                                     "time_dim": 128, "class_dim": 32},
                                           "train": {"snapshot_steps": 10, "log_every": 5}},
                             "collapse": {"presets": ["unet-cbn"], "epochs": 3, "subset": 1000,
                                          "model": {"channels": 32, "channel_mults": (1, 2, 2), "blocks_per_level": 1},
                                          "train": {"snapshot_steps": 10}}}),
}


def is_finished(run_dir: Path, epochs: int) -> bool:
    return any(m.get("kind") == "epoch" and m["epoch"] >= epochs for m in read_metrics(run_dir))


# `ddpmlab study collapse`: finding (f) at the write-up's own scale, too long for any budget (hours on
# a CPU, resumable): its BatchNorm UNets at full size, its recipe (batch 64, Adam 1e-3, plateau
# halving after 3 flat epochs, no warmup, no null labels), 25 epochs of all 60k images, with the
# per-epoch snapshots epochE-classK.png and the collapse monitor.
WRITEUP_COLLAPSE = {"presets": ["unet-cbn", "unet-input"], "epochs": 25, "subset": None, "model": {},
                    "train": {"cond_drop": 0.0}}

