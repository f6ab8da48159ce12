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
from .config import ConfigError, check_guidance_interval, to_dict
from .defaults import DEFAULT_SAMPLER, DEFAULT_SPACING, DEFAULT_STEPS, SAMPLE_PRECISION
from .diffusion import Autoguide, Schedule, make_schedule
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
    autoguide: Autoguide | None = None  # the weaker network guided steps steer away from (sampling.guide)

    @property
    def num_classes(self) -> int:
        return self.config.model.num_classes


def load_run(path_or_name, device: str = "auto", ema: bool = True, precision: str = SAMPLE_PRECISION,
             autoguidance: float | None = None) -> LoadedRun:
    """A run directory (or shipped model name) rebuilt from config.json with its EMA weights.
    precision: the network's while sampling; "auto" is bf16 where the device computes it natively.
    autoguidance: the weight of the weaker network config.json's sampling.guide names (None: the
    run's own, sampling.autoguidance; 0: none, guided steps use the null label as before)."""
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    path = resolve_run(path_or_name)
    model, rc = load_model(path, ema=ema, device=dev)
    weight = autoguidance_weight(rc, autoguidance, path)
    auto = None
    if weight:
        interval = rc.sampling.autoguidance_interval
        auto = Autoguide(load_guide(path, rc, dev), float(weight), None if interval is None else tuple(interval))
    return LoadedRun(path, model, rc, make_schedule(rc.diffusion), dev, prec, auto)


def autoguidance_weight(rc: RunConfig, autoguidance: float | None, run_dir) -> float:
    """The weight given (None: the run's own sampling.autoguidance; 0: off); a weight for a run
    that names no guide network is an error."""
    weight = rc.sampling.autoguidance if autoguidance is None else autoguidance
    if weight and not rc.sampling.guide:
        raise ConfigError(f"--autoguidance {weight:g}: {run_dir} names no guide network (config.json sampling.guide)")
    return weight or 0.0


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


def sampling_settings(rc: RunConfig, sampler: str | None = None, steps: int | None = None,
                      guidance: float | None = None, spacing: str | None = None,
                      guidance_interval=None, sigma_max: float | None = None
                      ) -> tuple[str, int, float, str, list | None, float | None]:
    """(sampler, steps, guidance, spacing, guidance_interval, sigma_max): the values given, else
    the run's own (config.json "sampling"), else ddpmlab's defaults (guidance_interval None: every
    step, give [0, T-1] to guide everywhere a run that keeps an interval; sigma_max None: the
    schedule's top)."""
    s = rc.sampling
    interval = guidance_interval if guidance_interval is not None else s.guidance_interval
    guidance = guidance if guidance is not None else (s.guidance or 0.0)
    if guidance == 0:       # no guidance: an interval means nothing (and must not split the eval cache)
        interval = None
    spacing = spacing or s.spacing or DEFAULT_SPACING
    if spacing == "trailing":
        if sigma_max is not None:
            raise ConfigError(f"--sigma-max {sigma_max:g} caps the logsnr and karras spacings, not trailing")
        sigma_max = None    # a run's own cap means nothing to evenly spaced t
    elif sigma_max is None:
        sigma_max = s.sigma_max
    if sigma_max is not None and not sigma_max > 0:
        raise ConfigError(f"--sigma-max must be > 0, got {sigma_max:g}")
    return (sampler or s.sampler or DEFAULT_SAMPLER,
            steps if steps is not None else (s.steps or DEFAULT_STEPS),
            guidance, spacing, check_guidance_interval(None if interval is None else list(interval)),
            None if sigma_max is None else float(sigma_max))


def sample(run: LoadedRun, n: int, *, labels=None, sampler: str | None = None, steps: int | None = None,
           guidance: float | None = None, seed: int = 0, eta: float | None = None, spacing: str | None = None,
           guidance_interval=None, sigma_max: float | None = None):
    """n samples in [-1, 1] and their labels (None for unconditional models). labels: None
    (conditional models: cycle 0..K-1), an int, or "all". sampler, steps, guidance, spacing,
    guidance_interval, sigma_max: None for the run's own settings (`sampling_settings`)."""
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    sampler, steps, guidance, spacing, interval, sigma_max = sampling_settings(
        run.config, sampler, steps, guidance, spacing, guidance_interval, sigma_max)
    y = render.make_labels(run.num_classes, n, labels)
    if guidance and run.num_classes and run.config.train.cond_drop == 0:
        log.warning("--guidance %g: %s was trained without label dropout (cond_drop 0), so its unconditional "
                    "branch (the null label) is untrained and guided samples are unreliable; train with "
                    "--cond-drop 0.1", guidance, run.path)
    x = render.draw(run.model, run.schedule, run.config.model, n, labels=y, seed=seed, sampler=sampler,
                      steps=steps, guidance=guidance, eta=eta, device=run.device, precision=run.precision,
                      spacing=spacing, guidance_interval=interval, sigma_max=sigma_max, autoguide=run.autoguide)
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


def process(run: LoadedRun, out, *, label: int | None = None, n: int = 4, sampler: str | None = None,
            steps: int | None = None, seed: int = 0, guidance: float | None = None, spacing: str | None = None,
            guidance_interval=None, sigma_max: float | None = None) -> Path:
    """The generation-process figure: rows samples, columns x_t from noise to image, pred x0 beneath."""
    sampler, steps, guidance, spacing, interval, sigma_max = sampling_settings(
        run.config, sampler, steps, guidance, spacing, guidance_interval, sigma_max)
    render.process_figure(run.model, run.schedule, run.config.model, out, n=n, label=label, seed=seed,
                          sampler=sampler, steps=steps, guidance=guidance, device=run.device, precision=run.precision,
                          class_names=run.config.class_names,
                          spacing=spacing, guidance_interval=interval, sigma_max=sigma_max, autoguide=run.autoguide)
    return Path(out)
