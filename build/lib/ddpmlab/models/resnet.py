"""The write-up's full-resolution residual network, one class for the whole ResNet ladder.

resnet-basic: no conditioning; resnet-noise: conditional BatchNorm on the noise level;
resnet-spatial: + coordinate channels; resnet-class: + a learned class embedding at the input.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .layers import Norm, ResBlock, TimeEmbedding, coordinate_channels


class ResNet(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        C = cfg.channels
        cond_dim = cfg.time_dim if cfg.time_cond else 0
        self.time_embed = TimeEmbedding(cfg.time_dim) if cfg.time_cond else None
        # index num_classes is the null label of classifier-free guidance
        self.class_embed = nn.Embedding(cfg.num_classes + 1, cfg.class_dim) if cfg.num_classes else None
        if cfg.spatial:
            self.register_buffer("coords", coordinate_channels(cfg.image_size), persistent=False)
        extra = 4 * cfg.spatial + (cfg.class_dim if cfg.num_classes else 0)
        self.stem = nn.Conv2d(cfg.in_channels + extra, C, 3, padding=1)
        self.blocks = nn.ModuleList(ResBlock(C, C, cfg.norm, cond_dim) for _ in range(cfg.num_blocks))
        self.out_norm = Norm(cfg.norm, C, cond_dim)
        self.out = nn.Conv2d(C, cfg.in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        B, _, H, W = x.shape
        # 1. noise-level conditioning vector (resnet-basic ignores t entirely)
        cond = self.time_embed(t) if self.time_embed is not None else None       # (B, time_dim)
        # 2. input: image, coordinate channels, class embedding broadcast over the image
        parts = [x]
        if self.cfg.spatial:
            parts.append(self.coords.to(x.dtype).expand(B, -1, H, W))
        if self.class_embed is not None:
            if label is None:
                label = torch.full((B,), self.cfg.num_classes, device=x.device, dtype=torch.long)
            parts.append(self.class_embed(label).to(x.dtype)[:, :, None, None].expand(-1, -1, H, W))
        h = self.stem(torch.cat(parts, dim=1) if len(parts) > 1 else x)           # (B, C, H, W)
        # 3. residual blocks at full resolution
        for block in self.blocks:
            h = block(h, cond)
        # 4. predicted noise
        return self.out(torch.nn.functional.silu(self.out_norm(h, cond)))
