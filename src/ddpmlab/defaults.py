"""Sampling names and defaults, shared by config.py, diffusion.py and cli.py.

No torch import and no ddpmlab import here, so the configuration and the command line can check
names without a circular import (diffusion imports config) and without loading torch.
"""

# the samplers of diffusion.SAMPLERS, in that order (diffusion.py checks the two agree)
SAMPLER_NAMES = ("ddpm", "ddim", "dpm++2m", "dpm++3m", "consistency")
# the default of `sample`, `process`, `evaluate` and `report`: second order, 20 network
# evaluations (docs/results.md: quality against the number of evaluations)
DEFAULT_SAMPLER, DEFAULT_STEPS = "dpm++2m", 20
# timestep spacings of diffusion.make_timesteps; "trailing" is what every run sampled with before
SPACINGS = ("trailing", "logsnr", "karras")
DEFAULT_SPACING = "trailing"
# the network's arithmetic while sampling from the command line (`--precision`): bf16 autocast on
# CUDA and on CPUs with native bf16, where it draws more images a second at the same quality
# (docs/results.md), else fp32
SAMPLE_PRECISION = "auto"
# DPM-Solver++: lower-order final steps when fewer than this many steps (Lu et al. 2022; diffusers)
LOWER_ORDER_FINAL_BELOW = 15
