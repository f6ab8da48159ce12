"""The diffusion maths against diffusers' schedulers as an oracle."""
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from ddpmlab.config import ConfigError, DiffusionConfig
from ddpmlab.diffusion import (PerImageNoise, Schedule, ddim, ddpm, dpmpp_2m, dpmpp_3m, make_schedule, make_timesteps,
                               q_sample, q_step)


def same_tables(ref):
    """Our Schedule over diffusers' own float32 tables, so the sampler maths is compared alone
    (the tables are compared in test_schedule_matches_diffusers; float32 vs float64 cumprod
    differences would otherwise be amplified over 1000 steps)."""
    return Schedule(ref.betas.double(), ref.alphas_cumprod.double())


def dummy_eps(x, t):
    """A deterministic, t-dependent stand-in for a network."""
    return torch.tanh(x * 0.7 + torch.sin(t.float()[:, None, None, None] / 100.0))


@pytest.mark.parametrize("kind,name", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_schedule_matches_diffusers(kind, name):
    ours = make_schedule(DiffusionConfig(schedule=kind))
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=name)
    torch.testing.assert_close(ours.betas.float(), ref.betas, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.alphas_cumprod.float(), ref.alphas_cumprod, atol=1e-5, rtol=1e-4)


def test_closed_form_noising_equals_iterated_noising():
    s = make_schedule()
    x0 = torch.rand(2000, 1, 2, 2) * 2 - 1
    g = torch.Generator().manual_seed(0)
    x = x0.double()
    for t in range(300):
        x = q_step(s, x, t, torch.randn(x.shape, generator=g, dtype=torch.float64))
    # iterated chain: same distribution as the closed form, x_t ~ N(sqrt(abar) x0, 1 - abar)
    a = s.alphas_cumprod[299]
    resid = (x - a.sqrt() * x0.double()) / (1 - a).sqrt()
    assert abs(resid.mean().item()) < 0.03 and abs(resid.std().item() - 1) < 0.03
    # and composing the deterministic part: product of sqrt(1 - beta) is sqrt(abar)
    torch.testing.assert_close(torch.prod((1 - s.betas[:300]).sqrt()), a.sqrt())
    xt = q_sample(s, x0, torch.full((2000,), 299), torch.zeros_like(x0))
    torch.testing.assert_close(xt, (a.sqrt() * x0.double()).float())


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [1000, 50])
def test_ddpm_trajectory_matches_diffusers(schedule, steps):
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear" if schedule == "linear" else "squaredcos_cap_v2",
                        clip_sample=True, variance_type="fixed_small", timestep_spacing="trailing")
    ours = same_tables(ref)
    ref.set_timesteps(steps)
    assert make_timesteps(1000, steps) == ref.timesteps.tolist()
    traj, traj_ref = trajectories(ref, ours, ddpm, steps)
    assert len(traj) == len(traj_ref) == steps
    for a, b in zip(traj, traj_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("steps", [10, 50, 100])
def test_ddim_trajectory_matches_diffusers(eta, steps):
    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True,
                        timestep_spacing="trailing", set_alpha_to_one=True)
    ours = same_tables(ref)
    ref.set_timesteps(steps)
    assert make_timesteps(1000, steps) == ref.timesteps.tolist()
    traj, traj_ref = ddim_trajectories(ref, ours, steps, eta)
    assert len(traj) == len(traj_ref) == steps
    for a, b in zip(traj, traj_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def trajectories(ref, ours, sampler, steps: int, ref_kw=None, our_kw=None):
    """Every intermediate state of a diffusers scheduler (ref, timesteps set) and of our sampler
    (on the schedule `ours`, trailing timesteps) on the same dummy network, noise and start."""
    x_ref = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    traj_ref = []
    for t in ref.timesteps:
        x_ref = ref.step(dummy_eps(x_ref, t.expand(4)), t, x_ref, generator=g, **(ref_kw or {})).prev_sample
        traj_ref.append(x_ref)
    # diffusers also draws (unused) noise at the last step; ours draws only where it is used
    g = torch.Generator().manual_seed(2)
    traj = []
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    sampler(dummy_eps, ours, x, make_timesteps(1000, steps), noise=lambda shape: torch.randn(shape, generator=g),
            callback=lambda i, t, xt, x0: traj.append(xt), **(our_kw or {}))
    return traj, traj_ref


def ddim_trajectories(ref, ours, steps: int, eta: float):
    return trajectories(ref, ours, ddim, steps, {"eta": eta, "use_clipped_model_output": True}, {"eta": eta})


def test_timesteps_bounds():
    assert make_timesteps(1000, 1) == [999]
    assert make_timesteps(1000, 1000) == list(range(999, -1, -1))
    for bad in (0, 1001, -3):
        with pytest.raises(ConfigError, match="between 1 and 1000"):
            make_timesteps(1000, bad)


def test_per_image_noise_independent_of_batch():
    a = PerImageNoise([5, 6, 7])((3, 1, 4, 4))
    b = PerImageNoise([6])((1, 1, 4, 4))
    torch.testing.assert_close(a[1:2], b)


# Linear schedule only: with the cosine schedule abar_999 ~ 1e-9, and recovering x0 from x_999
# in float32 (as diffusers does) loses ~1e-3 absolute, so neither side is a reference there.
@pytest.mark.parametrize("schedule", ["linear"])
@pytest.mark.parametrize("steps", [1, 5, 10, 20, 50])
def test_dpmpp_2m_trajectory_matches_diffusers(schedule, steps):
    ref = DPMSolverMultistepScheduler(num_train_timesteps=1000, solver_order=2, algorithm_type="dpmsolver++",
                                      solver_type="midpoint", timestep_spacing="trailing",
                                      beta_schedule="linear" if schedule == "linear" else "squaredcos_cap_v2")
    ours = same_tables(ref)
    ac = ref.alphas_cumprod

    def bounded_eps(x, t):
        """A dummy whose x0 prediction is tanh(...), bounded: the unclipped solver is compared
        without float32 blowing up where abar_t ~ 0 (cosine schedule at t = 999)."""
        a = ac[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * dummy_eps(x, t)) / (1 - a).sqrt()
    ref.set_timesteps(steps)
    ts = make_timesteps(1000, steps)
    assert ts == ref.timesteps.tolist()
    x_ref = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    traj_ref = []
    for t in ref.timesteps:
        x_ref = ref.step(bounded_eps(x_ref, t.expand(4)), t, x_ref).prev_sample
        traj_ref.append(x_ref)
    traj = []
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    dpmpp_2m(bounded_eps, ours, x, ts, clip=False, callback=lambda i, t, xt, x0: traj.append(xt))
    assert len(traj) == len(traj_ref)
    # one step jumps from t = 999 straight to x0, recovered by dividing by sqrt(abar_999) ~ 0.006:
    # each side's float32 rounding (diffusers keeps its sigma tables in float32) grows ~150-fold
    atol = 1e-4 if steps == 1 else 1e-5
    for a, b in zip(traj, traj_ref):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)


# --------------------------------------------------------------------------- prediction types, 3M, spacings

PRED_NAME = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
SCHED_NAME = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


def same_tables_as(ref, prediction):
    return Schedule(ref.betas.double(), ref.alphas_cumprod.double(), prediction)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_v_prediction_matches_diffusers(schedule, eta, steps):
    """dummy_eps read as v: diffusers converts with prediction_type="v_prediction"."""
    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule=SCHED_NAME[schedule], clip_sample=True,
                        timestep_spacing="trailing", set_alpha_to_one=True, prediction_type="v_prediction")
    ours = same_tables_as(ref, "v")
    ref.set_timesteps(steps)
    traj, traj_ref = ddim_trajectories(ref, ours, steps, eta)
    assert len(traj) == len(traj_ref) == steps
    for a, b in zip(traj, traj_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_ddpm_prediction_types_match_diffusers(prediction):
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True,
                        variance_type="fixed_small", timestep_spacing="trailing", prediction_type=PRED_NAME[prediction])
    ours = same_tables_as(ref, prediction)
    ref.set_timesteps(50)
    traj, traj_ref = trajectories(ref, ours, ddpm, 50)
    assert len(traj) == len(traj_ref) == 50
    for a, b in zip(traj, traj_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def _dpmpp_against_diffusers(prediction, order, schedule, clip, steps, model, timesteps=None, lower_order_final=None):
    """Our DPM-Solver++ trajectory and diffusers' on the same model and timesteps.

    clip: diffusers has no plain clip; its `thresholding` is dynamic thresholding (Imagen): per
    sample s = the dynamic_thresholding_ratio quantile of |x0|, clamped to [1, sample_max_value],
    then x0 = clamp(x0, -s, s) / s. With sample_max_value = 1 that s is always 1, which is
    exactly our clip of x0 to [-1, 1]."""
    ref = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, solver_order=order, algorithm_type="dpmsolver++", solver_type="midpoint",
        timestep_spacing="trailing", beta_schedule=SCHED_NAME[schedule], prediction_type=PRED_NAME[prediction],
        thresholding=clip, sample_max_value=1.0, lower_order_final=lower_order_final is not False)
    ours = same_tables_as(ref, prediction)
    if timesteps is None:
        ref.set_timesteps(steps)
        timesteps = make_timesteps(1000, steps)
        assert timesteps == ref.timesteps.tolist()
    else:
        ref.set_timesteps(timesteps=timesteps)
    x_ref = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    traj_ref = []
    for t in ref.timesteps:
        x_ref = ref.step(model(x_ref, t.expand(4)), t, x_ref).prev_sample
        traj_ref.append(x_ref)
    traj = []
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    fn = {2: dpmpp_2m, 3: dpmpp_3m}[order]
    final = {} if order == 2 else {"lower_order_final": lower_order_final}   # 2M: always lower order
    fn(model, ours, x, timesteps, clip=clip, callback=lambda i, t, xt, x0: traj.append(xt), **final)
    assert len(traj) == len(traj_ref)
    # with one or two steps the first jumps from t = 999 far down, its x0 recovered by dividing by
    # sqrt(abar_999) ~ 0.006: each side's float32 rounding grows ~150-fold (see the 2M test above)
    atol = 1e-4 if len(traj) <= 2 else 1e-5
    for a, b in zip(traj, traj_ref):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)


# v and x0 read x0 without dividing by sqrt(abar), so unlike eps (above) the cosine schedule is
# compared too, with the raw dummy as the network and without clipping.
@pytest.mark.parametrize("prediction", ["v", "x0"])
@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("steps", [1, 3, 10, 15, 50])
def test_dpmpp_prediction_types_match_diffusers(prediction, order, schedule, clip, steps):
    _dpmpp_against_diffusers(prediction, order, schedule, clip, steps, dummy_eps)


# eps with clipping: x0 is clamped, so the float32 loss at abar ~ 0 (cosine, t = 999) is bounded
@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [1, 5, 20])
def test_dpmpp_eps_with_clipping_matches_diffusers_thresholding(order, schedule, steps):
    _dpmpp_against_diffusers("eps", order, schedule, True, steps, dummy_eps)


@pytest.mark.parametrize("steps", [2, 3, 5, 10, 14, 15, 20, 50])
@pytest.mark.parametrize("lower_order_final", [None, False])
def test_dpmpp_3m_eps_matches_diffusers(steps, lower_order_final):
    """None: lower-order final steps below 15 steps (diffusers' lower_order_final=True); False:
    third order up to the last step but one (the last, to sigma = 0, is first order in both)."""
    ac = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").alphas_cumprod

    def bounded_eps(x, t):
        a = ac[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * dummy_eps(x, t)) / (1 - a).sqrt()
    _dpmpp_against_diffusers("eps", 3, "linear", False, steps, bounded_eps, lower_order_final=lower_order_final)


def test_dpmpp_2m_last_step_is_first_order():
    """lower_order_final for 2M: the last step, to sigma = 0, returns that step's x0 prediction."""
    s = make_schedule()
    seen = []
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    out = dpmpp_2m(dummy_eps, s, x, make_timesteps(1000, 5), clip=False, callback=lambda i, t, xt, x0: seen.append(x0))
    torch.testing.assert_close(out, seen[-1], rtol=0, atol=0)


# diffusers keeps fractional timesteps for squaredcos_cap_v2 (it rounds only other schedules),
# and where two land on one timestep it keeps both: compared on the linear schedule while its
# timesteps are distinct
@pytest.mark.parametrize("spacing,flag,max_steps", [("logsnr", "use_lu_lambdas", 25), ("karras", "use_karras_sigmas", 50)])
def test_spacings_match_diffusers(spacing, flag, max_steps):
    for steps in (2, 3, 5, 10, 20, max_steps):
        ref = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", **{flag: True})
        ref.set_timesteps(steps)
        assert make_timesteps(1000, steps, spacing, same_tables(ref)) == ref.timesteps.tolist(), steps


@pytest.mark.parametrize("spacing", ["logsnr", "karras"])
@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("steps", [5, 20])
def test_dpmpp_on_other_spacings_matches_diffusers(spacing, order, steps):
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    ts = make_timesteps(1000, steps, spacing, same_tables(ref))
    _dpmpp_against_diffusers("v", order, "linear", True, steps, dummy_eps, timesteps=ts)
