"""Configuration dataclasses and the write-up's presets.

A preset is a named ModelConfig plus a one-line description. Training settings live in
TrainConfig; both are written to a run's config.json so that a run rebuilds itself.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields


class ConfigError(ValueError):
    """A bad name or value in a configuration; the message lists what is valid."""


@dataclass
class ModelConfig:
    arch: str = "resnet"            # "resnet" (full resolution) | "unet"
    image_size: int = 28            # square images, pixels per side
    in_channels: int = 1            # 1 = grey, 3 = RGB
    channels: int = 64              # feature width of the full-resolution stage
    num_blocks: int = 15            # resnet: residual blocks (two 3x3 convs each)
    channel_mults: tuple = (1, 2, 2)  # unet: width multiplier per resolution level
    blocks_per_level: int = 2       # unet: residual blocks per level
    time_cond: bool = True          # False = the network never sees the noise level
    time_dim: int = 128             # width of the noise-level embedding
    norm: str = "batch"             # "batch" | "group"; conditional when time_cond
    spatial: bool = False           # concatenate x, y, radius, angle channels to the input
    num_classes: int = 0            # 0 = unconditional
    class_dim: int = 4              # width of the learned class embedding
    class_cond: str = "input"       # "input" | "cbn" | "block" (where the class enters)
    attention: bool = False         # unet: self-attention at the lowest resolution

    def validate(self) -> "ModelConfig":
        _check_choice("arch", self.arch, ("resnet", "unet"))
        _check_choice("norm", self.norm, ("batch", "group"))
        _check_choice("class_cond", self.class_cond, ("input", "cbn", "block"))
        if self.channels < 1 or self.num_blocks < 0 or self.image_size < 4:
            raise ConfigError("channels, num_blocks and image_size must be positive")
        self.channel_mults = tuple(self.channel_mults)
        if self.arch == "unet" and (not self.channel_mults or min(self.channel_mults) < 1 or self.blocks_per_level < 1):
            raise ConfigError(f"unet needs channel_mults of positive integers and blocks_per_level >= 1, "
                              f"got {self.channel_mults} and {self.blocks_per_level}")
        return self


@dataclass
class DiffusionConfig:
    schedule: str = "linear"        # "linear" (DDPM 1e-4..0.02) | "cosine" (Nichol & Dhariwal)
    timesteps: int = 1000           # T

    def validate(self) -> "DiffusionConfig":
        _check_choice("schedule", self.schedule, ("linear", "cosine"))
        if self.timesteps < 2:
            raise ConfigError(f"timesteps must be >= 2, got {self.timesteps}")
        return self


@dataclass
class SamplingConfig:
    """A run's own defaults for `sample`, `process`, `evaluate` and `report` (config.json
    "sampling"); None: ddpmlab's (dpm++2m, 20 steps, guidance 0). A shipped model keeps here the
    settings its model card was measured with. Flags given on the command line win."""
    sampler: str | None = None
    steps: int | None = None
    guidance: float | None = None

    def validate(self) -> "SamplingConfig":
        from .diffusion import SAMPLERS
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise ConfigError(f"sampling.sampler {self.sampler!r} is not a sampler; valid: {', '.join(SAMPLERS)}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"sampling.steps must be >= 1, got {self.steps}")
        return self


@dataclass
class TrainConfig:
    epochs: int = 20                # the write-up's ~20 epochs
    batch_size: int = 64            # the write-up's minibatch
    lr: float = 1e-3                # Adam, start of the write-up's 1e-3 .. 1e-4 range
    min_lr: float = 1e-4            # ReduceLROnPlateau floor
    lr_factor: float = 0.5          # halve ...
    lr_patience: int = 3            # ... after 3 epochs without improvement of the epoch loss
    ema_decay: float = 0.999        # EMA of the weights used for sampling (warmed up)
    cond_drop: float = 0.0          # probability of the null label (classifier-free guidance)
    max_steps: int | None = None    # stop after this many optimiser steps (quick runs)
    seed: int = 0
    device: str = "auto"            # auto | cpu | cuda | mps
    precision: str = "auto"         # auto | fp32 | bf16
    channels_last: str = "auto"     # auto | on | off
    compile: bool = False           # torch.compile the network (compile time is logged)
    tensorboard: bool = False       # also log to TensorBoard under RUN/tensorboard
    log_every: int = 25             # steps between loss reads (one host sync each)
    snapshot_per_class: int = 8     # samples per class in each per-epoch snapshot
    snapshot_steps: int = 25        # DDIM steps of the per-epoch snapshots (0 = none)
    data: str = "fashion-mnist"     # "fashion-mnist" or a folder of images
    data_dir: str | None = None
    subset: int | None = None       # train on the first N images only (tests, demos)

    def validate(self) -> "TrainConfig":
        _check_choice("device", self.device, ("auto", "cpu", "cuda", "mps"))
        _check_choice("precision", self.precision, ("auto", "fp32", "bf16"))
        _check_choice("channels_last", self.channels_last, ("auto", "on", "off"))
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps}")
        if not 0.0 <= self.cond_drop < 1.0:
            raise ConfigError(f"cond_drop must be in [0, 1), got {self.cond_drop}")
        return self


def _check_choice(name: str, value, valid) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {name} {value!r}; valid: {', '.join(map(str, valid))}")


@dataclass
class Preset:
    name: str
    description: str
    model: ModelConfig
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: dict = field(default_factory=dict)   # TrainConfig overrides


def _resnet(**kw) -> ModelConfig:
    return ModelConfig(arch="resnet", channels=64, num_blocks=15, **kw)


PRESETS: dict[str, Preset] = {}


def register(preset: Preset) -> Preset:
    PRESETS[preset.name] = preset
    return preset


register(Preset("resnet-basic", "full-resolution residual net; the noise level is not used at all",
                _resnet(time_cond=False)))
register(Preset("resnet-noise", "+ conditional BatchNorm: scale/shift from the noise-level embedding",
                _resnet(time_cond=True)))
register(Preset("resnet-spatial", "+ x, y, radius, angle coordinate channels at the input",
                _resnet(time_cond=True, spatial=True)))
register(Preset("resnet-class", "+ learned 4-d class embedding concatenated to the input",
                _resnet(time_cond=True, spatial=True, num_classes=10, class_dim=4)))


def _unet(**kw) -> ModelConfig:
    # 28 -> 14 -> 7: three levels, two downsamplings; ~9M parameters, ~2 GFLOP per forward
    return ModelConfig(arch="unet", channels=64, channel_mults=(1, 2, 3), blocks_per_level=2, time_dim=256, **kw)


# 10% null labels so classifier-free guidance (`sample --guidance W`) has a trained unconditional
# branch; `--cond-drop 0` reproduces the write-up, which had no guidance.
_GUIDED = {"cond_drop": 0.1}

register(Preset("unet-input", "UNet; 4-d class embedding concatenated to the input once (write-up: 2 classes only)",
                _unet(num_classes=10, class_dim=4, class_cond="input"), train=dict(_GUIDED)))
register(Preset("unet-cbn", "UNet; the class embedding also feeds the conditional BatchNorms",
                _unet(num_classes=10, class_dim=4, class_cond="cbn"), train=dict(_GUIDED)))
register(Preset("unet-block", "UNet; per-block class projection between the two convs, GroupNorm (the fix)",
                _unet(norm="group", num_classes=10, class_dim=64, class_cond="block"), train=dict(_GUIDED)))
register(Preset("unet-small", "unet-block's design sized for a CPU: 32 channels, one block per level (the shipped model)",
                ModelConfig(arch="unet", channels=32, channel_mults=(1, 2, 4), blocks_per_level=1, time_dim=128,
                            norm="group", num_classes=10, class_dim=32, class_cond="block"),
                train=dict(_GUIDED)))
register(Preset("unet-faces64", "64x64 RGB UNet, GroupNorm + timestep embedding; a folder of faces (--data-dir)",
                ModelConfig(arch="unet", image_size=64, in_channels=3, channels=96, channel_mults=(1, 2, 3, 4),
                            blocks_per_level=2, time_dim=512, norm="group"),
                train={"data": "folder", "epochs": 4}))


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    p = PRESETS[name]
    return Preset(p.name, p.description, dataclasses.replace(p.model),
                  dataclasses.replace(p.diffusion), dict(p.train))


def from_dict(cls, d: dict):
    """Build a config dataclass from a dict, rejecting unknown keys (typos must not pass)."""
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys {sorted(unknown)}; valid: {', '.join(sorted(names))}")
    return cls(**d).validate()


def to_dict(cfg) -> dict:
    d = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
