"""Sample quality against the number of network evaluations, for each sampler of one model.
Takes: the sum of the sampling times: about 6 minutes for an 8-point curve of 1000 samples on 2 cores.

    .venv/bin/python benchmarks/quality_vs_nfe.py RUN [--n 250] [--grid "ddpm:5,10,20,50,100,1000;..."]
        [--guidance 0,0.5,1,2] [--precision fp32|bf16] [--out runs/bench/nfe]
        [--curves "dpm++2m/logsnr/g0.3/i100-700/s80:4,5,8,10,25,50;..."] [--beside OTHER_RUN]

Every point is `ddpmlab evaluate RUN --n N --sampler S --steps K` (the same cached evaluation
files, RUN/eval/*.json, so an interrupted sweep resumes where it stopped). With guidance 0 a step
is one network evaluation (NFE) for all three samplers. --guidance adds a sweep of the guidance
weight at the default sampler and steps (each guided step batches the conditional and the null
label in one forward pass: twice the work, same number of passes).

--curves replaces --grid: each curve is SAMPLER/SPACING/gGUIDANCE[/iLO-HI][/sSIGMA_MAX]:STEPS,...; its NFE
axis counts a guided step twice (diffusion.count_nfe), so guided and unguided curves compare.
--beside evaluates the same curves on a second model in the same run and draws them dashed in the
same colours (e.g. the shipped fmnist beside fmnist-v1).

Writes OUT.md (the table) and OUT.png (fd and cond_acc against NFE, one line per sampler) and
prints the table with the sampling seconds of each point.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ddpmlab.config import SamplingConfig  # noqa: E402
from ddpmlab.diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS  # noqa: E402

from ddpmlab.evaluate import cached_evaluate_run  # noqa: E402

DEFAULT_GRID = "ddpm:5,10,20,50,100,1000;ddim:5,10,20,50,100,1000;dpm++2m:5,10,20,50,100,1000"


def parse_grid(text: str) -> list[tuple[str, int]]:
    points = []
    for part in filter(None, text.split(";")):
        sampler, steps = part.split(":")
        points += [(sampler.strip(), int(s)) for s in steps.split(",")]
    return points


def parse_curves(text: str) -> list[tuple[str, dict, list[int]]]:
    """'dpm++2m/logsnr/g0.3/i100-700/s80:5,10' -> [(label, settings, [5, 10])]."""
    out = []
    for part in filter(None, text.split(";")):
        spec, steps = part.split(":")
        bits = spec.strip().split("/")
        kw = {"sampler": bits[0], "spacing": bits[1] if len(bits) > 1 else None, "guidance": 0.0,
              "guidance_interval": None, "sigma_max": None}
        for b in bits[2:]:
            if b.startswith("g"):
                kw["guidance"] = float(b[1:])
            elif b.startswith("i"):
                lo, hi = b[1:].split("-")
                kw["guidance_interval"] = (int(lo), int(hi))
            elif b.startswith("s"):
                kw["sigma_max"] = float(b[1:])
            else:
                raise SystemExit(f"--curves {spec!r}: {b!r} is none of gW, iLO-HI, sS")
        out.append((spec.strip(), kw, [int(k) for k in steps.split(",")]))
    return out


def row(r: dict, sampler: str, steps: int, guidance: float) -> str:
    return (f"| {sampler} | {steps} | {guidance:g} | {r['fd']:.2f} | {r['fd_floor']:.2f} | {r['cond_acc']:.3f} | "
            f"{r['pred_entropy']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | {r.get('sampling_seconds', '')} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--n", type=int, default=250)
    ap.add_argument("--grid", default=DEFAULT_GRID, help="SAMPLER:STEPS,...;SAMPLER:STEPS,...")
    ap.add_argument("--guidance", default="", help="guidance weights to sweep at the default sampler and steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"), help="the network's, while sampling")
    ap.add_argument("--out", default="runs/bench/nfe")
    ap.add_argument("--curves", help="SAMPLER/SPACING/gW[/iLO-HI][/sSIGMA_MAX]:STEPS,...;... (replaces --grid)")
    ap.add_argument("--beside", help="a second run or shipped model: the same --curves, drawn dashed")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    header = ("| sampler | NFE | guidance | fd | fd floor | cond_acc | entropy | precision | recall | sampling s |\n"
              "|---|---|---|---|---|---|---|---|---|---|")
    lines, curves = [header], {}
    if args.beside and not args.curves:
        raise SystemExit("--beside needs --curves")
    if args.curves:
        specs = parse_curves(args.curves)
        for model in [args.run] + ([args.beside] if args.beside else []):
            for label, kw, steps_list in specs:
                name = f"{model}: {label}" if args.beside else label
                for steps in steps_list:
                    r, _ = cached_evaluate_run(model, args.n, sampling=SamplingConfig(steps=steps, **kw), seed=args.seed,
                                               precision=args.precision)
                    nfe = r["nfe"]          # counted from the same settings that sampled
                    curves.setdefault(name, []).append((nfe, r["fd"], r["cond_acc"]))
                    lines.append(row(r, f"{name} ({steps} steps)", nfe, kw["guidance"]))
                    print(lines[-1], flush=True)
        args.grid = ""
    for sampler, steps in parse_grid(args.grid):
        r, _ = cached_evaluate_run(args.run, args.n, sampling=SamplingConfig(sampler=sampler, steps=steps),
                                   seed=args.seed, precision=args.precision)
        curves.setdefault(sampler, []).append((steps, r["fd"], r["cond_acc"]))
        lines.append(row(r, sampler, steps, 0.0))
        print(lines[-1], flush=True)
    for w in [float(g) for g in args.guidance.split(",") if g]:
        r, _ = cached_evaluate_run(args.run, args.n,
                                   sampling=SamplingConfig(sampler=DEFAULT_SAMPLER, steps=DEFAULT_STEPS, guidance=w),
                                   seed=args.seed, precision=args.precision)
        lines.append(row(r, DEFAULT_SAMPLER, DEFAULT_STEPS, w))
        print(lines[-1], flush=True)
    if not curves:
        return
    floor, real_acc = r["fd_floor"], r["classifier_test_acc"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(
        f"`{args.run}`" + (f" beside `{args.beside}`" if args.beside else "") + f", n={args.n} samples per point (labels cycling 0..9), seed {args.seed}, "
        f"network in {args.precision} while sampling.\n\n" + "\n".join(lines) + "\n")

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    n_own = len(curves) // 2 if args.beside else len(curves)   # the --beside model's curves come second
    for i, (sampler, pts) in enumerate(curves.items()):
        pts.sort()
        nfe, fd, acc = zip(*pts)
        style = dict(color=f"C{i % n_own}", ls="--" if i >= n_own else "-", marker="o" if i < n_own else "s",
                     label=sampler)
        a1.plot(nfe, fd, **style)
        a2.plot(nfe, acc, **style)
    a1.axhline(floor, color="grey", ls="--", lw=1, label=f"floor (real vs real, n={args.n})")
    a2.axhline(real_acc, color="grey", ls="--", lw=1, label="classifier on real images")
    for a, name in ((a1, "fd (classifier features, lower is better)"), (a2, "cond_acc (higher is better)")):
        a.set_xscale("log")
        a.set_xlabel("network evaluations (sampling steps)")
        a.set_ylabel(name)
        a.grid(alpha=0.3)
    a1.set_yscale("log")
    a2.legend(fontsize=8)
    a1.legend(fontsize=8)
    fig.suptitle(f"quality against sampling steps: {args.run}" + (f" (solid) beside {args.beside} (dashed)"
                                                                  if args.beside else "") + f", n={args.n}")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
