"""Few-step students against their teacher, in one run: quality at equal network evaluations (NFE),
quality against CPU-minutes of distillation, and the time to draw 1000 images.
Takes, per evaluation of 10,000 samples on 2 cores: on the AVX2 CPU in fp32, about 33 s of
sampling per network evaluation an image plus 25 s of scoring (1.5 minutes at 2 NFE, 9 at 16);
on an AVX512-BF16 CPU about a quarter of the sampling. The run in docs/results.md took an hour.

    .venv/bin/python benchmarks/few_step.py [--teacher fmnist] --student NAME=DIR [--student ...]
        [--curve METHOD=MINUTES:DIR,MINUTES:DIR,...] [--curve-steps 1,2,4] [--n 10000] [--seeds 0,1,2]
        [--sweep-seeds 0] [--time] [--out runs/bench/few-step]

Every quality number is `ddpmlab evaluate RUN --n N --seed S [--steps K]` (the same cached files,
RUN/eval/*.json, so an interrupted run resumes), and the tables give the median over the seeds:
--seeds for the teacher at its default and each --student, which the targets are decided on;
--sweep-seeds (default: the first of --seeds) for the teacher's few-step points and the --curve,
which lie far from any threshold, so that the whole run fits an hour on a slow CPU.
The teacher is drawn at 2, 4 and 8 NFE unguided with its own sampler and spacing (a guided step
costs two evaluations, so at these budgets guidance buys no step), and at its default (16 NFE,
guided); each --student at 1, 2 and 4 steps of its consistency sampler, one evaluation a step, the
guidance in its weights. --curve gives one method's students after M minutes of distillation (the
same run extended with `distill --resume --minutes M`), drawn at each step count.

Timing (`--time`, the machine to itself): 1000 class-conditional images with `ddpmlab.sample`,
each student at 2 steps (median of 5 after a warm-up) beside the teacher at its default (median
of 2), and the whole command `ddpmlab sample STUDENT --n 1000 --npz F --steps 2` (start-up
included), median of 3.

Writes OUT/few_step.md (the tables) and OUT/few_step.png (fd against NFE; fd against minutes).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common import command_line, machine, median_time, output_dir  # noqa: E402

from ddpmlab.config import SamplingConfig  # noqa: E402
from ddpmlab.evaluate import cached_evaluate_run  # noqa: E402

TEACHER_NFE = (2, 4, 8)
STUDENT_STEPS = (1, 2, 4)
METRICS = ("fd", "fd_floor", "cond_acc", "pred_entropy", "precision", "recall")


def medians(run, sampling: SamplingConfig | None, n: int, seeds: list[int]) -> dict:
    """The median over `seeds` of each metric of `ddpmlab evaluate run --n n --seed s`, and the NFE."""
    rs = [cached_evaluate_run(run, n, sampling=sampling, seed=s)[0] for s in seeds]
    out = {k: statistics.median(r[k] for r in rs) for k in METRICS}
    out["nfe"], out["classifier_test_acc"] = rs[0]["nfe"], rs[0]["classifier_test_acc"]
    out["fd_spread"] = (min(r["fd"] for r in rs), max(r["fd"] for r in rs))
    return out


def row(name: str, r: dict, ref_fd: float) -> str:
    lo, hi = r["fd_spread"]
    return (f"| {name} | {r['nfe']} | {r['fd']:.3f} ({lo:.3f}-{hi:.3f}) | {r['fd'] / ref_fd:.2f}x | {r['cond_acc']:.3f} | "
            f"{r['pred_entropy']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} |")


HEADER = ("| model | NFE | fd: median (min-max) | fd / teacher at 16 | cond_acc | class entropy | precision | recall |\n"
          "|---|---|---|---|---|---|---|---|")


def parse_curve(text: str) -> tuple[str, list[tuple[float, str]]]:
    method, sep, rest = text.partition("=")
    try:
        points = [(float(m), d) for m, d in (p.split(":", 1) for p in rest.split(","))]
    except ValueError:
        raise SystemExit(f"--curve {text!r}: expected METHOD=MINUTES:DIR,MINUTES:DIR,...") from None
    if not sep or not points:
        raise SystemExit(f"--curve {text!r}: expected METHOD=MINUTES:DIR,MINUTES:DIR,...")
    return method, sorted(points)


def time_sampling(teacher: str, students: dict[str, str], nfe: dict[str, int], out: Path) -> list[str]:
    """Seconds to draw 1000 class-conditional images (labels cycling 0..9) in-process (the teacher
    at its default, the students at 2 steps), and of the whole `ddpmlab sample` command."""
    from ddpmlab.sample import load_run, sample
    lines = ["| model | NFE | 1000 images in-process, s (median of 5) | whole `ddpmlab sample --n 1000`, s (median of 3) |",
             "|---|---|---|---|"]
    for name, run, steps in [(teacher, teacher, None)] + [(k, v, 2) for k, v in students.items()]:
        loaded = load_run(run)
        flags = {} if steps is None else {"steps": steps}
        if steps is None:   # the teacher, for scale: a minute a call on a slow CPU, so fewer calls
            secs, _ = median_time(lambda i: sample(loaded, 1000, seed=i, **flags), repeats=2, warmup=0)
            lines.append(f"| {name} | {nfe[name]} | {secs:.2f} (median of 2, no warm-up) | |")
            print(lines[-1], flush=True)
            continue
        secs, _ = median_time(lambda i: sample(loaded, 1000, seed=i, **flags), repeats=5)
        cmd = [str(Path(sys.executable).with_name("ddpmlab")), "sample", run, "--n", "1000",
               "--npz", str(out / "timing.npz"), "--steps", str(steps)]
        walls = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            walls.append(time.perf_counter() - t0)
        lines.append(f"| {name} | {nfe[name]} | {secs:.2f} | {statistics.median(walls):.2f} |")
        print(lines[-1], flush=True)
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", default="fmnist")
    ap.add_argument("--student", action="append", default=[], help="NAME=DIR, repeatable")
    ap.add_argument("--curve", action="append", default=[], help="METHOD=MINUTES:DIR,..., repeatable")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--sweep-seeds", default=None, help="for the teacher at 2-8 NFE and the curves (default: "
                    "the first of --seeds)")
    ap.add_argument("--curve-steps", default=",".join(map(str, STUDENT_STEPS)))
    ap.add_argument("--time", action="store_true", help="also time the sampling (the machine to itself)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    sweep = [int(s) for s in args.sweep_seeds.split(",")] if args.sweep_seeds else seeds[:1]
    curve_steps = [int(k) for k in args.curve_steps.split(",")]
    students = dict(s.split("=", 1) for s in args.student)
    curves = [parse_curve(c) for c in args.curve]
    out = output_dir("few-step", args.out)

    teacher = {k: medians(args.teacher, SamplingConfig(steps=k, guidance=0.0, autoguidance=0.0), args.n, sweep)
               for k in TEACHER_NFE}
    teacher[16] = medians(args.teacher, None, args.n, seeds)
    ref = teacher[16]["fd"]
    lines = [f"`{command_line()}`", "", f"{machine()}; n={args.n} samples per evaluation, medians over evaluation "
             f"seeds {args.seeds} (the teacher's 2-8 NFE and the curves: {','.join(map(str, sweep))}); fd floor (real against real) {teacher[16]['fd_floor']:.3f}, classifier test "
             f"accuracy {teacher[16]['classifier_test_acc']:.3f}.", "", "### At equal network evaluations", "", HEADER]
    lines += [row(f"teacher {args.teacher}" + (" (default, guided)" if k == 16 else " (unguided)"), r, ref)
              for k, r in sorted(teacher.items())]
    results = {}
    for name, run in students.items():
        results[name] = {k: medians(run, SamplingConfig(steps=k), args.n, seeds) for k in STUDENT_STEPS}
        lines += [row(name, r, ref) for r in results[name].values()]
    print("\n".join(lines), flush=True)

    curve_res = {}
    if curves:
        lines += ["", "### Against CPU-minutes of distillation (fd; cond_acc)", "",
                  "| method | minutes | " + " | ".join(f"{k} NFE" for k in curve_steps) + " |",
                  "|---|---|" + "---|" * len(curve_steps)]
        for method, points in curves:
            for minutes, run in points:
                rs = {k: medians(run, SamplingConfig(steps=k), args.n, sweep) for k in curve_steps}
                curve_res.setdefault(method, []).append((minutes, rs))
                lines.append(f"| {method} | {minutes:g} | " + " | ".join(
                    f"{rs[k]['fd']:.3f}; {rs[k]['cond_acc']:.3f}" for k in curve_steps) + " |")
                print(lines[-1], flush=True)
    if args.time:
        nfe = {args.teacher: teacher[16]["nfe"], **{k: rs[2]["nfe"] for k, rs in results.items()}}
        lines += ["", "### Time to draw 1000 class-conditional images", ""] + time_sampling(args.teacher, students, nfe, out)
    (out / "few_step.md").write_text("\n".join(lines) + "\n")

    fig, axes = plt.subplots(1, 2 if curve_res else 1, figsize=(11 if curve_res else 6, 4), squeeze=False)
    a = axes[0][0]
    nfe, fd = zip(*[(r["nfe"], r["fd"]) for _, r in sorted(teacher.items())])
    a.plot(nfe, fd, "k-o", label=f"teacher {args.teacher} (16: default, guided)")
    for i, (name, rs) in enumerate(results.items()):
        a.plot([r["nfe"] for r in rs.values()], [r["fd"] for r in rs.values()], f"C{i}-s", label=name)
    a.axhline(teacher[16]["fd_floor"], color="grey", ls="--", lw=1, label="floor (real against real)")
    a.set(xscale="log", yscale="log", xlabel="network evaluations an image", ylabel="fd (lower is better)",
          title=f"quality against NFE, n={args.n}, median of {len(seeds)} seeds")
    a.set_xticks([1, 2, 4, 8, 16], ["1", "2", "4", "8", "16"])
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    if curve_res:
        b = axes[0][1]
        for i, (method, pts) in enumerate(curve_res.items()):
            for j, k in enumerate(curve_steps):
                b.plot([m for m, _ in pts], [rs[k]["fd"] for _, rs in pts], f"C{i}", ls=("-", "--", ":")[j],
                       marker="o", label=f"{method}, {k} NFE")
        b.axhline(ref, color="k", lw=1, label="teacher at 16 NFE")
        b.set(yscale="log", xlabel="CPU-minutes of distillation (2 cores)", ylabel="fd",
              title="quality against distillation time")
        b.legend(fontsize=8)
        b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "few_step.png", dpi=110)
    print(f"wrote {out / 'few_step.md'} and {out / 'few_step.png'}")


if __name__ == "__main__":
    main()
