"""The shipped model: it draws the classes it is asked for, in fp32 and in bf16."""
import pytest
import torch

from ddpmlab.classifier import PRETRAINED, load_classifier, predict
from ddpmlab.config import SamplingConfig
from ddpmlab.data import to_uint8
from ddpmlab.runtime import cpu_has_native_bf16
from ddpmlab.sample import load_run, sample


@pytest.fixture(scope="module")
def fp32_samples():
    run = load_run("fmnist", device="cpu", precision="fp32")
    return sample(run, 40, labels="all", steps=8)


def test_shipped_model_draws_the_labels_it_is_given(fp32_samples):
    x, y = fp32_samples
    assert x.shape == (40, 1, 28, 28) and -1 <= x.min() and x.max() <= 1
    _, logits = predict(load_classifier(PRETRAINED), to_uint8(x))
    assert (logits.argmax(1) == y).float().mean() >= 0.8


def test_sampling_precision_auto_is_bf16_only_where_native():
    assert load_run("fmnist", device="cpu", precision="auto").precision == \
        ("bf16" if cpu_has_native_bf16() else "fp32")


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="bf16 autocast is emulated (slow) on this CPU")
def test_bf16_sampling_stays_close_to_fp32(fp32_samples):
    run = load_run("fmnist", device="cpu", precision="bf16")
    assert run.precision == "bf16"
    x, y = sample(run, 40, labels="all", steps=8)
    x32, y32 = fp32_samples
    assert torch.equal(y, y32) and x.dtype == torch.float32
    diff = (x - x32).abs()
    assert 0 < diff.mean() < 0.02             # the same images: about one grey level apart on average


def test_the_first_shipped_model_stays_loadable_as_fmnist_v1():
    """v1 (unet-small, the write-up's recipe) is kept beside the new fmnist so the comparison in
    README can be rerun; it must still draw the labels it is given."""
    run = load_run("fmnist-v1", device="cpu", precision="fp32")
    assert run.config.model.upsample == "nearest-conv" and run.config.preset == "unet-small"
    x, y = sample(run, 20, labels="all", steps=8)
    _, logits = predict(load_classifier(PRETRAINED), to_uint8(x))
    assert (logits.argmax(1) == y).float().mean() >= 0.8


def test_the_shipped_model_carries_its_autoguidance_network(tmp_path):
    """fmnist guides its middle steps away from a weaker copy of itself (the first 8 minutes of a
    short run) shipped beside it; --autoguidance 0 is the classifier-free guidance it had before."""
    import json
    import shutil

    from ddpmlab.config import ConfigError
    from ddpmlab.diffusion import count_nfe
    from ddpmlab.sample import resolve_sampling
    run = load_run("fmnist", device="cpu", precision="fp32")
    s = resolve_sampling(run.config, run_dir=run.path)
    guide = run.guide_for(s)
    assert s.autoguidance == run.config.sampling.autoguidance > 0 and s.autoguidance_interval == (203, 946)
    assert sum(p.numel() for p in guide.parameters()) == sum(p.numel() for p in run.model.parameters())
    assert not any(torch.equal(a, b) for a, b in zip(guide.parameters(), run.model.parameters()))
    assert count_nfe(run.schedule, s) == 16
    x, y = sample(run, 20, labels="all", steps=8)
    _, logits = predict(load_classifier(PRETRAINED), to_uint8(x))
    assert (logits.argmax(1) == y).float().mean() >= 0.8
    off = resolve_sampling(run.config, SamplingConfig(autoguidance=0))
    assert off.autoguidance == 0 and run.guide_for(off) is None and count_nfe(run.schedule, off) == 12
    # a copy whose guide is gone, or is a network of another diffusion, fails in one line
    copy = tmp_path / "fmnist"
    shutil.copytree(run.path, copy)
    shutil.rmtree(copy / "guide")
    with pytest.raises(ConfigError, match="sampling.guide 'guide' is not a run directory.*--autoguidance 0"):
        sample(load_run(copy, device="cpu"), 2)
    assert sample(load_run(copy, device="cpu"), 2, steps=2, autoguidance=0)[0].shape[0] == 2
    shutil.copytree(run.path / "guide", copy / "guide")
    cfg = json.loads((copy / "guide" / "config.json").read_text())
    cfg["diffusion"]["prediction"] = "eps"
    (copy / "guide" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="its diffusion .* differs from the run's"):
        sample(load_run(copy, device="cpu"), 2)


def test_the_shipped_student_draws_the_labels_it_is_given_in_two_evaluations():
    """fmnist-fast is fmnist distilled (`ddpmlab distill`): the consistency sampler at 2 steps, one
    network evaluation each, the teacher's guidance in its weights; it names the teacher it was
    distilled from by the hash of the weights shipped beside it."""
    from ddpmlab import checkpoint
    from ddpmlab.diffusion import count_nfe
    from ddpmlab.sample import resolve_sampling
    run = load_run("fmnist-fast", device="cpu", precision="fp32")
    s = resolve_sampling(run.config, run_dir=run.path)
    assert (s.sampler, s.steps, s.guidance, s.autoguidance) == ("consistency", 2, 0.0, 0.0)
    assert count_nfe(run.schedule, s) == 2
    d = run.config.distill
    assert d.teacher == "fmnist" and d.teacher_sha256 == checkpoint.sha256(load_run("fmnist").path, "ema.safetensors")
    for steps in (1, 2):
        x, y = sample(run, 40, labels="all", steps=steps)
        _, logits = predict(load_classifier(PRETRAINED), to_uint8(x))
        assert (logits.argmax(1) == y).float().mean() >= 0.85
