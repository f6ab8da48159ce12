"""Variants of a training recipe side by side, at equal optimiser steps, evaluated alike.
Takes: about an hour a variant on a 2-core CPU; minutes a variant on a GPU, several at once.

    .venv/bin/python benchmarks/recipe_sweep.py --out runs/sweep [--parallel K] [--device cuda] [--n 1000]
        --variant NAME=TRAIN_ARGS [--variant ...] --eval NAME=EVALUATE_ARGS [--eval ...]

Each variant is `ddpmlab train TRAIN_ARGS --out OUT/NAME/run`, then every --eval is
`ddpmlab evaluate OUT/NAME/run --n N EVALUATE_ARGS`, kept as OUT/NAME/eval-EVAL.json. Where a
variant's steps cost the same on the CPU, its fd at equal steps is its fd at equal CPU-minutes;
where they do not, the table's GFLOP column says by how much (forward, one image).

Up to K variants train at once (default 1). On a GPU a small network's training process is
bound by launching kernels from one CPU thread, not by the device, so K processes finish K
variants in about the time of one; on a CPU keep K=1, since two trainings on the same cores
spoil both. A rerun resumes unfinished runs and reuses finished evaluations. Output:
OUT/sweep.md (a row per variant, a column per eval) and OUT/sweep.jsonl.

Example, the sweep of 2026-11 on one GPU (docs/experiments.md): unet-lite's
60-CPU-minute budget is about 12,000 steps of 64.

    B="--preset unet-lite --recipe fast --schedule cosine --max-steps 12000 --snapshot-steps 0"
    E="--sampler dpm++2m --steps 10 --spacing logsnr --sigma-max 55"
    .venv/bin/python benchmarks/recipe_sweep.py --out runs/sweep --device cuda --parallel 5 \\
        --variant "base=$B" --variant "attn=$B --set attention=true" --variant "lr2e-3=$B --lr 2e-3" \\
        --eval "g14=$E --guidance 0.3 --guidance-interval 203,946" --eval "u10=$E --guidance 0"
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import count_flops, named
from ddpmlab import checkpoint
from time_to_quality import DDPMLAB


def forward_gflop(run: Path) -> float:
    """Multiply-adds x 2 of one forward pass for one image of the run's network."""
    import torch
    from ddpmlab.models import build_model
    from ddpmlab.run import load_config
    cfg = load_config(run).model
    m = build_model(cfg).eval()
    return count_flops(lambda: m(torch.zeros(1, cfg.in_channels, cfg.image_size, cfg.image_size), torch.tensor([500]),
                                 torch.tensor([0]) if cfg.num_classes else None), grad=False) / 1e9


def run_variant(name: str, train_args: list[str], evals: dict[str, list[str]], out: Path, n: int,
                device: str, env: dict) -> dict:
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    run = d / "run"
    cmd = [*DDPMLAB, "train", "--out", str(run), *train_args, "--device", device, "--quiet"]
    if (run / "checkpoint.json").is_file():
        cmd.append("--resume")
    t0 = time.monotonic()
    with open(d / "train.log", "a") as log:
        print(f"[{name}] {' '.join(cmd[2:])}", flush=True)
        log.write(" ".join(cmd[2:]) + "\n")
        log.flush()
        if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode != 0:
            raise SystemExit(f"[{name}] training failed; see {d / 'train.log'}")
    train_s = time.monotonic() - t0
    row = {"variant": name, "train": " ".join(train_args), "train_seconds_here": round(train_s, 1)}
    row["steps"] = checkpoint.step(run)
    row["gflop"] = round(forward_gflop(run), 3)
    for ename, eargs in evals.items():
        f = d / f"eval-{ename}.json"
        if not f.is_file():
            with open(d / "eval.log", "a") as log:
                r = subprocess.run([*DDPMLAB, "evaluate", str(run), "--n", str(n), *eargs, "--device", device,
                                    "--quiet", "--out", str(f)], stdout=log, stderr=subprocess.STDOUT, env=env)
            if r.returncode != 0:
                raise SystemExit(f"[{name}] evaluate {ename} failed; see {d / 'eval.log'}")
        e = json.loads(f.read_text())
        row[ename] = {"fd": e["fd"], "floor": e["fd_floor"], "cond_acc": e.get("cond_acc"), "entropy": e.get("pred_entropy"),
                      "nfe": e.get("nfe"), "sampling_seconds": e.get("sampling_seconds")}
    print(f"[{name}] done: {row['steps']} steps in {train_s:.0f} s; "
          + ", ".join(f"{k} fd {row[k]['fd']:.3f}" for k in evals), flush=True)
    return row


def table(rows: list[dict], evals: list[str]) -> str:
    head = "| variant | steps | GFLOP | " + " | ".join(f"{e}: fd | cond_acc" for e in evals) + " |"
    lines = [head, "|" + "---|" * (3 + 2 * len(evals))]
    for r in rows:
        cells = [r["variant"], f"{r['steps']:,}", f"{r['gflop']:.3f}"]
        for e in evals:
            x = r[e]
            cells += [f"{x['fd']:.3f} ({x['fd'] / x['floor']:.2f}x, {x['nfe']} NFE)",
                      "-" if x["cond_acc"] is None else f"{x['cond_acc']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {r['variant']}: `ddpmlab train {r['train']}`" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/sweep")
    ap.add_argument("--variant", action="append", required=True, metavar="NAME=TRAIN_ARGS")
    ap.add_argument("--eval", action="append", required=True, metavar="NAME=EVALUATE_ARGS")
    ap.add_argument("--parallel", type=int, default=1, help="variants training at once (1 on a CPU)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    ap.add_argument("--n", type=int, default=1000)
    a = ap.parse_args(argv)
    if a.parallel < 1:
        raise SystemExit("--parallel must be >= 1")
    variants, evals = named(a.variant, "--variant"), named(a.eval, "--eval")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if a.parallel > 1:       # each process launches kernels from one thread; K of them share the cores
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // a.parallel)))
    with ThreadPoolExecutor(a.parallel) as pool:
        futures = {name: pool.submit(run_variant, name, args, evals, out, a.n, a.device, env)
                   for name, args in variants.items()}
        rows, failed = [], []
        for name, fut in futures.items():
            try:
                rows.append(fut.result())
            except SystemExit as e:
                print(e, file=sys.stderr)
                failed.append(name)
    with open(out / "sweep.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    md = table(rows, list(evals))
    (out / "sweep.md").write_text(md)
    print(md)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
