"""What the benchmark scripts share: timing a call, counting its FLOPs, the folder they write in,
what they ran on and how they were called, diffusers' matched UNet.

The scripts import it as `from common import ...`: benchmarks/ is on sys.path when one runs as
`.venv/bin/python benchmarks/NAME.py`. For autocast they use `ddpmlab.runtime.autocast`, as ddpmlab does.
"""
from __future__ import annotations

from ddpmlab.runtime import machine  # noqa: F401  (the scripts import it from here)

import os
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def median_time(fn, repeats: int, warmup: int = 1, sync=None) -> tuple[float, list[float]]:
    """Call fn(i) for i = 0 .. warmup + repeats - 1, timing each call with time.perf_counter.

    Returns the median seconds of the timed calls (those after the first `warmup`) and the seconds
    of every call, warm-up first (times[0] is the first call: compilation, first-touch allocation).
    sync, where given (torch.cuda.synchronize), runs before the clock starts and before it stops,
    so asynchronous work is counted in the call that queued it. repeats must be at least 1.
    """
    times = []
    for i in range(warmup + repeats):
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        fn(i)
        if sync is not None:
            sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[warmup:]), times


def count_flops(fn, grad: bool = True) -> int:
    """FLOPs (2 per multiply-add) of one call fn(), as torch's FlopCounterMode counts them: the
    convolutions and matmuls, forward and (with grad, for a training step) backward."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc, torch.set_grad_enabled(grad):
        fn()
    return fc.get_total_flops()


def output_dir(name: str, out: str | os.PathLike | None = None) -> Path:
    """The folder benchmark NAME writes its scratch files and results in, created.

    `out` (a script's --out) where given; else $DDPMLAB_BENCH_OUT/NAME; else runs/bench/NAME under
    the repository root (runs/ is git-ignored)."""
    if out is not None:
        path = Path(out)
    elif os.environ.get("DDPMLAB_BENCH_OUT"):
        path = Path(os.environ["DDPMLAB_BENCH_OUT"]) / name
    else:
        path = ROOT / "runs" / "bench" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def named(items: list[str], flag: str) -> dict[str, list[str]]:
    """NAME=ARGS items of a repeatable flag (--contender, --variant, --eval) as {NAME: [args]}; the
    names must be unique, non-empty and usable as folder names (the scripts write OUT/NAME/)."""
    out = {}
    for item in items:
        name, sep, rest = item.partition("=")
        name = name.strip()
        if not sep or not name or name in out or not all(c.isalnum() or c in "-_." for c in name):
            raise SystemExit(f"{flag} {item!r}: expected NAME=ARGS with a new name of letters, digits, '-', '_', '.'")
        out[name] = shlex.split(rest)
    return out


def command_line() -> str:
    """The command that started this process, quoted so that it can be pasted back into a shell."""
    exe = os.path.relpath(sys.executable) if sys.executable else "python"
    return shlex.join([exe if not exe.startswith("..") else sys.executable, *sys.argv])


def diffusers_unet():
    """diffusers' UNet2DModel matched to ddpmlab's unet-block: block_out_channels 64,128,192, two
    layers per block, 10 class embeddings, 28x28 single-channel images. Needs diffusers (test extra)."""
    from diffusers import UNet2DModel
    return UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(64, 128, 192),
                       layers_per_block=2, down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3,
                       num_class_embeds=10, norm_num_groups=32)
