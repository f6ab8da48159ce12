"""Configuration dataclasses and the write-up's presets.

A preset is a named ModelConfig plus a one-line description. Training settings live in
TrainConfig; both are written to a run's config.json so that a run rebuilds itself.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields

from .defaults import SAMPLER_NAMES, SPACINGS


class ConfigError(ValueError):
    """A bad name or value in a configuration; the message lists what is valid."""


def _opt(default):
    """A field added after runs were first written: left out of config.json while it holds its
    default (to_dict), so a run that does not use it writes the config.json it always did, and
    an older ddpmlab still reads it."""
    return field(default=default, metadata={"omit_default": True})


PREDICTIONS = ("eps", "v", "x0")
NOISE_SCHEDULES = ("linear", "cosine")
LOSS_WEIGHTINGS = ("uniform", "min-snr")
T_SAMPLINGS = ("uniform", "lognormal")
LR_SCHEDULES = ("plateau", "cosine")
UPSAMPLES = ("nearest-conv", "conv-nearest")


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
    residual_inplace: bool = _opt(False)  # unet: reproduces the write-up's bug "tensors are CoW"; off in every preset
    residual_control: bool = _opt(False)  # unet: that bug's control: the same SiLU, out of place (no alias)
    pool_first: bool = _opt(False)        # unet: reproduces its bug "pooling as first step"; off in every preset
    # unet, on the way up: "nearest-conv" upsamples, then convolves at the higher resolution (the
    # write-up's); "conv-nearest" convolves at the lower resolution to the next level's width, then
    # upsamples (a quarter of the multiply-adds, and a narrower first block in the level above)
    upsample: str = _opt("nearest-conv")

    def validate(self) -> "ModelConfig":
        _check_choice("arch", self.arch, ("resnet", "unet"))
        _check_choice("norm", self.norm, ("batch", "group"))
        _check_choice("class_cond", self.class_cond, ("input", "cbn", "block"))
        _check_choice("upsample", self.upsample, UPSAMPLES)
        if self.channels < 1 or self.num_blocks < 0 or self.image_size < 4:
            raise ConfigError("channels, num_blocks and image_size must be positive")
        self.channel_mults = tuple(self.channel_mults)
        if self.arch == "unet" and (not self.channel_mults or min(self.channel_mults) < 1 or self.blocks_per_level < 1):
            raise ConfigError(f"unet needs channel_mults of positive integers and blocks_per_level >= 1, "
                              f"got {self.channel_mults} and {self.blocks_per_level}")
        if self.residual_inplace and self.residual_control:
            raise ConfigError("residual_inplace and residual_control exclude each other: the control is the same "
                              "network without the alias")
        for bug in ("residual_inplace", "residual_control", "pool_first"):   # they act between the levels of a UNet
            if getattr(self, bug) and self.arch != "unet":
                raise ConfigError(f"{bug} reproduces a bug of the write-up's UNet; arch {self.arch!r} has no levels "
                                  "(valid only with arch unet)")
        return self


@dataclass
class DiffusionConfig:
    schedule: str = "linear"        # "linear" (DDPM 1e-4..0.02) | "cosine" (Nichol & Dhariwal)
    timesteps: int = 1000           # T
    # what the network outputs: "eps" (the noise, DDPM), "v" = sqrt(abar) eps - sqrt(1-abar) x0
    # (Salimans & Ho 2022) or "x0" (the clean image); training targets it, the samplers convert it
    prediction: str = _opt("eps")

    def validate(self) -> "DiffusionConfig":
        _check_choice("schedule", self.schedule, NOISE_SCHEDULES)
        _check_choice("prediction", self.prediction, PREDICTIONS)
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
    spacing: str | None = _opt(None)            # timestep spacing: trailing (default) | logsnr | karras
    guidance_interval: list | None = _opt(None)  # [t_lo, t_hi]: guide only there; None: at every step
    sigma_max: float | None = _opt(None)        # logsnr/karras: the top of their range; None: the schedule's own
    guide: str | None = _opt(None)              # autoguidance: a weaker run's directory, relative to this one,
    autoguidance: float | None = _opt(None)     # its weight (None or 0: off),
    autoguidance_interval: list | None = _opt(None)  # and the [t_lo, t_hi] where it replaces the null label

    def validate(self) -> "SamplingConfig":
        if self.sampler is not None and self.sampler not in SAMPLER_NAMES:
            raise ConfigError(f"sampling.sampler {self.sampler!r} is not a sampler; valid: {', '.join(SAMPLER_NAMES)}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"sampling.steps must be >= 1, got {self.steps}")
        if self.spacing is not None and self.spacing not in SPACINGS:
            raise ConfigError(f"sampling.spacing {self.spacing!r} is not a spacing; valid: {', '.join(SPACINGS)}")
        if self.guidance_interval is not None:
            self.guidance_interval = check_guidance_interval(self.guidance_interval, "sampling.guidance_interval")
        if self.sigma_max is not None and (isinstance(self.sigma_max, bool) or not isinstance(self.sigma_max, (int, float))
                                           or not self.sigma_max > 0):
            raise ConfigError(f"sampling.sigma_max must be a number > 0 (or null: the schedule's own), got {self.sigma_max!r}")
        if self.guide is not None and (not isinstance(self.guide, str) or not self.guide.strip()):
            raise ConfigError(f"sampling.guide must be a directory name relative to the run (or null), got {self.guide!r}")
        if self.autoguidance is not None and (isinstance(self.autoguidance, bool)
                                              or not isinstance(self.autoguidance, (int, float))):
            raise ConfigError(f"sampling.autoguidance must be a number (or null), got {self.autoguidance!r}")
        if self.autoguidance and self.guide is None:
            raise ConfigError("sampling.autoguidance needs sampling.guide: the weaker run to guide away from")
        if self.autoguidance_interval is not None:
            self.autoguidance_interval = check_guidance_interval(self.autoguidance_interval,
                                                                 "sampling.autoguidance_interval")
        return self


@dataclass(frozen=True)
class Sampling:
    """The sampling settings of one call, resolved once at the edge (sample.resolve_sampling: each
    flag given, else the run's config.json "sampling", else ddpmlab's defaults) and then passed
    whole: to the denoiser that folds in the guidance, the timesteps, the NFE count and the name
    of a cached evaluation, so that none of them can drift from what was sampled."""
    sampler: str
    steps: int
    guidance: float = 0.0                       # classifier-free guidance weight, 0: none
    spacing: str = "trailing"
    guidance_interval: tuple | None = None      # (t_lo, t_hi): classifier-free guidance only there
    sigma_max: float | None = None              # logsnr/karras: the top of their range
    autoguidance: float = 0.0                   # weight of the guide network, 0: off
    autoguidance_interval: tuple | None = None  # (t_lo, t_hi) where autoguidance takes the step over
    guide: str | None = None                    # the guide's directory, relative to the run (when on)

    def key(self) -> str:
        """The part of a cached evaluation's file name that says how it sampled:
        SAMPLER-STEPSsteps-gW[-SPACING][-smaxS][-giLO-HI][-agW[-agiLO-HI]] (spacing only when not
        trailing, sigma_max and the intervals only when set, -agW with autoguidance)."""
        k = f"{self.sampler}-{self.steps}steps-g{self.guidance:g}"
        k += "" if self.spacing == "trailing" else f"-{self.spacing}"
        k += "" if self.sigma_max is None else f"-smax{self.sigma_max:g}"
        k += "" if self.guidance_interval is None else "-gi{}-{}".format(*self.guidance_interval)
        if self.autoguidance:
            k += f"-ag{self.autoguidance:g}"
            k += "" if self.autoguidance_interval is None else "-agi{}-{}".format(*self.autoguidance_interval)
        return k


DISTILL_METHODS = ("cd", "ect")
DISTILL_PAIRS = ("uniform", "lognormal")


@dataclass
class DistillConfig:
    """How a few-step student was distilled from its teacher (config.json "distill", `ddpmlab
    distill`). Both methods start from the teacher's weights and train the consistency function
    f(x_t, t) -> x0 (diffusion.consistency_x0) on pairs of adjacent timesteps t > s of a log-SNR
    grid whose size grows from n_min to n_max over the run (ECT's shrinking gap, Geng et al. 2024):
      cd   consistency distillation (Song et al. 2023): x_s is one DDIM step of the teacher's ODE
           from x_t, guided as the teacher samples (`guidance`), so the guidance is distilled;
      ect  easy consistency tuning: x_s is the same image and noise at level s, no teacher; the
           student learns the unguided ODE of the data.
    The loss is the pseudo-Huber distance between f(x_t, t) and f(x_s, s) (the latter without
    gradient), every pair weighed alike. Which pair a step trains (`pairs`):
      uniform    each adjacent pair of the grid alike (the grid is uniform in log-SNR, so is sigma's log);
      lognormal  a pair as often as a log-normal density of sigma (iCT's P_mean, P_std; Song & Dhariwal
                 2023, sec. 3.5) puts between its two sigmas: most steps near sigma ~ 0.3, few where
                 x_t is all noise (the cosine schedule's top, sigma up to 2e4) or nearly clean."""
    teacher: str                                # the teacher's run directory or shipped name
    method: str = "cd"
    n_min: int = 10                             # grid points at the start of the run
    n_max: int = 80                             # and at its end
    huber_c: float = 0.03                       # pseudo-Huber constant, in the images' [-1, 1] units
    pairs: str = "uniform"                      # how a step's pair is drawn (above); a config.json
                                                # without it was distilled before lognormal existed
    p_mean: float = -1.1                        # lognormal: the mean and spread of log sigma (iCT's)
    p_std: float = 2.0
    guidance: dict = field(default_factory=dict)   # cd: the teacher's resolved Sampling fields it is guided by
    teacher_sha256: str = ""                    # of the teacher's ema.safetensors, for the record

    def validate(self) -> "DistillConfig":
        _check_choice("distill method", self.method, DISTILL_METHODS)
        _check_choice("distill pairs", self.pairs, DISTILL_PAIRS)
        if not self.p_std > 0:
            raise ConfigError(f"distill p_std must be > 0, got {self.p_std}")
        if not 2 <= self.n_min <= self.n_max:
            raise ConfigError(f"distill needs 2 <= n_min <= n_max, got {self.n_min} and {self.n_max}")
        if not self.huber_c > 0:
            raise ConfigError(f"distill huber_c must be > 0, got {self.huber_c}")
        return self


def check_guidance_interval(value, name: str = "guidance_interval") -> list | None:
    """[t_lo, t_hi] as two ints with 0 <= t_lo <= t_hi, or None."""
    if value is None:
        return None
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and \
        all(isinstance(v, int) and not isinstance(v, bool) for v in value) and 0 <= value[0] <= value[1]
    if not ok:
        raise ConfigError(f"{name} {value!r}: expected [t_lo, t_hi], integer timesteps with 0 <= t_lo <= t_hi")
    return [int(value[0]), int(value[1])]


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
    skip_unreadable: bool = False   # image folders: skip files that cannot be decoded instead of stopping
    # The defaults below are the write-up's recipe; see RECIPES for a faster one.
    loss_weighting: str = _opt("uniform")   # "uniform" | "min-snr" (Hang et al. 2023)
    min_snr_gamma: float = _opt(5.0)        # min-snr: weight min(SNR, gamma) / (what the target's loss is)
    t_sampling: str = _opt("uniform")       # "uniform" over 0..T-1 | "lognormal" (EDM: log sigma ~ N(p_mean, p_std))
    p_mean: float = _opt(-1.2)              # lognormal: mean of log sigma, sigma = sqrt((1 - abar) / abar)
    p_std: float = _opt(1.2)                # lognormal: its standard deviation
    lr_schedule: str = _opt("plateau")      # "plateau" (ReduceLROnPlateau above) | "cosine" (warmup, to min_lr)
    warmup_steps: int = _opt(0)             # cosine: steps of linear warmup from lr / warmup_steps to lr
    ema_halflife_kimg: float | None = _opt(None)   # EMA half-life in thousands of images (EDM); None: ema_decay
    ema_rampup: float | None = _opt(None)   # with the half-life: at most this fraction of the images seen (EDM 0.05)
    minutes: float | None = _opt(None)      # a wall-clock budget: the run plans its length from its own pace

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
        _check_choice("loss_weighting", self.loss_weighting, LOSS_WEIGHTINGS)
        _check_choice("t_sampling", self.t_sampling, T_SAMPLINGS)
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if self.min_snr_gamma <= 0:
            raise ConfigError(f"min_snr_gamma must be > 0, got {self.min_snr_gamma}")
        if self.p_std <= 0:
            raise ConfigError(f"p_std must be > 0, got {self.p_std}")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.lr_schedule == "cosine" and not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"lr_schedule cosine decays lr to min_lr: needs 0 <= min_lr <= lr, got "
                              f"min_lr {self.min_lr:g}, lr {self.lr:g}")
        if self.ema_halflife_kimg is not None and self.ema_halflife_kimg <= 0:
            raise ConfigError(f"ema_halflife_kimg must be > 0 (or None: ema_decay), got {self.ema_halflife_kimg}")
        if self.minutes is not None and not self.minutes > 0:
            raise ConfigError(f"minutes must be > 0, got {self.minutes}")
        if self.ema_rampup is not None and (self.ema_halflife_kimg is None or self.ema_rampup <= 0):
            raise ConfigError(f"ema_rampup {self.ema_rampup} needs ema_halflife_kimg and must be > 0")
        return self


# Named training recipes: overrides applied before explicit flags (`train --recipe NAME`). The
# presets keep the write-up's recipe (TrainConfig's defaults) unless a recipe is asked for.
#
# "fast", chosen from the literature and measured only as a whole, against the write-up's recipe
# (benchmarks/time_to_quality.py; docs/results.md, "Time to quality"):
#   - v-prediction (Salimans & Ho 2022): the target has unit variance at every noise level, so the
#     network is neither asked for eps at low SNR (where it barely matters) nor x0 from eps at high
#     SNR; the usual partner of min-SNR and of few-step samplers.
#   - min-SNR-5 weighting (Hang et al. 2023): treats the noise levels as conflicting tasks and caps
#     the weight of the easy, low-noise ones; they report ~3.4x faster convergence to the same FID.
#     With v the weight is min(SNR, 5) / (SNR + 1).
#   - t uniform, not EDM's lognormal: min-SNR already reweights the noise levels, and lognormal
#     sampling was tuned for EDM's own preconditioning; stacking both would count the same
#     emphasis twice, which neither paper tested.
#   - cosine learning rate with a short linear warmup: for a run of known length it ends at the
#     floor instead of waiting for plateaus (ReduceLROnPlateau needs 3 flat epochs per halving,
#     which a few-epoch CPU run never sees).
#   - EMA by half-life with EDM's ramp-up (Karras et al. 2022): a fixed 0.999 decay averages over
#     ~700 steps whatever the run length; the ramp caps the half-life at 10% of the images seen so
#     short runs are not averaged with their early, noisy weights.
RECIPES: dict[str, dict] = {
    "fast": {"diffusion": {"prediction": "v"},
             "train": {"loss_weighting": "min-snr", "min_snr_gamma": 5.0, "t_sampling": "uniform",
                       "lr_schedule": "cosine", "warmup_steps": 100, "ema_halflife_kimg": 50.0, "ema_rampup": 0.1}},
}


def get_recipe(name: str) -> dict:
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; valid: {', '.join(RECIPES)}")
    r = RECIPES[name]
    return {"diffusion": dict(r.get("diffusion", {})), "train": dict(r.get("train", {}))}


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


register(Preset("resnet-basic", "write-up (a): full-resolution residual net; the noise level is not used at all",
                _resnet(time_cond=False)))
register(Preset("resnet-noise", "write-up (a): + conditional BatchNorm, scale/shift from the noise-level embedding",
                _resnet(time_cond=True)))
register(Preset("resnet-spatial", "write-up (b): + x, y, radius, angle coordinate channels at the input",
                _resnet(time_cond=True, spatial=True)))
register(Preset("resnet-class", "write-up (c): + learned 4-d class embedding concatenated to the input",
                _resnet(time_cond=True, spatial=True, num_classes=10, class_dim=4)))


def _unet(**kw) -> ModelConfig:
    # 28 -> 14 -> 7: three levels, two downsamplings; ~9M parameters, ~2 GFLOP per forward
    return ModelConfig(arch="unet", channels=64, channel_mults=(1, 2, 3), blocks_per_level=2, time_dim=256, **kw)


# 10% null labels so classifier-free guidance (`sample --guidance W`) has a trained unconditional
# branch; `--cond-drop 0` reproduces the write-up, which had no guidance.
_GUIDED = {"cond_drop": 0.1}

register(Preset("unet-input", "write-up (d): UNet, 4-d class embedding concatenated to the input once (2 classes only)",
                _unet(num_classes=10, class_dim=4, class_cond="input"), train=dict(_GUIDED)))
register(Preset("unet-cbn", "write-up (e): UNet, the class embedding also feeds the conditional BatchNorms",
                _unet(num_classes=10, class_dim=4, class_cond="cbn"), train=dict(_GUIDED)))
register(Preset("unet-block", "write-up's fix: UNet, per-block class projection between the two convs, GroupNorm; for a GPU",
                _unet(norm="group", num_classes=10, class_dim=64, class_cond="block"), train=dict(_GUIDED)))
# Two networks named for their use rather than their design: unet-block's layers at the widths a
# laptop CPU affords. Both upsample on the coarse grid ("conv-nearest": the up path's convolution runs
# at the lower resolution, narrowed to the level's width), which saves FLOPs at full resolution.
_CPU_UNET = ModelConfig(arch="unet", channels=24, channel_mults=(1, 3, 6), blocks_per_level=1, time_dim=128,
                        norm="group", num_classes=10, class_dim=32, class_cond="block", attention=True,
                        upsample="conv-nearest")
# cpu: a narrow 28x28 level, wide coarse levels and self-attention at 7x7, where a forward's FLOPs are
# cheap; the shipped fmnist is this network.
register(Preset("cpu", "the recommended network for a laptop CPU (the shipped fmnist): unet-block's design at "
                "widths 24, 72, 144, attention at 7x7",
                _CPU_UNET, train=dict(_GUIDED)))
# cpu-mini: a run of minutes is limited by the optimiser steps it can afford, not by capacity, so a
# cheaper step wins: the coarse levels as narrow as the top one. Batch 32: on a 2-core CPU these small
# nets train about as many images a second at 32 as at 64, so the half batch buys twice the steps.
register(Preset("cpu-mini", "for runs of minutes (--minutes 12): unet-block's design at widths 32, 32, 64, batch 32",
                dataclasses.replace(_CPU_UNET, channels=32, channel_mults=(1, 1, 2), attention=False),
                train={**_GUIDED, "batch_size": 32}))
register(Preset("unet-faces64", "beyond the write-up: 64x64 RGB UNet for a folder of faces (--data-dir)",
                ModelConfig(arch="unet", image_size=64, in_channels=3, channels=96, channel_mults=(1, 2, 3, 4),
                            blocks_per_level=2, time_dim=512, norm="group"),
                train={"data": "folder", "epochs": 4}))


# Names of earlier versions, so that their run directories, the shipped models' configs and old
# commands still resolve: retired name -> (preset it became, model overrides that rebuild it exactly).
RETIRED_PRESETS: dict[str, tuple[str, dict]] = {
    "unet-coarse": ("cpu", {}),
    "unet-mini": ("cpu-mini", {}),
    "unet-lite": ("cpu", {"channels": 32, "channel_mults": (1, 2, 4), "attention": False}),
    "unet-small": ("cpu", {"channels": 32, "channel_mults": (1, 2, 4), "attention": False,
                           "upsample": "nearest-conv"}),
}


def get_preset(name: str) -> Preset:
    if name in RETIRED_PRESETS:
        current, overrides = RETIRED_PRESETS[name]
        p = get_preset(current)
        return Preset(name, f"retired name: {current} with {overrides}" if overrides else f"retired name of {current}",
                      dataclasses.replace(p.model, **overrides), p.diffusion, p.train)
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
    omit = {f.name for f in fields(cfg) if f.metadata.get("omit_default") and d[f.name] == f.default}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items() if k not in omit}
