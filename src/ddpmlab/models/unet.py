"""The write-up's UNet, one class for every UNet preset.

    unet-input    class embedding concatenated to the input, once
    unet-cbn      ... and also added to the conditioning vector of every conditional norm
    unet-block    every residual block has its own class projection, added between its two convs;
                  GroupNorm instead of BatchNorm
    cpu           unet-block's layers at widths 24, 72, 144, one block per level, attention at 7x7,
                  upsample="conv-nearest" (the up path's convolution runs on the coarse grid,
                  narrowed to the level's width)
    cpu-mini      the same at widths 32, 32, 64, without attention
    unet-faces64  64x64 RGB, GroupNorm and timestep embedding, unconditional

Layout (channel_mults=(1, 2, 2), 28x28): stem -> level 0 at 28x28 -> down -> level 1 at 14x14 ->
down -> level 2 at 7x7 -> middle -> the mirror image upwards, each up level concatenating the
skip kept at its resolution.

Two lessons of the write-up are built in:
- a level convolves before it downsamples (a block that starts with pooling throws information
  away before any convolution has seen it): ResBlocks first, then a strided convolution;
- the skips are the residual stream as it was: nothing in the forward pass modifies a tensor in
  place, so the tensor kept in `skips` is never changed after it is kept
  (tests/test_unet.py checks this with the tensors' version counters).

ModelConfig switches, off in every preset, undo them to measure the write-up's "good bugs"
(ddpmlab.studies.good_bugs trains the three side by side):
- pool_first: every level of the down path begins with a 2x2 max pool (ceil_mode: 7 -> 4), before
  any convolution of that level has seen its input, and there is no learned downsampling: the
  write-up's "pooling as first step in a Unet block", a block being the convolutions of one
  resolution. Level 0 pools the stem's output too, so no level works at full resolution and the
  skips are kept at half, quarter, ... of it; the up path returns to the first level's size and a
  nearest-neighbour upsampling (no weights) brings the result back to the image's size for the
  output convolution.
- residual_inplace: right after a down level keeps its output h as its skip, the down path goes
  on with nn.SiLU(inplace=True)(h), the classic form of this bug (an in-place activation of a
  tensor kept elsewhere). skips[-1] is a reference to that same tensor, not a copy (what "tensors
  are CoW" had assumed), so the up path concatenates silu(h), not h; the down path (downsample,
  or the middle) reads silu(h) too. The weights are the default's. Autograd accepts it and
  differentiates exactly that computation: h is the output of the level's last ResBlock,
  `skip(x) + h`, an add whose backward saves no tensor, and the in-place SiLU is the first op to
  read h; every later reader (the Downsample or max pool, mid1's norm, torch.cat) reads h after
  the SiLU, at its new version, and nothing writes to it again, so at backward every saved tensor
  is at the version it was saved at. (Modifying h after the Downsample had read and saved it
  would raise at backward instead.) tests/test_unet.py checks the versions and, by gradcheck, the
  gradients.
- residual_control: the control of residual_inplace, identical but for the alias: the same SiLU on
  the down path, out of place, so the skip keeps h. residual_inplace against residual_control
  measures the alias alone; residual_control against the default, the extra activation alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .layers import Norm, ResBlock, TimeEmbedding, group_count, zero_


class Downsample(nn.Module):
    """3x3 convolution with stride 2: (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2)). Learned,
    so it follows the level's convolutions instead of pooling away what they have not seen."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to the skip's size and a 3x3 convolution (no checkerboard
    artefacts of transposed convs). Sizing by the skip handles odd sizes: 7 -> 4 -> 7.

    conv_first=False (the write-up's) upsamples, then convolves cin -> cout at the higher
    resolution; conv_first=True convolves at the lower resolution, then upsamples: a quarter of
    the multiply-adds and 3x3 coarse pixels in view instead of 2x2, but each 2x2 block of its
    output is one value, so the fine detail must come from the skip and the blocks after it."""

    def __init__(self, cin: int, cout: int, conv_first: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv_first = conv_first

    def forward(self, x, size):
        if self.conv_first:
            return F.interpolate(self.conv(x), size=size, mode="nearest")
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class SelfAttention(nn.Module):
    """Single-head self-attention over the pixels of a low-resolution feature map, residual,
    with a zero-initialised output projection so it starts as the identity."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = nn.GroupNorm(group_count(ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = zero_(nn.Conv2d(ch, ch, 1))

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=2)   # (B, HW, C) each
        h = F.scaled_dot_product_attention(q, k, v)                                   # (B, HW, C)
        return x + self.proj(h.transpose(1, 2).reshape(B, C, H, W))


class Level(nn.Module):
    """The residual blocks of one resolution; `resample` (Downsample / Upsample, or None) is applied
    by the UNet, after the blocks on the way down and before them on the way up; `pool_first` (the
    bug: a max pool) before the blocks on the way down. `after_skip` (residual_inplace: an in-place SiLU; residual_control: the same out
    of place) is applied on the way down to the tensor just kept as the skip."""

    def __init__(self, blocks: list[ResBlock], resample: nn.Module | None, after_skip: nn.Module | None = None,
                 pool_first: nn.Module | None = None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.resample = resample
        self.after_skip = after_skip
        self.pool_first = pool_first


class UNet(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        K = cfg.num_classes
        mode = cfg.class_cond if K else None
        # the conditioning vector of the norms: noise-level embedding (+ class, unet-cbn)
        cond_dim = cfg.time_dim if (cfg.time_cond or mode == "cbn") else 0
        self.time_embed = TimeEmbedding(cfg.time_dim) if cfg.time_cond else None
        # index K is the null label of classifier-free guidance
        self.class_embed = nn.Embedding(K + 1, cfg.class_dim) if K else None
        self.class_to_cond = zero_(nn.Linear(cfg.class_dim, cond_dim)) if mode == "cbn" else None
        self.class_at_input = mode in ("input", "cbn")
        block_class_dim = cfg.class_dim if mode == "block" else 0

        def block(cin, cout):
            return ResBlock(cin, cout, cfg.norm, cond_dim, block_class_dim)

        def downsample(ch):   # pool_first: no learned downsampling; each level pools first instead
            return None if cfg.pool_first else Downsample(ch)

        widths = [cfg.channels * m for m in cfg.channel_mults]
        n_levels = len(widths)
        self.stem = nn.Conv2d(cfg.in_channels + (cfg.class_dim if self.class_at_input else 0),
                              widths[0], 3, padding=1)
        # down: blocks at each resolution, then downsample (all but the lowest level)
        self.down = nn.ModuleList()
        ch = widths[0]
        for i, w in enumerate(widths):
            blocks = [block(ch if j == 0 else w, w) for j in range(cfg.blocks_per_level)]
            ch = w
            after_skip = nn.SiLU(inplace=True) if cfg.residual_inplace else nn.SiLU() if cfg.residual_control else None
            pool = nn.MaxPool2d(2, ceil_mode=True) if cfg.pool_first else None   # 3 of 4 values thrown away
            self.down.append(Level(blocks, downsample(w) if i < n_levels - 1 else None, after_skip, pool))
        # middle, at the lowest resolution
        self.mid1 = block(ch, ch)
        self.attn = SelfAttention(ch) if cfg.attention else None
        self.mid2 = block(ch, ch)
        # up: (upsample), concatenate the skip of this resolution, blocks
        self.up = nn.ModuleList()
        conv_first = cfg.upsample == "conv-nearest"
        for i in reversed(range(n_levels)):
            w = widths[i]
            up = None
            if i < n_levels - 1:   # conv-nearest narrows to this level's width on the coarse grid
                cout = w if conv_first else ch
                up, ch = Upsample(ch, cout, conv_first), cout
            blocks = [block((ch + w) if j == 0 else w, w) for j in range(cfg.blocks_per_level)]
            self.up.append(Level(blocks, up))
            ch = w
        self.out_norm = Norm(cfg.norm, ch, cond_dim)
        self.out = nn.Conv2d(ch, cfg.in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        B, _, H, W = x.shape
        # 1. conditioning: noise-level embedding, class embedding (null label when none given)
        cond = self.time_embed(t) if self.time_embed is not None else None            # (B, time_dim)
        cemb = None
        if self.class_embed is not None:
            if label is None:
                label = torch.full((B,), self.cfg.num_classes, device=x.device, dtype=torch.long)
            cemb = self.class_embed(label).to(x.dtype)                               # (B, class_dim)
            if self.class_to_cond is not None:                                       # unet-cbn
                c = self.class_to_cond(cemb)
                cond = c if cond is None else cond + c
        # 2. input: the image, with the class embedding broadcast over it (input, cbn)
        if self.class_at_input:
            x = torch.cat([x, cemb[:, :, None, None].expand(-1, -1, H, W)], dim=1)
        h = self.stem(x)                                                             # (B, C0, H, W)
        # 3. down: convolve at each resolution, keep the skip, then downsample
        skips = []
        for level in self.down:
            if level.pool_first is not None:
                h = level.pool_first(h)                                              # (B, Ci, ceil(H/2), ...)
            for blk in level.blocks:
                h = blk(h, cond, cemb)
            skips.append(h)   # safe to keep by reference: h is rebound below, never modified in place ...
            if level.after_skip is not None:   # ... unless residual_inplace: then skips[-1] changes too
                h = level.after_skip(h)
            if level.resample is not None:
                h = level.resample(h)                                                # (B, Ci, H/2, W/2)
        # 4. middle
        h = self.mid1(h, cond, cemb)
        if self.attn is not None:
            h = self.attn(h)
        h = self.mid2(h, cond, cemb)
        # 5. up: upsample to the skip's size, concatenate it, convolve
        for level in self.up:
            skip = skips.pop()
            if level.resample is not None:
                h = level.resample(h, skip.shape[-2:])
            h = torch.cat([h, skip], dim=1)
            for blk in level.blocks:
                h = blk(h, cond, cemb)
        if h.shape[-2:] != (H, W):   # pool_first: the first level worked at half the size
            h = F.interpolate(h, size=(H, W), mode="nearest")
        # 6. predicted noise
        return self.out(F.silu(self.out_norm(h, cond)))
