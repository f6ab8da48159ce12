"""Training images/s of each preset on this machine, per precision and memory format.
Takes: under a minute per preset and setting, plus compilation with /compile.

    .venv/bin/python benchmarks/preset_throughput.py [--presets resnet-basic,...] [--steps 8] [--batch 64]
        [--settings fp32/off,bf16/off,bf16/off/compile,...] [--variant NAME=PRESET --set K=V ...] [--rounds R]

Times full optimiser steps of ddpmlab's own training step (Trainer.train_step) on real
FashionMNIST batches; prints the median over the timed steps (the first steps are warm-up)
and the ratio of each setting to the first in the same run. A setting is PRECISION/CHANNELS_LAST,
and /compile adds torch.compile (`--compile`); its first step, compilation included, is printed apart.
--variant NAME=PRESET --set K=V (repeatable) times a preset with `ddpmlab train --set` overrides of
its model beside the presets. --rounds R times every network R times in turn and prints the median
round, so a machine whose pace drifts slows every row alike.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from ddpmlab.cli import parse_set
from ddpmlab.config import PRESETS
from ddpmlab.data import load_fashion_mnist
from ddpmlab.models import count_parameters
from ddpmlab.runtime import cpu_has_native_bf16, keep_freed_memory
from ddpmlab.recipes import make_run_config
from ddpmlab.train import Trainer
from common import median_time, named, output_dir   # benchmarks/ is on sys.path when run as a script


def networks(presets: str, variants: list[str]) -> list[tuple[str, str, dict]]:
    """(label, preset, model overrides): each preset as it is, then each NAME=--preset P --set K=V ..."""
    out = [(p, p, {}) for p in presets.split(",") if p]
    for name, args in named(variants, "--variant").items():
        ap = argparse.ArgumentParser(prog=f"--variant {name}")
        ap.add_argument("--preset", required=True)
        ap.add_argument("--set", action="append")
        a = ap.parse_args(args)
        out.append((name, a.preset, parse_set(a.set)))
    return out


def time_steps(preset: str, precision: str, channels_last: str, steps: int, batch: int, data,
               compile: bool = False, model: dict | None = None) -> tuple[float, int, float]:
    rc = make_run_config(preset, model, precision=precision, channels_last=channels_last, batch_size=batch,
                         device="cpu", compile=compile)
    tr = Trainer(output_dir("preset_throughput"), rc, data=data, progress=False)
    perm = torch.randperm(len(data))
    batches = [perm[i * batch:(i + 1) * batch] for i in range(steps + 2)]
    s, times = median_time(lambda i: tr.train_step(batches[i]).item(), steps, 2)
    return batch / s, count_parameters(tr.model), times[0]


DEFAULT_PRESETS = ",".join(p for p in PRESETS if p.startswith("resnet"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", help="comma-separated (default: the ResNets; none when --variant is given)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--settings", default="fp32/off,fp32/on,bf16/off,auto/auto")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=--preset P --set K=V ...")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    nets = networks(args.presets if args.presets is not None else ("" if args.variant else DEFAULT_PRESETS),
                    args.variant)
    if not nets or args.rounds < 1:
        raise SystemExit("nothing to time: give --presets or --variant, and --rounds >= 1")
    keep_freed_memory()             # as the command line does; process-wide, so for every network timed here
    data = load_fashion_mnist("train").subset(args.batch * (args.steps + 2))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: {cpu_has_native_bf16()}")
    settings = [s.split("/") for s in args.settings.split(",")]
    print(f"{'preset':16s} {'params':>8s} " + " ".join(f"{'/'.join(s):>14s}" for s in settings))
    ips = {(label, i): [] for label, _, _ in nets for i in range(len(settings))}
    first, params = {}, {}
    for r in range(args.rounds):
        for label, preset, model in nets:
            for i, (prec, cl, *rest) in enumerate(settings):
                v, params[label], t0 = time_steps(preset, prec, cl, args.steps, args.batch, data,
                                                  compile="compile" in rest, model=model)
                ips[label, i].append(v)
                if rest and r == 0:
                    first.setdefault(label, []).append(f"{prec}/{cl}/{'/'.join(rest)}: first step {t0:.1f} s")
    base = statistics.median(ips[nets[0][0], 0])
    for label, _, _ in nets:
        med = [statistics.median(ips[label, i]) for i in range(len(settings))]
        row = " ".join(f"{v:7.1f} ({v / med[0]:4.2f}x)" for v in med)
        notes = "; ".join(first.get(label, []))
        vs = f"  {med[0] / base:.3f}x the first row's" if len(nets) > 1 else ""
        print(f"{label:16s} {params[label] / 1e6:7.2f}M {row}{vs}" + (f"   [{notes}]" if notes else ""), flush=True)


if __name__ == "__main__":
    main()
