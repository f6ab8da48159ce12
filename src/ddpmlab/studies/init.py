"""Finding (g): does the write-up's very basic model start badly because of its initialisation?
("The loss curve maybe shows some suboptimal initialization.")

resnet-basic (the noise level is not used at all) at the budget's size, trained for the first
`steps` optimiser steps by ddpmlab's own step (Trainer.train_step: Adam 1e-3, the precision the
budget trains in) on real FashionMNIST, reading the loss of every step; seeds 0..seeds-1. Within a
seed every variant sees the same batches, timesteps and noise.

Variants:
  ddpmlab                 the model as built: the last convolution of every residual branch (and
                          of every conditioning projection) starts at zero
  pytorch-default         PyTorch's default initialisation of every convolution and linear layer
  pytorch-default+warmup  the same, with a 25-step linear warmup of the learning rate

Writes OUT/init.json (per-step losses: mean, min, max over seeds) and OUT/init.png. A result of the
same size already there is kept.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from ..data import load_fashion_mnist  # noqa: E402
from ..runtime import machine  # noqa: E402
from ..recipes import make_run_config  # noqa: E402
from ..train import Trainer  # noqa: E402

log = logging.getLogger("ddpmlab.studies.init")

WARMUP = 25
LOSS_AT = (1, 10, 25, 50, 100)
THRESHOLDS = ("0.2", "0.1")


def pytorch_default_init(model: nn.Module) -> None:
    """PyTorch's own initialisation of every convolution and linear layer, undoing ddpmlab's
    zero-init (BatchNorm's default, weight 1 and bias 0, is the same in both)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.reset_parameters()


# name -> (training overrides, re-initialisation of the built model or None)
VARIANTS = {
    "ddpmlab": ({}, None),
    "pytorch-default": ({}, pytorch_default_init),
    # cosine from lr down to min_lr = lr: flat at 1e-3 after the warmup, like the others
    "pytorch-default+warmup": ({"lr_schedule": "cosine", "warmup_steps": WARMUP, "min_lr": 1e-3},
                               pytorch_default_init),
}


def step_losses(variant: str, seed: int, data, model: dict, steps: int, batch: int, precision: str,
                scratch: Path) -> list[float]:
    """The loss of each of the first `steps` optimiser steps of one variant and seed."""
    overrides, init = VARIANTS[variant]
    rc = make_run_config("resnet-basic", model, device="cpu", subset=len(data), batch_size=batch, seed=seed,
                         precision=precision, **overrides)
    tr = Trainer(scratch, rc, data=data, progress=False)      # writes nothing unless it saves
    if init is not None:
        torch.manual_seed(seed)
        init(tr.model)
        tr.ema.model.load_state_dict(tr.model.state_dict())   # (unused here: the loss is of the raw model)
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    losses = []
    for i in range(steps):
        losses.append(tr.train_step(perm[i * batch:(i + 1) * batch]).item())
        tr.step += 1                                           # the warmup reads the step, as in Trainer._loop
    return losses


def first_step_at_most(curve: np.ndarray, level: float) -> int | None:
    hits = np.flatnonzero(curve <= level)
    return int(hits[0]) + 1 if len(hits) else None


def summarise(runs: list[list[float]]) -> dict:
    """runs: one loss curve per seed -> the curves' statistics per step (steps count from 1)."""
    a = np.array(runs)                                         # (seeds, steps)
    mean = a.mean(0)
    return {"loss_mean": mean.tolist(), "loss_min": a.min(0).tolist(), "loss_max": a.max(0).tolist(),
            "loss_at": {str(k): float(mean[k - 1]) if k <= len(mean) else None for k in LOSS_AT},
            "steps_to_loss": {t: first_step_at_most(mean, float(t)) for t in THRESHOLDS}}


def plot(result: dict, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, v in result["variants"].items():
        x = np.arange(1, len(v["loss_mean"]) + 1)
        line, = ax.plot(x, v["loss_mean"], lw=1.6, label=name)
        ax.fill_between(x, v["loss_min"], v["loss_max"], color=line.get_color(), alpha=0.2, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("MSE loss on the noise (per step)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def run(out, *, steps: int, seeds: int, batch: int, model: dict, precision: str = "auto", command: str = "",
        progress: bool = False) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = {"steps": steps, "seeds": list(range(seeds)), "model": model, "batch": batch}
    try:
        done = json.loads((out / "init.json").read_text())
        if {k: done.get(k) for k in size} == size:
            log.info("init study: finished earlier, skipped")
            return done
    except (OSError, ValueError):
        pass
    data = load_fashion_mnist("train").subset(steps * batch)   # one pass, no image twice
    result = {"finding": "g", "command": command, "machine": machine(), "preset": "resnet-basic", **size,
              "variants": {}}
    for name in VARIANTS:
        runs = []
        for seed in size["seeds"]:
            t0 = time.perf_counter()
            runs.append(step_losses(name, seed, data, model, steps, batch, precision, out / "init-scratch"))
            log.info("init study: %s seed %d: loss %.3f at step 1, %.3f at step %d (%.0f s)", name, seed,
                     runs[-1][0], runs[-1][-1], steps, time.perf_counter() - t0)
        result["variants"][name] = summarise(runs)
    plot(result, out / "init.png", f"resnet-basic ({model['channels']} ch x {model['num_blocks']} blocks), first "
                                   f"{steps} steps of batch {batch}: mean and min-max over {seeds} seed(s)")
    (out / "init.json").write_text(json.dumps(result, indent=2) + "\n")   # last: marks the study complete
    return result
