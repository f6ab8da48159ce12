"""Device, precision and file-safety choices, made once so the training loop has no branches."""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from pathlib import Path

import torch

from .config import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """auto = CUDA, then MPS, then CPU; an unavailable explicit choice is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available; valid here: auto, cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps: MPS is not available; valid here: auto, cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device {name!r}; valid: auto, cpu, cuda, mps")
    return torch.device(name)


def keep_freed_memory() -> bool:
    """Stop glibc's malloc from handing freed tensor memory back to the kernel between steps.

    A training step allocates and frees the same few hundred tensors every time. By default glibc
    serves big blocks with fresh mmap'd pages, above a threshold it adapts as it goes, and trims
    the heap once they are freed, so every step page-faults much of its activations in again.
    Serving every block under 32 MiB from the heap and never trimming it makes the steady state
    fault-free (docs/experiments.md, "The allocator"). The price: the process
    keeps the memory of its peak, as PyTorch's CUDA allocator does on GPUs. The command line calls
    this once at start. Linux with glibc only; elsewhere, or with DDPMLAB_KEEP_FREED_MEMORY=0, it
    changes nothing and returns False.
    """
    if os.environ.get("DDPMLAB_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version                                  # glibc, not musl
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AVX512-BF16 or AMX). Without it, oneDNN
    emulates bf16 and autocast is many times slower than fp32 (docs/results.md)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> str:
    if name not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"unknown precision {name!r}; valid: auto, fp32, bf16")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


def resolve_channels_last(name: str, device: torch.device, precision: str = "fp32", arch: str = "") -> bool:
    """channels_last pays on CUDA tensor cores. On CPUs (benchmarks/preset_throughput.py;
    docs/results.md) it gains nothing in fp32, and in bf16 it speeds up the full-resolution ResNets
    but slows the UNets. So `auto` takes it on CUDA, and on a CPU for the ResNets in bf16 only."""
    if name in ("on", "off"):
        return name == "on"
    return device.type == "cuda" or (device.type == "cpu" and precision == "bf16" and arch == "resnet")


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


_PROGRESS = {"on": True}


def set_progress(on: bool) -> None:
    """Progress bars on long work (sampling, evaluation, classifier training); `--quiet` turns them off."""
    _PROGRESS["on"] = bool(on)


def progress_bar(enabled: bool = True, **kw):
    """A tqdm bar, shown only on a terminal (disable=None), unless set_progress(False) or not enabled."""
    from tqdm.auto import tqdm
    kw.setdefault("leave", False)
    return tqdm(disable=None if (_PROGRESS["on"] and enabled) else True, dynamic_ncols=True, **kw)


def user_cache_dir(name: str) -> Path:
    """$XDG_CACHE_HOME/ddpmlab/NAME (default ~/.cache/ddpmlab/NAME)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ddpmlab" / name


def atomic_write(path: str | os.PathLike, write) -> None:
    """write(tmp_path), fsync it, then rename over path and fsync the directory, so a crash or a
    power cut never leaves a half-written file. A failed write removes its temporary file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        fsync_dir(path.parent)
    except OSError:     # some filesystems refuse fsync on a directory; the rename has happened
        pass


def fsync_dir(path) -> None:
    """Make a rename in `path` durable: fsync the directory itself."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save_numpy(path: str | os.PathLike, save, *args, **kwargs) -> None:
    """atomic_write for np.save / np.savez: given a file object (a bare temporary path would get
    .npy / .npz appended), save(f, *args, **kwargs)."""
    def write(tmp):
        with open(tmp, "wb") as f:
            save(f, *args, **kwargs)
    atomic_write(path, write)


def init_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK); NCCL on GPUs,
    gloo on CPUs. Returns (rank, world_size, device); (0, 1, device) without torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    import torch.distributed as dist
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def machine() -> str:
    """One line naming what a result was measured on: CPU model, cores, torch's threads, GPU, OS, torch."""
    import platform
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads{gpu}; {platform.platform()}; "
            f"Python {platform.python_version()}, torch {torch.__version__}")
