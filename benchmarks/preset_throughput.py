"""Training images/s of each preset on this machine, per precision and memory format.

    .venv/bin/python benchmarks/preset_throughput.py [--presets resnet-basic,...] [--steps 8] [--batch 64]
        [--settings fp32/off,bf16/off,bf16/off/compile,...]

Times full optimiser steps of ddpmlab's own training step (Trainer.train_step) on real
FashionMNIST batches; prints the median over the timed steps (the first steps are warm-up)
and the ratio of each setting to the first in the same run. A setting is PRECISION/CHANNELS_LAST,
and /compile adds torch.compile (`--compile`); its first step, compilation included, is printed apart.
"""
from __future__ import annotations

import argparse

import torch

from ddpmlab.config import PRESETS
from ddpmlab.data import load_fashion_mnist
from ddpmlab.models import count_parameters
from ddpmlab.runtime import cpu_has_native_bf16, keep_freed_memory
from ddpmlab.train import Trainer, make_run_config
from common import median_time, output_dir   # benchmarks/ is on sys.path when run as a script


def time_steps(preset: str, precision: str, channels_last: str, steps: int, batch: int, data,
               compile: bool = False) -> tuple[float, int, float]:
    rc = make_run_config(preset, precision=precision, channels_last=channels_last, batch_size=batch, device="cpu",
                         compile=compile)
    tr = Trainer(output_dir("preset_throughput"), rc, data=data, progress=False)
    perm = torch.randperm(len(data))
    batches = [perm[i * batch:(i + 1) * batch] for i in range(steps + 2)]
    s, times = median_time(lambda i: tr.train_step(batches[i]).item(), steps, 2)
    return batch / s, count_parameters(tr.model), times[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default=",".join(p for p in PRESETS if p.startswith("resnet")))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--settings", default="fp32/off,fp32/on,bf16/off,auto/auto")
    args = ap.parse_args()
    keep_freed_memory()             # as the command line does; process-wide, so for every network timed here
    data = load_fashion_mnist("train").subset(args.batch * (args.steps + 2))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: {cpu_has_native_bf16()}")
    settings = [s.split("/") for s in args.settings.split(",")]
    print(f"{'preset':16s} {'params':>8s} " + " ".join(f"{'/'.join(s):>14s}" for s in settings))
    for preset in args.presets.split(","):
        ips, first = [], []
        for prec, cl, *rest in settings:
            v, n, t0 = time_steps(preset, prec, cl, args.steps, args.batch, data, compile="compile" in rest)
            ips.append(v)
            first.append(f"{prec}/{cl}/{'/'.join(rest)}: first step {t0:.1f} s" if rest else "")
        row = " ".join(f"{v:7.1f} ({v / ips[0]:4.2f}x)" for v in ips)
        notes = "; ".join(f for f in first if f)
        print(f"{preset:16s} {n / 1e6:7.2f}M {row}" + (f"   [{notes}]" if notes else ""), flush=True)


if __name__ == "__main__":
    main()
