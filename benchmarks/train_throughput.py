"""Training throughput: ddpmlab's unet-block against a parameter-matched diffusers UNet2DModel.
Takes: a few minutes.

    .venv/bin/python benchmarks/train_throughput.py [--steps 10] [--batch 64] [--precisions fp32,bf16]

In one run, on the same batch size, threads and image size, it times full optimiser steps of
  - ddpmlab: Trainer.train_step of `unet-block` as users run it (`--precision auto`, channels_last auto),
    and at each precision given;
  - diffusers: UNet2DModel (block_out_channels 64,128,192, 2 layers per block, 10 class
    embeddings: parameter-matched to unet-block, both counts printed) trained as its
    train_unconditional example does by default (fp32, AdamW, DDPMScheduler.add_noise, MSE), and at
    each precision given.
It prints the parameters, the median images/s, the achieved GFLOP/s (FLOPs of one training step
counted with torch.utils.flop_counter) and that as a fraction of a ceiling measured in the same
run: the best GFLOP/s of a single large convolution (and matmul) at that precision; for scale also
as a fraction of that convolution's own forward + backward rate. Needs diffusers (test extra).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from ddpmlab.data import load_fashion_mnist
from ddpmlab.models import count_parameters
from ddpmlab.runtime import autocast, cpu_has_native_bf16, keep_freed_memory
from ddpmlab.recipes import make_run_config
from ddpmlab.train import Trainer
from common import count_flops, diffusers_unet, median_time, output_dir   # benchmarks/ is on sys.path when run as a script


def ceiling(precision: str, reps: int = 5) -> tuple[float, float, float]:
    """Best GFLOP/s of one large 3x3 convolution (the faster of the two memory formats), of one
    large matmul, and of that convolution's forward + backward (gradients of input and weight, 3x
    the FLOPs) at this precision. The first is the issue's ceiling; the third is the same
    convolution trained, the most a training step made of convolutions could reach."""
    def best(fn):           # the fastest of reps calls, each right after a warm-up call of its own
        return min(median_time(lambda i: fn(), 1, 1)[0] for _ in range(reps))

    dt = torch.bfloat16 if precision == "bf16" else torch.float32
    conv_flops = 2 * 64 * 128 * 128 * 9 * 28 * 28
    conv = train = float("inf")
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(64, 128, 28, 28, dtype=dt).contiguous(memory_format=fmt).requires_grad_()
        w = torch.randn(128, 128, 3, 3, dtype=dt).contiguous(memory_format=fmt).requires_grad_()
        g = torch.randn(64, 128, 28, 28, dtype=dt).contiguous(memory_format=fmt)
        with torch.no_grad():
            conv = min(conv, best(lambda: F.conv2d(x, w, padding=1)))
        train = min(train, best(lambda: F.conv2d(x, w, padding=1).backward(g)))
    a = torch.randn(2048, 2048, dtype=dt)
    mm = best(lambda: a @ a)
    return conv_flops / conv / 1e9, 2 * 2048 ** 3 / mm / 1e9, 3 * conv_flops / train / 1e9


def ours(precision: str, batch: int, data):
    rc = make_run_config("unet-block", batch_size=batch, precision=precision, device="cpu", snapshot_steps=0)
    tr = Trainer(output_dir("train_throughput"), rc, data=data, progress=False)
    idx = [torch.arange(i * batch, (i + 1) * batch) % len(data) for i in range(64)]
    return (lambda i: tr.train_step(idx[i % 64]).item()), count_parameters(tr.model), tr.precision


def theirs(precision: str, batch: int, data):
    from diffusers import DDPMScheduler
    model = diffusers_unet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sched = DDPMScheduler(num_train_timesteps=1000)
    images = data.images.float() / 127.5 - 1
    labels = data.labels

    def step(i):
        sel = torch.arange(i * batch, (i + 1) * batch) % len(images)
        x0, y = images[sel], labels[sel]
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (batch,))
        with autocast(torch.device("cpu"), precision):
            pred = model(sched.add_noise(x0, noise, t), t, class_labels=y).sample
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()
    return step, count_parameters(model), precision


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--precisions", default="fp32,bf16")
    args = ap.parse_args()
    keep_freed_memory()             # as the command line does; process-wide, so for every network timed here
    data = load_fashion_mnist("train").subset(args.batch * 64)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: {cpu_has_native_bf16()}, "
          f"batch {args.batch}, median of {args.steps} steps")
    ceilings = {}
    rows = []
    configs = [("ddpmlab defaults", ours, "auto"), ("diffusers example default", theirs, "fp32")]
    for p in args.precisions.split(","):
        configs += [(f"ddpmlab {p}", ours, p), (f"diffusers {p}", theirs, p)]
    for name, make, prec in configs:
        fn, params, resolved = make(prec, args.batch, data)
        flops = count_flops(lambda: fn(0))
        s = median_time(fn, args.steps, 2)[0]
        if resolved not in ceilings:
            ceilings[resolved] = ceiling(resolved)
        gflops = flops / s / 1e9
        rows.append((name, resolved, params, args.batch / s, flops / args.batch / 1e9, gflops,
                     gflops / ceilings[resolved][0]))
        print(f"{name:28s} {resolved:5s} {params / 1e6:5.2f}M  {args.batch / s:7.1f} img/s  "
              f"{flops / args.batch / 1e9:5.2f} GFLOP/img  {gflops:6.1f} GFLOP/s  "
              f"{gflops / ceilings[resolved][0]:5.1%} of conv ceiling  "
              f"({gflops / ceilings[resolved][2]:5.1%} of conv fwd+bwd)", flush=True)
    for p, (c, m, t) in ceilings.items():
        print(f"ceiling {p}: conv {c:.1f} GFLOP/s, matmul {m:.1f} GFLOP/s, conv forward+backward {t:.1f} GFLOP/s")
    by = {r[0]: r for r in rows}
    print(f"out of the box: ddpmlab / diffusers = {by['ddpmlab defaults'][3] / by['diffusers example default'][3]:.2f}x images/s")
    for p in args.precisions.split(","):
        a, b = by[f"ddpmlab {p}"], by[f"diffusers {p}"]
        print(f"{p}: ddpmlab / diffusers = {a[3] / b[3]:.2f}x images/s, {a[5] / b[5]:.2f}x GFLOP/s")


if __name__ == "__main__":
    main()
