"""Datasets held whole in memory as uint8 tensors; batches are drawn by index.

FashionMNIST is read from its four idx files (gzipped or not), searched in: --data-dir,
$DDPMLAB_DATA, the user cache, /usr/share/datasets/fashion-mnist (Debian's
dataset-fashion-mnist). Every file is checked against the SHA-256 of its decompressed bytes.

Any folder of jpg/png images is the second source (load_image_folder): decoded once, centre-
cropped and resized, into a uint8 .npy cache. Limit: like FashionMNIST the whole set is held in
memory (and on the training device) as uint8, N * C * size^2 bytes -- CelebA's 202,599 faces at
64x64 RGB are 2.5 GB; a set that does not fit needs a streaming loader, which is not implemented.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .runtime import atomic_save_numpy, atomic_write, user_cache_dir

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
    checksum: str = ""              # FashionMNIST: SHA-256 of its training images; folders: the cache key

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, n: int | None) -> "ImageSet":
        if n is None or n >= len(self):
            return self
        labels = None if self.labels is None else self.labels[:n]
        return ImageSet(self.images[:n], labels, self.num_classes, self.class_names, self.source, self.checksum)


def to_model_range(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float in [-1, 1], the range the diffusion works in."""
    return images_u8.float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8 0..255."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def cache_dir() -> Path:
    return user_cache_dir("fashion-mnist")


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
                    10, FASHION_CLASSES, str(d), FASHION_FILES[f"{prefix}-images-idx3-ubyte"][0])


def verify_fashion_mnist(data_dir=None, download: bool = True) -> tuple[Path, dict]:
    """Find (or fetch) the data and verify all four files; returns the directory and counts."""
    d = find_fashion_mnist(data_dir, download)
    counts = {split: len(load_fashion_mnist(split, d, download=False)) for split in ("train", "test")}
    return d, counts


# --------------------------------------------------------------------------- image folders

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
PARALLEL_FROM = 2000        # decode with worker processes from this many files on
log = logging.getLogger("ddpmlab.data")


def folder_cache_dir() -> Path:
    return user_cache_dir("folders")


def _images_under(d: Path) -> list[Path]:
    """jpg/png files below d (recursive, hidden entries skipped), in a stable order."""
    out = []
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        out += [Path(dirpath) / n for n in sorted(filenames)
                if not n.startswith(".") and n.lower().endswith(IMAGE_SUFFIXES)]
    return out


def scan_image_folder(root) -> tuple[list[Path], list[int] | None, tuple]:
    """(files, labels or None, class names). Two or more sub-folders holding images are the
    classes; otherwise the folder is unlabelled (a single sub-folder, as in CelebA's
    img_align_celeba/, is just where the images are)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; --data-dir must name a folder of jpg/png images "
                        "(sub-folders = classes)")
    subdirs = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)
    classes = [(d.name, f) for d in subdirs if (f := _images_under(d))]
    empty = [d for d in subdirs if d.name not in {name for name, _ in classes}]
    if empty:
        raise DataError(f"{empty[0]} holds no jpg/png images: a sub-folder of {root} is a class, so remove it "
                        "or put its images in it")
    loose = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.name.lower().endswith(IMAGE_SUFFIXES))
    if len(classes) >= 2:
        if loose:
            log.warning("%d images directly in %s are ignored: its sub-folders are the classes", len(loose), root)
        files = [f for _, fs in classes for f in fs]
        labels = [k for k, (_, fs) in enumerate(classes) for _ in fs]
        return files, labels, tuple(name for name, _ in classes)
    files = loose + (classes[0][1] if classes else [])
    if not files:
        raise DataError(f"{root} holds no jpg/png images (looked in it and its sub-folders)")
    return files, None, ()


def _decode(args) -> np.ndarray | None:
    """One file -> (C, size, size) uint8, centre-cropped to a square and resized; None when
    unreadable. Top-level so worker processes can run it."""
    path, size, channels = args
    try:
        with Image.open(path) as im:
            im.draft("RGB" if channels == 3 else "L", (size, size))     # JPEG: decode at a reduced scale
            im = im.convert("RGB" if channels == 3 else "L")
            w, h = im.size
            s = min(w, h)
            box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
            im = im.resize((size, size), Image.Resampling.LANCZOS, box=box)
            a = np.asarray(im, dtype=np.uint8)
    except Exception:   # truncated, not an image, decompression bomb...: skipped and counted, never fatal
        return None
    return a[None] if channels == 1 else a.transpose(2, 0, 1)                     # (C, size, size)


def _cache_key(root: Path, files: list[Path], size: int, channels: int) -> str:
    h = hashlib.sha256(json.dumps([str(root.resolve()), size, channels]).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root)}\0{st.st_mtime_ns}\0{st.st_size}\n".encode())
    return h.hexdigest()[:24]


def load_image_folder(path, size: int = 64, channels: int = 3, progress: bool = True,
                      skip_unreadable: bool = False) -> ImageSet:
    """A folder of jpg/png images as an ImageSet (N, channels, size, size) uint8.

    Sub-folders are classes (labels in sorted folder order), else unlabelled (num_classes=0).
    Decoded once into ~/.cache/ddpmlab/folders/<key>/ where the key hashes the folder, size,
    channels and every file's name, mtime and size: touching a file decodes again. An unreadable
    file is a DataError naming it, unless skip_unreadable (`train --skip-unreadable`): then such
    files are skipped and counted in a warning. A folder with no readable image is a DataError.
    """
    if channels not in (1, 3):
        raise DataError(f"image folders load as 1 (grey) or 3 (RGB) channels, not {channels}")
    root = Path(path).expanduser()
    files, labels, names = scan_image_folder(root)
    cache = folder_cache_dir() / _cache_key(root, files, size, channels)
    if (cache / "meta.json").is_file():
        meta = json.loads((cache / "meta.json").read_text())
        _check_unreadable(root, meta, skip_unreadable)
        images = np.load(cache / "images.npy")
        labs = np.load(cache / "labels.npy") if meta["labelled"] else None
        log.info("%s: %d images from the cache %s", root, len(images), cache)
    else:
        images, labs, bad = _decode_all(root, files, labels, size, channels, progress)
        cache.mkdir(parents=True, exist_ok=True)
        atomic_save_numpy(cache / "images.npy", np.save, images)
        if labs is not None:
            atomic_save_numpy(cache / "labels.npy", np.save, labs)
        meta = {"folder": str(root.resolve()), "size": size, "channels": channels, "files": len(files),
                "images": len(images), "labelled": labs is not None, "class_names": list(names),
                "first_unreadable": str(bad[0]) if bad else None}
        # written last: marks the cache complete
        atomic_write(cache / "meta.json", lambda p: p.write_text(json.dumps(meta, indent=2)))
        _check_unreadable(root, meta, skip_unreadable)
    return ImageSet(torch.from_numpy(images), None if labs is None else torch.from_numpy(labs),
                    len(names), tuple(names), str(root), cache.name)


def _check_unreadable(root: Path, meta: dict, skip: bool) -> None:
    """Files of the folder that could not be decoded (the cache's meta counts them): a DataError
    naming the first, or with skip a warning."""
    bad = meta["files"] - meta["images"]
    if not bad:
        return
    if not skip:
        raise DataError(f"{root}: {bad} of {meta['files']} image files cannot be read (first: "
                        f"{meta.get('first_unreadable', '?')}); delete them, or pass --skip-unreadable to train "
                        "without them")
    log.warning("%s: %d of %d image files could not be read and were skipped (first: %s)", root, bad,
                meta["files"], meta.get("first_unreadable"))


def _decode_all(root, files, labels, size, channels, progress):
    out = np.empty((len(files), channels, size, size), np.uint8)
    ok = np.zeros(len(files), bool)
    jobs = [(str(f), size, channels) for f in files]
    bar = dict(total=len(jobs), desc=f"decoding {root.name}", unit="img", disable=not progress)
    if len(jobs) >= PARALLEL_FROM and (os.cpu_count() or 1) > 1:
        import multiprocessing
        with multiprocessing.get_context().Pool(min(8, os.cpu_count())) as pool:
            results = tqdm(pool.imap(_decode, jobs, chunksize=64), **bar)
            for i, a in enumerate(results):
                if a is not None:
                    out[i], ok[i] = a, True
    else:
        for i, a in enumerate(tqdm(map(_decode, jobs), **bar)):
            if a is not None:
                out[i], ok[i] = a, True
    bad = [f for f, good in zip(files, ok) if not good]
    if len(bad) == len(files):
        raise DataError(f"none of the {len(files)} image files in {root} could be read "
                        f"(first: {bad[0]}); are they really jpg/png?")
    labs = None if labels is None else np.asarray(labels, np.int64)[ok]
    return (out[ok] if bad else out), labs, bad


def load_dataset(name: str = "fashion-mnist", data_dir=None, split: str = "train", *,
                 size: int = 64, channels: int = 3, skip_unreadable: bool = False) -> ImageSet:
    """The training data named by TrainConfig.data: "fashion-mnist"; "folder", the folder named
    by data_dir (--data-dir); or a folder path. size/channels: those of the model, for folders."""
    if name == "fashion-mnist":
        return load_fashion_mnist(split, data_dir)
    if name == "folder":
        if not data_dir:
            raise DataError("this preset trains on a folder of images: pass --data-dir FOLDER "
                            "(jpg/png; sub-folders = classes)")
        return load_image_folder(data_dir, size, channels, skip_unreadable=skip_unreadable)
    if Path(name).expanduser().is_dir():
        return load_image_folder(name, size, channels, skip_unreadable=skip_unreadable)
    raise DataError(f"unknown dataset {name!r}; valid: fashion-mnist, folder (with --data-dir FOLDER), "
                    "or the path of a folder of images")
