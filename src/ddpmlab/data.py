"""Datasets held whole in memory as uint8 tensors; batches are drawn by index.

FashionMNIST is read from its four idx files (gzipped or not), searched in: --data-dir,
$DDPMLAB_DATA, the user cache, /usr/share/datasets/fashion-mnist (Debian's
dataset-fashion-mnist). Every file is checked against the SHA-256 of its decompressed bytes.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# name -> (SHA-256 of the decompressed bytes, size in bytes), from SPEC §3
FASHION_FILES = {
    "train-images-idx3-ubyte": ("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", 47040016),
    "train-labels-idx1-ubyte": ("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", 60008),
    "t10k-images-idx3-ubyte": ("5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", 7840016),
    "t10k-labels-idx1-ubyte": ("0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", 10008),
}
FASHION_MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FIX = ("fix: `apt-get install dataset-fashion-mnist`, or delete the file and run `ddpmlab data` "
       "to download it again, or point --data-dir / $DDPMLAB_DATA at a good copy")


class DataError(RuntimeError):
    """Missing, truncated or corrupt data; the message names the file and the fix."""


@dataclass
class ImageSet:
    images: torch.Tensor            # (N, C, H, W) uint8, 0..255
    labels: torch.Tensor | None     # (N,) int64, or None when unlabelled
    num_classes: int                # 0 when unlabelled
    class_names: tuple
    source: str

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, n: int | None) -> "ImageSet":
        if n is None or n >= len(self):
            return self
        labels = None if self.labels is None else self.labels[:n]
        return ImageSet(self.images[:n], labels, self.num_classes, self.class_names, self.source)


def to_model_range(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float in [-1, 1], the range the diffusion works in."""
    return images_u8.float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8 0..255."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ddpmlab" / "fashion-mnist"


def search_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    dirs = []
    if data_dir:
        dirs.append(Path(data_dir))
    if os.environ.get("DDPMLAB_DATA"):
        dirs.append(Path(os.environ["DDPMLAB_DATA"]))
    dirs += [cache_dir(), DEBIAN_DIR]
    return dirs


def _file_in(d: Path, name: str) -> Path | None:
    for candidate in (d / name, d / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_fashion_mnist(data_dir=None, download: bool = True) -> Path:
    """The first directory holding the four idx files; download into the cache if none does."""
    for d in search_dirs(data_dir):
        present = {n: _file_in(d, n) for n in FASHION_FILES}
        if all(present.values()):
            return d
        if any(present.values()):
            missing = next(n for n, p in present.items() if p is None)
            raise DataError(f"{d / missing}(.gz) is missing while its siblings are there; {FIX}")
    if not download:
        raise DataError("FashionMNIST not found in " + ", ".join(map(str, search_dirs(data_dir)))
                        + "; run `ddpmlab data` to download it or `apt-get install dataset-fashion-mnist`")
    return download_fashion_mnist(cache_dir())


def download_fashion_mnist(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in FASHION_FILES:
        target = dest / f"{name}.gz"
        if target.exists():
            continue
        tmp = target.with_suffix(".gz.tmp")
        try:
            with urllib.request.urlopen(FASHION_MIRROR + f"{name}.gz", timeout=60) as r, open(tmp, "wb") as f:
                shutil.copyfileobj(r, f)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise DataError(f"could not download {name}.gz from {FASHION_MIRROR} ({e}); "
                            "without internet, `apt-get install dataset-fashion-mnist`") from None
        os.replace(tmp, target)
    return dest


def _read_verified(path: Path) -> bytes:
    name = path.name.removesuffix(".gz")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is truncated or corrupt ({e}); {FIX}") from None
    digest, size = FASHION_FILES[name]
    if len(raw) != size:
        raise DataError(f"{path} is truncated or corrupt: {len(raw)} bytes decompressed, expected {size}; {FIX}")
    if hashlib.sha256(raw).hexdigest() != digest:
        raise DataError(f"{path} is corrupt: SHA-256 mismatch; {FIX}")
    return raw


def _parse_idx(raw: bytes, path: Path) -> np.ndarray:
    magic = int.from_bytes(raw[0:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim not in (1, 3):
        raise DataError(f"{path} is not an idx file of unsigned bytes; {FIX}")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(split: str = "train", data_dir=None, download: bool = True) -> ImageSet:
    """The whole split as one uint8 tensor (N, 1, 28, 28) and int64 labels (N,)."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; valid: train, test")
    d = find_fashion_mnist(data_dir, download)
    prefix = "train" if split == "train" else "t10k"
    img_path = _file_in(d, f"{prefix}-images-idx3-ubyte")
    lab_path = _file_in(d, f"{prefix}-labels-idx1-ubyte")
    images = _parse_idx(_read_verified(img_path), img_path)
    labels = _parse_idx(_read_verified(lab_path), lab_path)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{img_path} holds {images.shape[0]} images but {lab_path} holds "
                        f"{labels.shape[0]} labels; {FIX}")
    return ImageSet(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                    10, FASHION_CLASSES, str(d))


def verify_fashion_mnist(data_dir=None, download: bool = True) -> tuple[Path, dict]:
    """Find (or fetch) the data and verify all four files; returns the directory and counts."""
    d = find_fashion_mnist(data_dir, download)
    counts = {split: len(load_fashion_mnist(split, d, download=False)) for split in ("train", "test")}
    return d, counts


def load_dataset(name: str = "fashion-mnist", data_dir=None, split: str = "train") -> ImageSet:
    """The training data named by TrainConfig.data."""
    if name == "fashion-mnist":
        return load_fashion_mnist(split, data_dir)
    raise DataError(f"unknown dataset {name!r}; valid: fashion-mnist")
