"""Sampling from a trained run: the Python API behind `ddpmlab sample` and `ddpmlab process`.

    >>> run = load_run("runs/resnet-class")
    >>> x, y = sample(run, 20, labels="all", steps=20)     # x: (20, 1, 28, 28) in [-1, 1]
    >>> save_npz("s.npz", x, y); save_grid(run, x, y, "g.png")
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from . import plots, render
from .config import ConfigError, Sampling, SamplingConfig, check_guidance_interval, to_dict
from .defaults import DEFAULT_SAMPLER, DEFAULT_SPACING, DEFAULT_STEPS, SAMPLE_PRECISION
from .diffusion import Schedule, make_schedule
from .run import RunConfig, load_model, resolve_run
from .runtime import resolve_device, resolve_precision
from .samplefile import save_npz  # noqa: F401  (part of this module's API: sample, then save_npz)

log = logging.getLogger("ddpmlab.sample")


@dataclass
class LoadedRun:
    path: Path
    model: torch.nn.Module
    config: RunConfig
    schedule: Schedule
    device: torch.device
    precision: str = "fp32"             # of the network while sampling: fp32 or bf16 (autocast)
    guide: torch.nn.Module | None = None   # autoguidance's weaker network (sampling.guide), loaded when first asked

    @property
    def num_classes(self) -> int:
        return self.config.model.num_classes

    def guide_for(self, s: Sampling) -> torch.nn.Module | None:
        """The network autoguidance steers away from, when `s` asks for autoguidance."""
        if not s.autoguidance:
            return None
        if self.guide is None:
            self.guide = load_guide(self.path, self.config, self.device)
        return self.guide


def load_run(path_or_name, device: str = "auto", ema: bool = True, precision: str = SAMPLE_PRECISION) -> LoadedRun:
    """A run directory (or shipped model name) rebuilt from config.json with its EMA weights.
    precision: the network's while sampling; "auto" is bf16 where the device computes it natively.
    A guide network the run names (autoguidance) is loaded and checked when a sampling first uses it."""
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    path = resolve_run(path_or_name)
    model, rc = load_model(path, ema=ema, device=dev)
    return LoadedRun(path, model, rc, make_schedule(rc.diffusion), dev, prec)


def guide_dir(run_dir: Path, rc: RunConfig) -> Path:
    """The directory of a run's autoguidance network (sampling.guide, relative to the run)."""
    d = Path(run_dir) / rc.sampling.guide
    if not (d / "config.json").is_file():
        raise ConfigError(f"{Path(run_dir) / 'config.json'}: sampling.guide {rc.sampling.guide!r} is not a run "
                          f"directory ({d} has no config.json); restore it, or sample with --autoguidance 0")
    return d


def load_guide(run_dir: Path, rc: RunConfig, device) -> torch.nn.Module:
    """The weaker network of autoguidance: it must denoise the same diffusion with the same labels."""
    d = guide_dir(run_dir, rc)
    guide, grc = load_model(d, device=device)
    for what, a, b in (("diffusion", to_dict(grc.diffusion), to_dict(rc.diffusion)),
                       ("classes", grc.model.num_classes, rc.model.num_classes),
                       ("image shape", (grc.model.image_size, grc.model.in_channels),
                        (rc.model.image_size, rc.model.in_channels))):
        if a != b:
            raise ConfigError(f"sampling.guide {d}: its {what} {a} differs from the run's {b}; a guide must be "
                              "trained on the same diffusion and labels")
    return guide


def resolve_sampling(rc: RunConfig, flags: SamplingConfig | Sampling | None = None, run_dir=None) -> Sampling:
    """The settings of one sampling call: each flag given (a SamplingConfig whose None fields were
    not given), else the run's own (config.json "sampling"), else ddpmlab's defaults. Without
    guidance an interval means nothing (and must not split the evaluation cache); trailing spacing
    takes no sigma_max; autoguidance needs the guide network the run names. A Sampling is already
    resolved and comes back as it is."""
    if isinstance(flags, Sampling):
        return flags
    f, own = flags or SamplingConfig(), rc.sampling
    guidance = f.guidance if f.guidance is not None else (own.guidance or 0.0)
    interval = f.guidance_interval if f.guidance_interval is not None else own.guidance_interval
    spacing = f.spacing or own.spacing or DEFAULT_SPACING
    sigma_max = f.sigma_max
    if spacing == "trailing":
        if sigma_max is not None:
            raise ConfigError(f"--sigma-max {sigma_max:g} caps the logsnr and karras spacings, not trailing")
    elif sigma_max is None:
        sigma_max = own.sigma_max
    if sigma_max is not None and not sigma_max > 0:
        raise ConfigError(f"--sigma-max must be > 0, got {sigma_max:g}")
    weight = f.autoguidance if f.autoguidance is not None else own.autoguidance
    if weight and not own.guide:
        raise ConfigError(f"--autoguidance {weight:g}: {run_dir or 'the run'} names no guide network "
                          "(config.json sampling.guide)")
    interval = check_guidance_interval(None if not guidance or interval is None else list(interval))
    ag_interval = own.autoguidance_interval if weight else None
    return Sampling(sampler=f.sampler or own.sampler or DEFAULT_SAMPLER,
                    steps=f.steps if f.steps is not None else (own.steps or DEFAULT_STEPS),
                    guidance=float(guidance), spacing=spacing,
                    guidance_interval=None if interval is None else tuple(interval),
                    sigma_max=None if sigma_max is None else float(sigma_max),
                    autoguidance=float(weight or 0.0),
                    autoguidance_interval=None if ag_interval is None else tuple(ag_interval),
                    guide=own.guide if weight else None)


def sample(run: LoadedRun, n: int, *, labels=None, seed: int = 0, eta: float | None = None,
           sampling: SamplingConfig | Sampling | None = None, **flags):
    """n samples in [-1, 1] and their labels (None for unconditional models). labels: None
    (conditional models: cycle 0..K-1), an int, or "all". sampling: a resolved Sampling, or the
    flags to resolve against the run's own settings (a SamplingConfig, or its fields as keywords:
    sample(run, 16, steps=8, guidance=1.0))."""
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    s = resolve_sampling(run.config, sampling if sampling is not None else SamplingConfig(**flags), run.path)
    y = render.make_labels(run.num_classes, n, labels)
    if s.guidance and run.num_classes and run.config.train.cond_drop == 0:
        log.warning("--guidance %g: %s was trained without label dropout (cond_drop 0), so its unconditional "
                    "branch (the null label) is untrained and guided samples are unreliable; train with "
                    "--cond-drop 0.1", s.guidance, run.path)
    x = render.sample_images(run.model, run.schedule, run.config.model, n, s, labels=y, seed=seed, eta=eta,
                    device=run.device, precision=run.precision, guide=run.guide_for(s))
    return x, y


def save_grid(run: LoadedRun, images: torch.Tensor, labels, path) -> None:
    """Conditional samples drawn with cycling labels are regrouped one row per class."""
    if labels is not None and run.num_classes:
        order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels, minlength=run.num_classes)
        present = [k for k in range(run.num_classes) if counts[k] > 0]
        if len(present) > 1 and int(counts[present].min()) == int(counts[present].max()):
            names = [run.config.class_names[k] for k in present]
            plots.write_grid(images[order], path, ncol=int(counts[present[0]]), row_labels=names)
            return
    plots.write_grid(images, path, ncol=min(10, math.ceil(math.sqrt(images.shape[0]))))


def process(run: LoadedRun, out, *, label: int | None = None, n: int = 4, seed: int = 0,
            sampling: SamplingConfig | Sampling | None = None, **flags) -> Path:
    """The generation-process figure: rows samples, columns x_t from noise to image, pred x0 beneath."""
    s = resolve_sampling(run.config, sampling if sampling is not None else SamplingConfig(**flags), run.path)
    render.process_figure(run.model, run.schedule, run.config.model, out, s, n=n, label=label, seed=seed,
                          device=run.device, precision=run.precision, class_names=run.config.class_names,
                          guide=run.guide_for(s))
    return Path(out)
