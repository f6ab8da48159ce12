"""Training options: prediction targets, min-SNR weights, lognormal timesteps, the cosine
learning rate, EMA by half-life, the "fast" recipe, and that the defaults change nothing."""
import json
import math

import pytest
import torch

from ddpmlab import checkpoint, cli
from ddpmlab import config as C
from ddpmlab.diffusion import Schedule, loss_fn, loss_weights, make_schedule, q_sample, sample_t, training_target
from ddpmlab.recipes import make_run_config
from ddpmlab.train import EMA, Trainer, TrainingInterrupted, cosine_lr, train

LINEAR = make_schedule()
TINY = {"channels": 8, "num_blocks": 2, "time_dim": 16}


def with_prediction(prediction, s=LINEAR):
    return Schedule(s.betas, s.alphas_cumprod, prediction)


# --------------------------------------------------------------------------- targets and weights

def test_v_target_by_hand():
    x0, eps = torch.full((1, 1, 1, 1), 0.5), torch.full((1, 1, 1, 1), -2.0)
    t = torch.tensor([400])
    a = LINEAR.alphas_cumprod[400].item()
    v = training_target(with_prediction("v"), x0, eps, t)
    assert v.item() == pytest.approx(math.sqrt(a) * -2.0 - math.sqrt(1 - a) * 0.5, abs=1e-6)
    assert training_target(with_prediction("x0"), x0, eps, t).item() == 0.5
    assert training_target(LINEAR, x0, eps, t).item() == -2.0


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_min_snr_weights_by_hand(prediction):
    ts = [0, 30, 100, 250, 500, 999]
    w = loss_weights(with_prediction(prediction), torch.tensor(ts), "min-snr", 5.0)
    for t, got in zip(ts, w.tolist()):
        a = LINEAR.alphas_cumprod[t].item()
        snr = a / (1 - a)
        want = {"eps": min(snr, 5) / snr, "v": min(snr, 5) / (snr + 1), "x0": min(snr, 5)}[prediction]
        assert got == pytest.approx(want, rel=1e-5), t
    assert loss_weights(LINEAR, torch.tensor(ts), "uniform").tolist() == [1.0] * len(ts)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_loss_fn_applies_the_weights_per_sample(prediction):
    s = with_prediction(prediction)
    x0 = torch.rand(16, 1, 3, 3) * 2 - 1

    def model(x, t, label):
        return 0.3 * x
    got = loss_fn(model, s, x0, None, torch.Generator().manual_seed(5), weighting="min-snr", min_snr_gamma=2.0)
    g = torch.Generator().manual_seed(5)                   # the same draws, by hand
    t = torch.randint(0, 1000, (16,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    err = (0.3 * q_sample(s, x0, t, noise) - training_target(s, x0, noise, t)).pow(2).mean((1, 2, 3))
    a = s.alphas_cumprod[t]
    snr = a / (1 - a)
    w = snr.clamp(max=2.0) / (snr if prediction == "eps" else snr + 1)
    assert got.item() == pytest.approx((w * err).mean().item(), rel=1e-5)
    plain = loss_fn(model, s, x0, None, torch.Generator().manual_seed(5))
    assert plain.item() == pytest.approx(err.mean().item(), rel=1e-5)


def test_lognormal_t_sampling_distribution():
    ls = LINEAR.log_sigmas()
    for p_mean, p_std in ((-1.2, 1.2), (0.5, 0.6)):
        t = sample_t(LINEAR, 20000, torch.Generator().manual_seed(0), "cpu", "lognormal", p_mean, p_std)
        assert t.dtype == torch.long and 0 <= t.min() and t.max() <= 999
        log_sigma = ls[t]
        assert log_sigma.median().item() == pytest.approx(p_mean, abs=0.05)      # median sigma ~ exp(P_mean)
        assert log_sigma.std().item() == pytest.approx(p_std, abs=0.05)
    # each draw goes to the timestep of nearest log sigma
    g = torch.Generator().manual_seed(1)
    t = sample_t(LINEAR, 500, g, "cpu", "lognormal")
    want = -1.2 + 1.2 * torch.randn((500,), generator=torch.Generator().manual_seed(1))
    nearest = (ls.float()[None, :] - want[:, None]).abs().argmin(1)
    assert torch.equal(t, nearest)


# --------------------------------------------------------------------------- learning rate and EMA

def test_cosine_lr_warms_up_then_decays_to_min_lr_at_the_end():
    total, lr, lo, w = 100, 1e-3, 1e-5, 10
    lrs = [cosine_lr(s, total, lr, lo, w) for s in range(total)]
    assert lrs[:w] == pytest.approx([lr * (s + 1) / w for s in range(w)])
    assert lrs[w - 1] == pytest.approx(lr) and lrs[w] == pytest.approx(lr)
    assert all(a >= b for a, b in zip(lrs[w:], lrs[w + 1:]))
    assert lrs[-1] == pytest.approx(lo)
    mid = w + (total - 1 - w) / 2                        # half way through the decay: half way down
    assert cosine_lr(mid, total, lr, lo, w) == pytest.approx((lr + lo) / 2)
    assert cosine_lr(0, 1, lr, lo, 0) == pytest.approx(lr)                   # a one-step run


def test_ema_decay_from_half_life():
    m = torch.nn.Linear(2, 2)
    e = EMA(m, 0.999, halflife_kimg=2.0, images_per_step=64)
    assert e.decay_at(0) == pytest.approx(0.5 ** (64 / 2000)) == e.decay_at(10_000)
    # after 2000 images (31.25 steps of 64) the old weights count half
    assert e.decay_at(0) ** (2000 / 64) == pytest.approx(0.5)
    r = EMA(m, 0.999, halflife_kimg=2.0, rampup=0.05, images_per_step=64)
    assert r.decay_at(9) == pytest.approx(0.5 ** (64 / (10 * 64 * 0.05)))       # ramp: 5% of 640 images seen
    assert r.decay_at(10_000) == pytest.approx(e.decay_at(0))
    d = EMA(m, 0.999)                                    # the default: as before
    assert [d.decay_at(s) for s in (0, 5, 10_000)] == [min(0.999, (1 + s) / (10 + s)) for s in (0, 5, 10_000)]


# --------------------------------------------------------------------------- configuration

def test_defaults_keep_config_json_and_presets_unchanged():
    rc = make_run_config("unet-small")
    j = rc.to_json()
    new = {"prediction", "loss_weighting", "min_snr_gamma", "t_sampling", "p_mean", "p_std", "lr_schedule",
           "warmup_steps", "ema_halflife_kimg", "ema_rampup"}
    assert not new & (set(j["diffusion"]) | set(j["train"]))       # config.json as before the options
    assert rc.diffusion.prediction == "eps" and rc.train.lr_schedule == "plateau" and rc.train.ema_halflife_kimg is None
    old = {"schedule": "linear", "timesteps": 1000}                 # an old run's config.json loads
    assert C.from_dict(C.DiffusionConfig, old).prediction == "eps"


def test_recipe_fast_then_explicit_flags_win():
    rc = make_run_config("resnet-class", recipe="fast", lr_schedule="plateau")
    assert rc.diffusion.prediction == "v" and rc.train.loss_weighting == "min-snr" and rc.train.min_snr_gamma == 5.0
    assert rc.train.lr_schedule == "plateau" and rc.train.ema_halflife_kimg is not None
    j = rc.to_json()
    assert j["diffusion"]["prediction"] == "v" and "lr_schedule" not in j["train"]
    assert make_run_config("resnet-class", recipe="fast", diffusion_overrides={"prediction": "eps"}).diffusion.prediction == "eps"
    with pytest.raises(C.ConfigError, match="valid: fast"):
        make_run_config("resnet-class", recipe="quick")


def test_a_recipe_run_samples_as_the_recipe_was_measured():
    """config.json "sampling" of a --recipe run: log-SNR steps, from sigma 55 on the cosine
    schedule, guidance 0.3 at the noise levels of the linear schedule's t 100..700; the write-up's
    presets without a recipe keep ddpmlab's defaults."""
    from ddpmlab.diffusion import timesteps_at_noise_of
    from ddpmlab.sample import resolve_sampling
    cos = make_run_config("unet-lite", recipe="fast", diffusion_overrides={"schedule": "cosine"})
    assert resolve_sampling(cos) == C.Sampling("dpm++2m", 20, 0.3, "logsnr", (203, 946), 55.0)
    assert C.to_dict(C.from_dict(C.SamplingConfig, cos.to_json()["sampling"])) == C.to_dict(cos.sampling)
    lin = make_run_config("unet-small", recipe="fast")
    assert resolve_sampling(lin) == C.Sampling("dpm++2m", 20, 0.3, "logsnr", (100, 700), None)
    assert resolve_sampling(make_run_config("resnet-basic", recipe="fast")) == C.Sampling("dpm++2m", 20, 0.0, "logsnr")
    assert make_run_config("unet-small").sampling == C.SamplingConfig()
    assert resolve_sampling(make_run_config("unet-small")) == C.Sampling("dpm++2m", 20)
    # the mapping itself: the identity on one schedule; on the cosine one, the nearest noise level
    cosine = make_schedule(C.DiffusionConfig(schedule="cosine"))
    assert timesteps_at_noise_of(LINEAR, LINEAR, 100, 700) == [100, 700]
    lo, hi = timesteps_at_noise_of(cosine, LINEAR, 100, 700)
    for t, target in ((lo, 100), (hi, 700)):
        gap = (cosine.log_sigmas() - LINEAR.log_sigmas()[target]).abs()
        assert gap[t] <= gap[t - 1] and gap[t] <= gap[t + 1]


@pytest.mark.parametrize("bad,needle", [
    ({"loss_weighting": "snr"}, "valid: uniform, min-snr"), ({"t_sampling": "beta"}, "valid: uniform, lognormal"),
    ({"lr_schedule": "step"}, "valid: plateau, cosine"), ({"warmup_steps": -1}, "warmup_steps"),
    ({"min_snr_gamma": 0}, "min_snr_gamma"), ({"p_std": 0}, "p_std"), ({"ema_halflife_kimg": 0}, "ema_halflife_kimg"),
    ({"ema_rampup": 0.05}, "needs ema_halflife_kimg"), ({"lr_schedule": "cosine", "min_lr": 1e-2}, "min_lr <= lr")])
def test_bad_training_options_are_refused(bad, needle):
    with pytest.raises(C.ConfigError, match=needle):
        C.from_dict(C.TrainConfig, bad)
    with pytest.raises(C.ConfigError, match="valid: eps, v, x0"):
        C.from_dict(C.DiffusionConfig, {"prediction": "score"})


def test_cli_train_flags(capsys):
    assert cli.main(["train", "--dry-run", "--recipe", "fast", "--prediction", "x0", "--loss-weighting", "uniform",
                     "--t-sampling", "lognormal", "--lr-schedule", "cosine", "--warmup-steps", "7",
                     "--ema-halflife-kimg", "3"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["diffusion"]["prediction"] == "x0"
    t = j["train"]
    assert "loss_weighting" not in t and t["t_sampling"] == "lognormal" and t["lr_schedule"] == "cosine"
    assert t["warmup_steps"] == 7 and t["ema_halflife_kimg"] == 3.0 and t["ema_rampup"] == 0.1
    assert j["diffusion"]["schedule"] == "linear"
    assert cli.main(["train", "--dry-run", "--schedule", "cosine", "--minutes", "12"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["diffusion"]["schedule"] == "cosine" and j["train"]["minutes"] == 12.0


@pytest.mark.parametrize("flag", [["--schedule", "cosine"], ["--prediction", "v"]])
def test_resume_refuses_another_diffusion(tmp_path, capsys, flag):
    from ddpmlab.run import save_config
    tmp_path.mkdir(exist_ok=True)
    save_config(tmp_path, make_run_config("resnet-class", TINY))
    assert cli.main(["train", "--out", str(tmp_path), "--resume", *flag]) == 2
    err = capsys.readouterr().err
    assert f"{flag[0]} {flag[1]}" in err and "a run being resumed keeps it" in err


# --------------------------------------------------------------------------- training with them

@pytest.mark.parametrize("stop", [7, 10])
def test_fast_recipe_trains_and_resumes_bit_identically(tmp_path, fmnist_small, monkeypatch, stop):
    """Cosine lr, min-SNR, v and the EMA half-life are functions of the step: a run interrupted
    mid-epoch (7) or on an epoch's last step (10, when the next epoch's permutation is already
    drawn) and resumed ends with the weights of the uninterrupted one."""
    data = fmnist_small.subset(160)                                  # 5 steps of 32 per epoch

    def rc():
        return make_run_config("resnet-class", TINY, recipe="fast", warmup_steps=3, epochs=3, batch_size=32,
                               snapshot_steps=0, log_every=1, device="cpu", t_sampling="lognormal")
    train(tmp_path / "full", rc(), data=data, progress=False)
    step = Trainer.train_step

    def stop_there(self, idx):
        out = step(self, idx)
        if self.step + 1 == stop:
            self.interrupted = True
        return out
    monkeypatch.setattr(Trainer, "train_step", stop_there)
    with pytest.raises(TrainingInterrupted):
        train(tmp_path / "split", rc(), data=data, progress=False)
    monkeypatch.undo()
    train(tmp_path / "split", resume=True, data=data, progress=False)
    for name in ("model", "ema"):
        a = checkpoint.load_tensors(tmp_path / "full", f"{name}.safetensors")
        b = checkpoint.load_tensors(tmp_path / "split", f"{name}.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), name
    logged = [m for m in map(json.loads, (tmp_path / "full" / "metrics.jsonl").read_text().splitlines())
              if m["kind"] == "step"]
    tc = rc().train
    assert [m["lr"] for m in logged] == pytest.approx([cosine_lr(m["step"] - 1, 15, tc.lr, tc.min_lr, 3) for m in logged])
    assert logged[-1]["lr"] == pytest.approx(tc.min_lr)


# --------------------------------------------------------------------------- --minutes

def test_steps_for_minutes_fills_what_is_left_of_the_budget():
    from ddpmlab.train import steps_for_minutes
    assert steps_for_minutes(100, 30.0, 0.5, 1.0, margin=1.0) == 160        # 30 s left at 0.5 s a step
    assert steps_for_minutes(100, 30.0, 0.5, 1.0, margin=0.5) == 130
    assert steps_for_minutes(100, 75.0, 0.5, 1.0) == 100                   # the budget is already spent


def test_minutes_plans_the_length_and_a_resume_keeps_the_clock(tmp_path, fmnist_small, monkeypatch):
    """A fake clock at 0.5 s a step: first planned at step 60 (30 s in, 25 s for steps 10..60),
    a 45-second budget leaves 15 s x 0.98 = 29 more steps, and every epoch's re-plan agrees. The
    cosine holds the peak rate until the plan and ends at min_lr on step 89. Interrupted at step
    70 and resumed at the same pace, the run ends with the same weights; resumed on a machine
    four times slower, the budget is spent by step 75 and the run ends there."""
    import importlib
    import types
    T = importlib.import_module("ddpmlab.train")
    data = fmnist_small.subset(160)                                  # 5 steps of 32 per epoch
    clock = {"now": 0.0, "per_step": 0.5}
    monkeypatch.setattr(T, "time", types.SimpleNamespace(monotonic=lambda: clock["now"],
                                                         perf_counter=T.time.perf_counter))
    step = Trainer.train_step

    def timed(self, idx):
        clock["now"] += clock["per_step"]
        return step(self, idx)
    monkeypatch.setattr(Trainer, "train_step", timed)

    def rc():
        return make_run_config("resnet-class", TINY, recipe="fast", warmup_steps=3, epochs=100, batch_size=32,
                               snapshot_steps=0, log_every=1, device="cpu", minutes=0.75)

    def lines(run, kind):
        return [m for m in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())
                if m["kind"] == kind]
    assert train(tmp_path / "full", rc(), data=data, progress=False) == {"steps": 89, "epochs": 17, "finished": True}
    plans = lines("full", "plan")
    assert plans[0]["step"] == 60 and {p["steps"] for p in plans} == {89} and len(plans) == 1 + 17 - 11
    assert json.loads((tmp_path / "full" / "config.json").read_text())["train"]["minutes"] == 0.75
    logged = lines("full", "step")
    assert logged[-1]["step"] == 89 and logged[-1]["lr"] == pytest.approx(rc().train.min_lr)
    assert {m["lr"] for m in logged if 3 <= m["step"] <= 61} == {rc().train.lr}
    assert logged[61]["step"] == 62 and logged[61]["lr"] < rc().train.lr

    def stop_at_70(self, idx):
        out = timed(self, idx)
        if self.step + 1 == 70:
            self.interrupted = True
        return out
    for run, pace, end in (("same", 0.5, 89), ("slower", 2.0, 75)):
        clock["per_step"] = 0.5
        monkeypatch.setattr(Trainer, "train_step", stop_at_70)
        with pytest.raises(TrainingInterrupted):
            train(tmp_path / run, rc(), data=data, progress=False)
        monkeypatch.setattr(Trainer, "train_step", timed)
        clock["per_step"] = pace
        assert train(tmp_path / run, resume=True, data=data, progress=False)["steps"] == end
    for name in ("model", "ema"):
        a = checkpoint.load_tensors(tmp_path / "full", f"{name}.safetensors")
        b = checkpoint.load_tensors(tmp_path / "same", f"{name}.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), name

    # the finished run resumed with twice the budget goes on: planned again at once from its pace
    # (0.5 s a step, 44.5 s in: 45.5 s x 0.98 = 89 more steps), the cosine stretched to the new end;
    # the re-plans at epoch ends give back one step of the margin as the time left shrinks
    clock["per_step"] = 0.5
    assert train(tmp_path / "full", resume=True, data=data, progress=False, minutes=1.5)["steps"] == 179
    replans = lines("full", "plan")[len(plans):]
    assert replans[0]["step"] == 89 and replans[0]["steps"] == 178 and replans[-1]["steps"] == 179
    logged = lines("full", "step")
    assert logged[89]["step"] == 90 and rc().train.min_lr < logged[89]["lr"] < rc().train.lr
    assert logged[-1]["step"] == 179 and logged[-1]["lr"] == pytest.approx(rc().train.min_lr)


# --------------------------------------------------------------------------- the loss figure

def test_loss_figure_draws_a_cosine_rate_on_its_own_axis_and_marks_plateau_drops(monkeypatch):
    from ddpmlab import plots
    figs = []
    monkeypatch.setattr(plots, "_savefig", lambda fig, path: figs.append(fig))
    steps = range(1, 201)
    cosine = [{"kind": "step", "step": s, "loss": 0.1, "lr": cosine_lr(s - 1, 200, 1e-3, 1e-4)} for s in steps]
    plateau = [{"kind": "step", "step": s, "loss": 0.1, "lr": 1e-3 if s <= 100 else 5e-4} for s in steps]

    def epochs(logged):
        return [{"kind": "epoch", "step": s, "loss": 0.1, "lr": logged[s - 1]["lr"]} for s in (50, 100, 150, 200)]
    plots.plot_loss(cosine + epochs(cosine), "unused.png", ylabel="MSE on v")
    plots.plot_loss(plateau + epochs(plateau), "unused.png")
    (cos_ax, lr_ax), (plat_ax,) = figs[0].axes, figs[1].axes
    assert cos_ax.get_ylabel() == "MSE on v" and "learning rate" in lr_ax.get_ylabel()
    assert [l.get_ydata()[-1] for l in lr_ax.lines] == [pytest.approx(1e-4)] and not cos_ax.texts
    assert [t.get_text().strip() for t in plat_ax.texts] == ["lr 5.0e-04"]          # one drop, at step 150


def test_ctrl_c_while_the_final_figures_are_drawn_is_one_line_and_the_run_is_saved(tmp_path, fmnist_small, monkeypatch):
    """A SIGINT that lands after the last step (a harness stopping a run at its budget just as it
    ends) used to escape as a KeyboardInterrupt traceback; the final checkpoint is already written."""
    data = fmnist_small.subset(64)
    rc = make_run_config("resnet-class", TINY, epochs=1, batch_size=32, snapshot_steps=0, device="cpu")

    def ctrl_c(self):
        raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "finish_figures", ctrl_c)
    with pytest.raises(TrainingInterrupted, match="final figures after step 2; the run is saved"):
        train(tmp_path / "r", rc, data=data, progress=False)
    assert checkpoint.step(tmp_path / "r") == 2
