"""Sampling throughput: ddpmlab's unet-block against a parameter-matched diffusers UNet2DModel.
Takes: a few minutes.

    .venv/bin/python benchmarks/sample_throughput.py [--n 64] [--steps 50] [--sampler ddim] [--precisions fp32]

Both draw n class-conditional samples with the same number of network evaluations (DDIM, or
ddpmlab's DPM-Solver++(2M) against diffusers' DPMSolverMultistepScheduler), the same batch and
threads; diffusers as its pipelines do (no_grad, scheduler.step per step). Weights are random:
speed does not depend on them. Prints images/s, GFLOP/s and the ratio; median of --repeats runs.
"""
from __future__ import annotations

import argparse

import torch

from ddpmlab.config import Sampling, get_preset
from ddpmlab.diffusion import make_schedule
from ddpmlab.models import build_model, count_parameters
from ddpmlab import render
from ddpmlab.runtime import autocast, keep_freed_memory
from common import count_flops, diffusers_unet, median_time   # benchmarks/ is on sys.path when run as a script


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--sampler", default="ddim", choices=("ddim", "dpm++2m"))
    ap.add_argument("--precisions", default="fp32")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    keep_freed_memory()             # as the command line does; process-wide, so for every network timed here
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    cfg = get_preset("unet-block").model
    ours = build_model(cfg).eval()
    sched = make_schedule()
    labels = torch.arange(args.n) % 10
    theirs = diffusers_unet().eval()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.n} samples, {args.sampler}, "
          f"{args.steps} steps; ddpmlab {count_parameters(ours) / 1e6:.2f}M, diffusers "
          f"{count_parameters(theirs) / 1e6:.2f}M parameters")

    def run_ours(precision):     # as `ddpmlab sample --precision P` runs: the network in autocast, the solver fp32
        return render.sample_images(ours, sched, cfg, args.n, Sampling(args.sampler, args.steps), labels=labels,
                           precision=precision)

    def run_theirs(precision):
        S = DDIMScheduler if args.sampler == "ddim" else DPMSolverMultistepScheduler
        s = S(num_train_timesteps=1000, timestep_spacing="trailing")
        s.set_timesteps(args.steps)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(args.n, 1, 28, 28, generator=g)
        with torch.no_grad(), autocast(torch.device("cpu"), precision):
            for t in s.timesteps:
                eps = theirs(x, t, class_labels=labels).sample
                x = s.step(eps.float(), t, x).prev_sample
        return x

    x = torch.randn(args.n, 1, 28, 28)
    t = torch.full((args.n,), 500)
    f_ours = count_flops(lambda: ours(x, t, labels), grad=False)
    f_theirs = count_flops(lambda: theirs(x, t, class_labels=labels), grad=False)
    for p in args.precisions.split(","):
        res = {}
        for name, fn, f in (("ddpmlab", run_ours, f_ours), ("diffusers", run_theirs, f_theirs)):
            s = median_time(lambda i: fn(p), args.repeats, warmup=0)[0]
            res[name] = args.n / s
            print(f"{name:10s} {p:5s} {args.n / s:7.1f} img/s  {f * args.steps / s / 1e9:6.1f} GFLOP/s  "
                  f"({f / args.n / 1e9:.2f} GFLOP per image per evaluation)", flush=True)
        print(f"{p}: ddpmlab / diffusers = {res['ddpmlab'] / res['diffusers']:.2f}x images/s")


if __name__ == "__main__":
    main()
