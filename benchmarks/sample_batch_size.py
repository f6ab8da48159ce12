"""Sampling speed against the sampling batch size, for one model, in one run.

    .venv/bin/python benchmarks/sample_batch_size.py [RUN] [--n 256] [--steps 10] [--batches 32,64,128,256]

Times `generate` (DPM-Solver++(2M), labels cycling 0..9) drawing the same n images at each batch
size; prints images/s, the median of --repeats runs, and the ratio to the largest batch.
"""
from __future__ import annotations

import argparse

import torch

from ddpmlab.diffusion import generate
from ddpmlab.sample import load_run
from common import median_time   # benchmarks/ is on sys.path when run as a script


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run", nargs="?", default="fmnist")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batches", default="32,64,128,256")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    run = load_run(args.run, device="cpu")
    cfg = run.config.model
    labels = torch.arange(args.n) % cfg.num_classes if cfg.num_classes else None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.run}: {args.n} samples, "
          f"dpm++2m, {args.steps} steps")
    res = {}
    for b in [int(v) for v in args.batches.split(",")]:
        s = median_time(lambda i: generate(run.model, run.schedule, (cfg.in_channels, cfg.image_size, cfg.image_size),
                                           seeds=range(args.n), labels=labels, sampler="dpm++2m", steps=args.steps,
                                           null_label=cfg.num_classes, batch_size=b), args.repeats, warmup=0)[0]
        res[b] = args.n / s
    top = res[max(res)]
    for b, v in res.items():
        print(f"batch {b:4d}: {v:7.1f} img/s  ({v / top:.2f}x batch {max(res)})")


if __name__ == "__main__":
    main()
