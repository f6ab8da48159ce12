"""Figures: loss curves, sample grids, per-epoch snapshots, the generation process.

Images come in as float tensors in [-1, 1] (N, C, H, W) or uint8; every file is written
atomically.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from .data import to_uint8  # noqa: E402
from .monitor import DIVERSITY_FLOOR, SEPARATION_FLOOR  # noqa: E402
from .runtime import atomic_write  # noqa: E402


def to_hwc_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) float in [-1, 1] or uint8 -> (N, H, W, C) uint8."""
    if x.dtype != torch.uint8:
        x = to_uint8(x)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def tile(images: torch.Tensor, ncol: int, pad: int = 2) -> np.ndarray:
    """Images (N, C, H, W) -> one (rows*H, ncol*W, C) uint8 array, padded with grey lines."""
    arr = to_hwc_uint8(images)
    n, h, w, c = arr.shape
    nrow = math.ceil(n / ncol)
    out = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 128, np.uint8)
    for i in range(n):
        r, k = divmod(i, ncol)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = arr[i]
    return out


def _save_pil(arr: np.ndarray, path, scale: int = 1) -> None:
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: img.save(p, format="PNG"))


def save_strip(images: torch.Tensor, path, ncol: int | None = None, scale: int = 2) -> None:
    """A plain image grid (no axes), e.g. one per-epoch snapshot of one class."""
    _save_pil(tile(images, ncol or images.shape[0]), path, scale)


def _savefig(fig, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def write_grid(images: torch.Tensor, path, ncol: int, row_labels=None, title: str | None = None) -> None:
    """A sample grid; with row_labels, one labelled row per class."""
    arr = tile(images, ncol)
    nrow = math.ceil(images.shape[0] / ncol)
    fig, ax = plt.subplots(figsize=(max(4.0, ncol * 0.6 + 1.5), max(2.0, nrow * 0.6 + 0.6)))
    ax.imshow(arr[..., 0] if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    if row_labels:
        h = images.shape[2] + 2
        ax.set_yticks([2 + h * r + h / 2 - 1 for r in range(len(row_labels))], list(row_labels), fontsize=8)
    else:
        ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    _savefig(fig, path)


def plot_loss(metrics: list[dict], path, title: str = "", ylabel: str = "MSE loss on the noise") -> None:
    """Per-step loss (raw and smoothed) and per-epoch loss, log scale. A rate that changes in
    steps (ReduceLROnPlateau) has each drop marked; one that changes at every step (a cosine
    schedule) is drawn on a second axis instead."""
    steps = [m for m in metrics if m.get("kind") == "step"]
    epochs = [m for m in metrics if m.get("kind") == "epoch"]
    fig, ax = plt.subplots(figsize=(7, 4))
    if steps:
        s = np.array([m["step"] for m in steps])
        y = np.array([m["loss"] for m in steps])
        ax.plot(s, y, color="tab:blue", alpha=0.3, lw=0.8, label="loss (per logged step)")
        ax.plot(s, _smooth(y), color="tab:blue", lw=1.6, label="smoothed")
    if epochs:
        ends = [m["step"] for m in epochs]
        mids = [(a + b) / 2 for a, b in zip([0] + ends[:-1], ends)]   # a mean over the epoch sits at its middle
        ax.plot(mids, [m["loss"] for m in epochs], "o-", color="tab:orange", lw=1.6, ms=4, label="epoch mean")
    continuous = len({m["lr"] for m in steps}) > len(epochs) + 1
    if continuous:
        lr_ax = ax.twinx()
        lr_ax.plot([m["step"] for m in steps], [m["lr"] for m in steps], color="tab:red", lw=1, ls="--")
        lr_ax.set_ylabel("learning rate (dashed)", color="tab:red")
        lr_ax.tick_params(axis="y", colors="tab:red")
    else:
        for prev, m in zip(epochs, epochs[1:]):
            if m["lr"] < prev["lr"] * 0.999:
                ax.axvline(m["step"], color="tab:red", ls="--", lw=1)
                ax.text(m["step"], 1.0, f" lr {m['lr']:.1e}", color="tab:red", fontsize=7, rotation=90,
                        va="top", transform=ax.get_xaxis_transform())
    if steps or epochs:
        ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(ylabel)
    ax.set_title(title or ("training loss" if continuous else "training loss (dashed: learning-rate drops)"),
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if steps or epochs:
        ax.legend(fontsize=8)
    _savefig(fig, path)


def _smooth(y: np.ndarray) -> np.ndarray:
    """Centred moving average over ~1/20 of the curve (each point is already the mean of a
    logging window); unlike an EMA it does not lag behind a falling loss."""
    w = max(1, len(y) // 20)
    if w == 1:
        return y.astype(float)
    kernel = np.ones(w)
    num = np.convolve(y, kernel, mode="same")
    den = np.convolve(np.ones_like(y, dtype=float), kernel, mode="same")   # shorter windows at the edges
    return num / den


def plot_process(frames: list[tuple[int, torch.Tensor, torch.Tensor]], path, row_labels=None) -> None:
    """The generation process. frames: (t, x_t, x0_pred) per shown step, each (n, C, H, W).
    Rows are samples, each as a pair: x_t above, the predicted clean image beneath."""
    n = frames[0][1].shape[0]
    k = len(frames)
    fig, axes = plt.subplots(2 * n, k, figsize=(k * 0.95, 2 * n * 0.95), squeeze=False)
    for col, (t, xt, x0) in enumerate(frames):
        for r in range(n):
            for j, img in enumerate((xt[r], x0[r])):
                ax = axes[2 * r + j, col]
                a = to_hwc_uint8(img[None])[0]
                ax.imshow(a[..., 0] if a.shape[-1] == 1 else a, cmap="gray", vmin=0, vmax=255)
                ax.set_xticks([])
                ax.set_yticks([])
                if col == 0:
                    name = "" if row_labels is None else f"{row_labels[r]}\n"
                    ax.set_ylabel(name + ("x_t" if j == 0 else "pred x0"), fontsize=6)
        axes[0, col].set_title(f"t={t}" if t >= 0 else "final", fontsize=7)
    fig.suptitle("generation process: noise (left) to image (right); beneath each, the predicted x0",
                 fontsize=8)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    _savefig(fig, path)


# ------------------------------------------------------------------ figures that compare runs

def plot_loss_overlay(runs: dict, path, title: str = "", batch: int = 64) -> None:
    """Smoothed training loss of several runs on one axis, against training images seen.
    runs: name -> metrics records."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, metrics in runs.items():
        steps = [m for m in metrics if m.get("kind") == "step"]
        if steps:
            x = np.array([m["step"] for m in steps]) * batch
            ax.plot(x, _smooth(np.array([m["loss"] for m in steps])), lw=1.6, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("training images seen")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _savefig(fig, path)


def plot_confusions(confusions: dict, class_names, path) -> None:
    """For each model, per requested class (row) the histogram of the classes the classifier
    sees (columns), as a fraction of the row. confusions: name -> (10, 10) counts."""
    names = list(confusions)
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names) + 0.6, 3.6), squeeze=False)
    short = [c.split("/")[0][:7] for c in class_names]
    for ax, name in zip(axes[0], names):
        m = np.asarray(confusions[name], dtype=float)
        m = m / np.maximum(m.sum(1, keepdims=True), 1)
        im = ax.imshow(m, cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(short)), short, rotation=90, fontsize=6)
        ax.set_yticks(range(len(short)), short, fontsize=6)
        ax.set_xlabel("classified as", fontsize=7)
        ax.set_title(name, fontsize=8)
    axes[0, 0].set_ylabel("requested class", fontsize=7)
    fig.colorbar(im, ax=list(axes[0]), fraction=0.02, pad=0.02, label="share of the requested class")
    fig.suptitle("what each model draws when asked for a class (a perfect model: the diagonal)", fontsize=9)
    _savefig(fig, path)


def plot_class_bars(values: dict, class_names, path, ylabel: str, title: str = "") -> None:
    """Grouped bars, one group per class: values: name -> 10 numbers (None: no bar)."""
    names = list(values)
    k = len(class_names)
    w = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(8, 3.4))
    for i, name in enumerate(names):
        v = [np.nan if x is None else x for x in values[name]]
        ax.bar(np.arange(k) + (i - (len(names) - 1) / 2) * w, v, w, label=name)
    ax.set_xticks(range(k), [c.split("/")[0][:9] for c in class_names], fontsize=7, rotation=30)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    _savefig(fig, path)


# the collapse monitor's thresholds; adherence: chance over 10 classes
COLLAPSE_LINES = {"diversity": DIVERSITY_FLOOR, "label_separation": SEPARATION_FLOOR, "adherence": 0.1}


def plot_monitor(runs: dict, path, batch: int = 64) -> None:
    """The collapse monitor's per-epoch scores of several runs against training images: sample
    diversity and label separation (relative to real images) and label adherence."""
    keys = [("diversity", "diversity (real = 1)"), ("label_separation", "label separation (real = 1)"),
            ("adherence", "label adherence")]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, (key, label) in zip(axes, keys):
        for name, metrics in runs.items():
            ep = [m for m in metrics if m.get("kind") == "epoch" and key in m]
            if ep:
                ax.plot([m["step"] * batch for m in ep], [m[key] for m in ep], "o-", ms=3, lw=1.4, label=name)
        ax.axhline(COLLAPSE_LINES[key], color="tab:red", ls="--", lw=1)
        ax.set_xlabel("training images seen", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("collapse monitor per epoch (dashed: collapse thresholds; adherence: chance)", fontsize=9)
    _savefig(fig, path)
