"""The three studies of the write-up's findings (ddpmlab.studies) run end to end at a token size
and write what their docstrings promise: init (finding g, the basic ResNet's initialisation),
good_bugs (finding h, the UNet's two good bugs) and collapse (finding f, the UNets' collapse)."""
import json
import logging
from pathlib import Path

import pytest
import torch

from ddpmlab.studies import collapse, good_bugs, init

PNG = b"\x89PNG\r\n\x1a\n"
# channels 8, 64 images: the size of a test, not of a finding
TINY_UNET = {"channels": 8, "channel_mults": (1, 2, 4), "blocks_per_level": 1, "time_dim": 16}


@pytest.fixture(autouse=True)
def one_thread():
    # tiny convolutions on a shared CPU: one thread is faster (tests/test_unet.py says why)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG


def test_init_study_smoke(tmp_path, caplog):
    size = {"steps": 2, "seeds": 1, "batch": 16, "model": {"channels": 8, "num_blocks": 2}}
    init.run(tmp_path, command="ddpmlab reproduce --budget test", **size)
    r = json.loads((tmp_path / "init.json").read_text())
    assert r["finding"] == "g" and r["command"] == "ddpmlab reproduce --budget test" and r["machine"]
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
    # started again at the same size it keeps the result; at another size it measures again
    caplog.set_level(logging.INFO)
    assert init.run(tmp_path, **size) == r and "finished earlier, skipped" in caplog.text
    assert init.run(tmp_path, **{**size, "steps": 3})["steps"] == 3


GOOD_BUGS = {"epochs": 1, "subset": 64, "n": 20, "model": {**TINY_UNET, "class_dim": 8},
             "train": {"snapshot_steps": 0, "batch_size": 16, "log_every": 1}}


def test_good_bugs_smoke_and_rerun_skips(tmp_path, caplog):
    good_bugs.run(tmp_path, command="ddpmlab reproduce --budget test", **GOOD_BUGS)
    r = json.loads((tmp_path / "good_bugs.json").read_text())
    assert r["finding"] == "h" and r["command"] == "ddpmlab reproduce --budget test" and r["machine"]
    assert r["images"] == 64
    assert list(r["variants"]) == ["ddpmlab", "residual-inplace", "residual-copy", "pool-first"]
    for v in r["variants"].values():
        assert {"params", "final_loss", "loss_curve", "fd", "fd_floor", "cond_acc", "precision", "recall",
                "img_per_s"} <= set(v)
        assert v["loss_curve"] and all(len(p) == 2 for p in v["loss_curve"])
    p = {k: v["params"] for k, v in r["variants"].items()}
    assert p["ddpmlab"] == p["residual-inplace"] == p["residual-copy"] > p["pool-first"]   # no strided convs
    for name in ("good_bugs.png", "good_bugs-samples.png"):
        assert is_png(tmp_path / name)
    # started again: every finished run is skipped, not trained twice
    caplog.set_level(logging.INFO)
    good_bugs.run(tmp_path, **GOOD_BUGS)
    assert caplog.text.count("finished earlier, skipped") == 4


def test_collapse_study_smoke(tmp_path):
    """Finding f: a long run under the monitor, then the final model sampled three ways."""
    size = {"presets": ["unet-cbn"], "epochs": 2, "subset": 64, "model": TINY_UNET, "per_class": 2, "steps": 2,
            "train": {"batch_size": 16, "snapshot_steps": 2, "snapshot_per_class": 2}}
    collapse.run(tmp_path, **size)
    r = json.loads((tmp_path / "collapse.json").read_text())
    assert r["finding"] == "f" and r["epochs"] == 2 and r["conclusion"].startswith(("no collapse", "collapsed"))
    run = r["runs"]["unet-cbn"]
    assert run["epochs"] == 2 and [e["epoch"] for e in run["per_epoch"]] == [1, 2]
    assert "diversity" in run["per_epoch"][-1] and "adherence" in run["per_epoch"][-1]
    assert set(run["ablations"]) == {"ema+running", "ema+batch", "raw+running"}
    # batch statistics and raw weights sample other images than the default: the ablations differ
    scores = {a: s["diversity"] for a, s in run["ablations"].items()}
    assert len(set(scores.values())) == 3, scores
    assert is_png(tmp_path / "collapse.png")
    # a rerun trains nothing: the run is finished
    mtime = (tmp_path / "collapse" / "unet-cbn" / "checkpoint.json").stat().st_mtime
    collapse.run(tmp_path, **size)
    assert (tmp_path / "collapse" / "unet-cbn" / "checkpoint.json").stat().st_mtime == mtime
