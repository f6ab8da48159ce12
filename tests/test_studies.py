"""The three study scripts of the write-up's findings run end to end (--smoke: tiny models, a few
steps) and write what their docstrings promise: benchmarks/init_study.py (finding g, the basic
ResNet's initialisation), benchmarks/good_bugs.py (finding h, the UNet's two good bugs) and
benchmarks/collapse_study.py (finding f, the UNets' collapse)."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"


def run_study(script: str, out: Path) -> str:
    # one thread: tiny convolutions on a shared CPU (tests/test_unet.py says why); XDG_CACHE_HOME
    # is the session's private cache (conftest), inherited
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke", "--out", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG


def test_init_study_smoke(tmp_path):
    run_study("init_study.py", tmp_path)
    r = json.loads((tmp_path / "init.json").read_text())
    assert r["finding"] == "g" and "init_study.py --smoke" in r["command"] and r["machine"]
    assert r["steps"] == 2 and r["seeds"] == [0]
    assert list(r["variants"]) == ["ddpmlab", "pytorch-default", "pytorch-default+warmup"]
    for v in r["variants"].values():
        assert len(v["loss_mean"]) == len(v["loss_min"]) == len(v["loss_max"]) == 2
        assert all(lo <= m <= hi for lo, m, hi in zip(v["loss_min"], v["loss_mean"], v["loss_max"]))
        assert set(v["loss_at"]) == {"1", "10", "25", "50", "100"} and v["loss_at"]["1"] == v["loss_mean"][0]
        assert v["loss_at"]["10"] is None                          # past the end of a 2-step run
        assert set(v["steps_to_loss"]) == {"0.2", "0.1"}
    # the variants start from different weights: zero-init or not changes the very first loss
    first = {k: v["loss_mean"][0] for k, v in r["variants"].items()}
    assert first["ddpmlab"] != first["pytorch-default"] == first["pytorch-default+warmup"]
    assert is_png(tmp_path / "init.png")


def test_good_bugs_smoke_and_rerun_skips(tmp_path):
    run_study("good_bugs.py", tmp_path)
    r = json.loads((tmp_path / "good_bugs.json").read_text())
    assert r["finding"] == "h" and "good_bugs.py --smoke" in r["command"] and r["machine"] and r["images"] == 64
    assert list(r["variants"]) == ["ddpmlab", "residual-inplace", "pool-first"]
    for v in r["variants"].values():
        assert {"params", "final_loss", "loss_curve", "fd", "fd_floor", "cond_acc", "precision", "recall",
                "img_per_s"} <= set(v)
        assert v["loss_curve"] and all(len(p) == 2 for p in v["loss_curve"])
    p = {k: v["params"] for k, v in r["variants"].items()}
    assert p["ddpmlab"] == p["residual-inplace"] > p["pool-first"]   # pool_first drops the strided convs
    for name in ("good_bugs.png", "good_bugs-samples.png"):
        assert is_png(tmp_path / name)
    # started again: every finished run is skipped, not trained twice
    assert run_study("good_bugs.py", tmp_path).count("finished earlier, skipped") == 3


def test_collapse_study_smoke(tmp_path):
    """Finding f: a long run under the monitor, then the final model sampled three ways."""
    out = run_study("collapse_study.py", tmp_path)
    r = json.loads((tmp_path / "collapse.json").read_text())
    assert r["finding"] == "f" and r["epochs"] == 2 and r["conclusion"].startswith(("no collapse", "collapsed"))
    run = r["runs"]["unet-cbn"]
    assert run["epochs"] == 2 and [e["epoch"] for e in run["per_epoch"]] == [1, 2]
    assert "diversity" in run["per_epoch"][-1] and "adherence" in run["per_epoch"][-1]
    assert set(run["ablations"]) == {"ema+running", "ema+batch", "raw+running"}
    # batch statistics and raw weights sample other images than the default: the ablations differ
    scores = {a: s["diversity"] for a, s in run["ablations"].items()}
    assert len(set(scores.values())) == 3, scores
    assert is_png(tmp_path / "collapse.png") and r["conclusion"] in out
    # a rerun trains nothing: the run is finished
    mtime = (tmp_path / "collapse" / "unet-cbn" / "checkpoint.json").stat().st_mtime
    run_study("collapse_study.py", tmp_path)
    assert (tmp_path / "collapse" / "unet-cbn" / "checkpoint.json").stat().st_mtime == mtime
