"""A run's configuration, assembled: a preset (config.PRESETS), then a named recipe (config.RECIPES)
with the sampling defaults it records in the run's config.json, then explicit overrides. Kept apart
from config.py because the sampling defaults need the noise schedules (diffusion.py), which
config.py, read by the command line before torch loads, must not import.
"""
from __future__ import annotations

from . import config as C
from .diffusion import make_schedule, timesteps_at_noise_of
from .run import RunConfig


def make_run_config(preset: str, model_overrides: dict | None = None, *, recipe: str | None = None,
                    diffusion_overrides: dict | None = None, **train_overrides) -> RunConfig:
    """A preset, then a named recipe (config.RECIPES), then `key=value` overrides of its model,
    diffusion (e.g. prediction) and training settings."""
    p = C.get_preset(preset)
    r = C.get_recipe(recipe) if recipe else {"diffusion": {}, "train": {}}
    model = C.from_dict(C.ModelConfig, {**C.to_dict(p.model), **(model_overrides or {})})
    diffusion = C.from_dict(C.DiffusionConfig, {**C.to_dict(p.diffusion), **r["diffusion"],
                                               **{k: v for k, v in (diffusion_overrides or {}).items() if v is not None}})
    train = C.from_dict(C.TrainConfig, {**C.to_dict(C.TrainConfig()), **p.train, **r["train"],
                                       **{k: v for k, v in train_overrides.items() if v is not None}})
    rc = RunConfig(preset, model, diffusion, train)
    if recipe:
        rc.sampling = recipe_sampling(rc)
    return rc


def recipe_sampling(rc: RunConfig) -> C.SamplingConfig:
    """What a run trained with a recipe samples with unless told otherwise (its config.json
    "sampling"), as measured on the recipe's models (docs/results.md, "Time to quality"): DPM-Solver++
    steps spaced uniformly in log-SNR, which small images need far fewer of than trailing ones; on
    the cosine schedule from sigma 55, not from its top, where steps are spent on pure noise; and,
    for a model trained with null labels, guidance 0.3 only at the noise levels of the linear
    schedule's t 100..700, so the other steps cost one network pass. Second order, not third: 3M
    paid on the hour-long models but not on a 12-minute one, which a recipe run may well be."""
    s = C.SamplingConfig(sampler="dpm++2m", spacing="logsnr")
    if rc.diffusion.schedule == "cosine":
        s.sigma_max = 55.0
    if rc.model.num_classes and rc.train.cond_drop > 0:
        s.guidance = 0.3
        s.guidance_interval = timesteps_at_noise_of(make_schedule(rc.diffusion), make_schedule(), 100, 700)
    return s.validate()
