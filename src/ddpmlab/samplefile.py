"""Sample files: the .npz convention of the guided-diffusion evaluator, read and written.

    arr_0   uint8 images (N, H, W, C), 0..255
    arr_1   int64 class labels (N,), when the samples are class-conditional

`sample --npz` writes them (save_npz); `evaluate` reads them (load_samples), also in the layouts
people commonly save: (N, 1, 28, 28), (N, 28, 28), floats in [0, 1] or [-1, 1].
"""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from .config import ConfigError
from .data import to_uint8
from .metrics import NUM_CLASSES
from .runtime import atomic_save_numpy


class SampleFileError(ConfigError):
    """An .npz of samples that cannot be evaluated; the message says what was expected."""


# ---------------------------------------------------------------------------------------------
# input

def load_samples(path, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """uint8 images (N, 1, 28, 28), int64 labels (N,) or None, and a note on the range assumed.
    Accepts arr_0 (or `images`) as uint8 0..255, float in [0, 1] or float in [-1, 1], laid
    out (N, 28, 28, 1) as the guided-diffusion evaluator writes it, or (N, 1, 28, 28)."""
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise SampleFileError(f"{path}: not a readable .npz file ({e}); truncated? write it again with "
                              "`ddpmlab sample RUN --npz FILE` or np.savez(FILE, arr_0=images, arr_1=labels)") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise SampleFileError(f"{path}: a single array, not an .npz; save with np.savez(path, arr_0=images, arr_1=labels)")
    with z:
        img_key = next((k for k in ("arr_0", "images") if k in z.files), None)
        if img_key is None:
            raise SampleFileError(f"{path} holds no images: expected key arr_0 (or images), found {z.files or 'nothing'}")
        lab_key = next((k for k in ("arr_1", "labels") if k in z.files), None)
        try:
            x = z[img_key]
            y = z[lab_key] if lab_key else None
        except ValueError as e:
            if "allow_pickle" in str(e):
                raise SampleFileError(f"{path}: {img_key}/{lab_key} are object arrays, which are never unpickled; "
                                      "save numeric arrays: uint8 images and int64 labels") from None
            raise SampleFileError(f"{path}: cannot read {img_key}/{lab_key} ({e})") from None
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise SampleFileError(f"{path}: {img_key}/{lab_key} cannot be read ({e}); the file is truncated or "
                                  "damaged: write it again") from None

    grey = "the classifier metric is for grey 28x28 FashionMNIST-like images: (N, 28, 28, 1), (N, 1, 28, 28) or (N, 28, 28)"
    if x.ndim == 3 and x.shape[1:] == (28, 28):
        x = x[:, None]                                  # (N, 28, 28): grey without a channel axis
    elif x.ndim != 4:
        raise SampleFileError(f"{path}: {img_key} has shape {x.shape}; {grey}")
    elif x.shape[1:] == (28, 28, 1):
        x = x.transpose(0, 3, 1, 2)                     # NHWC -> NCHW
    elif x.shape[1:] != (1, 28, 28):
        rgb = 3 in (x.shape[1], x.shape[3])
        raise SampleFileError(f"{path}: {img_key} has shape {x.shape}{' (colour)' if rgb else ''}; {grey}")
    if x.shape[0] < 2:
        raise SampleFileError(f"{path}: {x.shape[0]} image(s); the Fréchet distance needs at least 2")
    images, note = _to_uint8(x, path, img_key)

    labels = None
    if y is not None:
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise SampleFileError(f"{path}: {lab_key} has shape {y.shape}; expected ({x.shape[0]},), one label per image")
        if not np.issubdtype(y.dtype, np.integer):
            raise SampleFileError(f"{path}: {lab_key} has dtype {y.dtype}; expected integer class labels")
        if y.min() < 0 or y.max() >= NUM_CLASSES:
            raise SampleFileError(f"{path}: {lab_key} holds labels {y.min()}..{y.max()}; valid: 0..{NUM_CLASSES - 1}")
        labels = torch.from_numpy(y.astype(np.int64))
    if n is not None:
        if n < 2:
            raise ConfigError(f"--n must be >= 2, got {n}")
        if n < images.shape[0]:
            images, labels = images[:n], None if labels is None else labels[:n]
        elif n > images.shape[0]:
            note += f"; --n {n} asked but the file holds {images.shape[0]}: all used"
    return images, labels, note


def _to_uint8(x: np.ndarray, path, key) -> tuple[torch.Tensor, str]:
    if x.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(x)), "uint8 0..255"
    if np.issubdtype(x.dtype, np.integer):
        if x.min() < 0 or x.max() > 255:
            raise SampleFileError(f"{path}: integer {key} in {x.min()}..{x.max()}; expected 0..255")
        return torch.from_numpy(x.astype(np.uint8)), f"{x.dtype} 0..255"
    if not np.issubdtype(x.dtype, np.floating):
        raise SampleFileError(f"{path}: {key} has dtype {x.dtype}; expected uint8 0..255 or float")
    if not np.isfinite(x).all():
        raise SampleFileError(f"{path}: {key} holds {np.count_nonzero(~np.isfinite(x))} NaN/inf values")
    lo, hi, tol = float(x.min()), float(x.max()), 1e-3
    t = torch.from_numpy(x.astype(np.float32))
    if lo >= -tol and hi <= 1 + tol:
        return to_uint8(t * 2 - 1), f"float, assumed [0, 1] (found {lo:.3g}..{hi:.3g})"
    if lo >= -1 - tol and hi <= 1 + tol:
        return to_uint8(t), f"float, assumed [-1, 1] (found {lo:.3g}..{hi:.3g})"
    raise SampleFileError(f"{path}: float {key} in {lo:.3g}..{hi:.3g}; expected [0, 1] or [-1, 1]")


def save_npz(path, images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    """The guided-diffusion evaluator's format: arr_0 uint8 (N, H, W, C), arr_1 int64 labels."""
    arrays = {"arr_0": to_uint8(images).permute(0, 2, 3, 1).numpy()}
    if labels is not None:
        arrays["arr_1"] = labels.numpy().astype(np.int64)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_numpy(path, np.savez, **arrays)
