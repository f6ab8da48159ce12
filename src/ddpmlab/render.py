"""A network's samples for people to look at: `sample_images` (the per-image-seeded samples every
command draws), and the figures made from them: grids, per-epoch snapshots, the generation process.
The sampling is diffusion.generate's; the drawing is plots.py's (the one module that draws).

Used by `train` (snapshots, final figures) and by `sample` / `process`; sits between the
diffusion core and the trainer.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from . import plots
from .config import ConfigError, Sampling
from .diffusion import PerImageNoise, Schedule, generate

SNAPSHOT_SEEDS = 777_000    # offset of the snapshots' seeds, apart from those of `sample`


def image_seeds(seed: int, n: int, offset: int = 0) -> list[int]:
    """The per-image seeds of n images drawn with `seed`: image i gets the same noise whatever
    batch it is drawn in (and whatever n is)."""
    return [seed * 1_000_003 + offset + i for i in range(n)]


def snapshot_name(epoch: int, label: int | None = None) -> str:
    """snapshots/epochE-classK.png (unconditional: epochE.png)."""
    return f"epoch{epoch}.png" if label is None else f"epoch{epoch}-class{label}.png"


_SNAPSHOT = re.compile(r"epoch(\d+)(?:-class(\d+))?\.png$")


def parse_snapshot_name(name: str) -> tuple[int, int | None] | None:
    """(epoch, label or None) of a snapshot file name, or None when it is not one."""
    m = _SNAPSHOT.fullmatch(name)
    return None if m is None else (int(m[1]), None if m[2] is None else int(m[2]))


def default_class_names(num_classes: int) -> tuple:
    return tuple(str(k) for k in range(num_classes))


def make_labels(num_classes: int, n: int, label: int | str | None = None):
    """Labels for n samples: None for an unconditional model; an int: that class for all; None
    or "all": 0..K-1 cycling, so every class gets an equal share."""
    if num_classes == 0:
        if label is not None and label != "all":     # "all" of no classes: unconditional samples
            raise ConfigError("this model is unconditional: --label does not apply")
        return None
    if label is not None and label != "all":
        if not 0 <= label < num_classes:
            raise ConfigError(f"label {label} is outside 0..{num_classes - 1}; valid: 0..{num_classes - 1} or --labels all")
        return torch.full((n,), label, dtype=torch.long)
    return torch.arange(n) % num_classes


def sample_images(model, schedule: Schedule, cfg, n: int, sampling: Sampling, *, labels=None, seed: int = 0, eta=None,
         device="cpu", callback=None, precision: str = "fp32", guide=None) -> torch.Tensor:
    """n images in [-1, 1] sampled as `sampling` says; image i uses seed (seed, i) whatever batch
    it is drawn in. guide: autoguidance's weaker network (`diffusion.generate`)."""
    if sampling.guidance and not cfg.num_classes:
        raise ConfigError("--guidance needs a class-conditional model")
    return generate(model, schedule, (cfg.in_channels, cfg.image_size, cfg.image_size), sampling,
                    seeds=image_seeds(seed, n), labels=labels, eta=eta, null_label=cfg.num_classes,
                    callback=callback, device=device, precision=precision, guide=guide)


def sample_grid(model, schedule, cfg, path, sampling: Sampling, *, per_class: int = 10, seed: int = 0,
                class_names=None, **kw) -> torch.Tensor:
    """One row per class for a conditional model, else an 8x8 grid."""
    if cfg.num_classes:
        k = cfg.num_classes
        labels = torch.arange(k).repeat_interleave(per_class)
        x = sample_images(model, schedule, cfg, k * per_class, sampling, labels=labels, seed=seed, **kw)
        plots.write_grid(x, path, ncol=per_class, row_labels=class_names or default_class_names(k))
    else:   # 8x8 small images; 4x4 large ones (a 64x64 UNet costs ~20x more per image)
        side = 8 if cfg.image_size <= 32 else 4
        x = sample_images(model, schedule, cfg, side * side, sampling, seed=seed, **kw)
        plots.write_grid(x, path, ncol=side)
    return x


def snapshots(model, schedule, cfg, snap_dir: Path, epoch: int, *, per_class: int, steps: int,
              seed: int, device="cpu") -> torch.Tensor:
    """Per-epoch snapshots from noise fixed for the whole run: snapshots/epoch{E}-class{K}.png
    (unconditional: epoch{E}.png). Returns the samples (K*per_class, C, H, W)."""
    if cfg.num_classes:
        k = cfg.num_classes
        labels = torch.arange(k).repeat_interleave(per_class)
        # the same seeds for every class: differences between rows come from the label alone
        seeds = image_seeds(seed, per_class, SNAPSHOT_SEEDS) * k
    else:
        k, labels = 1, None
        seeds = image_seeds(seed, 4 * per_class, SNAPSHOT_SEEDS)
    x = generate(model, schedule, (cfg.in_channels, cfg.image_size, cfg.image_size), Sampling("ddim", steps),
                 seeds=seeds, labels=labels, null_label=cfg.num_classes, device=device)
    if cfg.num_classes:
        for c in range(k):
            plots.save_strip(x[c * per_class:(c + 1) * per_class], snap_dir / snapshot_name(epoch, c))
    else:
        plots.save_strip(x, snap_dir / snapshot_name(epoch), ncol=per_class)
    return x


def process_frames(model, schedule, cfg, sampling: Sampling, *, n: int = 4, label: int | None = None,
                   seed: int = 0, columns: int | None = 10, **kw) -> tuple[list, torch.Tensor | None]:
    """The generation process of n samples (image i of `seed`, as `sample_images` makes it): frames
    (t, x_t, x0_pred), each (n, C, H, W), at ~`columns` evenly spaced steps from pure noise (None:
    every step), then (-1, final, final); and the labels."""
    labels = make_labels(cfg.num_classes, n, label)
    n_steps = sampling.steps
    show = range(n_steps) if columns is None else {round(i * (n_steps - 1) / (columns - 2)) for i in range(columns - 1)}
    frames = []
    state = {"x": PerImageNoise(image_seeds(seed, n))((n, cfg.in_channels, cfg.image_size, cfg.image_size))}  # x_T

    def keep(_, i, t, x_next, x0):
        # the sampler reports x0 predicted from x_t and the x it steps to; show the pair (x_t, x0)
        if i in show:
            frames.append((t, state["x"], x0.float().cpu()))
        state["x"] = x_next.float().cpu()

    final = sample_images(model, schedule, cfg, n, sampling, labels=labels, seed=seed, callback=keep, **kw)
    frames.append((-1, final, final))
    return frames, labels


def process_figure(model, schedule, cfg, path, sampling: Sampling, *, n: int = 4, label: int | None = None,
                   seed: int = 0, columns: int = 10, class_names=None, **kw) -> None:
    """Rows: samples; columns: x_t at ~`columns` evenly spaced steps from pure noise to the end,
    each with the predicted x0 beneath it."""
    frames, labels = process_frames(model, schedule, cfg, sampling, n=n, label=label, seed=seed, columns=columns,
                                    **kw)
    names = None if labels is None else [(class_names or default_class_names(cfg.num_classes))[k]
                                         for k in labels.tolist()]
    plots.plot_process(frames, path, row_labels=names)
