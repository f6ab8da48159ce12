"""Time to quality: the same CPU, the same wall-clock budgets, one harness.
Takes: the sum of the contenders' largest budgets (40 minutes a baseline), plus under a minute per snapshot to evaluate.

    .venv/bin/python benchmarks/time_to_quality.py [--contenders writeup,fast] [--minutes 10,20,40,60]
        [--contender NAME=ARGS ...] [--out runs/ttq] [--n 1000] [--evaluate-only] [--sigma-max S]
        [--against writeup,diffusers]

Each contender trains in the background in its own run directory, as a user would run it
(`ddpmlab train ...`). The harness stops the training process with SIGINT (which checkpoints) once
its cumulative wall time (process start-up, data loading and per-epoch snapshots included, so the
clock is what a user waits) reaches the next budget, copies the EMA weights of that checkpoint
to OUT/CONTENDER/at-Mmin/, and resumes. The clock is kept in OUT/CONTENDER/clock.json, written
every 20 s, so an interrupted harness continues where it stopped (work since the last checkpoint
is lost and counted). After training, every copy is evaluated with `ddpmlab evaluate --n N` at 20
network evaluations per image (a guided step counts twice) and the harness writes OUT/ttq.md (the
table, and the minutes each contender needs to reach fd <= 3x and <= 1.5x its floor, linearly
interpolated between budgets, with their ratios against each baseline present, the write-up's
recipe and diffusers', or the contenders --against names) and OUT/ttq.png (fd against minutes).
--sigma-max S evaluates the ddpmlab contenders with their log-SNR steps spaced from sigma S down
(`ddpmlab evaluate --sigma-max`), instead of from the schedule's top, and writes OUT/ttq-smaxS.md
and .png beside the others.

Contenders:
- writeup: `unet-small` with the write-up's recipe (eps, uniform t, Adam with plateau halving, EMA 0.999);
- fast:    `unet-small --recipe fast` (v-prediction, min-SNR, cosine decay planned over --fast-epochs,
           EMA by half-life).
Both are sampled with dpm++2m, 10 log-SNR-spaced steps, guidance 0.3 (20 evaluations).
- NAME=ARGS (`--contender`, repeatable): `ddpmlab train ARGS`, for ablations, e.g.
           --contender "fast-lr2e-3=--preset unet-small --recipe fast --epochs 10 --lr 2e-3", or a run
           planned by the clock: --contender "cos40=--preset unet-lite --recipe fast --schedule cosine
           --minutes 40" (one that ends before a budget sits on the time axis where it ended).
- diffusers, diffusers-bf16: benchmarks/diffusers_recipe.py, diffusers' UNet2DModel trained as its
           unconditional training example does by default (fp32; and under bf16 autocast), sampled
           with DPMSolverMultistepScheduler at its defaults, 20 steps, no guidance (20 evaluations).
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from common import named   # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent

DDPMLAB = [sys.executable, "-m", "ddpmlab.cli"]
EVAL = ["--sampler", "dpm++2m", "--steps", "10", "--spacing", "logsnr", "--guidance", "0.3"]   # 20 NFE


DIFFUSERS = [sys.executable, str(ROOT / "benchmarks" / "diffusers_recipe.py")]


def contenders(fast_epochs: int) -> dict[str, list[str]]:
    return {"writeup": ["--preset", "unet-small", "--epochs", "40"],
            "fast": ["--preset", "unet-small", "--recipe", "fast", "--epochs", str(fast_epochs)],
            "diffusers": ["--precision", "fp32"], "diffusers-bf16": ["--precision", "bf16"]}


def is_diffusers(name: str) -> bool:
    return name.startswith("diffusers")


def with_extra(specs: dict[str, list[str]], extra: list[str]) -> dict[str, list[str]]:
    """The contenders plus each NAME=ARGS of --contender, trained with `ddpmlab train ARGS`."""
    specs = dict(specs)
    for name, args in named(extra, "--contender").items():
        if name in specs or is_diffusers(name):
            raise SystemExit(f"--contender {name!r}: expected NAME=ARGS with a new name not starting with 'diffusers' "
                             f"(taken: {', '.join(specs)})")
        specs[name] = args
    return specs


def read_clock(d: Path) -> float:
    f = d / "clock.json"
    return json.loads(f.read_text())["seconds"] if f.is_file() else 0.0


def write_clock(d: Path, seconds: float) -> None:
    tmp = d / "clock.json.tmp"
    tmp.write_text(json.dumps({"seconds": round(seconds, 1)}))
    tmp.replace(d / "clock.json")


def train_until(name: str, args: list[str], d: Path, budget_s: float) -> str:
    """Train (or resume) until the contender's clock reaches budget_s; 'finished' when the run
    ended its planned epochs first."""
    run = d / "run"
    base = read_clock(d)
    if base >= budget_s:
        return "reached"
    if is_diffusers(name):      # resumes by itself from RUN/checkpoint.pt
        cmd = [*DIFFUSERS, "train", "--out", str(run), *args]
    else:
        cmd = [*DDPMLAB, "train", "--out", str(run), *args, "--quiet"]
        if (run / "checkpoint.json").is_file():
            cmd.append("--resume")
    print(f"[{name}] training from {base / 60:.1f} to {budget_s / 60:.0f} min: {' '.join(cmd[2:])}", flush=True)
    t0 = time.monotonic()
    log = open(d / "train.log", "a")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    stopped, written = False, t0
    while proc.poll() is None:
        time.sleep(1.0)
        now = base + time.monotonic() - t0
        if time.monotonic() - written >= 20:
            write_clock(d, now)
            written = time.monotonic()
        if now >= budget_s and not stopped:
            proc.send_signal(signal.SIGINT)      # the trainer checkpoints, then exits 130
            stopped = True
    write_clock(d, base + time.monotonic() - t0)  # the checkpoint after SIGINT is part of the cost
    if proc.returncode not in (0, 130):
        raise SystemExit(f"[{name}] training failed (exit {proc.returncode}); see {d / 'train.log'}")
    return "finished" if proc.returncode == 0 else "reached"


def snapshot(d: Path, minutes: int) -> Path:
    """The EMA weights and config of the run's current checkpoint, as a run directory of its own."""
    from ddpmlab import checkpoint
    dst = d / f"at-{minutes}min"
    tmp = d / f".at-{minutes}min.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    if (d / "run" / "checkpoint.pt").is_file():           # the diffusers recipe's own checkpoint
        import torch
        shutil.copyfile(d / "run" / "checkpoint.pt", tmp / "checkpoint.pt")
        step = torch.load(tmp / "checkpoint.pt", weights_only=False)["step"]
    else:
        shutil.copyfile(d / "run" / "config.json", tmp / "config.json")
        (tmp / "ema.safetensors").write_bytes(checkpoint.read_bytes(d / "run", "ema.safetensors")[0])
        step = checkpoint.step(d / "run")
    info = {"minutes": minutes, "clock_seconds": read_clock(d), "step": step}
    (tmp / "at.json").write_text(json.dumps(info))
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst


def eval_flags(sigma_max: float | None) -> list[str]:
    """`ddpmlab evaluate`'s sampling flags for a ddpmlab snapshot: 20 NFE, from sigma_max if given."""
    return EVAL + ([] if sigma_max is None else ["--sigma-max", f"{sigma_max:g}"])


def evaluate(snap: Path, n: int, sigma_max: float | None = None) -> dict:
    diffusers_snap = (snap / "checkpoint.pt").is_file()      # diffusers' runs sample as they are
    capped = sigma_max is not None and not diffusers_snap
    out = snap / (f"eval-n{n}-smax{sigma_max:g}.json" if capped else f"eval-n{n}.json")
    if not out.is_file() and diffusers_snap:
        npz = snap / f"samples-n{n}.npz"
        subprocess.run([*DIFFUSERS, "sample", "--run", str(snap), "--n", str(n), "--npz", str(npz)], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run([*DDPMLAB, "evaluate", str(npz), "--quiet", "--out", str(out)], check=True,
                       stdout=subprocess.DEVNULL)
    elif not out.is_file():
        subprocess.run([*DDPMLAB, "evaluate", str(snap), "--n", str(n), *eval_flags(sigma_max), "--quiet",
                        "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def at_minutes(budget: int, clock_seconds: float) -> float:
    """Where a snapshot sits on the time axis: its budget, or the clock at the end of a run that
    finished its planned steps before that budget (its weights stopped changing there)."""
    return min(float(budget), clock_seconds / 60)


def minutes_to(points: list[tuple[float, float]], target: float) -> float | None:
    """First time fd <= target, linearly interpolated between the measured budgets."""
    prev = None
    for m, fd in points:
        if fd <= target:
            if prev is None:
                return m
            (m0, f0) = prev
            return m0 + (m - m0) * (f0 - target) / (f0 - fd)
        prev = (m, fd)
    return None


def time_ratio(t: float | None, t_ref: float | None, last: float, last_ref: float) -> str:
    """CPU-minutes to the same fd, against the reference contender's. One that has not got there
    by its last budget (last, last_ref) needs more than that: the ratio is then a bound."""
    if t is not None and t_ref is not None:
        return f"{t / t_ref:.2f}x"
    if t_ref is not None:
        return f"> {last / t_ref:.2f}x"
    if t is not None:
        return f"< {t / last_ref:.2f}x"
    return "-"


def reach_table(curves: dict[str, list[tuple[float, float, float]]], refs: list[str] | None = None) -> list[str]:
    """The minutes each contender needs to reach fd <= 3x and <= 1.5x its floor, and their ratio
    against each reference contender (default: the baselines present, the write-up's recipe and
    diffusers', else the first contender). curves: name -> [(minutes, fd, floor), ...]."""
    refs = [r for r in (refs or [n for n in curves if n == "writeup" or is_diffusers(n)]
                        or list(curves)[:1]) if r in curves]
    head = "".join(f" against {r}: 3x | 1.5x |" for r in refs)
    lines = [f"| contender | minutes to fd <= 3x floor | minutes to fd <= 1.5x floor |{head}",
             "|---|---|---|" + "---|---|" * len(refs)]
    reach = {name: [minutes_to([(m, fd) for m, fd, _ in pts], k * pts[0][2]) for k in (3, 1.5)]
             for name, pts in curves.items()}
    for name, pts in curves.items():
        t3, t15 = reach[name]
        ratios = [time_ratio(reach[name][k], reach[r][k], pts[-1][0], curves[r][-1][0]) for r in refs for k in (0, 1)]
        lines.append(f"| {name} | {'not reached' if t3 is None else f'{t3:.1f}'} | "
                     f"{'not reached' if t15 is None else f'{t15:.1f}'} |" + "".join(f" {x} |" for x in ratios))
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contenders", default="writeup,fast")
    ap.add_argument("--minutes", default="10,20,40,60", help="budgets, in minutes of training wall time")
    ap.add_argument("--fast-epochs", type=int, default=10, help="the fast recipe's planned length (cosine decay)")
    ap.add_argument("--contender", action="append", default=[], metavar="NAME=ARGS",
                    help="an extra contender trained with `ddpmlab train ARGS` (repeatable); name it in --contenders")
    ap.add_argument("--out", default="runs/ttq")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--evaluate-only", action="store_true")
    ap.add_argument("--against", metavar="NAMES",
                    help="the contenders to give ratios of minutes against (default: writeup and diffusers where "
                         "present, else the first)")
    ap.add_argument("--sigma-max", type=float, metavar="S",
                    help="evaluate with log-SNR steps from sigma S down (default: from the schedule's top)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    budgets = [int(m) for m in args.minutes.split(",")]
    specs = with_extra(contenders(args.fast_epochs), args.contender)
    names = args.contenders.split(",")
    for name in names:
        if name not in specs:
            raise SystemExit(f"unknown contender {name!r}; valid: {', '.join(specs)}")
    if not args.evaluate_only:
        for name in names:
            d = out / name
            d.mkdir(parents=True, exist_ok=True)
            finished = False
            for m in budgets:
                if (d / f"at-{m}min" / "at.json").is_file():
                    continue
                if not finished:
                    finished = train_until(name, specs[name], d, m * 60) == "finished"
                snapshot(d, m)
    rows, curves = [], {}
    for name in names:
        for m in budgets:
            snap = out / name / f"at-{m}min"
            if not (snap / "at.json").is_file():
                continue
            r = evaluate(snap, args.n, args.sigma_max)
            at = json.loads((snap / "at.json").read_text())
            x = at_minutes(m, at["clock_seconds"])
            curves.setdefault(name, []).append((x, r["fd"], r["fd_floor"]))
            rows.append(f"| {name} | {m if x == m else f'{x:.1f} (ended)'} | {at['step']} | {r['fd']:.2f} | {r['fd_floor']:.2f} | "
                        f"{r['fd'] / r['fd_floor']:.2f}x | {r['cond_acc']:.3f} | {r['pred_entropy']:.3f} |")
            print(rows[-1], flush=True)
    lines = ["| contender | minutes | steps | fd | floor | fd/floor | cond_acc | entropy |",
             "|---|---|---|---|---|---|---|---|", *rows, "",
             *reach_table(curves, args.against.split(",") if args.against else None)]
    stem = "ttq" if args.sigma_max is None else f"ttq-smax{args.sigma_max:g}"
    how = " ".join(eval_flags(args.sigma_max))
    lines = [f"ddpmlab contenders evaluated with `ddpmlab evaluate SNAPSHOT --n {args.n} {how}`.", "", *lines]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if curves:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for name, pts in curves.items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
        floor = next(iter(curves.values()))[0][2]
        for k in (3, 1.5):
            ax.axhline(k * floor, color="grey", ls=":", lw=1)
            ax.annotate(f"{k:g}x floor", (1, k * floor), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                        fontsize=7, color="grey")
        ax.axhline(floor, color="grey", ls="--", lw=1, label="floor (real vs real)")
        ax.set_xlabel("minutes of training (2-core CPU, wall clock)")
        ax.set_ylabel(f"fd at 20 evaluations, n={args.n}")
        if args.sigma_max is not None:
            ax.set_title(f"log-SNR steps from sigma {args.sigma_max:g}", fontsize=9)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{stem}.png", dpi=110)
        print(f"wrote {out / f'{stem}.md'} and {out / f'{stem}.png'}")


if __name__ == "__main__":
    main()
