"""The UNet in tiny configs: every class_cond x norm builds, saves/loads, listens to its label,
learns; its skips are never modified in place; it convolves before it downsamples; the switches
that reproduce those two bugs (residual_inplace, pool_first); guidance; image folders as a data
source."""
import logging
import os

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ddpmlab import cli, data as D
from ddpmlab import render
from ddpmlab.config import PRESETS, ConfigError, ModelConfig, Sampling, get_preset, to_dict
from ddpmlab.diffusion import ddim, loss_fn, make_schedule, make_timesteps, PerImageNoise
from ddpmlab.models import build_model, count_parameters
from ddpmlab.models.layers import Norm, ResBlock
from ddpmlab.models.unet import Downsample, UNet
from ddpmlab.run import load_weights, save_weights
from ddpmlab.recipes import make_run_config

TINY = dict(arch="unet", channels=8, channel_mults=(1, 2), blocks_per_level=1, time_dim=16, class_dim=4)
COMBOS = [(cc, norm) for cc in ("input", "cbn", "block") for norm in ("batch", "group")]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions on a shared 2-core CPU: a second OpenMP thread only adds contention
    (measured: 58 s instead of 1.8 s for 15 steps of a tiny BatchNorm UNet)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(class_cond="block", norm="group", num_classes=10, **kw) -> UNet:
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**TINY, "class_cond": class_cond, "norm": norm, "num_classes": num_classes, **kw}))


def randomise(model: nn.Module, scale: float = 0.1) -> nn.Module:
    """Perturb every parameter: the zero-initialised conditioning projections start as no-ops,
    so a fresh model may ignore its label by construction; this one must not."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def inputs(n=4, size=28, channels=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, size, size, generator=g), torch.randint(0, 1000, (n,), generator=g)


# --------------------------------------------------------------------------- the network

@pytest.mark.parametrize("class_cond,norm", COMBOS)
def test_builds_runs_and_save_load_is_identical(class_cond, norm, tmp_path):
    model = tiny(class_cond, norm)
    x, t = inputs()
    label = torch.tensor([0, 3, 9, 10])               # 10: the null label
    model.train()
    assert model(x, t, label).shape == x.shape        # also moves BatchNorm running statistics
    save_weights(model, tmp_path / "m.safetensors")
    torch.manual_seed(123)
    other = build_model(model.cfg)
    load_weights(other, tmp_path / "m.safetensors", None)
    model.eval(), other.eval()
    with torch.no_grad():
        assert torch.equal(model(x, t, label), other(x, t, label))


@pytest.mark.parametrize("class_cond,norm", COMBOS)
def test_switching_the_class_changes_the_output(class_cond, norm):
    model = randomise(tiny(class_cond, norm)).eval()
    x, t = inputs()
    with torch.no_grad():
        a = model(x, t, torch.full((4,), 2))
        b = model(x, t, torch.full((4,), 7))
        assert not torch.allclose(a, b, atol=1e-4)
        # no label = the null label (classifier-free guidance's unconditional branch)
        assert torch.equal(model(x, t, None), model(x, t, torch.full((4,), 10)))


def test_each_class_pathway_is_where_its_name_says():
    x, t = inputs()
    lab = torch.full((4,), 3)
    # input, cbn: the embedding enters the stem; block: it does not
    assert tiny("input").stem.in_channels == 1 + 4 and tiny("cbn").stem.in_channels == 1 + 4
    assert tiny("block").stem.in_channels == 1
    # block: every ResBlock has its own class projection; input/cbn: none has
    for cc, has in (("input", False), ("cbn", False), ("block", True)):
        blocks = [m for m in tiny(cc).modules() if isinstance(m, ResBlock)]
        assert blocks and all((b.class_proj is not None) == has for b in blocks)
    # cbn: the class also reaches the conditional norms (zeroing that projection changes the output)
    model = randomise(tiny("cbn", "batch")).eval()
    with torch.no_grad():
        before = model(x, t, lab)
        model.class_to_cond.weight.zero_(), model.class_to_cond.bias.zero_()
        assert not torch.allclose(before, model(x, t, lab), atol=1e-4)
    assert tiny("input").class_to_cond is None


def test_time_conditioning_off_ignores_t_and_on_uses_it():
    x, _ = inputs()
    for time_cond, differs in ((False, False), (True, True)):
        model = randomise(tiny(time_cond=time_cond, num_classes=0)).eval()
        with torch.no_grad():
            a, b = model(x, torch.full((4,), 10), None), model(x, torch.full((4,), 900), None)
        assert (not torch.allclose(a, b, atol=1e-5)) == differs


@pytest.mark.parametrize("class_cond,norm", COMBOS)
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(class_cond, norm, fmnist_small):
    model = tiny(class_cond, norm).train()
    schedule = make_schedule()
    x0 = D.to_model_range(fmnist_small.images[:16])
    label = fmnist_small.labels[:16]

    def loss():   # the same timesteps and noise every time: a deterministic objective
        return loss_fn(model, schedule, x0, label, torch.Generator().manual_seed(0))

    first = loss().item()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(15):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.8 * first


def test_odd_sizes_and_rgb_and_attention():
    for size, mults in ((28, (1, 2, 2)), (7, (1, 2, 2)), (64, (1, 2, 2, 2))):
        model = build_model(ModelConfig(**{**TINY, "channel_mults": mults, "image_size": size, "in_channels": 3,
                                           "norm": "group", "attention": True}))
        x, t = inputs(2, size, 3)
        assert model(x, t).shape == x.shape


def test_conv_nearest_convolves_on_the_coarse_grid_then_upsamples():
    """upsample="conv-nearest" (the cpu presets): each Upsample convolves at the lower resolution, to
    the level's own width, then repeats pixels; the write-up's "nearest-conv" convolves after."""
    for size in (28, 7):   # 7 -> 4 -> 7: the odd size is upsampled to the skip's shape
        x, t = inputs(2, size)
        for mode, fewer in (("nearest-conv", False), ("conv-nearest", True)):
            model = tiny(upsample=mode)
            ups = [lvl.resample for lvl in model.up if lvl.resample is not None]
            seen = []
            hooks = [u.conv.register_forward_hook(lambda m, i, o: seen.append((i[0].shape, o.shape))) for u in ups]
            outs = []
            hooks += [u.register_forward_hook(lambda m, i, o: outs.append(o)) for u in ups]
            assert model(x, t, torch.zeros(2, dtype=torch.long)).shape == x.shape
            for h in hooks:
                h.remove()
            (cin, cout), = seen
            coarse = (size + 1) // 2
            assert cin[-1] == (coarse if fewer else size) and outs[0].shape[-1] == size
            assert (cin[1], cout[1]) == ((16, 8) if fewer else (16, 16))   # widths 8, 16: narrowed to 8
            if fewer and size == 28:   # nearest after the conv: every 2x2 block of the output is one value
                o = outs[0]
                assert torch.equal(o, o[..., ::2, ::2].repeat_interleave(2, -2).repeat_interleave(2, -1))
    assert count_parameters(tiny(upsample="conv-nearest")) < count_parameters(tiny())
    assert "upsample" not in to_dict(ModelConfig(arch="unet"))   # old runs' config.json unchanged
    assert get_preset("cpu").model.upsample == "conv-nearest"
    with pytest.raises(ConfigError, match="upsample"):
        ModelConfig(arch="unet", upsample="bilinear").validate()


# --------------------------------------------------------------------------- the write-up's two bugs

def watch_skips(model: UNet):
    """Forward hooks that remember every tensor the down path keeps as a skip (the output of a
    level's last block), with a copy and its in-place version counter."""
    kept, handles = [], []
    for level in model.down:
        def hook(_, __, out):
            kept.append((out, out.detach().clone(), out._version))
        handles.append(level.blocks[-1].register_forward_hook(hook))
    return kept, handles


def skips_untouched(kept) -> bool:
    return all(t._version == v and torch.equal(t.detach(), c) for t, c, v in kept)


@pytest.mark.parametrize("class_cond,norm", COMBOS)
def test_skips_are_never_modified_in_place(class_cond, norm):
    model = randomise(tiny(class_cond, norm, channel_mults=(1, 2, 2))).train()
    x, t = inputs()
    label = torch.tensor([1, 2, 3, 4])
    kept, handles = watch_skips(model)
    model(x, t, label).square().mean().backward()      # backward too: autograd would catch some aliasing, not all
    assert len(kept) == 3 and skips_untouched(kept)
    for h in handles:
        h.remove()
    model.eval()
    with torch.no_grad():   # and forward twice gives the same answer
        assert torch.equal(model(x, t, label), model(x, t, label))


def test_the_skip_check_catches_in_place_aliasing(monkeypatch):
    """The check above is not vacuous: a downsample that scribbles on its input in place (the
    write-up's 'tensors are CoW' bug) is caught."""
    def aliasing_forward(self, x):
        x.mul_(0.5)   # modifies the tensor the down path has just kept as a skip
        return self.conv(x)
    monkeypatch.setattr(Downsample, "forward", aliasing_forward)
    model = tiny(channel_mults=(1, 2, 2)).eval()
    kept, _ = watch_skips(model)
    with torch.no_grad():
        model(*inputs(), torch.tensor([1, 2, 3, 4]))
    assert not skips_untouched(kept)


@pytest.mark.parametrize("kind", ["group", "batch"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_conditional_norm_is_norm_then_per_sample_affine(kind, channels_last):
    """The conditional GroupNorm runs as one fused kernel (batch folded into the channels); values
    and gradients equal the textbook norm(x) * (1 + scale) + shift, in either memory format."""
    torch.manual_seed(0)
    norm = Norm(kind, 64, cond_dim=8).train()
    nn.init.normal_(norm.proj.weight)                  # non-zero scale and shift per sample
    x = (3 * torch.randn(4, 64, 7, 5) + 1).requires_grad_()
    cond = torch.randn(4, 8)
    if channels_last:
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    out = norm(x, cond)
    scale, shift = norm.proj(cond)[:, :, None, None].chunk(2, dim=1)
    reference = norm.norm(x) * (1 + scale) + shift
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    params = [x, norm.proj.weight, norm.proj.bias]
    for a, b in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(reference, params, g)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_levels_convolve_before_they_downsample():
    """Structure: every down level is ResBlocks then a Downsample; and in execution order every
    resolution-reducing op (strided conv or any pooling) comes right after a stride-1 conv at
    the same resolution, never as the first op of a level."""
    model = tiny(channel_mults=(1, 2, 2), blocks_per_level=2)
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)) for m in model.modules())
    for level in model.down:
        assert isinstance(level.blocks[0], ResBlock) and level.blocks[0].conv1.stride == (1, 1)
    assert [level.resample is not None for level in model.down] == [True, True, False]

    trace = []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            m.register_forward_hook(lambda mod, inp, out: trace.append(
                (inp[0].shape[-1], out.shape[-1], getattr(mod, "stride", (1,))[0] if isinstance(mod, nn.Conv2d) else 2)))
    x, t = inputs()
    model(x, t, torch.tensor([1, 2, 3, 4]))
    reductions = [i for i, (hin, hout, _) in enumerate(trace) if hout < hin]
    assert len(reductions) == 2
    for i in reductions:
        prev_in, prev_out, prev_stride = trace[i - 1]
        assert prev_stride == 1 and prev_in == prev_out == trace[i][0]


# --------------------------------------------------------------------------- the two bugs, switched on

def test_residual_inplace_changes_the_kept_skips_and_still_trains():
    """residual_inplace: each skip is modified in place after it is kept, so what the up path
    concatenates is silu(the skip as kept); the output differs from the default with the same
    weights, and forward + backward run (autograd's version check does not object)."""
    buggy = randomise(tiny(channel_mults=(1, 2, 2), residual_inplace=True)).train()
    kept, _ = watch_skips(buggy)
    consumed = []   # (version of the kept skip when the up level reads it, the skip channels it reads)
    for j, level in enumerate(buggy.up):   # up level j concatenates skip n-1-j before its first block
        def pre_hook(_, args, j=j):
            skip = kept[len(kept) - 1 - j][0]
            consumed.append((skip._version, args[0][:, -skip.shape[1]:].detach().clone()))
        level.blocks[0].register_forward_pre_hook(pre_hook)
    x, t = inputs()
    label = torch.tensor([1, 2, 3, 4])
    buggy(x, t, label).square().mean().backward()
    assert len(kept) == len(consumed) == 3
    for (_, as_kept, version_kept), (version_read, read) in zip(reversed(kept), consumed):
        assert version_read > version_kept                      # written to between keeping and reading
        torch.testing.assert_close(read, F.silu(as_kept), rtol=0, atol=0)
        assert not torch.allclose(read, as_kept, atol=1e-3)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in buggy.parameters())

    default = tiny(channel_mults=(1, 2, 2))
    default.load_state_dict(buggy.state_dict())                # the same weights, strictly
    default.eval(), buggy.eval()
    with torch.no_grad():
        assert not torch.allclose(default(x, t, label), buggy(x, t, label), atol=1e-4)


def test_residual_inplace_gradients_are_those_of_the_computation():
    """The in-place SiLU is differentiated correctly (not silently wrong, as an in-place write
    through .data would be): analytic gradients match finite differences, float64."""
    model = randomise(tiny(channel_mults=(1, 2), residual_inplace=True, time_cond=False)).double().train()
    x, t = inputs(2, 8)
    x = x.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: model(x, t, torch.tensor([1, 2])), (x,))


def test_pool_first_pools_before_any_convolution_of_every_level():
    """pool_first as the write-up wrote it: each level's first block sees the max-pooled output of
    what came before (the stem for level 0), no level convolves at full resolution, nothing learns
    the downsampling, and the output is back at the image's size."""
    default = tiny(channel_mults=(1, 2, 2))
    pooled = tiny(channel_mults=(1, 2, 2), pool_first=True)
    downsamples = [m for m in default.modules() if isinstance(m, Downsample)]
    assert len(downsamples) == 2 and not any(isinstance(m, Downsample) for m in pooled.modules())
    assert count_parameters(default) - count_parameters(pooled) == sum(count_parameters(d) for d in downsamples)
    before, ins, convs = [pooled.stem], [], []
    for level in pooled.down:
        level.blocks[-1].register_forward_hook(lambda _, __, out: before.append(out))
        level.blocks[0].register_forward_pre_hook(lambda _, args: ins.append(args[0]))
    for m in pooled.modules():
        if isinstance(m, nn.Conv2d) and m is not pooled.stem:
            m.register_forward_pre_hook(lambda _, args: convs.append(args[0].shape[-1]))
    outs = []
    pooled.stem.register_forward_hook(lambda _, __, out: outs.append(out))
    x, t = inputs()
    with torch.no_grad():
        assert pooled(x, t, torch.tensor([1, 2, 3, 4])).shape == x.shape
    above = outs[:1] + before[1:]                         # the stem's output, then each level's
    assert [i.shape[-1] for i in ins] == [14, 7, 4]
    for a, level_input in zip(above, ins):
        assert torch.equal(level_input, F.max_pool2d(a, 2, ceil_mode=True))
    assert max(convs[:-1]) == 14                          # only the output convolution sees 28x28
    deeper = tiny(channel_mults=(1, 2, 2, 2), pool_first=True)
    with torch.no_grad():
        assert deeper(x, t, torch.tensor([1, 2, 3, 4])).shape == x.shape


def test_the_bug_switches_are_unet_only_and_off_in_every_preset():
    for bug in ("residual_inplace", "pool_first"):
        with pytest.raises(ConfigError, match=f"{bug}.*arch unet"):
            ModelConfig(arch="resnet", **{bug: True}).validate()
        assert all(not getattr(p.model, bug) and bug not in to_dict(p.model) for p in PRESETS.values())
        assert to_dict(ModelConfig(arch="unet", **{bug: True}))[bug] is True


# --------------------------------------------------------------------------- presets and guidance

def test_unet_presets_and_parameter_counts():
    counts = {n: count_parameters(build_model(PRESETS[n].model)) for n in ("unet-input", "unet-cbn", "unet-block")}
    assert 8e6 <= counts["unet-block"] <= 12e6
    assert all(5e6 <= c <= 12e6 for c in counts.values())
    faces = get_preset("unet-faces64")
    assert (faces.model.image_size, faces.model.in_channels, faces.model.norm) == (64, 3, "group")
    assert faces.model.time_cond and faces.train["data"] == "folder"
    assert 35e6 <= count_parameters(build_model(faces.model)) <= 55e6
    assert get_preset("unet-block").model.class_cond == "block" and get_preset("unet-block").model.norm == "group"
    for n in ("unet-input", "unet-cbn", "unet-block"):
        assert get_preset(n).train["cond_drop"] == 0.1


CONDITIONAL = [n for n, p in PRESETS.items() if p.model.num_classes]


@pytest.mark.parametrize("preset", CONDITIONAL)
def test_guidance_changes_samples_and_zero_is_plain_conditional(preset):
    cfg = get_preset(preset).model
    small = {"channels": 8, "time_dim": 16, "num_blocks": 2} if cfg.arch == "resnet" else \
        {"channels": 8, "time_dim": 16, "channel_mults": (1, 2), "blocks_per_level": 1}
    torch.manual_seed(0)
    cfg = ModelConfig(**{**cfg.__dict__, **small})
    model = randomise(build_model(cfg)).eval()
    schedule = make_schedule()
    labels = torch.tensor([0, 1, 2, 3])
    kw = dict(labels=labels, seed=5)
    plain = render.sample_images(model, schedule, cfg, 4, Sampling("ddim", 3), **kw)
    guided = render.sample_images(model, schedule, cfg, 4, Sampling("ddim", 3, guidance=2.0), **kw)
    assert not torch.allclose(plain, guided, atol=1e-4)
    # W = 0 is exactly the conditional sampler with eps = model(x, t, label), no null branch
    seeds = [5 * 1_000_003 + i for i in range(4)]
    noise = PerImageNoise(seeds)
    with torch.no_grad():
        ref = ddim(lambda x, t: model(x, t, labels), schedule, noise((4, 1, 28, 28)), make_timesteps(1000, 3),
                   noise=noise)
    torch.testing.assert_close(plain, ref, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- image folders

def make_png(path, size=(20, 12), color=(200, 30, 30), kind="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, kind)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "ddpmlab" / "folders"


def test_folder_with_classes_broken_file_and_cache(tmp_path, cache, caplog, monkeypatch):
    root = tmp_path / "faces"
    for k, name in enumerate(("cats", "dogs")):
        for i in range(3):
            make_png(root / name / f"{i}.png", color=(50 * k, 100, 20 * i))
    make_png(root / "dogs" / "wide.jpg", size=(30, 10), kind="JPEG", color=(255, 255, 255))
    (root / "cats" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "cats" / "notes.txt").write_text("not an image, not counted")
    with pytest.raises(D.DataError, match="1 of 8 image files cannot be read .*broken.jpg.*--skip-unreadable"):
        D.load_image_folder(root, size=8, channels=3, progress=False)
    with caplog.at_level(logging.WARNING, logger="ddpmlab.data"):
        ds = D.load_image_folder(root, size=8, channels=3, progress=False, skip_unreadable=True)
    assert ds.images.shape == (7, 3, 8, 8) and ds.images.dtype == torch.uint8
    assert ds.num_classes == 2 and ds.class_names == ("cats", "dogs")
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert "1 of 8 image files could not be read" in caplog.text and "broken.jpg" in caplog.text
    assert torch.all(ds.images[-1] >= 250)    # the 30x10 white jpg was centre-cropped, not squashed
    # decoded once: the second load reads the cache
    assert len(list(cache.iterdir())) == 1
    with monkeypatch.context() as m:
        m.setattr(D, "_decode", lambda args: pytest.fail("decoded again despite the cache"))
        again = D.load_image_folder(root, size=8, channels=3, progress=False, skip_unreadable=True)
    assert torch.equal(again.images, ds.images) and torch.equal(again.labels, ds.labels)
    # a changed file, or another size, is another cache entry
    os.utime(root / "cats" / "0.png", ns=(1, 1))
    D.load_image_folder(root, size=8, channels=3, progress=False, skip_unreadable=True)
    D.load_image_folder(root, size=4, channels=1, progress=False, skip_unreadable=True)
    assert len(list(cache.iterdir())) == 3


def test_unlabelled_folder_grey_and_parallel_decode(tmp_path, cache, monkeypatch):
    root = tmp_path / "celeba"
    for i in range(5):
        make_png(root / "img_align_celeba" / f"{i:03d}.jpg", size=(12, 16), color=(40 * i, 0, 0), kind="JPEG")
    ds = D.load_image_folder(root, size=6, channels=1, progress=False)
    assert ds.images.shape == (5, 1, 6, 6) and ds.labels is None and ds.num_classes == 0
    monkeypatch.setattr(D, "PARALLEL_FROM", 1)
    serial = ds.images
    for f in (root / "img_align_celeba").iterdir():
        os.utime(f, ns=(2, 2))      # a new cache key: decoded again, now by worker processes
    par = D.load_image_folder(root, size=6, channels=1, progress=False)
    assert torch.equal(par.images, serial)


def test_empty_or_all_broken_folder_is_a_clear_error(tmp_path, cache):
    (tmp_path / "empty").mkdir()
    with pytest.raises(D.DataError, match="no jpg/png images"):
        D.load_image_folder(tmp_path / "empty", 8, 3, progress=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"")
    (bad / "b.jpg").write_bytes(os.urandom(100))
    with pytest.raises(D.DataError, match="none of the 2 image files"):
        D.load_image_folder(bad, 8, 3, progress=False)
    with pytest.raises(D.DataError, match="not a folder"):
        D.load_image_folder(tmp_path / "missing", 8, 3, progress=False)
    with pytest.raises(D.DataError, match="--data-dir"):
        D.load_dataset("folder", None, size=8, channels=3)


def test_cli_trains_the_faces_preset_on_a_folder(tmp_path, cache, capsys):
    root = tmp_path / "faces"
    for i in range(6):
        make_png(root / f"{i}.png", size=(70, 80), color=(30 * i, 90, 160))
    out = tmp_path / "run"
    argv = ["train", "--preset", "unet-faces64", "--data-dir", str(root), "--max-steps", "2", "--batch-size", "4",
            "--out", str(out), "--quiet", "--snapshot-steps", "2", "--device", "cpu",
            "--set", "channels=8", "--set", "channel_mults=1,2", "--set", "blocks_per_level=1", "--set", "time_dim=16"]
    assert cli.main(argv) == 0
    assert (out / "checkpoint.json").is_file() and (out / "samples" / "grid.png").is_file()
    # without --data-dir: one line, exit 2
    assert cli.main(["train", "--preset", "unet-faces64", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "--data-dir" in capsys.readouterr().err


def test_retired_preset_names_load_the_networks_they_named(capsys):
    """Old run directories and the shipped models name presets of earlier versions (fmnist-v1's
    config.json says unet-small): the alias table must rebuild exactly the network whose weights
    they hold, while `ddpmlab presets` lists only today's names."""
    from safetensors.torch import load_file
    from ddpmlab.run import load_config, resolve_run
    for run, names in (("fmnist-v1", ("unet-small",)), ("fmnist", ("cpu", "unet-coarse"))):
        weights = load_file(resolve_run(run) / "ema.safetensors")
        for name in names:
            build_model(get_preset(name).model).load_state_dict(weights, strict=True)
    assert load_config(resolve_run("fmnist-v1")).model == get_preset("unet-small").model
    assert make_run_config("unet-mini").train.batch_size == make_run_config("cpu-mini").train.batch_size == 32
    assert make_run_config("cpu-mini", batch_size=64).train.batch_size == 64         # --batch-size wins
    assert cli.main(["presets"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert "cpu" in listed and "cpu-mini" in listed and not {"unet-small", "unet-lite", "unet-coarse", "unet-mini"} & set(listed)


def test_residual_control_differs_from_the_bug_by_the_alias_alone():
    """residual_control: the same SiLU on the down path, out of place: every skip is read as it was
    kept (version unchanged), so with the same weights it differs from residual_inplace only in what
    the up path concatenates, and from the default by the extra activation."""
    control = randomise(tiny(channel_mults=(1, 2, 2), residual_control=True)).eval()
    kept, _ = watch_skips(control)
    seen = []
    for j, level in enumerate(control.up):
        def pre_hook(_, args, j=j):
            skip = kept[len(kept) - 1 - j]
            seen.append((skip[0]._version == skip[2], torch.equal(args[0][:, -skip[0].shape[1]:], skip[1])))
        level.blocks[0].register_forward_pre_hook(pre_hook)
    buggy, default = tiny(channel_mults=(1, 2, 2), residual_inplace=True), tiny(channel_mults=(1, 2, 2))
    for m in (buggy, default):
        m.load_state_dict(control.state_dict())              # the same weights: no parameter of its own
        m.eval()
    x, t, label = *inputs(), torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        out = control(x, t, label)
        assert seen == [(True, True)] * 3                    # the skips as kept, untouched
        assert not torch.allclose(out, buggy(x, t, label), atol=1e-4)
        assert not torch.allclose(out, default(x, t, label), atol=1e-4)
    with pytest.raises(ConfigError, match="exclude each other"):
        ModelConfig(arch="unet", residual_inplace=True, residual_control=True).validate()
