"""Small layers every network here is assembled from.

Conditioning is a layer: a norm whose scale and shift come from a zero-initialised projection
of a conditioning vector, so a new condition starts as a no-op (plain normalisation).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Transformer / DDPM). t: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]                      # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def zero_(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Norm(nn.Module):
    """BatchNorm or GroupNorm; conditional when cond_dim > 0.

    Conditional: the norm has no affine of its own; scale and shift come from a linear layer on
    the conditioning vector, zero-initialised so that it starts as the plain norm
    (out = norm(x) * (1 + scale) + shift).
    """

    def __init__(self, kind: str, channels: int, cond_dim: int = 0):
        super().__init__()
        affine = cond_dim == 0
        if kind == "batch":
            self.norm = nn.BatchNorm2d(channels, affine=affine)
        elif kind == "group":
            self.norm = nn.GroupNorm(group_count(channels), channels, affine=affine)
        else:
            raise ValueError(f"unknown norm {kind!r}; valid: batch, group")
        self.proj = zero_(nn.Linear(cond_dim, 2 * channels)) if cond_dim else None

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.proj is None:
            return self.norm(x)
        scale, shift = self.proj(cond).chunk(2, dim=1)                       # (B, C) each
        if isinstance(self.norm, nn.GroupNorm) and x.is_contiguous():
            # One fused kernel instead of a norm and an affine: fold the batch into the channels.
            # A (1, B*C, H, W) tensor in B*G groups has exactly the groups of (B, C, H, W) in G
            # groups, and its per-channel affine is our per-sample scale and shift: one fused kernel
            # instead of a norm and then a broadcast affine (docs/experiments.md has the timing).
            B, C = x.shape[:2]
            y = F.group_norm(x.reshape(1, B * C, *x.shape[2:]), B * self.norm.num_groups,
                             (1 + scale).flatten().to(x.dtype), shift.flatten().to(x.dtype), self.norm.eps)
            return y.view_as(x)
        # multiply-add rather than addcmul: the broadcasting bf16 addcmul's forward is slower on CPUs
        return self.norm(x) * (1 + scale)[:, :, None, None] + shift[:, :, None, None]


def group_count(channels: int) -> int:
    for g in (32, 16, 8, 4, 2):
        if channels % g == 0 and channels // g >= 2:
            return g
    return 1


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv(act(norm(conv(act(norm(x)))))).

    The residual is the untouched input tensor; nothing below modifies it in place. The last
    convolution is zero-initialised so each block starts as the identity. `class_dim` > 0 gives
    the block its own class projection, added between the two convolutions (unet-block).
    """

    def __init__(self, in_ch: int, out_ch: int, norm: str, cond_dim: int = 0, class_dim: int = 0):
        super().__init__()
        self.norm1 = Norm(norm, in_ch, cond_dim)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = Norm(norm, out_ch, cond_dim)
        self.conv2 = zero_(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.class_proj = zero_(nn.Linear(class_dim, out_ch)) if class_dim else None
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x, cond=None, class_emb=None):
        h = self.conv1(self.act(self.norm1(x, cond)))
        if self.class_proj is not None:
            h = h + self.class_proj(class_emb)[:, :, None, None]
        h = self.conv2(self.act(self.norm2(h, cond)))
        return self.skip(x) + h


def coordinate_channels(size: int) -> torch.Tensor:
    """(1, 4, size, size): cartesian x, y in [-1, 1], polar radius and angle/pi."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    r = torch.sqrt(xs ** 2 + ys ** 2)
    a = torch.atan2(ys, xs) / math.pi
    return torch.stack([xs, ys, r, a])[None]


class TimeEmbedding(nn.Module):
    """Sinusoidal timestep embedding followed by a small MLP: t (B,) -> (B, dim)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t):
        return self.mlp(timestep_embedding(t, self.dim))
