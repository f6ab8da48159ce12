"""Sampling options: timestep spacings, trajectory lengths, guidance and its interval, batch
invariance of `generate`, the defaults module and the settings a run carries."""
import dataclasses

import numpy as np
import pytest
import torch

from ddpmlab import cli, defaults
from ddpmlab.config import ConfigError, DiffusionConfig, Sampling, SamplingConfig, from_dict, to_dict
from ddpmlab.diffusion import (SAMPLERS, Schedule, count_nfe, generate, guided_denoiser, make_schedule,
                               make_timesteps, model_output_to_eps_x0, training_target)

LINEAR, COSINE = make_schedule(DiffusionConfig(schedule="linear")), make_schedule(DiffusionConfig(schedule="cosine"))


def dummy_eps(x, t):
    return torch.tanh(x * 0.7 + torch.sin(t.float()[:, None, None, None] / 100.0))


class TinyNet(torch.nn.Module):
    """Deterministic and per-image: no op mixes the images of a batch."""

    def __init__(self, num_classes=3):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.scale = torch.nn.Parameter(torch.rand(num_classes + 1, generator=g) + 0.5)
        self.calls = []

    def forward(self, x, t, label):
        self.calls.append((x.shape[0], int(t[0])))
        s = 1.0 if label is None else self.scale[label].view(-1, 1, 1, 1)
        return torch.tanh(0.6 * x * s + torch.sin(t.float() / 150).view(-1, 1, 1, 1)) + 0.05 * x.mean((1, 2, 3), keepdim=True)


# --------------------------------------------------------------------------- spacings

@pytest.mark.parametrize("schedule", [LINEAR, COSINE], ids=["linear", "cosine"])
@pytest.mark.parametrize("spacing", ["logsnr", "karras"])
@pytest.mark.parametrize("steps", [1, 2, 5, 20, 100, 1000])
def test_spacings_are_distinct_decreasing_from_T_minus_1_to_0(schedule, spacing, steps):
    ts = make_timesteps(1000, steps, spacing, schedule)
    assert len(ts) == steps and all(isinstance(t, int) for t in ts)
    assert ts[0] == 999 and all(a > b for a, b in zip(ts, ts[1:]))
    assert ts[-1] == (999 if steps == 1 else 0)


@pytest.mark.parametrize("steps", [5, 10, 20])
def test_logsnr_spacing_has_near_uniform_lambda_gaps(steps):
    lam = -LINEAR.log_sigmas().numpy()

    def cv(ts):
        gaps = np.diff(lam[ts])
        return gaps.std() / gaps.mean()
    assert cv(make_timesteps(1000, steps, "logsnr", LINEAR)) < 0.1       # rounding to integer t near t = 0
    assert cv(make_timesteps(1000, steps, "trailing")) > 0.2


def test_karras_spacing_is_the_rho_7_sigma_ramp():
    ts = make_timesteps(1000, 10, "karras", LINEAR)
    sig = LINEAR.log_sigmas().exp().numpy()
    ramp = np.linspace(0, 1, 10)
    want = (sig[999] ** (1 / 7) + ramp * (sig[0] ** (1 / 7) - sig[999] ** (1 / 7))) ** 7
    # each chosen timestep is the integer t nearest to the wanted sigma (in t, interpolating log sigma)
    frac = np.interp(np.log(want), np.log(sig), np.arange(1000))
    assert np.abs(np.array(ts) - frac).max() <= 0.5


@pytest.mark.parametrize("spacing", ["logsnr", "karras"])
def test_sigma_max_caps_the_top_of_the_spacing(spacing):
    ls = COSINE.log_sigmas().numpy()
    full, capped = make_timesteps(1000, 10, spacing, COSINE), make_timesteps(1000, 10, spacing, COSINE, sigma_max=80.0)
    assert capped[0] == full[0] == 999 and capped[-1] == 0 and all(a > b for a, b in zip(capped, capped[1:]))
    # uncapped, the cosine schedule's top (log sigma 9.9) pulls the second step above sigma 100; capped, every
    # step after the first lies below 80
    assert ls[full[1]] > np.log(100) and ls[capped[1:]].max() < np.log(80)
    if spacing == "logsnr":     # evenly spaced in log sigma from log 80 down, the first point moved to T-1
        want = np.linspace(np.log(80), ls[0], 10)[1:]
        assert np.abs(ls[capped[1:]] - want).max() < 0.05
    # a cap at or above the schedule's top changes nothing: the linear schedule's sigma at T-1 is 157
    assert make_timesteps(1000, 10, spacing, LINEAR, sigma_max=1000.0) == make_timesteps(1000, 10, spacing, LINEAR)
    assert make_timesteps(1000, 10, spacing, LINEAR, sigma_max=80.0) != make_timesteps(1000, 10, spacing, LINEAR)


def test_sigma_max_errors():
    with pytest.raises(ConfigError, match="trailing is evenly spaced in t"):
        make_timesteps(1000, 10, "trailing", LINEAR, sigma_max=80.0)
    with pytest.raises(ConfigError, match="must be > 0"):
        make_timesteps(1000, 10, "logsnr", LINEAR, sigma_max=0.0)
    with pytest.raises(ConfigError, match="not above the schedule's smallest sigma"):
        make_timesteps(1000, 10, "logsnr", LINEAR, sigma_max=0.001)


def test_sigma_max_moves_steps_into_a_guidance_interval():
    from ddpmlab.diffusion import count_nfe
    # the cosine schedule's uncapped steps 2-4 lie above t 946; capped at 80 they move down into 203..946
    guided = Sampling("dpm++2m", 10, 0.3, "logsnr", (203, 946))
    assert count_nfe(COSINE, guided) < count_nfe(COSINE, dataclasses.replace(guided, sigma_max=80.0))
    assert count_nfe(COSINE, Sampling("dpm++2m", 10, 0.3, "logsnr", None, 80.0)) == 20


def test_spacing_errors_name_the_valid_ones():
    with pytest.raises(ConfigError, match="valid: trailing, logsnr, karras"):
        make_timesteps(1000, 10, "linspace", LINEAR)
    with pytest.raises(ConfigError, match="needs the diffusion schedule"):
        make_timesteps(1000, 10, "karras")
    assert make_timesteps(1000, 10, None) == make_timesteps(1000, 10)     # None: trailing


# --------------------------------------------------------------------------- trajectories

@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("spacing", defaults.SPACINGS)
@pytest.mark.parametrize("steps", [1, 2, 7, 20])
def test_every_sampler_calls_back_once_per_step(sampler, spacing, steps):
    ts = make_timesteps(1000, steps, spacing, LINEAR)
    seen, evals = [], []

    def fn(x, t):
        evals.append(int(t[0]))
        return dummy_eps(x, t)
    g = torch.Generator().manual_seed(0)
    x = SAMPLERS[sampler](fn, LINEAR, torch.randn(2, 1, 4, 4, generator=g), ts,
                          noise=lambda shape: torch.randn(shape, generator=g), callback=lambda i, t, xt, x0: seen.append((i, t)))
    assert seen == list(enumerate(ts)) and evals == ts
    assert torch.isfinite(x).all()


def test_v_and_x0_outputs_convert_to_the_same_eps_and_x0():
    x0 = torch.rand(3, 1, 4, 4) * 2 - 1
    eps = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 500, 990])
    xt = LINEAR.abar(t, x0).sqrt() * x0 + (1 - LINEAR.abar(t, x0)).sqrt() * eps
    a = LINEAR.abar(t, x0)
    for pred in ("eps", "v", "x0"):
        s = Schedule(LINEAR.betas, LINEAR.alphas_cumprod, pred)
        e, x = model_output_to_eps_x0(pred, xt, training_target(s, x0, eps, t), a)
        torch.testing.assert_close(e, eps, atol=2e-3, rtol=0)             # eps from x0 at t = 10 divides by 0.04
        torch.testing.assert_close(x, x0, atol=2e-4, rtol=0)


# --------------------------------------------------------------------------- guidance

def test_guidance_formula_by_hand():
    calls = []

    def model(x, t, label):          # eps: 0.1 * label + x, so cond - uncond = 0.1 * (label - null)
        calls.append(x.shape[0])
        return 0.1 * label.float().view(-1, 1, 1, 1) + x
    labels, x, t = torch.tensor([0, 2]), torch.full((2, 1, 1, 1), 0.5), torch.tensor([300, 300])
    # cond = 0.1 y + 0.5, uncond = 0.5 + 0.5: eps = cond + 3 (cond - uncond)
    want = torch.tensor([0.5 + 3 * (0.0 - 0.5), 0.7 + 3 * (0.2 - 0.5)]).view(2, 1, 1, 1)
    w3 = Sampling("ddim", 10, guidance=3.0)
    torch.testing.assert_close(guided_denoiser(model, labels, w3, null_label=5, batched=True)(x, t), want)
    assert calls == [4]                                 # one forward pass of the doubled batch
    calls.clear()
    torch.testing.assert_close(guided_denoiser(model, labels, w3, null_label=5)(x, t), want)
    assert calls == [2, 2]                              # on a CPU by default: two passes of the batch


def test_guidance_interval_forward_passes():
    net = TinyNet()
    labels = torch.tensor([0, 1, 2])
    fn = guided_denoiser(net, labels, Sampling("ddim", 10, 2.0, guidance_interval=(100, 500)), null_label=3, batched=True)
    x = torch.randn(3, 1, 4, 4)
    for t, batch in ((99, 3), (100, 6), (300, 6), (500, 6), (501, 3), (999, 3)):
        net.calls.clear()
        out = fn(x, torch.full((3,), t))
        assert net.calls == [(batch, t)], t
        if batch == 3:                                  # outside: the plain conditional output
            torch.testing.assert_close(out, net(x, torch.full((3,), t), labels))
    # and through generate: guided steps are exactly those of the interval
    net.calls.clear()
    generate(net, LINEAR, (1, 4, 4), Sampling("ddim", 10, 2.0, guidance_interval=(200, 700)), seeds=range(3),
             labels=labels, null_label=3)
    ts = make_timesteps(1000, 10)
    assert net.calls == [c for t in ts for c in ([(3, t), (3, t)] if 200 <= t <= 700 else [(3, t)])]


def test_autoguidance_steers_away_from_the_guide_in_its_interval_only():
    net, weak = TinyNet(), TinyNet()
    with torch.no_grad():
        weak.scale.mul_(0.5)                            # a different network, so the formula shows
    labels = torch.tensor([0, 1, 2])
    both = Sampling("ddim", 10, 2.0, guidance_interval=(0, 999), autoguidance=1.5, autoguidance_interval=(100, 500))
    fn = guided_denoiser(net, labels, both, null_label=3, guide=weak, batched=True)
    x = torch.randn(3, 1, 4, 4)
    for t in (99, 100, 300, 500, 501):
        net.calls.clear(), weak.calls.clear()
        tt = torch.full((3,), t)
        out = fn(x, tt)
        if 100 <= t <= 500:     # the guide's step: one pass of each network, the same labels, no null label
            assert net.calls == [(3, t)] and weak.calls == [(3, t)], t
            c = net(x, tt, labels)
            torch.testing.assert_close(out, c + 1.5 * (c - weak(x, tt, labels)))
        else:                   # outside it, classifier-free guidance as before: one doubled pass
            assert net.calls == [(6, t)] and weak.calls == [], t
    # without classifier-free guidance, the steps outside the guide's interval are one plain pass
    fn = guided_denoiser(net, labels, dataclasses.replace(both, guidance=0.0, guidance_interval=None), null_label=3,
                         guide=weak)
    net.calls.clear(), weak.calls.clear()
    torch.testing.assert_close(fn(x, torch.full((3,), 700)), net(x, torch.full((3,), 700), labels))
    assert weak.calls == []
    # weight 0 is no autoguidance at all
    assert guided_denoiser(net, labels, Sampling("ddim", 10), null_label=3, guide=weak)(x, torch.full((3,), 300)).shape == x.shape
    assert weak.calls == []


def test_count_nfe_counts_what_generate_runs_with_autoguidance():
    net, weak = TinyNet(), TinyNet()
    labels = torch.tensor([0, 1, 2])
    for guidance, interval, ag, ag_interval in ((0.0, None, 1.0, (200, 946)), (0.3, (300, 999), 1.0, (200, 600)),
                                                (0.3, (300, 999), 0.0, None), (0.0, None, 0.0, None)):
        net.calls.clear(), weak.calls.clear()
        s = Sampling("dpm++3m", 10, guidance, "logsnr", interval, 55.0, ag, ag_interval)
        generate(net, COSINE, (1, 4, 4), s, seeds=range(3), labels=labels, null_label=3, guide=weak)
        ran = sum(b // 3 for b, _ in net.calls) + len(weak.calls)           # network evaluations per image
        assert count_nfe(COSINE, s) == ran, (guidance, interval)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_generate_is_independent_of_the_batch_size(sampler, prediction):
    s = Schedule(LINEAR.betas, LINEAR.alphas_cumprod, prediction)
    net = TinyNet()
    labels = torch.arange(20) % 3
    kw = dict(seeds=range(100, 120), labels=labels, null_label=3)
    how = Sampling(sampler, 6, 1.5, "karras", (0, 900))
    ref = generate(net, s, (1, 5, 5), how, batch_size=64, **kw)
    for b in (1, 7):
        assert torch.equal(generate(net, s, (1, 5, 5), how, batch_size=b, **kw), ref), b


# --------------------------------------------------------------------------- settings and flags

def test_defaults_module_is_torch_free_and_lists_the_samplers():
    import subprocess
    import sys
    # run on its own (the package's __init__ imports torch): it needs neither torch nor ddpmlab
    code = f"import runpy, sys; runpy.run_path({defaults.__file__!r}); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
    assert tuple(SAMPLERS) == defaults.SAMPLER_NAMES


def test_sampling_config_new_fields_are_optional_and_checked():
    assert to_dict(SamplingConfig()) == {"sampler": None, "steps": None, "guidance": None}   # config.json as before
    s = from_dict(SamplingConfig, {"spacing": "karras", "guidance_interval": [100, 700], "sigma_max": 80})
    assert to_dict(s) == {"sampler": None, "steps": None, "guidance": None, "spacing": "karras",
                          "guidance_interval": [100, 700], "sigma_max": 80}
    for bad, needle in (({"spacing": "even"}, "valid: trailing, logsnr, karras"),
                        ({"sigma_max": 0}, "sigma_max must be a number > 0"),
                        ({"sigma_max": "80"}, "sigma_max must be a number > 0"),
                        ({"guidance_interval": [700, 100]}, "t_lo <= t_hi"),
                        ({"guidance_interval": [1.5, 3]}, "integer"), ({"guidance_interval": 5}, "expected"),
                        ({"autoguidance": 1.0}, "needs sampling.guide"), ({"guide": ""}, "directory name"),
                        ({"guide": "g", "autoguidance": "1"}, "must be a number"),
                        ({"guide": "g", "autoguidance_interval": [9, 1]}, "autoguidance_interval")):
        with pytest.raises(ConfigError, match=needle):
            from_dict(SamplingConfig, bad)


def test_resolve_sampling_carries_spacing_and_interval():
    from ddpmlab.recipes import make_run_config
    from ddpmlab.sample import resolve_sampling
    rc = make_run_config("resnet-class")
    assert resolve_sampling(rc) == Sampling("dpm++2m", 20, 0.0, "trailing", None, None)
    rc.sampling = SamplingConfig(spacing="logsnr", guidance=0.3, guidance_interval=[10, 20], sigma_max=80.0)
    assert resolve_sampling(rc) == Sampling("dpm++2m", 20, 0.3, "logsnr", (10, 20), 80.0)
    flags = SamplingConfig(spacing="karras", guidance_interval=[0, 999], sigma_max=20)
    assert resolve_sampling(rc, flags) == Sampling("dpm++2m", 20, 0.3, "karras", (0, 999), 20.0)
    # unguided, an interval means nothing: the same settings (and the same cached evaluation)
    assert resolve_sampling(rc, SamplingConfig(guidance=0.0)) == Sampling("dpm++2m", 20, 0.0, "logsnr", None, 80.0)
    # evenly spaced t has no range to cap: the run's own cap is dropped, one asked for is an error
    assert resolve_sampling(rc, SamplingConfig(spacing="trailing")) == Sampling("dpm++2m", 20, 0.3, "trailing", (10, 20))
    with pytest.raises(ConfigError, match="--sigma-max 80 caps the logsnr and karras spacings"):
        resolve_sampling(rc, SamplingConfig(spacing="trailing", sigma_max=80))
    # a resolved value passes through unchanged; autoguidance needs a guide the run names
    s = resolve_sampling(rc)
    assert resolve_sampling(rc, s) is s
    with pytest.raises(ConfigError, match="names no guide network"):
        resolve_sampling(rc, SamplingConfig(autoguidance=1.0))


def test_cli_spacing_and_interval_flags():
    ap = cli.build_parser()
    for cmd in (["sample", "r"], ["process", "r"], ["evaluate", "r"], ["report", "r"]):
        a = ap.parse_args(cmd + ["--spacing", "logsnr", "--guidance-interval", "100,800", "--sigma-max", "80"])
        assert a.spacing == "logsnr" and cli.parse_interval(a.guidance_interval) == [100, 800] and a.sigma_max == 80.0
    for bad in ("100", "a,b", "800,100", "-1,5", "1,2,3"):
        with pytest.raises(ConfigError, match="--guidance-interval"):
            cli.parse_interval(bad)


def test_cli_bad_interval_is_a_one_line_error(capsys):
    assert cli.main(["sample", "no-such-run", "--guidance-interval", "9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ddpmlab: error: --guidance-interval") and "\n" not in err

