"""torchrun with 2 CPU processes (gloo): disjoint shards, identical weights, a complete run dir."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from ddpmlab import checkpoint

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
TINY = ["--set", "channels=8", "--set", "num_blocks=2", "--set", "time_dim=16"]


def run_torchrun(out: Path, *extra: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "ddpmlab", "train", "--preset", "resnet-class",
           "--out", str(out), "--subset", "256", "--batch-size", "16", "--snapshot-steps", "2", "--quiet",
           "--device", "cpu", *extra]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def test_two_cpu_ranks_agree_and_resume(tmp_path):
    out = tmp_path / "ddp"
    run_torchrun(out, "--epochs", "1", *TINY)
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    ddp = [m for m in metrics if m["kind"] == "ddp"]
    assert ddp and ddp[-1]["world"] == 2
    a, b = ddp[-1]["weights_sha256"]
    assert a == b, "ranks ended with different weights"
    epochs = [m for m in metrics if m["kind"] == "epoch"]
    # 256 images, 2 ranks x 16 per batch: 8 steps make one epoch, each rank a disjoint half
    assert epochs[-1]["step"] == 8 and epochs[-1]["epoch"] == 1
    for f in ("config.json", "checkpoint.json", "loss.png", "process.png",
              "samples/grid.png", "snapshots/epoch1-class0.png"):
        assert (out / f).is_file(), f
    before = checkpoint.load_tensors(out, "model.safetensors")
    run_torchrun(out, "--epochs", "2", "--resume")
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics if m["kind"] == "epoch"] == [1, 2]
    last = [m for m in metrics if m["kind"] == "ddp"][-1]
    assert last["step"] == 16 and len(set(last["weights_sha256"])) == 1
    after = checkpoint.load_tensors(out, "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
