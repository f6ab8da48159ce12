"""benchmarks/time_to_quality.py's arithmetic: minutes to a target fd, interpolated between
budgets, and the ratio of minutes against the reference contender (a bound when one of the two
never got there)."""
from pathlib import Path

import pytest

import time_to_quality as ttq     # benchmarks/ is on pytest's pythonpath (pyproject.toml)


def test_minutes_to_interpolates_between_budgets():
    pts = [(10, 6.0), (20, 3.0), (40, 1.0)]
    assert ttq.minutes_to(pts, 3.0) == 20
    assert ttq.minutes_to(pts, 2.0) == 30            # halfway from 3.0 at 20 to 1.0 at 40
    assert ttq.minutes_to(pts, 7.0) == 10            # already there at the first budget
    assert ttq.minutes_to(pts, 0.5) is None


def test_time_ratio_is_a_bound_when_one_did_not_get_there():
    assert ttq.time_ratio(30.0, 10.0, 40, 60) == "3.00x"
    assert ttq.time_ratio(None, 10.0, 40, 60) == "> 4.00x"     # needs more than its 40 minutes
    assert ttq.time_ratio(12.0, None, 40, 60) == "< 0.20x"     # the reference needs more than 60
    assert ttq.time_ratio(None, None, 40, 60) == "-"


def test_extra_contenders_are_named_train_arguments():
    specs = ttq.with_extra(ttq.contenders(10), ["lr2=--preset unet-small --recipe fast --lr 2e-3"])
    assert specs["lr2"] == ["--preset", "unet-small", "--recipe", "fast", "--lr", "2e-3"]
    assert specs["fast"] == ttq.contenders(10)["fast"]
    for bad in ["no-equals-sign", "fast=--lr 1", "diffusers-x=--lr 1", "=--lr 1"]:
        with pytest.raises(SystemExit, match="NAME=ARGS"):
            ttq.with_extra(ttq.contenders(10), [bad])


def test_a_run_that_finished_early_sits_where_it_ended():
    assert ttq.at_minutes(12, 12 * 60 + 4.0) == 12          # stopped at its budget (a little after)
    assert ttq.at_minutes(12, 10.5 * 60) == 10.5            # ended its planned steps at 10.5 minutes


def test_sigma_max_evaluates_ddpmlab_snapshots_into_their_own_file(tmp_path, monkeypatch):
    import json
    calls = []

    def fake_run(cmd, check, stdout):
        calls.append(cmd)
        out = Path(cmd[cmd.index("--out") + 1])
        out.write_text(json.dumps({"fd": 1.0, "cmd": cmd}))
    monkeypatch.setattr(ttq.subprocess, "run", fake_run)
    snap = tmp_path / "at-12min"
    snap.mkdir()
    ttq.evaluate(snap, 1000)
    ttq.evaluate(snap, 1000, 55.0)
    assert "--sigma-max" not in calls[0] and calls[0][-1] == str(snap / "eval-n1000.json")
    assert calls[1][calls[1].index("--sigma-max") + 1] == "55" and calls[1][-1] == str(snap / "eval-n1000-smax55.json")
    ttq.evaluate(snap, 1000, 55.0)                     # kept: not evaluated again
    assert len(calls) == 2


def test_reach_table_gives_ratios_against_both_baselines():
    floor = 0.5
    curves = {"writeup": [(10, 6.0, floor), (20, 2.0, floor), (30, 1.0, floor)],      # 3x at 25 minutes
              "mini": [(8, 1.9, floor), (10, 1.1, floor)],                             # 3x at 9, 1.5x never
              "diffusers": [(10, 50.0, floor), (50, 8.0, floor)]}                      # 3x never in 50
    lines = ttq.reach_table(curves)
    assert lines[0].count("against writeup") == 1 and lines[0].count("against diffusers") == 1
    row = {line.split(" | ")[0].strip("| "): line.strip("| ").split(" | ") for line in lines[2:]}
    assert row["writeup"][1:] == ["25.0", "not reached", "1.00x", "-", "< 0.50x", "-"]
    assert row["mini"][1:] == ["9.0", "not reached", "0.36x", "-", "< 0.18x", "-"]
    assert row["diffusers"][1:] == ["not reached", "not reached", "> 2.00x", "-", "-", "-"]
    only = ttq.reach_table(curves, ["mini"])
    assert "against writeup" not in only[0] and only[2].endswith("| 2.78x | - |")     # 25 / 9
