"""An experiment that did not pay: a channels_last conditional GroupNorm built from PyTorch operations.

    .venv/bin/python benchmarks/channels_last_norm.py [--preset unet-block] [--steps 6] [--budget]

The UNets' convolutions run faster in channels_last on the bf16 CPU, but PyTorch's own
channels_last GroupNorm is much slower than the contiguous one there, so the UNets stay
contiguous (README.md has the measurements). This script holds the best replacement we found,
an autograd function with fp32 statistics and a closed-form backward, checks it against the
textbook form (gradcheck in fp64, values in bf16), and times training steps of the preset in bf16
three ways in one run: contiguous (what ddpmlab runs), channels_last with PyTorch's norm,
channels_last with this one.
With --budget it also runs profile_step.py's budget for the last of the three.
"""
from __future__ import annotations

import argparse
from unittest import mock

import torch
import torch.nn.functional as F

from ddpmlab.data import load_fashion_mnist
from ddpmlab.models import layers
from ddpmlab.runtime import keep_freed_memory
from preset_throughput import time_steps


class ChannelsLastGroupNorm(torch.autograd.Function):
    """group_norm(x) * (1 + scale) + shift for a channels_last x, statistics in fp32.

    Forward: y = a*x + b per (sample, channel). Backward, with xhat = (x - mean) * rstd:
    dx = rstd*(1+s)*dy - rstd*mean_g(dxhat) - rstd*xhat*mean_g(dxhat*xhat), which is again
    A*dy + B*x + C per (sample, channel), from two sums per channel: sum(dy) and sum(dy*x).
    """

    @staticmethod
    def forward(ctx, x, scale, shift, groups, eps):
        B, C, H, W = x.shape
        Cg, n = C // groups, H * W * (C // groups)
        acc = torch.promote_types(x.dtype, torch.float32)
        xf = x.to(acc)
        mean = xf.sum((2, 3)).view(B, groups, Cg).sum(-1) / n
        var = ((xf * xf).sum((2, 3)).view(B, groups, Cg).sum(-1) / n - mean.square()).clamp_(min=0)
        rstd = (var + eps).rsqrt()
        g1 = 1 + scale.to(acc)
        a = (rstd[:, :, None] * g1.view(B, groups, Cg)).view(B, C)
        b = shift.to(acc) - (mean[:, :, None] * a.view(B, groups, Cg)).view(B, C)
        ctx.save_for_backward(x, g1, mean, rstd)
        ctx.groups, ctx.scale_dtype = groups, scale.dtype
        return torch.addcmul(b.to(x.dtype)[:, :, None, None], x, a.to(x.dtype)[:, :, None, None])

    @staticmethod
    def backward(ctx, dy):
        x, g1, mean, rstd = ctx.saved_tensors
        B, C, H, W = x.shape
        G = ctx.groups
        Cg, n = C // G, H * W * (C // G)
        dyf = dy.contiguous(memory_format=torch.channels_last).to(mean.dtype)
        s1 = dyf.sum((2, 3))
        s2 = (dyf * x.to(mean.dtype)).sum((2, 3))

        def per_channel(v):
            return v[:, :, None].expand(B, G, Cg).reshape(B, C)
        rstd_c = per_channel(rstd)
        dscale = rstd_c * (s2 - per_channel(mean) * s1)                   # sum(dy * xhat)
        m1 = (g1 * s1).view(B, G, Cg).sum(-1) / n                          # mean_g(dxhat)
        m2 = (g1 * dscale).view(B, G, Cg).sum(-1) / n                     # mean_g(dxhat * xhat)
        A = rstd_c * g1
        Bc = per_channel(-rstd * rstd * m2)
        Cc = per_channel(-rstd * m1 + rstd * rstd * m2 * mean)
        dt = x.dtype
        dx = torch.addcmul(Cc.to(dt)[:, :, None, None], dyf.to(dt), A.to(dt)[:, :, None, None])
        dx.addcmul_(x, Bc.to(dt)[:, :, None, None])
        return dx, dscale.to(ctx.scale_dtype), s1.to(ctx.scale_dtype), None, None


original_forward = layers.Norm.forward


def patched_forward(self, x, cond=None):
    if (self.proj is not None and isinstance(self.norm, torch.nn.GroupNorm)
            and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)):
        scale, shift = self.proj(cond).chunk(2, dim=1)
        return ChannelsLastGroupNorm.apply(x, scale, shift, self.norm.num_groups, self.norm.eps)
    return original_forward(self, x, cond)


def check():
    torch.manual_seed(0)
    B, C, G = 4, 32, 8
    x = (torch.randn(B, C, 6, 5, dtype=torch.float64) * 2 + 1).contiguous(memory_format=torch.channels_last)
    scale, shift = torch.randn(B, C, dtype=torch.float64) * 0.1, torch.randn(B, C, dtype=torch.float64)
    inputs = tuple(t.requires_grad_() for t in (x, scale, shift))
    assert torch.autograd.gradcheck(lambda *a: ChannelsLastGroupNorm.apply(*a, G, 1e-5), inputs)
    x = torch.randn(64, 64, 28, 28, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    scale, shift = torch.randn(64, 64) * 0.1, torch.randn(64, 64)
    ours = ChannelsLastGroupNorm.apply(x, scale, shift, 32, 1e-5).float()
    textbook = F.group_norm(x.float(), 32) * (1 + scale)[:, :, None, None] + shift[:, :, None, None]
    err = (ours - textbook).abs().max().item()
    assert err < 0.05, err                                    # bf16 output: 2^-8 of values up to ~5
    print(f"check: gradcheck in fp64 passed; bf16 against the fp32 textbook form, max error {err:.3f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="unet-block")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--budget", action="store_true")
    args = ap.parse_args()
    keep_freed_memory()             # as the command line does
    check()
    data = load_fashion_mnist("train").subset(args.batch * (args.steps + 2))
    base = time_steps(args.preset, "bf16", "off", args.steps, args.batch, data)[0]
    native = time_steps(args.preset, "bf16", "on", args.steps, args.batch, data)[0]
    with mock.patch.object(layers.Norm, "forward", patched_forward):
        ours = time_steps(args.preset, "bf16", "on", args.steps, args.batch, data)[0]
        print(f"{args.preset}, bf16, batch {args.batch}, {torch.get_num_threads()} threads, median of {args.steps} steps:")
        print(f"  contiguous                          {base:6.1f} img/s")
        print(f"  channels_last, PyTorch's GroupNorm  {native:6.1f} img/s ({native / base:.2f}x)")
        print(f"  channels_last, this GroupNorm       {ours:6.1f} img/s ({ours / base:.2f}x)", flush=True)
        if args.budget:
            import profile_step
            profile_step.main(["--preset", args.preset, "--channels-last", "on", "--budget", "--batch", str(args.batch)])


if __name__ == "__main__":
    main()
