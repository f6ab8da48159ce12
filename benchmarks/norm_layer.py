"""The conditional GroupNorm + SiLU of every UNet block: ddpmlab's fused form against the textbook one.

    .venv/bin/python benchmarks/norm_layer.py [--repeats 15] [--precisions bf16,fp32]

At the feature-map shapes of unet-block (batch 64), it times forward and forward+backward of
  textbook   silu(addcmul(shift, group_norm(x), 1 + scale))   (what the layer did before)
  mul-add    silu(group_norm(x) * (1 + scale) + shift)
  ddpmlab    models.layers.Norm: the batch folded into the channels, one group_norm with affine
and prints the medians and the ratio textbook / ddpmlab. Inputs are contiguous, as the UNets run.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from ddpmlab.models.layers import Norm
from ddpmlab.runtime import autocast
from common import median_time   # benchmarks/ is on sys.path when run as a script

SHAPES = [(64, 64, 28, 28), (64, 128, 14, 14), (64, 192, 7, 7)]
COND_DIM = 64


def variants(norm: Norm):
    groups = norm.norm.num_groups

    def affine(cond):
        return norm.proj(cond)[:, :, None, None].chunk(2, dim=1)

    def textbook(x, cond):
        scale, shift = affine(cond)
        return F.silu(torch.addcmul(shift, F.group_norm(x, groups), 1 + scale))

    def mul_add(x, cond):
        scale, shift = affine(cond)
        return F.silu(F.group_norm(x, groups) * (1 + scale) + shift)

    def ours(x, cond):
        return F.silu(norm(x, cond))
    return {"textbook": textbook, "mul-add": mul_add, "ddpmlab": ours}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--precisions", default="bf16,fp32")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}")
    for precision in args.precisions.split(","):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        for shape in SHAPES:
            torch.manual_seed(0)
            B, C = shape[:2]
            norm = Norm("group", C, COND_DIM)
            torch.nn.init.normal_(norm.proj.weight, std=0.02)
            x = torch.randn(shape, dtype=dtype).requires_grad_()   # a conv's output: bf16 under autocast
            cond = torch.randn(B, COND_DIM)
            grad = torch.randn(shape, dtype=dtype)
            times = {}
            for name, fn in variants(norm).items():
                def fwd():
                    with autocast(torch.device("cpu"), precision):
                        return fn(x, cond)

                def fwd_bwd():
                    fwd().backward(grad)
                times[name] = tuple(median_time(lambda i, f=f: f(), args.repeats, 3)[0] * 1e3 for f in (fwd, fwd_bwd))
            cells = "  ".join(f"{n} {f:6.2f} / {fb:6.2f} ms" for n, (f, fb) in times.items())
            t, o = times["textbook"], times["ddpmlab"]
            print(f"{precision} {str(shape):18s} fwd / fwd+bwd: {cells}   textbook/ddpmlab {t[0] / o[0]:.2f}x / "
                  f"{t[1] / o[1]:.2f}x", flush=True)


if __name__ == "__main__":
    main()
