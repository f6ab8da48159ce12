"""Networks map (x_t, t, label) to predicted noise; they know nothing of the schedule."""
from __future__ import annotations

from torch import nn

from ..config import ConfigError, ModelConfig
from .resnet import ResNet
from .unet import UNet

ARCHITECTURES = {"resnet": ResNet, "unet": UNet}   # the names ModelConfig.validate accepts


def build_model(cfg: ModelConfig) -> nn.Module:
    cfg.validate()
    if cfg.arch not in ARCHITECTURES:
        raise ConfigError(f"unknown arch {cfg.arch!r}; valid: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[cfg.arch](cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
