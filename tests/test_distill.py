"""Few-step students (`ddpmlab distill`): the consistency function and its boundary condition by
hand, the consistency sampler, a student that starts as its teacher, resumes bit-identically,
is a run directory like any other and samples at one network evaluation a step."""
import json
import math
from types import SimpleNamespace

import pytest
import torch

from ddpmlab import checkpoint, cli
from ddpmlab.config import ConfigError, DiffusionConfig, DistillConfig, Sampling
from ddpmlab.diffusion import (BOUNDARY_SIGMA, PerImageNoise, consistency, consistency_x0, count_nfe, make_schedule,
                               make_timesteps, model_output_to_eps_x0)
from ddpmlab.distill import Distiller, distill
from ddpmlab.recipes import make_run_config
from ddpmlab.run import load_config
from ddpmlab.sample import load_run, resolve_sampling, sample
from ddpmlab.train import TrainingInterrupted, train
from test_report import tables

COSINE_V = make_schedule(DiffusionConfig(schedule="cosine", prediction="v"))
TINY_UNET = {"channels": 8, "channel_mults": (1, 2), "blocks_per_level": 1, "time_dim": 16, "class_dim": 8}


def test_consistency_function_by_hand():
    """f(x_t, t) = c x_t + (1 - c) x0_net with c = s^2 / ((sigma_t - sigma_0)^2 + s^2),
    sigma_t = sqrt((1 - abar_t) / abar_t): x_t itself at t = 0, the network's x0 far from it."""
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    x0 = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    ac = COSINE_V.alphas_cumprod.double()
    sigma = ((1 - ac) / ac).sqrt()
    for t in (0, 1, 3, 50, 500, 999):
        c = float(BOUNDARY_SIGMA ** 2 / ((sigma[t] - sigma[0]) ** 2 + BOUNDARY_SIGMA ** 2))
        got = consistency_x0(COSINE_V, x, torch.full((3,), t), x0)
        torch.testing.assert_close(got, c * x + (1 - c) * x0, rtol=1e-5, atol=1e-6)
        if t == 0:
            assert torch.equal(got, x)                     # the boundary condition, exactly
        if t >= 500:                                     # sigma_t >= 1: c < 1e-4, the network's x0
            torch.testing.assert_close(got, x0, rtol=0, atol=1e-3)


def vnet(x, t, label=None):
    """A deterministic stand-in for a v-prediction network."""
    return torch.tanh(0.5 * x + t.float()[:, None, None, None] / 1000)


def test_consistency_sampler_by_hand():
    """One step: f(x_T, T) of the image's own noise, clipped. Two steps: f again at the second
    timestep of that image noised afresh from the first step's x0, with the next draw of its noise."""
    seeds = [7, 8]
    noise = PerImageNoise(seeds)
    x_T = noise((2, 1, 4, 4))
    t = torch.full((2,), 999)
    a = COSINE_V.abar(t, x_T)
    want1 = consistency_x0(COSINE_V, x_T, t, model_output_to_eps_x0("v", x_T, vnet(x_T, t), a)[1]).clamp(-1, 1)
    got1 = consistency(vnet, COSINE_V, x_T.clone(), [999], noise=PerImageNoise(seeds))
    torch.testing.assert_close(got1, want1)
    ref = PerImageNoise(seeds)
    ref((2, 1, 4, 4))
    z = ref((2, 1, 4, 4))                                   # the draw after x_T: what re-noises step 1
    fresh = PerImageNoise(seeds)
    x = fresh((2, 1, 4, 4))
    a2 = COSINE_V.abar(torch.full((2,), 499), x)
    x_mid = a2.sqrt() * want1 + (1 - a2).sqrt() * z
    t2 = torch.full((2,), 499)
    want2 = consistency_x0(COSINE_V, x_mid, t2, model_output_to_eps_x0("v", x_mid, vnet(x_mid, t2), a2)[1]).clamp(-1, 1)
    torch.testing.assert_close(consistency(vnet, COSINE_V, x, [999, 499], noise=fresh), want2)


@pytest.mark.parametrize("pairs", ["uniform", "lognormal"])
def test_the_pairs_are_drawn_as_configured(pairs):
    """lognormal: pair i of the grid as often as the mass N(p_mean, p_std) puts on log sigma between
    its two timesteps, computed here with math.erf; uniform: every pair alike."""
    d = DistillConfig("t", pairs=pairs, p_mean=-1.1, p_std=2.0).validate()
    ts = make_timesteps(1000, 12, "logsnr", COSINE_V)
    me = SimpleNamespace(rc=SimpleNamespace(distill=d), schedule=COSINE_V, gen=torch.Generator().manual_seed(0),
                         device="cpu", pair_weights={})
    draws = 20_000
    counts = torch.bincount(torch.tensor([Distiller.pair(me, ts) for _ in range(draws)]), minlength=len(ts) - 1)
    ls = COSINE_V.log_sigmas()
    cdf = [0.5 * (1 + math.erf((float(ls[t]) + 1.1) / (2.0 * math.sqrt(2)))) for t in ts]
    mass = torch.tensor([cdf[i] - cdf[i + 1] for i in range(len(ts) - 1)])
    want = mass / mass.sum() if pairs == "lognormal" else torch.full((len(ts) - 1,), 1 / (len(ts) - 1))
    torch.testing.assert_close(counts / draws, want.float(), atol=0.012, rtol=0)   # 4 sd of a share at 20k draws
    if pairs == "lognormal":                      # the cosine schedule's all-noise top is rarely trained
        assert counts[0] < 0.2 * draws / (len(ts) - 1)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, fmnist_small):
    """A tiny class-conditional v-prediction UNet with null labels, trained a few steps."""
    run = tmp_path_factory.mktemp("teacher") / "run"
    rc = make_run_config("unet-block", TINY_UNET, recipe="fast", diffusion_overrides={"schedule": "cosine"},
                         max_steps=4, batch_size=16, snapshot_steps=0, device="cpu", precision="fp32")
    train(run, rc, data=fmnist_small.subset(64), progress=False)
    return run


@pytest.mark.parametrize("method", ["cd", "ect"])
def test_a_student_starts_as_its_teacher_and_resumes_bit_identically(tmp_path, teacher, fmnist_small, method,
                                                                     monkeypatch):
    """Interrupted after 3 of its 6 steps (as Ctrl-C does) and resumed, the student ends with the
    weights of the uninterrupted run."""
    data = fmnist_small.subset(128)
    kw = dict(method=method, data=data, progress=False, batch_size=16, device="cpu", precision="fp32")
    distill(teacher, tmp_path / "whole", max_steps=6, **kw)
    step = Distiller.train_step

    def stop_after_3(self, idx):
        out = step(self, idx)
        if self.step + 1 == 3:
            self.interrupted = True
        return out
    monkeypatch.setattr(Distiller, "train_step", stop_after_3)
    with pytest.raises(TrainingInterrupted):
        distill(teacher, tmp_path / "split", max_steps=6, **kw)
    monkeypatch.setattr(Distiller, "train_step", step)
    assert distill(None, tmp_path / "split", resume=True, data=data, progress=False)["steps"] == 6
    for name in ("model", "ema"):
        a = checkpoint.load_tensors(tmp_path / "whole", f"{name}.safetensors")
        b = checkpoint.load_tensors(tmp_path / "split", f"{name}.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), name
    moved = checkpoint.load_tensors(tmp_path / "whole", "model.safetensors")
    start = checkpoint.load_tensors(teacher, "ema.safetensors")
    assert any(not torch.equal(moved[k], start[k]) for k in start)      # it trained
    rc = load_config(tmp_path / "whole")
    assert rc.distill.method == method and rc.model == load_config(teacher).model
    assert (rc.distill.guidance.get("guidance") == load_config(teacher).sampling.guidance) == (method == "cd")


def test_a_student_is_a_run_like_any_other(tmp_path, teacher, fmnist_small, capsys):
    student = tmp_path / "student"
    distill(teacher, student, max_steps=2, data=fmnist_small.subset(64), progress=False, batch_size=16, device="cpu")
    run = load_run(student, device="cpu")
    s = resolve_sampling(run.config)
    assert (s.sampler, s.steps, s.guidance, s.autoguidance) == ("consistency", 2, 0.0, 0.0)
    assert count_nfe(run.schedule, s) == 2                       # one network evaluation a step
    for k in (1, 2, 4):
        x, y = sample(run, 6, labels="all", steps=k, seed=3)
        assert x.shape == (6, 1, 28, 28) and x.abs().max() <= 1
    assert cli.main(["sample", str(student), "--n", "4", "--steps", "1", "--npz", str(tmp_path / "s.npz"),
                     "--quiet"]) == 0
    assert cli.main(["process", str(student), "--out", str(tmp_path / "p.png"), "--quiet"]) == 0
    assert (tmp_path / "p.png").is_file()
    # the report shows the student as a model of its own, not as another training seed of its teacher
    assert cli.main(["report", str(teacher), str(student), "--no-eval", "--out", str(tmp_path / "r"), "--quiet"]) == 0
    rows = tables((tmp_path / "r" / "REPORT.md").read_text())["Results"][0]
    assert [r["preset"] for r in rows] == ["unet-block", "unet-block-cd"]
    # an image does not depend on the batch it is drawn in: its noise, the re-noising between steps
    # included, comes from its own seed (the kernels may round a batch of 6 differently from one of 3,
    # so equal to float precision; another seed's images differ by order 1)
    whole, _ = sample(run, 6, labels="all", steps=4, seed=5)
    part, _ = sample(run, 3, labels="all", steps=4, seed=5)
    other, _ = sample(run, 3, labels="all", steps=4, seed=6)
    assert (whole[:3] - part).abs().max() < 1e-4
    assert (other - part).abs().max() > 0.1


def test_distill_errors_are_one_line(tmp_path, teacher, capsys):
    assert cli.main(["distill", str(teacher), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "--minutes M or --max-steps N" in capsys.readouterr().err
    assert cli.main(["distill", "--resume", "--out", str(teacher), "--quiet"]) == 2
    assert "not a distilled student" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="distill method"):
        distill(teacher, tmp_path / "y", method="pd", max_steps=2)
    with pytest.raises(ConfigError, match="distill pairs"):
        distill(teacher, tmp_path / "y", pairs="beta", max_steps=2)
    assert json.loads((teacher / "config.json").read_text()).get("distill") is None
    assert Sampling("consistency", 1).steps == 1
