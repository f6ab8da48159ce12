"""A checkpoint is one unit: killed or failed at any phase of a save, a run resumes to exactly
the weights of an uninterrupted one, and a full disk is one line."""
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddpmlab import checkpoint
from ddpmlab.checkpoint import CheckpointError
from ddpmlab.recipes import make_run_config
from ddpmlab.train import train

TINY = ["channels=8", "num_blocks=2", "time_dim=16"]
# 96 images, batch 32: 3 steps an epoch; 2 epochs save after epoch 1, after epoch 2 and at the end
ARGS = ["--preset", "resnet-class", "--subset", "96", "--batch-size", "32", "--epochs", "2",
        "--snapshot-steps", "0", "--quiet", "--device", "cpu", "--precision", "fp32"]
for kv in TINY:
    ARGS += ["--set", kv]


def cmd(out, *extra):
    return [sys.executable, "-m", "ddpmlab.cli", "train", "--out", str(out), *ARGS, *extra]


def env(fault=None):
    e = {**os.environ, "OMP_NUM_THREADS": "1", "DDPMLAB_KEEP_FREED_MEMORY": "0"}
    e.pop("DDPMLAB_FAULT", None)
    if fault:
        e["DDPMLAB_FAULT"] = fault
    return e


def final_weights(run):
    return {name: checkpoint.load_tensors(run, f"{name}.safetensors") for name in ("model", "ema")}


def same(a, b) -> bool:
    return all(a[n].keys() == b[n].keys() and all(torch.equal(a[n][k], b[n][k]) for k in a[n]) for n in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    subprocess.run(cmd(out), env=env(), check=True, capture_output=True)
    return final_weights(out)


def run_all(cmds, envs):
    procs = [subprocess.Popen(c, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c, e in zip(cmds, envs)]
    return [(p.wait(), p.communicate()[1]) for p in procs]


def test_sigkill_at_every_phase_of_a_save_then_resume_is_bit_identical(tmp_path, reference):
    """Killed during the second checkpoint (after epoch 1 was saved), at every phase: the resumed
    run ends with the uninterrupted run's weights and EMA."""
    runs = {phase: tmp_path / phase.replace(":", "_") for phase in checkpoint.PHASES}
    killed = run_all([cmd(out) for out in runs.values()], [env(f"{p}@2") for p in runs])
    for (phase, out), (rc, err) in zip(runs.items(), killed):
        assert rc == -9, (phase, rc, err)                       # the fault really fired
    steps = {phase: checkpoint.step(out) for phase, out in runs.items()}     # what a resume starts from
    resumed = run_all([cmd(out, "--resume") for out in runs.values()], [env()] * len(runs))
    print("\n| killed at (2nd save) | resumed from step | resume | final weights and EMA |\n|---|---|---|---|")
    for (phase, out), (rc, err) in zip(runs.items(), resumed):
        identical = rc == 0 and same(final_weights(out), reference)
        print(f"| {phase} | {steps[phase]} | exit {rc} | {'bit-identical' if identical else 'DIFFERENT'} |")
    for (phase, out), (rc, err) in zip(runs.items(), resumed):
        assert rc == 0, (phase, err)
        assert same(final_weights(out), reference), f"killed at {phase}: resumed weights differ"
        assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".ckpt-")]
        assert len(list(out.glob("ckpt-*"))) == 1


@pytest.mark.parametrize("phase", ["wrote:ema.safetensors", "renamed", "published"])
def test_sigkill_during_the_first_save_resumes_or_says_start_over(tmp_path, reference, phase):
    out = tmp_path / "run"
    (rc, _), = run_all([cmd(out)], [env(f"{phase}@1")])
    assert rc == -9
    (rc, err), = run_all([cmd(out, "--resume")], [env()])
    if phase == "published":                                   # the first checkpoint is complete
        assert rc == 0, err
    else:
        lines = [line for line in err.splitlines() if line.startswith("ddpmlab:")]
        assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert "nothing is resumable yet" in lines[0] and "without --resume" in lines[0]
        (rc, err), = run_all([cmd(out)], [env()])              # what the message says: start over
        assert rc == 0, err
    assert same(final_weights(out), reference)


def tiny_rc(**kw):
    return make_run_config("resnet-class", {"channels": 8, "num_blocks": 2, "time_dim": 16},
                           **{"batch_size": 32, "snapshot_steps": 0, "device": "cpu", "precision": "fp32", **kw})


@pytest.fixture(scope="module")
def inproc_reference(tmp_path_factory, fmnist_small):
    ref = tmp_path_factory.mktemp("inproc") / "ref"
    train(ref, tiny_rc(epochs=2), data=fmnist_small.subset(96), progress=False)
    return final_weights(ref)


@pytest.mark.parametrize("phase", [p for p in checkpoint.PHASES if p != "cleaned"])
def test_an_oserror_at_any_phase_keeps_the_previous_checkpoint(tmp_path, fmnist_small, monkeypatch, phase,
                                                               inproc_reference):
    data = fmnist_small.subset(96)
    out = tmp_path / "run"
    train(out, tiny_rc(epochs=1), data=data, progress=False)
    before = final_weights(out)
    step_before = checkpoint.step(out)

    def full(p):
        if p == phase:
            raise OSError(errno.ENOSPC, "No space left on device", str(out))
    monkeypatch.setattr(checkpoint, "fault_hook", full)
    if phase == "published":        # the new checkpoint is complete: only its last fsync failed
        train(out, resume=True, epochs=2, data=data, progress=False)
        assert checkpoint.step(out) == 6
    else:
        with pytest.raises(CheckpointError, match="the disk is full") as e:
            train(out, resume=True, epochs=2, data=data, progress=False)
        assert "previous checkpoint is intact" in str(e.value) and "\n" not in str(e.value)
        assert checkpoint.step(out) == step_before and same(final_weights(out), before)
        assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".ckpt-")]
        assert len(list(out.glob("ckpt-*"))) == 1
    monkeypatch.setattr(checkpoint, "fault_hook", lambda p: None)
    train(out, resume=True, epochs=2, data=data, progress=False)
    assert same(final_weights(out), inproc_reference)


def _mount_tmpfs(where: Path, size: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return r.returncode == 0


def test_a_really_full_disk_is_one_line_and_the_run_resumes(tmp_path, reference):
    """On a real small filesystem (tmpfs, needs root): fill it after the first epoch's checkpoint,
    so the next save runs out of room; then free it and resume."""
    mnt = tmp_path / "small"
    if not _mount_tmpfs(mnt, "8m"):
        pytest.skip("mounting a tmpfs needs root")
    try:
        out = mnt / "run"
        (rc, err), = run_all([cmd(out, "--epochs", "1")], [env()])
        assert rc == 0, err
        stat = os.statvfs(mnt)
        room = stat.f_bavail * stat.f_frsize
        ckpt = sum(f.stat().st_size for f in next(out.glob("ckpt-*")).iterdir())
        with open(mnt / "filler", "wb") as f:                   # leave half a checkpoint of room
            f.write(b"\0" * max(0, room - ckpt // 2))
        (rc, err), = run_all([cmd(out, "--resume")], [env()])
        assert rc == 2 and "Traceback" not in err, err
        err = [line for line in err.splitlines() if line.startswith("ddpmlab:")]
        assert len(err) == 1 and "disk is full" in err[0] and str(mnt) in err[0], err
        assert checkpoint.step(out) == 3 and not list(out.rglob("*.tmp")) and not list(out.glob(".ckpt-*"))
        (mnt / "filler").unlink()
        (rc, err), = run_all([cmd(out, "--resume")], [env()])
        assert rc == 0, err
        assert same(final_weights(out), reference)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
