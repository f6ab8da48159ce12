"""Finding (h): the write-up's two UNet "good bugs", switched back on and measured.

Four variants of the budget's unet-block, each trained by ddpmlab's trainer (the write-up's
recipe) for `epochs` of the first `subset` FashionMNIST images with the same seed, so the same data
order, timesteps and noise, then evaluated as the standard budget evaluates (dpm++2m, 20 log-SNR
steps, no guidance, `n` samples):
  ddpmlab           no bug
  residual-inplace  ModelConfig.residual_inplace, "tensors are CoW, so you need to copy them to keep
                    residuals": every skip is modified in place (an in-place SiLU) after it is kept
  residual-copy     ModelConfig.residual_control, its control: the same SiLU on the down path, out of
                    place, so the skips stay as kept; against residual-inplace it isolates the alias
  pool-first        ModelConfig.pool_first, "pooling as first step in a Unet block did not work":
                    every level below the first starts with 2x2 max pooling instead of a learned
                    strided convolution
(models/unet.py says exactly what each does.)

Writes OUT/good_bugs/VARIANT/ (the runs), OUT/good_bugs.json, OUT/good_bugs.png (the loss curves)
and OUT/good_bugs-samples.png (one sample of each class 0..9 per variant, the same seeds).
Interrupted and started again, it resumes the unfinished run and skips finished ones; each run
keeps its evaluation (RUN/eval) until its weights change.
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

from .. import checkpoint, plots  # noqa: E402
from ..budgets import is_finished  # noqa: E402
from ..config import ConfigError, SamplingConfig  # noqa: E402
from ..data import FASHION_CLASSES  # noqa: E402
from ..evaluate import cached_evaluate_run  # noqa: E402
from ..models import build_model, count_parameters  # noqa: E402
from ..run import load_config, read_metrics  # noqa: E402
from ..runtime import machine  # noqa: E402
from ..sample import load_run, sample  # noqa: E402
from ..recipes import make_run_config  # noqa: E402
from ..train import train  # noqa: E402

log = logging.getLogger("ddpmlab.studies.good_bugs")

PRESET = "unet-block"
VARIANTS = {"ddpmlab": {}, "residual-inplace": {"residual_inplace": True}, "residual-copy": {"residual_control": True},
            "pool-first": {"pool_first": True}}
EVALUATION = {"sampler": "dpm++2m", "steps": 20, "spacing": "logsnr", "guidance": 0.0}   # reproduce --budget standard
SCORES = ("fd", "fd_floor", "cond_acc", "precision", "recall")


def train_variant(run_dir: Path, rc, progress: bool = False) -> str:
    """Train, resume or skip one run; what was done."""
    if (run_dir / "config.json").is_file():
        old = load_config(run_dir)
        if (old.model, old.train.subset) != (rc.model, rc.train.subset):
            raise ConfigError(f"{run_dir} holds a run of another model or subset; choose another output folder")
    if is_finished(run_dir, rc.train.epochs):
        return "finished earlier, skipped"
    if checkpoint.exists(run_dir):   # this study's length wins over the interrupted run's
        train(run_dir, resume=True, progress=progress, epochs=rc.train.epochs, max_steps=rc.train.max_steps)
        return "resumed"
    train(run_dir, rc, progress=progress)
    return "trained"


def summary(run_dir: Path, ev: dict) -> dict:
    metrics = read_metrics(run_dir)
    steps = [m for m in metrics if m.get("kind") == "step"]
    epochs = [m for m in metrics if m.get("kind") == "epoch"]
    return {"params": count_parameters(build_model(load_config(run_dir).model)), "final_loss": epochs[-1]["loss"],
            "loss_curve": [[m["step"], m["loss"]] for m in steps], **{k: ev[k] for k in SCORES},
            "img_per_s": round(float(np.mean([m["img_per_s"] for m in epochs])), 1)}   # training, per epoch


def plot_losses(variants: dict, path: Path) -> None:
    """One panel per variant, the same log axis: the logged loss and its smoothed curve."""
    fig, axes = plt.subplots(1, len(variants), figsize=(3.6 * len(variants), 3.4), sharey=True, squeeze=False)
    for ax, (name, v) in zip(axes[0], variants.items()):
        s, y = np.array(v["loss_curve"], dtype=float).T
        ax.plot(s, y, ".-", color="tab:blue", alpha=0.3, lw=0.8, ms=3)
        ax.plot(s, plots._smooth(y), color="tab:blue", lw=1.6)     # the training loss figure's smoothing
        ax.set_title(f"{name}: final epoch {v['final_loss']:.4f}", fontsize=9)
        ax.set_xlabel("optimiser step")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].set_ylabel("training loss (logged windows, smoothed)")
    fig.suptitle("the write-up's good bugs in unet-block: training loss", fontsize=10)
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def sample_rows(run_dirs: dict, path: Path, device: str) -> None:
    """One row per variant: classes 0..9, image i with the same seed in every row."""
    rows = [sample(load_run(d, device=device), 10, labels="all", seed=0, **EVALUATION)[0].cpu()
            for d in run_dirs.values()]
    names = ", ".join(f"{k} {c.split('/')[0]}" for k, c in enumerate(FASHION_CLASSES))
    plots.write_grid(torch.cat(rows), path, ncol=10, row_labels=list(run_dirs),
                     title=f"classes {names}; seed 0, dpm++2m, 20 log-SNR steps")


def run(out, *, epochs: int, subset: int, n: int, model: dict, train: dict, device: str = "auto",
        command: str = "", progress: bool = False) -> dict:
    out = Path(out)
    run_dirs = {name: out / "good_bugs" / name for name in VARIANTS}
    result = {"finding": "h", "command": command, "machine": machine(), "images": epochs * subset,
              "preset": PRESET, "model": {k: list(v) if isinstance(v, tuple) else v for k, v in model.items()},
              "evaluation": {"n": n, **EVALUATION}, "variants": {}}
    for name, switch in VARIANTS.items():
        rc = make_run_config(PRESET, {**model, **switch}, device=device, epochs=epochs, subset=subset, **train)
        t0 = time.perf_counter()
        done = train_variant(run_dirs[name], rc, progress)
        ev, _ = cached_evaluate_run(run_dirs[name], n=n, device=device, sampling=SamplingConfig(**EVALUATION))
        result["variants"][name] = v = summary(run_dirs[name], ev)
        log.info("good bugs: %s: %s; %s parameters, final loss %.4f, fd %.2f (floor %.2f), cond_acc %.3f (%.0f s)",
                 name, done, f"{v['params']:,}", v["final_loss"], v["fd"], v["fd_floor"], v["cond_acc"],
                 time.perf_counter() - t0)
    plot_losses(result["variants"], out / "good_bugs.png")
    sample_rows(run_dirs, out / "good_bugs-samples.png", device)
    (out / "good_bugs.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
