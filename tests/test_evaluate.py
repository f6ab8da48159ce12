"""The quality metric: real data sits at its floor, and each kind of damage moves it the right way."""
import json
import os
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ddpmlab import cli
from ddpmlab.classifier import PRETRAINED, read_info
from ddpmlab.config import ConfigError, SamplingConfig
from ddpmlab.data import load_fashion_mnist
from ddpmlab.diffusion import DEFAULT_SAMPLER
from ddpmlab.evaluate import evaluate_images, evaluate_run, reference
from ddpmlab.metrics import frechet_distance, precision_recall

N = 500


@pytest.fixture(scope="module")
def train_set():
    return load_fashion_mnist("train")


@pytest.fixture(scope="module")
def real(train_set):
    """N training images with their labels, from the second half (the floor draws from all 60k)."""
    idx = torch.randperm(30000, generator=torch.Generator().manual_seed(1))[:N] + 30000
    return train_set.images[idx], train_set.labels[idx]


@pytest.fixture(scope="module")
def real_result(real):
    return evaluate_images(*real)


def test_shipped_classifier_reaches_93_percent_on_the_test_set():
    ref = reference()
    assert PRETRAINED.is_file() and PRETRAINED.stat().st_size < 5e6
    assert ref.acc >= 0.93
    assert ref.acc == pytest.approx(read_info()["test_acc"], abs=1e-3)   # the record matches the weights
    assert ref.feats.shape == (10000, 128)


def test_frechet_distance_and_precision_recall_in_closed_form():
    rng = np.random.default_rng(0)
    # diagonal Gaussians: FD = |mu1 - mu2|^2 + sum (s1 - s2)^2
    assert frechet_distance(np.zeros(3), np.diag([1.0, 4, 9]), np.ones(3), np.diag([4.0, 4, 1])) \
        == pytest.approx(3 + 1 + 0 + 4)
    x = rng.normal(size=(300, 8))
    assert precision_recall(x, x) == (1.0, 1.0)
    assert precision_recall(x, x + 100) == (0.0, 0.0)


def test_real_training_images_sit_at_the_floor(real_result):
    r = real_result
    assert r["n"] == N and r["labelled"]
    assert r["fd"] < 1.5 * r["fd_floor"] + 0.5
    assert abs(r["precision"] - r["precision_floor"]) < 0.08 and abs(r["recall"] - r["recall_floor"]) < 0.08
    assert r["precision"] > 0.6 and r["recall"] > 0.6
    assert r["cond_acc"] > 0.9
    assert r["pred_entropy"] > math.log(10) - 0.05
    assert not r["mode_collapse"] and not r["collapsed_classes"] and not r["missing_classes"]
    assert r["dup_frac"] < 0.05
    assert all(fd < 3 * fl + 2 for fd, fl in zip(r["per_class_fd"], r["per_class_fd_floor"]))


def test_one_image_repeated_is_mode_collapse(real, real_result):
    x = real[0][:1].repeat(N, 1, 1, 1)
    r = evaluate_images(x, torch.arange(N) % 10)          # the same blob for every label
    assert r["mode_collapse"] and r["dup_frac"] == 1.0
    assert r["pred_entropy"] == 0.0
    assert r["recall"] < 0.05
    assert r["fd"] > 10 * real_result["fd_floor"]
    assert len(r["collapsed_classes"]) == 9 and len(r["missing_classes"]) == 9
    assert r["cond_acc"] == pytest.approx(0.1)


def test_two_classes_relabelled_as_all_ten_are_collapsed_classes(train_set, real_result):
    keep = (train_set.labels == 2) | (train_set.labels == 7)     # pullovers and sneakers only
    x = train_set.images[keep][:N]
    r = evaluate_images(x, torch.arange(N) % 10)          # "asked for every class, got two"
    assert {c["class"] for c in r["collapsed_classes"]} >= set(range(10)) - {2, 7}
    assert {c["predicted_as"] for c in r["collapsed_classes"]} <= {2, 7, 4, 6, 5}   # pullover, sneaker (or kin)
    assert set(r["missing_classes"]) >= {0, 1, 3, 8, 9} and not {2, 7} & set(r["missing_classes"])
    assert r["pred_entropy"] < 1.2                       # ~ln 2 (pullovers also pass for coats, shirts)
    assert r["cond_acc"] < 0.25
    assert r["recall"] < real_result["recall"] - 0.3
    assert r["precision"] > 0.6                          # each image is still a real one
    assert not r["mode_collapse"]
    assert r["fd"] > 5 * real_result["fd"]


def test_blur_and_noise_move_the_metric_in_order(real, real_result):
    x, y = real
    k = torch.tensor([1.0, 4, 6, 4, 1])
    k = (k[:, None] * k[None]) / 256                      # 5x5 binomial blur
    blurred = F.conv2d(F.pad(x.float(), (2, 2, 2, 2), mode="replicate"), k[None, None]).round().to(torch.uint8)
    rb = evaluate_images(blurred, y)
    noise = torch.randint(0, 256, x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    rn = evaluate_images(noise, y)
    assert real_result["fd"] < rb["fd"] < rn["fd"]
    assert rb["fd"] > 3 * real_result["fd_floor"]
    assert rn["precision"] < rb["precision"] < real_result["precision"] - 0.2
    assert rb["recall"] < real_result["recall"] - 0.3 and rn["recall"] < 0.05
    assert rn["cond_acc"] < 0.3 < rb["cond_acc"] < real_result["cond_acc"]
    assert len(rb["collapsed_classes"]) <= 3 and len(rn["collapsed_classes"]) >= 8   # noise: all one class
    assert not rb["mode_collapse"] and not rn["mode_collapse"]                     # distinct images, all


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_npz_in_0_1_through_the_cli(tmp_path, real, capsys):
    x, y = real
    p = _npz(tmp_path / "s.npz", arr_0=(x[:200].permute(0, 2, 3, 1).numpy() / 255.0).astype(np.float32),
             arr_1=y[:200].numpy())
    assert cli.main(["evaluate", p, "--out", str(tmp_path / "e.json")]) == 0
    out = capsys.readouterr().out
    assert "assumed [0, 1]" in out and "FD, classifier features" in out
    r = json.loads((tmp_path / "e.json").read_text())
    for key in ("fd", "fd_floor", "per_class_fd", "cond_acc", "cond_acc_per_class", "pred_hist", "pred_entropy",
                "precision", "recall", "collapsed_classes", "mode_collapse", "n", "sampler", "steps", "guidance",
                "classifier_test_acc"):
        assert key in r, key
    assert r["n"] == 200 and r["cond_acc"] > 0.85


def test_a_run_is_sampled_and_evaluated(tmp_path):
    from ddpmlab.models import build_model
    from ddpmlab.run import save_config, save_weights
    from ddpmlab.recipes import make_run_config
    rc = make_run_config("resnet-class", {"channels": 8, "num_blocks": 1, "time_dim": 16}, device="cpu")
    model = build_model(rc.model)
    save_config(tmp_path, rc)
    save_weights(model, tmp_path / "model.safetensors")
    save_weights(model, tmp_path / "ema.safetensors")
    r = evaluate_run(tmp_path, n=20, sampling=SamplingConfig(steps=2), device="cpu")
    assert r["n"] == 20 and r["sampler"] == DEFAULT_SAMPLER and r["steps"] == 2 and r["guidance"] == 0.0
    assert r["fd"] > r["fd_floor"]                       # an untrained net makes noise
    assert r["pred_hist"] and sum(r["pred_hist"]) == 20


def _untrained_run(path, sampling=None):
    from ddpmlab.config import SamplingConfig
    from ddpmlab.models import build_model
    from ddpmlab.run import save_config, save_weights
    from ddpmlab.recipes import make_run_config
    rc = make_run_config("unet-small", {"channels": 8, "channel_mults": (1, 2), "time_dim": 16}, device="cpu")
    if sampling:
        rc.sampling = SamplingConfig(**sampling)
    model = build_model(rc.model)
    for p in model.parameters():        # no zero-initialised layers: guidance must change the samples
        torch.nn.init.normal_(p, std=0.05)
    save_config(path, rc)
    save_weights(model, path / "model.safetensors")
    save_weights(model, path / "ema.safetensors")
    return path


def test_a_run_carries_its_own_sampling_settings(tmp_path):
    from ddpmlab.run import load_config
    from ddpmlab.sample import load_run, sample
    run_dir = _untrained_run(tmp_path, {"sampler": "ddim", "steps": 3, "guidance": 2.0})
    assert json.loads((run_dir / "config.json").read_text())["sampling"] == {"sampler": "ddim", "steps": 3, "guidance": 2.0}
    run = load_run(run_dir, device="cpu")
    own, _ = sample(run, 4, labels="all")
    explicit, _ = sample(run, 4, labels="all", sampler="ddim", steps=3, guidance=2.0)
    plain, _ = sample(run, 4, labels="all", sampler="ddim", steps=3, guidance=0.0)
    torch.testing.assert_close(own, explicit)
    assert (own - plain).abs().max() > 1e-3
    r = evaluate_run(run_dir, n=10, device="cpu")                       # flags given win over the run's
    assert (r["sampler"], r["steps"], r["guidance"]) == ("ddim", 3, 2.0)
    r = evaluate_run(run_dir, n=10, sampling=SamplingConfig(guidance=0.0, steps=2), device="cpu")
    assert (r["sampler"], r["steps"], r["guidance"]) == ("ddim", 2, 0.0)
    # run directories written before the "sampling" section existed still load, with the defaults
    cfg = json.loads((run_dir / "config.json").read_text())
    del cfg["sampling"]
    (run_dir / "config.json").write_text(json.dumps(cfg))
    assert load_config(run_dir).sampling.sampler is None


def test_a_run_carries_its_own_sigma_max_to_the_sampler_and_the_cache(tmp_path):
    from ddpmlab.evaluate import cached_evaluate_run
    from ddpmlab.sample import load_run, sample
    run_dir = _untrained_run(tmp_path, {"sampler": "dpm++2m", "steps": 4, "spacing": "logsnr", "sigma_max": 5.0})
    run = load_run(run_dir, device="cpu")
    own, _ = sample(run, 4, labels="all")
    explicit, _ = sample(run, 4, labels="all", sigma_max=5.0)
    uncapped, _ = sample(run, 4, labels="all", sigma_max=1e4)      # above the linear schedule's top: no cap
    torch.testing.assert_close(own, explicit)
    assert (own - uncapped).abs().max() > 1e-3
    r, path = cached_evaluate_run(run_dir, 10, device="cpu", precision="fp32")
    assert r["sigma_max"] == 5.0 and "-logsnr-smax5-" in path.name
    r, path = cached_evaluate_run(run_dir, 10, device="cpu", precision="fp32", sampling=SamplingConfig(spacing="trailing"))
    assert r["sigma_max"] is None and "smax" not in path.name


def test_bad_sampling_settings_are_refused(tmp_path):
    from ddpmlab.run import RunError, load_config
    run_dir = _untrained_run(tmp_path)
    cfg = json.loads((run_dir / "config.json").read_text())
    for bad, needle in (({"sampler": "euler"}, "valid: ddpm, ddim, dpm++2m"), ({"steps": 0}, "steps must be"),
                        ({"guidanse": 1.0}, "unknown SamplingConfig keys")):
        (run_dir / "config.json").write_text(json.dumps({**cfg, "sampling": bad}))
        with pytest.raises((ConfigError, RunError), match=needle.replace("+", r"\+")):
            load_config(run_dir)


BAD = {   # case: (arrays, what the one line must say)
    "no images": (dict(foo=np.zeros((4, 28, 28, 1), np.uint8)), "holds no images: expected key arr_0"),
    "wrong rank": (dict(arr_0=np.zeros((4, 28), np.uint8)), "has shape (4, 28); the classifier metric is for grey"),
    "not 28x28": (dict(arr_0=np.zeros((4, 32, 32, 1), np.uint8)), "has shape (4, 32, 32, 1); the classifier"),
    "NaN": (dict(arr_0=np.full((4, 28, 28, 1), np.nan, np.float32)), "NaN/inf values"),
    "out of range floats": (dict(arr_0=np.full((4, 28, 28, 1), 7.0, np.float32)), "expected [0, 1] or [-1, 1]"),
    "label out of range": (dict(arr_0=np.zeros((4, 28, 28, 1), np.uint8), arr_1=np.array([0, 1, 2, 10])),
                           "labels 0..10; valid: 0..9"),
    "label length": (dict(arr_0=np.zeros((4, 28, 28, 1), np.uint8), arr_1=np.array([0, 1, 2])),
                     "expected (4,), one label per image"),
    "float labels": (dict(arr_0=np.zeros((4, 28, 28, 1), np.uint8), arr_1=np.array([0.0, 1, 2, 3])),
                     "expected integer class labels"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_npz_is_a_one_line_error(tmp_path, capsys, case):
    arrays, needle = BAD[case]
    p = _npz(tmp_path / "bad.npz", **arrays)
    assert cli.main(["evaluate", p]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ddpmlab: error:") and "\n" not in err
    assert needle in err, (case, err)


def test_missing_or_unreadable_input_is_a_one_line_error(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path / "nope.npz")]) == 2
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert cli.main(["evaluate", str(tmp_path / "junk.npz")]) == 2
    assert cli.main(["evaluate", str(tmp_path)]) == 2      # a folder that is not a run
    assert all(line.startswith("ddpmlab: error:") for line in capsys.readouterr().err.strip().splitlines())


def test_inception_fid_needs_the_users_weights_file(tmp_path, real, capsys, monkeypatch):
    x, y = real
    p = _npz(tmp_path / "s.npz", arr_0=x[:50].permute(0, 2, 3, 1).numpy(), arr_1=y[:50].numpy())
    assert cli.main(["evaluate", p, "--inception-weights", str(tmp_path / "nope.pth")]) == 2
    assert "pytorch-fid" in capsys.readouterr().err                  # says where the file comes from
    weights = tmp_path / "pt_inception.pth"
    weights.write_bytes(b"0")
    monkeypatch.setitem(__import__("sys").modules, "torch_fidelity", None)   # as here: not importable
    assert cli.main(["evaluate", p, "--inception-weights", str(weights), "--out", str(tmp_path / "e.json")]) == 0
    assert "Inception FID skipped" in capsys.readouterr().out             # and the default metric is used
    r = json.loads((tmp_path / "e.json").read_text())
    assert r["inception_fid"] is None and r["fd"] is not None


def test_evaluation_caches_live_in_the_private_cache_not_the_users():
    from ddpmlab.evaluate import eval_cache_dir
    assert os.environ["XDG_CACHE_HOME"] in str(eval_cache_dir())
    assert not str(eval_cache_dir()).startswith(os.path.expanduser("~/.cache"))
