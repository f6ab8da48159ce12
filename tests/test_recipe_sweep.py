"""benchmarks/recipe_sweep.py: variants trained side by side and evaluated alike, a row each; a
rerun resumes and reuses what is done; bad NAME=ARGS items are refused."""
import json
from pathlib import Path

import pytest

import recipe_sweep as sweep      # benchmarks/ is on pytest's pythonpath (pyproject.toml)

ROOT = Path(__file__).resolve().parent.parent


def test_named_items_become_argument_lists():
    assert sweep.named(["a=--lr 2e-3 --set attention=true", "b="], "--variant") == \
        {"a": ["--lr", "2e-3", "--set", "attention=true"], "b": []}
    for bad in (["no-equals"], ["=--lr 1"], ["a/b=--lr 1"], ["a=", "a=--lr 1"]):
        with pytest.raises(SystemExit, match="NAME=ARGS"):
            sweep.named(bad, "--variant")


def test_two_variants_a_row_each_and_a_rerun_reuses_them(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    base = "--preset unet-lite --recipe fast --max-steps 3 --subset 128 --snapshot-steps 0 --batch-size 32"
    argv = ["--out", str(tmp_path), "--device", "cpu", "--n", "20", "--parallel", "2",
            "--variant", f"base={base}", "--variant", f"attn={base} --set attention=true",
            "--eval", "u4=--sampler ddim --steps 4 --guidance 0"]
    sweep.main(argv)
    rows = {r["variant"]: r for r in map(json.loads, (tmp_path / "sweep.jsonl").read_text().splitlines())}
    assert set(rows) == {"base", "attn"}
    assert all(r["steps"] == 3 and r["u4"]["nfe"] == 4 and r["u4"]["fd"] > 0 for r in rows.values())
    assert rows["attn"]["gflop"] > rows["base"]["gflop"]      # the attention layer is counted
    md = (tmp_path / "sweep.md").read_text()
    assert "| attn | 3 |" in md and "--set attention=true" in md
    made = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/eval-u4.json")}
    assert len(made) == 2
    sweep.main(argv)                                           # resumes the finished runs, reuses the evals
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/eval-u4.json")} == made
    assert "--resume" in (tmp_path / "base" / "train.log").read_text()
