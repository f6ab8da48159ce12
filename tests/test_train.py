import json
import os
import platform
import subprocess
import sys

import pytest
import torch
from ddpmlab import checkpoint, cli
from ddpmlab.config import ConfigError
from ddpmlab.diffusion import loss_fn, make_schedule
from ddpmlab.models import build_model
from ddpmlab.recipes import make_run_config
from ddpmlab.train import Trainer, TrainingDiverged, train

TINY = {"channels": 8, "num_blocks": 2, "time_dim": 16}


def tiny_rc(preset="resnet-class", **kw):
    kw = {"batch_size": 32, "snapshot_steps": 2, "snapshot_per_class": 2, "log_every": 3, "device": "cpu", **kw}
    return make_run_config(preset, TINY, **kw)


def weights(run_dir, name="model"):
    return checkpoint.load_tensors(run_dir, f"{name}.safetensors")


def assert_same_weights(a, b):
    for name in ("model", "ema"):
        wa, wb = weights(a, name), weights(b, name)
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), f"{name}:{k} differs"


def test_resume_is_bit_identical(tmp_path, fmnist_small):
    data = fmnist_small.subset(160)
    train(tmp_path / "full", tiny_rc(epochs=4), data=data, progress=False)
    train(tmp_path / "split", tiny_rc(epochs=2), data=data, progress=False)
    train(tmp_path / "split", resume=True, epochs=4, data=data, progress=False)
    assert_same_weights(tmp_path / "full", tmp_path / "split")
    # and stopping mid-epoch (--max-steps) then resuming is exact too
    train(tmp_path / "mid", tiny_rc(epochs=4, max_steps=7), data=data, progress=False)
    train(tmp_path / "mid", resume=True, max_steps=None, data=data, progress=False)
    assert_same_weights(tmp_path / "full", tmp_path / "mid")
    epochs = [m for m in map(json.loads, (tmp_path / "mid" / "metrics.jsonl").read_text().splitlines())
              if m["kind"] == "epoch"]
    assert [m["epoch"] for m in epochs] == [1, 2, 3, 4]


def test_run_directory_is_complete(tmp_path, fmnist_small):
    out = tmp_path / "run"
    train(out, tiny_rc(epochs=1), data=fmnist_small.subset(64), progress=False)
    ckpt = json.loads((out / "checkpoint.json").read_text())["dir"]
    for f in ("config.json", "checkpoint.json", f"{ckpt}/model.safetensors", f"{ckpt}/ema.safetensors",
              f"{ckpt}/state.pt", "metrics.jsonl", "loss.png", "process.png", "samples/grid.png"):
        assert (out / f).is_file(), f
    assert [p.name for p in out.glob("ckpt-*")] == [ckpt]          # the previous checkpoint is gone
    about = json.loads((out / "config.json").read_text())["about"]
    assert about["class_names"][0] == "T-shirt/top" and about["torch"] == torch.__version__
    assert about["data_checksum"].startswith("c59f468a") and about["world_size"] == 1
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == sorted(f"epoch1-class{k}.png" for k in range(10))
    assert not list(out.rglob("*.tmp"))
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "epoch"} == {m["kind"] for m in metrics}
    assert all(m["img_per_s"] > 0 and m["lr"] == 1e-3 for m in metrics)


def test_training_lowers_the_loss_on_real_images(fmnist_small):
    torch.manual_seed(0)
    rc = tiny_rc("resnet-noise")
    model = build_model(rc.model)
    sched = make_schedule()
    x0 = fmnist_small.images[:64].float() / 127.5 - 1
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    losses = []
    for i in range(60):
        loss = loss_fn(model, sched, x0, None, torch.Generator().manual_seed(100 + i))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.6 * first, (first, last)


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, fmnist_small):
    out = tmp_path / "run"
    data = fmnist_small.subset(64)
    train(out, tiny_rc(epochs=1), data=data, progress=False)
    good = weights(out)
    trainer = Trainer(out, tiny_rc(epochs=3, lr=1e30), data=data, progress=False)
    trainer.load()
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        trainer.fit()
    after = weights(out)
    assert all(torch.equal(good[k], after[k]) for k in good)


def test_refuses_to_overwrite_and_resume_without_checkpoint(tmp_path, fmnist_small):
    data = fmnist_small.subset(64)
    train(tmp_path / "r", tiny_rc(epochs=1), data=data, progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tmp_path / "r", tiny_rc(epochs=1), data=data, progress=False)
    with pytest.raises(ConfigError, match="holds no run: nothing is resumable yet"):
        train(tmp_path / "nothing", resume=True, data=data)


def test_cli_train_sample_process_end_to_end(tmp_path, capsys):
    out = tmp_path / "R"
    args = ["train", "--preset", "resnet-class", "--max-steps", "6", "--out", str(out), "--subset", "256",
            "--batch-size", "32", "--snapshot-steps", "2", "--quiet", "--device", "cpu"]
    for kv in ("channels=8", "num_blocks=2", "time_dim=16"):
        args += ["--set", kv]
    assert cli.main(args) == 0
    assert cli.main(["sample", str(out), "--labels", "all", "--n", "20", "--steps", "5", "--npz",
                     str(tmp_path / "s.npz"), "--grid", str(tmp_path / "g.png")]) == 0
    import numpy as np
    z = np.load(tmp_path / "s.npz")
    assert z["arr_0"].shape == (20, 28, 28, 1) and z["arr_0"].dtype == np.uint8
    assert z["arr_1"].tolist() == [k % 10 for k in range(20)] and z["arr_1"].dtype == np.int64
    assert (tmp_path / "g.png").stat().st_size > 1000
    assert cli.main(["process", str(out), "--out", str(tmp_path / "p.png"), "--steps", "10"]) == 0
    assert (tmp_path / "p.png").stat().st_size > 1000


@pytest.mark.parametrize("argv,needle", [
    (["train", "--preset", "nope"], "valid: resnet-basic"),
    (["train", "--set", "channels=abc"], "expected an integer"),
    (["train", "--set", "widht=3"], "key one of"),
    (["train", "--epochs", "0", "--out", "{tmp}/x"], "epochs must be >= 1"),
    (["sample", "{tmp}"], "not a run directory"),
    (["sample", "{run}", "--label", "10"], "outside 0..9"),
    (["sample", "{run}", "--steps", "0"], "--steps must be >= 1"),
    (["sample", "{run}", "--steps", "1001"], "between 1 and 1000"),
    (["sample", "{run}", "--labels", "some"], "valid: all"),
    (["process", "{tmp}/missing"], "not a run directory"),
])
def test_bad_arguments_one_line_exit_2(argv, needle, tmp_path, capsys, fmnist_small):
    run = tmp_path / "run"
    if "{run}" in argv:
        train(run, tiny_rc(epochs=1, snapshot_steps=0), data=fmnist_small.subset(32), progress=False)
        capsys.readouterr()
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{run}", str(run)) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err, err


def test_resume_with_a_new_learning_rate_uses_it(tmp_path, fmnist_small):
    data = fmnist_small.subset(64)
    train(tmp_path / "run", tiny_rc(epochs=1), data=data, progress=False)
    train(tmp_path / "run", resume=True, epochs=2, lr=3e-4, data=data, progress=False)
    metrics = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {m["lr"] for m in metrics if m["epoch"] == 1 and m["kind"] == "epoch"} == {1e-3}
    assert {m["lr"] for m in metrics if m["epoch"] == 2} == {3e-4}
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["lr"] == 3e-4
    with pytest.raises(ConfigError, match="min_lr"):
        train(tmp_path / "run", resume=True, epochs=3, lr=1e-6, data=data, progress=False)


def test_adam_is_fused_and_stays_fused_on_resuming_an_older_unfused_checkpoint(tmp_path, fmnist_small):
    data = fmnist_small.subset(64)
    run = tmp_path / "run"
    train(run, tiny_rc(epochs=1), data=data, progress=False)
    state = checkpoint.load_state(run)
    assert state["optimizer"]["param_groups"][0]["fused"] is True
    for group in state["optimizer"]["param_groups"]:   # as the runs of earlier versions saved it
        group["fused"] = None
    # and in the first layout, files at the top of the run directory, no manifest
    ckpt = run / json.loads((run / "checkpoint.json").read_text())["dir"]
    for name in ("model.safetensors", "ema.safetensors"):
        (ckpt / name).rename(run / name)
    torch.save(state, run / "state.pt")
    (run / "checkpoint.json").unlink()
    tr = Trainer(tmp_path / "run", tiny_rc(epochs=2), data=data, progress=False)
    tr.load()
    assert tr.step == state["step"] and all(g["fused"] is True for g in tr.opt.param_groups)


def test_channels_last_changes_the_memory_layout_not_the_training(fmnist_small):
    """--channels-last on: the network's 4-d weights and its input are laid out channels_last, and
    the first steps' losses are those of the contiguous network (the same arithmetic, reordered)."""
    data = fmnist_small.subset(64)
    losses, layouts = {}, {}
    for mode in ("off", "on"):
        tr = Trainer("unused", tiny_rc(channels_last=mode, precision="fp32", batch_size=32), data=data, progress=False)
        layouts[mode] = all(p.is_contiguous(memory_format=torch.channels_last)
                            for p in tr.model.parameters() if p.dim() == 4)
        losses[mode] = [tr.train_step(torch.arange(32 * i, 32 * (i + 1))).item() for i in range(2)]
    assert layouts == {"off": False, "on": True}
    assert losses["on"] == pytest.approx(losses["off"], rel=1e-4)


ALLOCATION_PATTERN = """
import resource, sys, torch
from ddpmlab.runtime import keep_freed_memory
print(keep_freed_memory())
sizes = (torch.randint(1, 64, (40,), generator=torch.Generator().manual_seed(0)) * 16384).tolist()
def step():                        # a forward pass keeps 40 activations of 64 KiB-4 MiB, the backward frees them
    kept = [torch.ones(n) for n in sizes]
    del kept
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="glibc's malloc settings")
def test_keep_freed_memory_makes_repeated_steps_free_of_page_faults():
    def faults_per_step(keep: str) -> tuple[str, float]:
        env = dict(os.environ, DDPMLAB_KEEP_FREED_MEMORY=keep)
        out = subprocess.run([sys.executable, "-c", ALLOCATION_PATTERN], env=env, capture_output=True,
                             text=True, check=True).stdout.split()
        return out[0], float(out[1])
    applied, default = faults_per_step("0")
    assert applied == "False" and default > 1000          # glibc's default: the pages come back every step
    applied, kept = faults_per_step("1")
    assert applied == "True" and kept < default / 10


def test_ema_is_the_hand_computed_average_and_copies_buffers(fmnist_small):
    from ddpmlab.train import EMA
    model = build_model(tiny_rc("resnet-noise").model)
    ema = EMA(model, decay=0.9)
    start = {k: v.clone() for k, v in ema.model.state_dict().items()}
    expected = {k: v.double().clone() for k, v in model.named_parameters()}
    for step in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
            for b in model.buffers():
                if b.is_floating_point():
                    b.add_(1.0)
        ema.update(model, step)
        d = min(0.9, (1 + step) / (10 + step))                   # the warm-up, then the decay
        for k, p in model.named_parameters():
            expected[k] = d * expected[k] + (1 - d) * p.double()
    for k, p in ema.model.named_parameters():
        assert torch.allclose(p.double(), expected[k], atol=1e-6), k
        assert not torch.equal(p, start[k])
    for (k, b_ema), b in zip(ema.model.named_buffers(), model.buffers()):
        assert torch.equal(b_ema, b), f"buffer {k} was not copied"


def test_label_dropout_happens_at_the_configured_rate(fmnist_small, monkeypatch):
    data = fmnist_small.subset(512)
    seen = []
    tr = Trainer("unused", tiny_rc(cond_drop=0.3, batch_size=512), data=data, progress=False)
    real = tr.ddp

    def spy(x, t, label):
        seen.append(label.clone())
        return real(x, t, label)
    tr.ddp = spy
    for _ in range(4):
        tr.train_step(torch.arange(512))
    labels = torch.cat(seen)
    null = (labels == tr.rc.model.num_classes).float().mean().item()
    assert 0.26 < null < 0.34, null                               # 2048 draws: 0.3 +- 5 sigma
    assert torch.equal(labels[labels != 10], data.labels.repeat(4)[labels != 10])


def test_sigint_then_resume_is_bit_identical(tmp_path):
    """Ctrl-C in the middle of a run saves; --resume ends with the uninterrupted run's weights."""
    import signal
    import time
    args = ["--preset", "resnet-class", "--subset", "1600", "--batch-size", "32", "--epochs", "2",
            "--snapshot-steps", "0", "--quiet", "--device", "cpu", "--precision", "fp32", "--set", "channels=8",
            "--set", "num_blocks=2", "--set", "time_dim=16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = lambda out, *extra: subprocess.run([sys.executable, "-m", "ddpmlab.cli", "train", "--out", str(out),
                                              *args, *extra], env=env, capture_output=True, text=True)
    assert run(tmp_path / "full").returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "ddpmlab.cli", "train", "--out", str(tmp_path / "cut"), *args],
                            env=env, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "cut" / "metrics.jsonl"
    while not (log.is_file() and '"kind": "step"' in log.read_text()):     # 25 steps in (the first log line)
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted at step" in err and "--resume" in err, err
    stopped = checkpoint.step(tmp_path / "cut")
    assert 0 < stopped < 100, stopped                              # mid-run: 50 steps an epoch, 2 epochs
    r = run(tmp_path / "cut", "--resume")
    assert r.returncode == 0, r.stderr
    assert_same_weights(tmp_path / "full", tmp_path / "cut")


def test_the_log_holds_each_window_mean_and_each_epoch_mean(tmp_path, fmnist_small, monkeypatch):
    """Every log_every steps (and at an epoch's end) one "step" line with the mean loss of the steps
    since the last line; one "epoch" line with the mean over the epoch: what the loss curve and the
    plateau scheduler read."""
    seen = []
    step = Trainer.train_step

    def recording(self, idx):
        loss = step(self, idx)
        seen.append(float(loss))
        return loss
    monkeypatch.setattr(Trainer, "train_step", recording)
    data = fmnist_small.subset(224)                      # 7 steps of 32 an epoch: windows of 3, 3, 1
    train(tmp_path / "run", tiny_rc(epochs=2, snapshot_steps=0), data=data, progress=False)
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in lines if m["kind"] == "step"]
    assert [m["step"] for m in steps] == [3, 6, 7, 10, 13, 14]
    bounds = [0, 3, 6, 7, 10, 13, 14]
    for m, lo, hi in zip(steps, bounds, bounds[1:]):
        assert m["loss"] == pytest.approx(sum(seen[lo:hi]) / (hi - lo), rel=1e-5)
    epochs = [m for m in lines if m["kind"] == "epoch"]
    assert [m["loss"] for m in epochs] == pytest.approx([sum(seen[:7]) / 7, sum(seen[7:]) / 7], rel=1e-5)
