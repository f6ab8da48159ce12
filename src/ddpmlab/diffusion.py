"""The diffusion process: schedules, closed-form noising, the loss, and the samplers.

This module knows nothing of architectures: a network is any callable net(x_t, t, label).
Samplers are plain functions with one signature:

    sampler(denoise, schedule, x_T, timesteps, *, noise, clip, callback, eta) -> x_0

where denoise(x, t) already closes over labels and guidance (`guided_denoiser`) and returns the
network's output,
which `schedule.prediction` says how to read (eps, v or x0: `model_output_to_eps_x0`, the one
place it is converted), `timesteps` is a decreasing sequence of integer timesteps
(`make_timesteps`), and `noise(shape)` supplies fresh Gaussian noise (per image seeded by the
caller). `callback(i, t, x_t, x0_pred)` sees every intermediate state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .config import ConfigError, DiffusionConfig, Sampling
from .defaults import (DEFAULT_SAMPLER, DEFAULT_SPACING, DEFAULT_STEPS, LOWER_ORDER_FINAL_BELOW,  # noqa: F401
                       SAMPLE_PRECISION, SAMPLER_NAMES, SPACINGS)
from .runtime import autocast, progress_bar


@dataclass
class Schedule:
    betas: torch.Tensor             # (T,) float64
    alphas_cumprod: torch.Tensor    # (T,) float64, abar_t
    # what the network outputs (DiffusionConfig.prediction): "eps" | "v" | "x0". Kept with the
    # schedule because the samplers need both to read the network and every caller has this one.
    prediction: str = "eps"

    @property
    def T(self) -> int:
        return self.betas.shape[0]

    def log_sigmas(self) -> torch.Tensor:
        """log sigma_t, sigma_t = sqrt((1 - abar_t) / abar_t) (= -lambda_t, the negative
        half-log-SNR), (T,) float64, increasing in t."""
        ac = self.alphas_cumprod.double()
        return 0.5 * (torch.log1p(-ac) - torch.log(ac))

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
    return Schedule(betas, torch.cumprod(1 - betas, dim=0), cfg.prediction)


def timesteps_at_noise_of(schedule: Schedule, other: Schedule, t_lo: int, t_hi: int) -> list[int]:
    """[t_lo', t_hi']: the timesteps of `schedule` nearest in noise level (log sigma) to those of
    `other` at t_lo and t_hi, so that a guidance interval found on one schedule means the same
    noise on another."""
    mine, theirs = schedule.log_sigmas(), other.log_sigmas()
    return [int((mine - theirs[t]).abs().argmin()) for t in (t_lo, t_hi)]


def q_sample(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Closed-form forward process (DDPM eq. 4): x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
    a = schedule.abar(t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def q_step(schedule: Schedule, x_prev: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
    """One step of the forward chain (DDPM eq. 2): x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps."""
    b = schedule.betas[t].item()
    return math.sqrt(1 - b) * x_prev + math.sqrt(b) * noise


def sample_t(schedule: Schedule, n: int, generator: torch.Generator, device, t_sampling: str = "uniform",
             p_mean: float = -1.2, p_std: float = 1.2) -> torch.Tensor:
    """n training timesteps: "uniform" over 0..T-1 (DDPM), or "lognormal" (EDM, Karras et al.
    2022): log sigma ~ N(p_mean, p_std^2), each draw taken to the timestep whose log sigma_t is
    nearest (sigma_t = sqrt((1 - abar_t) / abar_t); the ends clamp to 0 and T-1)."""
    if t_sampling == "uniform":
        return torch.randint(0, schedule.T, (n,), device=device, generator=generator)
    if t_sampling != "lognormal":
        raise ConfigError(f"unknown t_sampling {t_sampling!r}; valid: uniform, lognormal")
    ls = schedule.log_sigmas().float().to(device)          # float32 on the device (MPS has no float64)
    want = p_mean + p_std * torch.randn((n,), device=device, generator=generator)
    hi = torch.searchsorted(ls, want).clamp(1, schedule.T - 1)
    return torch.where((want - ls[hi - 1]).abs() <= (ls[hi] - want).abs(), hi - 1, hi)


def training_target(schedule: Schedule, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the network learns to output at x_t = q_sample(x0, t, noise), per schedule.prediction:
    eps = noise; v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022, §4); or x0."""
    if schedule.prediction == "eps":
        return noise
    if schedule.prediction == "x0":
        return x0
    a = schedule.abar(t, x0)
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def loss_weights(schedule: Schedule, t: torch.Tensor, weighting: str = "uniform", gamma: float = 5.0) -> torch.Tensor:
    """Per-sample weights (B,) float32 of the squared error of the network's target. "min-snr"
    (Hang et al. 2023): min(SNR, gamma) / SNR for eps, min(SNR, gamma) / (SNR + 1) for v,
    min(SNR, gamma) for x0, with SNR = abar / (1 - abar); each is the x0-error weight
    min(SNR, gamma) written for that target."""
    if weighting == "uniform":
        return torch.ones(t.shape, device=t.device)
    if weighting != "min-snr":
        raise ConfigError(f"unknown loss_weighting {weighting!r}; valid: uniform, min-snr")
    a = schedule.alphas_cumprod.double()                   # the table in float64, then float32 on the device
    snr = a / (1 - a)
    capped = snr.clamp(max=gamma)
    w = {"eps": capped / snr, "v": capped / (snr + 1), "x0": capped}[schedule.prediction]
    return w.float().to(t.device)[t]


def loss_fn(model, schedule: Schedule, x0: torch.Tensor, label, generator: torch.Generator, *,
            weighting: str = "uniform", min_snr_gamma: float = 5.0, t_sampling: str = "uniform",
            p_mean: float = -1.2, p_std: float = 1.2) -> torch.Tensor:
    """The denoising loss: the squared error of the network's target (`training_target`), t drawn
    by `sample_t`, weighted per sample by `loss_weights`. The defaults are DDPM's simplified
    epsilon loss (eq. 14) with t uniform over 0..T-1, drawn exactly as before the options existed."""
    B = x0.shape[0]
    t = sample_t(schedule, B, generator, x0.device, t_sampling, p_mean, p_std)
    noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    pred = model(q_sample(schedule, x0, t, noise), t, label)
    target = training_target(schedule, x0, noise, t)
    if weighting == "uniform":
        return torch.nn.functional.mse_loss(pred.float(), target)
    per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return (loss_weights(schedule, t, weighting, min_snr_gamma) * per_sample).mean()


# --------------------------------------------------------------------------- timesteps

def make_timesteps(T: int, steps: int, spacing: str | None = DEFAULT_SPACING, schedule: Schedule | None = None,
                   sigma_max: float | None = None) -> list[int]:
    """`steps` strictly decreasing integer timesteps starting at T-1, so sampling always starts
    from pure noise.

    "trailing": evenly spaced in t, ending at T/steps - 1 (Lin et al. 2023, Table 2).
    "logsnr": evenly spaced in lambda = log(alpha/sigma) from t = T-1 to t = 0 (DPM-Solver,
    Lu et al. 2022; diffusers' use_lu_lambdas). "karras": sigma_i = (sigma_max^(1/rho) +
    i/(steps-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, rho = 7 (Karras et al. 2022, eq. 5;
    diffusers' use_karras_sigmas), sigma_t = sqrt((1 - abar_t) / abar_t), between the schedule's
    sigma at T-1 and at 0. Those two need the schedule and end at t = 0: a target is turned into
    a fractional t by linear interpolation in log sigma and rounded (as diffusers does), then
    where two land on one timestep the later ones move down to the nearest free ones.

    sigma_max (logsnr and karras): the top of their range, where it is below the schedule's own
    (EDM's sigma_max, Karras et al. 2022); the first timestep stays T-1, so the first step goes
    from pure noise to the second point of the capped range. The cosine schedule's last
    timesteps climb to sigma ~2e4 (log sigma 9.9; its beta is clipped at 0.999), where an image in
    [-1, 1] is long gone, and spacing 10 steps over the whole range puts the 2nd to 4th above sigma 100."""
    spacing = spacing or DEFAULT_SPACING
    if spacing not in SPACINGS:
        raise ConfigError(f"unknown spacing {spacing!r}; valid: {', '.join(SPACINGS)}")
    if not 1 <= steps <= T:
        raise ConfigError(f"steps must be between 1 and {T}, got {steps}")
    if sigma_max is not None and not sigma_max > 0:
        raise ConfigError(f"sigma_max must be > 0, got {sigma_max}")
    if spacing == "trailing":
        if sigma_max is not None:
            raise ConfigError("sigma_max caps the logsnr and karras spacings; trailing is evenly spaced in t")
        return [int(round(T - i * T / steps)) - 1 for i in range(steps)]
    if schedule is None or schedule.T != T:
        raise ConfigError(f"spacing {spacing!r} needs the diffusion schedule (of T = {T} steps)")
    ls = schedule.log_sigmas().numpy()
    top = ls[T - 1] if sigma_max is None else min(ls[T - 1], math.log(sigma_max))
    if top <= ls[0]:
        raise ConfigError(f"sigma_max {sigma_max:g} is not above the schedule's smallest sigma ({math.exp(ls[0]):.3g})")
    if spacing == "logsnr":
        want = np.linspace(top, ls[0], steps)
    else:
        rho, hi, lo = 7.0, math.exp(top), math.exp(ls[0])
        ramp = np.linspace(0, 1, steps)
        want = np.log((hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho)
    near = np.round(np.interp(want, ls, np.arange(T, dtype=np.float64)))
    out = [T - 1]
    for i in range(1, steps):      # distinct: below the previous one, above what the rest need
        out.append(int(min(max(near[i], steps - 1 - i), out[-1] - 1)))
    return out


def model_output_to_eps_x0(prediction: str, x: torch.Tensor, out: torch.Tensor, a: torch.Tensor):
    """(eps, x0) from the network's output `out` at x_t with abar_t = a: the one place a
    prediction type is read. v: x0 = sqrt(a) x - sqrt(1-a) v, eps = sqrt(1-a) x + sqrt(a) v
    (Salimans & Ho 2022). Each is computed from the output directly rather than through eps, so
    a v or x0 network keeps its precision at high noise, where x0 = (x - sqrt(1-a) eps)/sqrt(a)
    divides by a tiny sqrt(a)."""
    if prediction == "eps":
        return out, _x0_from_eps(x, out, a)
    if prediction == "v":
        return (1 - a).sqrt() * x + a.sqrt() * out, a.sqrt() * x - (1 - a).sqrt() * out
    if prediction == "x0":
        return (x - a.sqrt() * out) / (1 - a).sqrt(), out
    raise ConfigError(f"unknown prediction {prediction!r}; valid: eps, v, x0")


def _predict(denoise, schedule: Schedule, x: torch.Tensor, tb: torch.Tensor, a: torch.Tensor):
    return model_output_to_eps_x0(schedule.prediction, x, denoise(x, tb), a)


def _x0_from_eps(x, eps, a):
    return (x - (1 - a).sqrt() * eps) / a.sqrt()


def _t_batch(t: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)


# --------------------------------------------------------------------------- samplers

def _step_start(denoise, schedule: Schedule, x: torch.Tensor, ts: list, i: int, clip: bool):
    """What DDPM and DDIM both begin a step with: the timestep after ts[i] (-1 past the end), abar
    at both, and the network's eps and x0 at x_t (x0 clipped to [-1, 1] with clip)."""
    prev = ts[i + 1] if i + 1 < len(ts) else -1
    tb = _t_batch(ts[i], x)
    a_t, a_prev = schedule.abar(tb, x), schedule.abar(_t_batch(prev, x), x)
    eps, x0 = _predict(denoise, schedule, x, tb, a_t)
    if clip:
        x0 = x0.clamp(-1, 1)
    return prev, a_t, a_prev, eps, x0


def ddpm(denoise, schedule: Schedule, x: torch.Tensor, timesteps, *, noise, clip: bool = True,
         callback: Callable | None = None, eta: float = 1.0) -> torch.Tensor:
    """Ancestral sampling (DDPM, Ho et al. 2020, eq. 6-7 with sigma^2 = beta-tilde).

    Over a subsequence of timesteps it uses beta_t = 1 - abar_t / abar_prev, as the
    respaced DDPM of Nichol & Dhariwal (2021) does. eta is ignored."""
    ts = list(timesteps)
    for i, t in enumerate(ts):
        prev, a_t, a_prev, eps, x0 = _step_start(denoise, schedule, x, ts, i, clip)
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


def ddim(denoise, schedule: Schedule, x: torch.Tensor, timesteps, *, noise, clip: bool = True,
         callback: Callable | None = None, eta: float = 0.0) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12); eta = 0 is deterministic, eta = 1 is DDPM-like.

    With clip, the direction term uses the eps implied by the clipped x0 (as GLIDE and
    guided-diffusion do; diffusers' use_clipped_model_output=True). Pairing the clipped x0 with
    the network's raw eps steps off the trajectory whenever the clip bites, and more so the more
    steps are taken: on the shipped model after one epoch that made DDIM-50 worse than DDIM-20
    (docs/experiments.md)."""
    ts = list(timesteps)
    for i, t in enumerate(ts):
        prev, a_t, a_prev, eps, x0 = _step_start(denoise, schedule, x, ts, i, clip)
        if clip:
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        # eq. 16: sigma_t = eta * sqrt((1 - abar_prev)/(1 - abar_t)) * sqrt(1 - abar_t/abar_prev)
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev - sigma ** 2).clamp(min=0).sqrt() * eps
        if eta > 0 and prev >= 0:
            x = x + sigma * noise(x.shape)
        if callback is not None:
            callback(i, t, x, x0)
    return x


def _dpmpp_multistep(order: int, denoise, schedule: Schedule, x: torch.Tensor, timesteps, *, clip: bool,
                     callback: Callable | None, lower_order_final: bool | None) -> torch.Tensor:
    """DPM-Solver++(2M) / (3M) (Lu et al. 2022, Algorithm 2 and its third-order multistep form,
    as diffusers' DPMSolverMultistepScheduler with algorithm_type dpmsolver++, midpoint, final
    sigma 0). Step i has order min(order, i + 1); the last step, to sigma = 0, is always first
    order (it returns the x0 prediction); with lower_order_final (None: fewer than 15 steps) the
    one before it is at most second order."""
    ts = list(timesteps)
    n = len(ts)
    if lower_order_final is None:
        lower_order_final = n < LOWER_ORDER_FINAL_BELOW
    x0s, hs = [], []                                     # x0 predictions and step sizes so far
    for i, t in enumerate(ts):
        prev = ts[i + 1] if i + 1 < n else -1
        tb = _t_batch(t, x)
        a_s = schedule.abar(tb, x)
        _, x0 = _predict(denoise, schedule, x, tb, a_s)
        if clip:
            x0 = x0.clamp(-1, 1)
        if prev < 0:
            x_next = x0                                       # sigma = 0: the ODE ends at D
        else:
            a_t = schedule.abar(_t_batch(prev, x), x)
            lam_s = 0.5 * (torch.log(a_s) - torch.log1p(-a_s))
            lam_t = 0.5 * (torch.log(a_t) - torch.log1p(-a_t))
            h = lam_t - lam_s
            k = min(order, len(x0s) + 1)
            if lower_order_final and i == n - 2:
                k = min(k, 2)
            e = torch.expm1(-h)
            x_next = ((1 - a_t) / (1 - a_s)).sqrt() * x
            if k < 3:
                # (1 + 1/2r) x0 - 1/2r x0_prev, r = h_prev / h
                D = x0 if k == 1 else x0 + (x0 - x0s[-1]) * (h / (2 * hs[-1]))
                x_next = x_next - a_t.sqrt() * e * D
            else:
                r0, r1 = hs[-1] / h, hs[-2] / h
                d1_0, d1_1 = (x0 - x0s[-1]) / r0, (x0s[-1] - x0s[-2]) / r1
                D1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                D2 = (d1_0 - d1_1) / (r0 + r1)
                x_next = (x_next - a_t.sqrt() * e * x0 + a_t.sqrt() * (e / h + 1) * D1
                          - a_t.sqrt() * ((e + h) / h ** 2 - 0.5) * D2)
            hs.append(h)
        x0s = (x0s + [x0])[-2:]
        if callback is not None:
            callback(i, t, x_next, x0)
        x = x_next
    return x


def dpmpp_2m(denoise, schedule: Schedule, x: torch.Tensor, timesteps, *, noise=None, clip: bool = True,
             callback: Callable | None = None, eta: float = 0.0) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): a second-order multistep solver of the
    diffusion ODE in the data-prediction form, one network evaluation per step.

    With alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t),
    h = lambda_t - lambda_s and D the x0 prediction (extrapolated from the last two):
        x_t = (sigma_t / sigma_s) x_s - alpha_t (exp(-h) - 1) D
    The first step is first order (no history yet); the last step, to sigma = 0, returns D of
    first order, i.e. the clean-image prediction (a second-order step to sigma = 0 does not exist:
    h is infinite). So DPM-Solver's and diffusers' lower_order_final, their default below 15 steps,
    is what this solver always does. Deterministic: `noise` and eta are unused."""
    return _dpmpp_multistep(2, denoise, schedule, x, timesteps, clip=clip, callback=callback,
                            lower_order_final=False)


def dpmpp_3m(denoise, schedule: Schedule, x: torch.Tensor, timesteps, *, noise=None, clip: bool = True,
             callback: Callable | None = None, eta: float = 0.0, lower_order_final: bool | None = None) -> torch.Tensor:
    """DPM-Solver++(3M): the third-order multistep form (diffusers' solver_order=3). Steps 1 and
    2 are first and second order; the last is first order (to sigma = 0); with lower_order_final
    (None: below 15 steps, as diffusers) the second-to-last is second order. Lu et al. advise
    order 2 for guided sampling, 3 for unguided. Deterministic: `noise` and eta are unused."""
    return _dpmpp_multistep(3, denoise, schedule, x, timesteps, clip=clip, callback=callback,
                            lower_order_final=lower_order_final)


# The consistency function of a network (Song et al. 2023, eq. 7, in the VP form): f(x_t, t) =
# c_skip(t) x_t + (1 - c_skip(t)) x0_net(x_t, t), with c_skip = s^2 / ((sigma_t - sigma_0)^2 + s^2)
# and sigma_t = sqrt((1 - abar_t) / abar_t): exactly x_t at the smallest noise level (t = 0, the
# boundary condition f(x, t_min) = x), and the network's own x0 prediction once sigma_t is a few
# BOUNDARY_SIGMA above it. A diffusion model is therefore its own starting point: distillation
# (`ddpmlab distill`) fine-tunes the teacher's weights into a student under this very function.
BOUNDARY_SIGMA = 0.01


def sigma_of(a: torch.Tensor) -> torch.Tensor:
    """The noise-to-signal ratio sigma_t = sqrt((1 - abar_t) / abar_t) of abar_t (EDM's sigma)."""
    return ((1 - a) / a).sqrt()


def consistency_x0(schedule: Schedule, x: torch.Tensor, t: torch.Tensor, x0_net: torch.Tensor) -> torch.Tensor:
    """f(x_t, t) from the network's x0 prediction at x_t (above): shapes (B, C, H, W), t (B,).
    c_skip is computed in float64: near t = 0, 1 - abar_t in float32 keeps three digits."""
    like = torch.empty((), dtype=torch.float64, device=x.device).expand(x.shape)
    sigma = sigma_of(schedule.abar(t, like))
    sigma_0 = sigma_of(schedule.abar(torch.zeros_like(t), like))
    c_skip = (BOUNDARY_SIGMA ** 2 / ((sigma - sigma_0) ** 2 + BOUNDARY_SIGMA ** 2)).to(x.dtype)
    return c_skip * x + (1 - c_skip) * x0_net


def consistency(denoise, schedule: Schedule, x: torch.Tensor, timesteps, *, noise, clip: bool = True,
                callback: Callable | None = None, eta: float = 0.0) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1): at each timestep the clean
    image is the consistency function f(x_t, t) (`consistency_x0`): one network evaluation; before
    the next timestep s the image is noised afresh to that level, x_s = sqrt(abar_s) x0 +
    sqrt(1 - abar_s) z. One step is f(x_T, T). eta is unused (the re-noising is the stochasticity)."""
    ts = list(timesteps)
    for i, t in enumerate(ts):
        tb = _t_batch(t, x)
        _, x0 = _predict(denoise, schedule, x, tb, schedule.abar(tb, x))
        x0 = consistency_x0(schedule, x, tb, x0)
        if clip:
            x0 = x0.clamp(-1, 1)
        if i + 1 < len(ts):
            a_next = schedule.abar(_t_batch(ts[i + 1], x), x)
            x_next = a_next.sqrt() * x0 + (1 - a_next).sqrt() * noise(x.shape)
        else:
            x_next = x0
        if callback is not None:
            callback(i, t, x_next, x0)
        x = x_next
    return x


SAMPLERS = {"ddpm": ddpm, "ddim": ddim, "dpm++2m": dpmpp_2m, "dpm++3m": dpmpp_3m, "consistency": consistency}
assert tuple(SAMPLERS) == SAMPLER_NAMES, "defaults.SAMPLER_NAMES must list diffusion.SAMPLERS"
# DEFAULT_SAMPLER, DEFAULT_STEPS, DEFAULT_SPACING and SAMPLE_PRECISION live in defaults.py (imported above)


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


def count_nfe(schedule: Schedule, s: Sampling) -> int:
    """Network evaluations per image of sampling as `s` says: one per step, two for a guided step
    (the conditional and the null label, in one pass of twice the batch or two passes; or the
    network and autoguidance's weaker one): the steps `guidance_at` guides."""
    if not s.guidance and not s.autoguidance:
        return s.steps
    ts = make_timesteps(schedule.T, s.steps, s.spacing, schedule, s.sigma_max)
    return s.steps + sum(guidance_at(int(t), s) is not None for t in ts)


def guidance_at(t: int, s: Sampling) -> str | None:
    """How the step at timestep t is guided: "auto" (autoguidance, which takes the step over in
    its interval), "cfg" (classifier-free, inside its interval), or None (one conditional pass).
    guided_denoiser samples by it and count_nfe counts by it, so the two cannot disagree."""
    if s.autoguidance and (s.autoguidance_interval is None or s.autoguidance_interval[0] <= t <= s.autoguidance_interval[1]):
        return "auto"
    if s.guidance and (s.guidance_interval is None or s.guidance_interval[0] <= t <= s.guidance_interval[1]):
        return "cfg"
    return None


def guided_denoiser(model, labels: torch.Tensor | None, s: Sampling, null_label: int, guide=None,
                    batched: bool | None = None):
    """The one function a sampler calls: (x_t, t) -> the network's output (eps, v or x0, as the
    network predicts), with the guidance of `s` folded in. Both kinds extrapolate the conditional
    output away from a reference, out = ref + (1 + w) (cond - ref) (EDM2's ref.lerp(cond, 1 + w)):

      classifier-free (Ho & Salimans 2022): ref is the null label's output, w = s.guidance, at the
        steps inside s.guidance_interval (guidance in a limited interval, Kynkaanniemi et al. 2024);
      autoguidance (Karras et al. 2024): ref is the weaker network `guide` with the same labels,
        w = s.autoguidance, at the steps inside s.autoguidance_interval, where it takes the step over.

    The same combination of a v or x0 output is the same guided sampler: each is affine in eps
    with coefficients that depend on x_t and t only. batched: the conditional and null-label
    passes as one pass of twice the batch (None: except on a CPU, where the doubled batch's
    activations outgrow glibc's mmap threshold and are page-faulted afresh by every op, so two
    passes of the batch are faster; the same numbers)."""
    if labels is None or (not s.guidance and not s.autoguidance):
        return lambda x, t: model(x, t, labels)
    null = torch.full_like(labels, null_label)
    both = torch.cat([labels, null])

    def denoise(x, t):
        how = guidance_at(int(t[0]), s)          # a sampler's t is one timestep for the batch
        if how is None:
            return model(x, t, labels)
        if how == "auto":
            cond = model(x, t, labels)
            return cond + s.autoguidance * (cond - guide(x, t, labels))
        if batched if batched is not None else x.device.type != "cpu":
            cond, uncond = model(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
        else:
            cond, uncond = model(x, t, labels), model(x, t, null)
        return cond + s.guidance * (cond - uncond)
    return denoise


def _in_precision(denoise, device: torch.device, precision: str):
    if precision == "fp32":
        return denoise

    def run(x, t):
        with autocast(device, precision):
            return denoise(x, t).float()
    return run


@torch.inference_mode()
def generate(model, schedule: Schedule, shape, s: Sampling, *, seeds, labels=None, eta: float | None = None,
             null_label: int = 0, clip: bool = True, callback=None, device="cpu", batch_size: int | None = None,
             precision: str = "fp32", guide=None) -> torch.Tensor:
    """Draw len(seeds) images of `shape` (C, H, W) in [-1, 1] as `s` says; returns a float32 CPU
    tensor. The sampler sees one denoiser (`guided_denoiser`, guide: autoguidance's weaker network)
    and the timesteps (`make_timesteps`).

    precision "bf16": the network runs under bf16 autocast and its output is cast back, so the
    solver's state and arithmetic stay fp32.

    batch_size None: 256 on accelerators, 64 on a CPU, where big batches are slower per image
    (activations past glibc's 32 MB mmap threshold are mapped and page-faulted afresh by every op;
    docs/experiments.md), and guidance doubles the batch the network sees off a CPU (on a CPU it
    makes two passes, `guided_denoiser`)."""
    if s.autoguidance and guide is None:
        raise ValueError("autoguidance needs its guide network")
    fn = get_sampler(s.sampler)
    if batch_size is None:
        batch_size = 64 if torch.device(device).type == "cpu" else 256
    ts = make_timesteps(schedule.T, s.steps, s.spacing, schedule, s.sigma_max)
    kw = {} if eta is None else {"eta": eta}
    out = []
    # one tick per image and solver step; shown on a terminal while the command line allows it
    bar = progress_bar(total=len(seeds) * len(ts), desc=f"sampling ({s.sampler}, {len(ts)} steps)", unit="img-step")
    with bar:
        for i in range(0, len(seeds), batch_size):
            chunk = list(seeds[i:i + batch_size])
            noise = PerImageNoise(chunk, device)
            x = noise((len(chunk), *shape))
            lab = None if labels is None else labels[i:i + batch_size].to(device)
            cb = None if callback is None else (lambda j, t, xt, x0, _i=i: callback(_i, j, t, xt, x0))
            denoise = _in_precision(guided_denoiser(model, lab, s, null_label, guide), torch.device(device), precision)
            x = fn(_ticking(denoise, bar, len(chunk)), schedule, x, ts, noise=noise, clip=clip, callback=cb, **kw)
            out.append(x.float().cpu())
    return torch.cat(out)


def _ticking(denoise, bar, n: int):
    def run(x, t):
        e = denoise(x, t)
        bar.update(n)
        return e
    return run
