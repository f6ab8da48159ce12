"""The diffusion process: schedules, closed-form noising, the loss, and the samplers.

This module knows nothing of architectures: a network is any callable eps(x_t, t, label).
Samplers are plain functions with one signature:

    sampler(eps_fn, schedule, x_T, timesteps, *, noise, clip, callback, eta) -> x_0

where eps_fn(x, t) already closes over labels and guidance, `timesteps` is a decreasing
sequence of integer timesteps, and `noise(shape)` supplies fresh Gaussian noise (per image seeded
by the caller). `callback(i, t, x_t, x0_pred)` sees every intermediate state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .config import ConfigError, DiffusionConfig
from .runtime import autocast


@dataclass
class Schedule:
    betas: torch.Tensor             # (T,) float64
    alphas_cumprod: torch.Tensor    # (T,) float64, abar_t

    @property
    def T(self) -> int:
        return self.betas.shape[0]

    def abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """abar_t for integer timesteps t (B,), shaped (B, 1, 1, 1) in like's dtype/device;
        t = -1 means 'before the first step' (abar = 1)."""
        ac = self.alphas_cumprod.to(like.device)
        a = torch.where(t >= 0, ac[t.clamp(min=0)], torch.ones((), dtype=ac.dtype, device=ac.device))
        return a.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def make_schedule(cfg: DiffusionConfig | None = None) -> Schedule:
    cfg = (cfg or DiffusionConfig()).validate()
    T = cfg.timesteps
    if cfg.schedule == "linear":
        # DDPM (Ho et al. 2020, §4): beta from 1e-4 to 0.02 over T = 1000, scaled for other T
        scale = 1000 / T
        betas = torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)
    else:
        # Improved DDPM (Nichol & Dhariwal 2021, eq. 17): abar(t) = cos^2((t/T + s)/(1 + s) * pi/2)
        s = 0.008
        f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2
        betas = torch.tensor([min(1 - f(i + 1) / f(i), 0.999) for i in range(T)], dtype=torch.float64)
    return Schedule(betas, torch.cumprod(1 - betas, dim=0))


def q_sample(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Closed-form forward process (DDPM eq. 4): x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
    a = schedule.abar(t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def q_step(schedule: Schedule, x_prev: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
    """One step of the forward chain (DDPM eq. 2): x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps."""
    b = schedule.betas[t].item()
    return math.sqrt(1 - b) * x_prev + math.sqrt(b) * noise


def loss_fn(model, schedule: Schedule, x0: torch.Tensor, label, generator: torch.Generator) -> torch.Tensor:
    """The simplified epsilon-prediction loss (DDPM eq. 14), t uniform over 0..T-1."""
    B = x0.shape[0]
    t = torch.randint(0, schedule.T, (B,), device=x0.device, generator=generator)
    noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    pred = model(q_sample(schedule, x0, t, noise), t, label)
    return torch.nn.functional.mse_loss(pred.float(), noise)


# --------------------------------------------------------------------------- timesteps

def make_timesteps(T: int, steps: int) -> list[int]:
    """`steps` decreasing timesteps ending near 0 and starting at T-1 ("trailing" spacing,
    Lin et al. 2023, Table 2), so sampling always starts from pure noise."""
    if not 1 <= steps <= T:
        raise ConfigError(f"steps must be between 1 and {T}, got {steps}")
    return [int(round(T - i * T / steps)) - 1 for i in range(steps)]


def _x0_from_eps(x, eps, a):
    return (x - (1 - a).sqrt() * eps) / a.sqrt()


def _t_batch(t: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)


# --------------------------------------------------------------------------- samplers

def ddpm(eps_fn, schedule: Schedule, x: torch.Tensor, timesteps, *, noise, clip: bool = True,
         callback: Callable | None = None, eta: float = 1.0) -> torch.Tensor:
    """Ancestral sampling (DDPM, Ho et al. 2020, eq. 6-7 with sigma^2 = beta-tilde).

    Over a subsequence of timesteps it uses beta_t = 1 - abar_t / abar_prev, as the
    respaced DDPM of Nichol & Dhariwal (2021) does. eta is ignored."""
    ts = list(timesteps)
    for i, t in enumerate(ts):
        prev = ts[i + 1] if i + 1 < len(ts) else -1
        tb = _t_batch(t, x)
        a_t, a_prev = schedule.abar(tb, x), schedule.abar(_t_batch(prev, x), x)
        eps = eps_fn(x, tb)
        x0 = _x0_from_eps(x, eps, a_t)
        if clip:
            x0 = x0.clamp(-1, 1)
        beta_t = 1 - a_t / a_prev
        # posterior mean (eq. 7): coefficients of x0 and x_t
        mean = (a_prev.sqrt() * beta_t / (1 - a_t)) * x0 + ((1 - beta_t).sqrt() * (1 - a_prev) / (1 - a_t)) * x
        if prev >= 0:
            var = ((1 - a_prev) / (1 - a_t) * beta_t).clamp(min=1e-20)
            x = mean + var.sqrt() * noise(x.shape)
        else:
            x = mean
        if callback is not None:
            callback(i, t, x, x0)
    return x


def ddim(eps_fn, schedule: Schedule, x: torch.Tensor, timesteps, *, noise, clip: bool = True,
         callback: Callable | None = None, eta: float = 0.0) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12); eta = 0 is deterministic, eta = 1 is DDPM-like.

    With clip, the direction term uses the eps implied by the clipped x0 (as GLIDE and
    guided-diffusion do; diffusers' use_clipped_model_output=True). Pairing the clipped x0 with
    the network's raw eps steps off the trajectory whenever the clip bites, and more so the more
    steps are taken: on the shipped model after one epoch that made DDIM-50 worse than DDIM-20
    (fd 27.0 vs 22.1)."""
    ts = list(timesteps)
    for i, t in enumerate(ts):
        prev = ts[i + 1] if i + 1 < len(ts) else -1
        tb = _t_batch(t, x)
        a_t, a_prev = schedule.abar(tb, x), schedule.abar(_t_batch(prev, x), x)
        eps = eps_fn(x, tb)
        x0 = _x0_from_eps(x, eps, a_t)
        if clip:
            x0 = x0.clamp(-1, 1)
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        # eq. 16: sigma_t = eta * sqrt((1 - abar_prev)/(1 - abar_t)) * sqrt(1 - abar_t/abar_prev)
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev - sigma ** 2).clamp(min=0).sqrt() * eps
        if eta > 0 and prev >= 0:
            x = x + sigma * noise(x.shape)
        if callback is not None:
            callback(i, t, x, x0)
    return x


def dpmpp_2m(eps_fn, schedule: Schedule, x: torch.Tensor, timesteps, *, noise=None, clip: bool = True,
             callback: Callable | None = None, eta: float = 0.0) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): a second-order multistep solver of the
    diffusion ODE in the data-prediction form, one network evaluation per step.

    With alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t),
    h = lambda_t - lambda_s and D the x0 prediction (extrapolated from the last two):
        x_t = (sigma_t / sigma_s) x_s - alpha_t (exp(-h) - 1) D
    The first step is first order (no history yet); the last step, to sigma = 0, returns D of
    first order, i.e. the clean-image prediction. Deterministic: `noise` and eta are unused."""
    ts = list(timesteps)
    x0_prev, h_prev = None, None
    for i, t in enumerate(ts):
        prev = ts[i + 1] if i + 1 < len(ts) else -1
        tb = _t_batch(t, x)
        a_s = schedule.abar(tb, x)
        x0 = _x0_from_eps(x, eps_fn(x, tb), a_s)
        if clip:
            x0 = x0.clamp(-1, 1)
        if prev < 0:
            x_next = x0                                       # sigma = 0: the ODE ends at D
        else:
            a_t = schedule.abar(_t_batch(prev, x), x)
            lam_s = 0.5 * (torch.log(a_s) - torch.log1p(-a_s))
            lam_t = 0.5 * (torch.log(a_t) - torch.log1p(-a_t))
            h = lam_t - lam_s
            D = x0 if x0_prev is None else x0 + (x0 - x0_prev) * (h / (2 * h_prev))   # (1 + 1/2r) x0 - 1/2r x0_prev
            x_next = ((1 - a_t) / (1 - a_s)).sqrt() * x - a_t.sqrt() * torch.expm1(-h) * D
            h_prev = h
        x0_prev = x0
        if callback is not None:
            callback(i, t, x_next, x0)
        x = x_next
    return x


SAMPLERS = {"ddpm": ddpm, "ddim": ddim, "dpm++2m": dpmpp_2m}
# the default of `sample`, `process`, `evaluate` and `report`: second order, 20 network
# evaluations (see README, "Samplers": quality against the number of evaluations)
DEFAULT_SAMPLER, DEFAULT_STEPS = "dpm++2m", 20
# the network's arithmetic while sampling from the command line (`--precision`): bf16 autocast on
# CUDA and on CPUs with native bf16, where it draws about twice the images/s at the same quality
# (README, "Samplers"), else fp32
SAMPLE_PRECISION = "auto"


def get_sampler(name: str):
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


# --------------------------------------------------------------------------- generation

class PerImageNoise:
    """Gaussian noise from one generator per image, so an image does not depend on the batch
    it is drawn in: image i of seed s is the same whether drawn alone or among 1000."""

    def __init__(self, seeds, device="cpu", dtype=torch.float32):
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.device, self.dtype = device, dtype

    def __call__(self, shape) -> torch.Tensor:
        one = tuple(shape[1:])
        return torch.stack([torch.randn(one, generator=g) for g in self.gens]).to(self.device, self.dtype)


def guided_eps(model, labels: torch.Tensor | None, guidance: float, null_label: int):
    """eps_fn for a sampler. With guidance w != 0 (classifier-free guidance, Ho & Salimans 2022):
    eps = eps_cond + w * (eps_cond - eps_uncond), both from one batched forward pass."""
    if labels is None or guidance == 0:
        return lambda x, t: model(x, t, labels)
    null = torch.full_like(labels, null_label)
    both = torch.cat([labels, null])

    def eps_fn(x, t):
        e = model(torch.cat([x, x]), torch.cat([t, t]), both)
        cond, uncond = e.chunk(2)
        return cond + guidance * (cond - uncond)
    return eps_fn


def _in_precision(eps_fn, device: torch.device, precision: str):
    if precision == "fp32":
        return eps_fn

    def run(x, t):
        with autocast(device, precision):
            return eps_fn(x, t).float()
    return run


@torch.inference_mode()
def generate(model, schedule: Schedule, shape, *, seeds, labels=None, sampler: str = DEFAULT_SAMPLER,
             steps: int = DEFAULT_STEPS, eta: float | None = None, guidance: float = 0.0, null_label: int = 0,
             clip: bool = True, callback=None, device="cpu", batch_size: int | None = None,
             precision: str = "fp32") -> torch.Tensor:
    """Draw len(seeds) images of `shape` (C, H, W) in [-1, 1]; returns a float32 CPU tensor.

    precision "bf16": the network runs under bf16 autocast and its output is cast back, so the
    solver's state and arithmetic stay fp32.

    batch_size None: 256 on accelerators, 64 on a CPU, where big batches are slower per image
    (activations past glibc's 32 MB mmap threshold are mapped and page-faulted afresh by every op):
    unet-small drew 1.13x / 1.21x the images/s at 64 / 128 as at 256 (benchmarks/sample_batch_size.py,
    1 thread), and guidance doubles the batch the network sees."""
    fn = get_sampler(sampler)
    if batch_size is None:
        batch_size = 64 if torch.device(device).type == "cpu" else 256
    ts = make_timesteps(schedule.T, steps)
    kw = {} if eta is None else {"eta": eta}
    out = []
    for s in range(0, len(seeds), batch_size):
        chunk = list(seeds[s:s + batch_size])
        noise = PerImageNoise(chunk, device)
        x = noise((len(chunk), *shape))
        lab = None if labels is None else labels[s:s + batch_size].to(device)
        cb = None if callback is None else (lambda i, t, xt, x0, _s=s: callback(_s, i, t, xt, x0))
        eps_fn = _in_precision(guided_eps(model, lab, guidance, null_label), torch.device(device), precision)
        x = fn(eps_fn, schedule, x, ts, noise=noise, clip=clip, callback=cb, **kw)
        out.append(x.float().cpu())
    return torch.cat(out)
