"""`ddpmlab reproduce`: train the write-up's whole ladder, evaluate every model the same way,
write the report. Interrupted, it resumes the unfinished run and skips finished ones; the wall
time of every part is kept in OUT/timing.json across interruptions. The studies that scripts in
benchmarks/ write into OUT/studies (init_study.py, good_bugs.py, collapse_study.py) enter the
report's findings.

Budgets:
  full      the write-up's recipe: each preset as defined, 20 epochs of FashionMNIST.
  standard  the write-up's designs and recipe, sized by measurement to train, evaluate and report
            in about 80 minutes on a 2-core CPU (README gives the measured time): ResNets at 48
            channels and 10 blocks (0.4-0.7M parameters), UNets at 32 channels and one block per
            level (2.3M); most of the time goes to the UNet study, where the findings are.
  quick     a smoke run (minutes): the same designs at 32 channels, 3 epochs of the first 5,000
            training images, evaluated on 500 samples.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import ConfigError, SamplingConfig
from .report import write_report
from . import checkpoint
from .run import read_metrics
from .runtime import atomic_write
from .train import make_run_config, train

log = logging.getLogger("ddpmlab.reproduce")

LADDER = ["resnet-basic", "resnet-noise", "resnet-spatial", "resnet-class", "unet-input", "unet-cbn", "unet-block"]


@dataclass
class Budget:
    model: dict                 # model overrides by architecture ("resnet", "unet")
    train: dict                 # training overrides of every preset
    evaluation: dict            # how report evaluates every run (n, sampler, steps, ...)
    about: str                  # the report's first paragraph: what this budget can and cannot show
    per_preset: dict = field(default_factory=dict)   # preset -> {"model": {...}, "train": {...}, "sampling": {...}}

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

BUDGETS = {
    "full": Budget({"resnet": {}, "unet": {}}, {}, {"n": 1000, "sampler": "ddim", "steps": 50},
                   "Full budget: the write-up's recipe, 20 epochs of FashionMNIST per model."),
    # Sized from measured training speed on a 2-core AVX512-BF16 EPYC in bf16 (README): ResNets
    # 115-133 images/s at this size, the UNets 155-170. Every ResNet sees the same 45k images, the
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
                                   "sampling": UNET_BLOCK_SAMPLING}}),
    "quick": Budget({"resnet": {"channels": 32, "num_blocks": 4},
                     "unet": {"channels": 32, "channel_mults": (1, 2, 2), "blocks_per_level": 1}},
                    {"epochs": 3, "subset": 5000, "snapshot_steps": 10},
                    {"n": 500, "sampler": "dpm++2m", "steps": 20},
                    "Quick budget: every design at 32 channels, 3 epochs of 5,000 FashionMNIST images; the findings "
                    "below are what so little training can show, not the write-up's final quality."),
}


def is_finished(run_dir: Path, epochs: int) -> bool:
    return any(m.get("kind") == "epoch" and m["epoch"] >= epochs for m in read_metrics(run_dir))


class Timing:
    """OUT/timing.json: wall seconds per part, summed over every call that worked on it."""

    def __init__(self, out: Path, budget: str):
        self.path = out / "timing.json"
        try:
            self.data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.data = {}
        self.data.setdefault("budget", budget)
        self.data.setdefault("seconds", {})

    def add(self, part: str, seconds: float, replace: bool = False) -> None:
        """replace: the latest call's time stands (work that a rerun redoes rather than continues)."""
        s = self.data["seconds"]
        s[part] = round(seconds + (0.0 if replace else s.get(part, 0.0)), 1)
        self.data["total_seconds"] = round(sum(s.values()), 1)
        text = json.dumps(self.data, indent=2) + "\n"
        atomic_write(self.path, lambda p: p.write_text(text))


def reproduce(out, budget: str = "quick", presets=None, progress: bool = True, **train_overrides) -> Path:
    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget {budget!r}; valid: {', '.join(BUDGETS)}")
    b = BUDGETS[budget]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timing = Timing(out, budget)
    presets = presets or LADDER
    runs = []
    t_all = time.time()
    from .runtime import progress_bar
    ladder = progress_bar(total=len(presets), desc=f"reproduce --budget {budget}", unit="model", enabled=progress,
                          leave=True, position=1)
    for preset in presets:
        ladder.set_postfix(model=preset)
        ladder.update(0)
        run_dir = out / "runs" / preset
        runs.append(run_dir)
        rc = b.run_config(preset, **train_overrides)
        if is_finished(run_dir, rc.train.epochs):
            log.info("%s: finished earlier, skipped", preset)
            ladder.update(1)
            continue
        resume = checkpoint.exists(run_dir)
        log.info("%s: %s", preset, "resuming" if resume else "training")
        t0 = time.time()
        try:
            if resume:
                # the budget's length wins over whatever the interrupted run was started with
                train(run_dir, resume=True, progress=progress, epochs=rc.train.epochs, max_steps=rc.train.max_steps)
            else:
                train(run_dir, rc, progress=progress)
        finally:
            timing.add(f"train {preset}", time.time() - t0)
        ladder.update(1)
    ladder.close()
    log.info("training done in %.1f min; evaluating and writing the report", (time.time() - t_all) / 60)
    t0 = time.time()
    intro = f"Regenerated by `ddpmlab reproduce --budget {budget}`. " + b.about
    try:
        return write_report(runs, out, intro=intro, **b.evaluation)
    finally:
        # evaluations are cached per run, so a rerun's report costs less: the latest one is the time
        timing.add("evaluate and report", time.time() - t0, replace=True)
