"""Ship a trained run as a pretrained model inside the package.

    .venv/bin/python scripts/ship_pretrained.py RUN NAME [--hardware "2-core AMD EPYC CPU"] [--note TEXT]
        [--sampler S --steps K --guidance W --spacing SP --sigma-max S --guidance-interval LO,HI]

Copies config.json, the EMA weights (as ema.safetensors), metrics.jsonl, loss.png, the final
sample grid and process figure into src/ddpmlab/pretrained/NAME/ and writes MODEL_CARD.md with
how it was trained (preset, epochs, images seen, hardware, wall time) and, when present, the
evaluation in RUN/eval/. --sampler/--steps/--guidance/--spacing/--sigma-max/--guidance-interval become the
shipped model's own sampling defaults (config.json "sampling"), used by `sample`, `process`, `evaluate` and `report` unless
flags say otherwise.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

from ddpmlab.evaluate import run_eval_dir
from ddpmlab.report import run_summary
from ddpmlab import config as C
from ddpmlab import checkpoint
from ddpmlab.run import PRETRAINED_DIR, load_config, read_metrics, save_config
from ddpmlab.diffusion import count_nfe, make_schedule
from ddpmlab.config import SamplingConfig
from ddpmlab.sample import resolve_sampling


def lr_history(run: Path, schedule: str = "plateau") -> str:
    """'0.001 (logged at steps 25-3,748), then 0.0002 (3,794-7,821)': a resumed run may have changed
    it. A cosine schedule changes the rate at every step: its peak and its last logged value."""
    steps = [m for m in read_metrics(run) if m.get("kind") == "step"]
    if schedule == "cosine" and steps:
        peak = max(steps, key=lambda m: m["lr"])
        return (f"warmup to {peak['lr']:g} (logged at step {peak['step']:,}), cosine decay to "
                f"{steps[-1]['lr']:.3g} at the last logged step ({steps[-1]['step']:,})")
    spans = []                                    # [lr, first step, last step]
    for m in steps:
        if spans and spans[-1][0] == m["lr"]:
            spans[-1][2] = m["step"]
        else:
            spans.append([m["lr"], m["step"], m["step"]])
    text = ", then ".join(f"{lr:g} ({a:,}-{b:,})" for lr, a, b in spans)
    return text.replace(" (", " (logged at steps ", 1)


def recipe(rc) -> str:
    t, d = rc.train, rc.diffusion
    lr = (f"Adam, ReduceLROnPlateau x{t.lr_factor} after {t.lr_patience} epochs (floor {t.min_lr:g})"
          if t.lr_schedule == "plateau" else
          f"Adam at {t.lr:g}, {t.warmup_steps} warmup steps, cosine decay to {t.min_lr:g} at the planned end")
    ema = (f"EMA half-life {t.ema_halflife_kimg:g} kimg (ramp-up {t.ema_rampup})" if t.ema_halflife_kimg
           else f"EMA {t.ema_decay}")
    loss = f"{d.prediction}-prediction" + (f", min-SNR weighting (gamma {t.min_snr_gamma:g})"
                                           if t.loss_weighting == "min-snr" else "")
    return (f"{loss}, t {t.t_sampling}, {lr}, {ema}, null label {t.cond_drop:g} (classifier-free guidance), "
            f"{d.schedule} schedule T={d.timesteps}")


def model_changes(rc) -> str:
    """' with `--set k=v ...`' for each model setting in which the run differs from its preset."""
    preset, mine = dataclasses.asdict(C.get_preset(rc.preset).model), dataclasses.asdict(rc.model)
    sets = [f"--set {k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else str(v).lower()}"
            for k, v in mine.items() if preset[k] != v]
    return f" with `{' '.join(sets)}`" if sets else ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("name")
    ap.add_argument("--hardware", default="2-core AMD EPYC CPU")
    ap.add_argument("--note", default="")
    ap.add_argument("--sampler")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--guidance", type=float)
    ap.add_argument("--spacing")
    ap.add_argument("--sigma-max", type=float)
    ap.add_argument("--guidance-interval")
    args = ap.parse_args()
    interval = [int(v) for v in args.guidance_interval.split(",")] if args.guidance_interval else None
    run = Path(args.run)
    dst = PRETRAINED_DIR / args.name
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "metrics.jsonl", "loss.png", "process.png"):
        if (run / name).is_file():
            shutil.copyfile(run / name, dst / name)
    # the EMA weights of the run's checkpoint (checked against its manifest), at the top: a shipped
    # model is read-only and needs no manifest
    (dst / "ema.safetensors").write_bytes(checkpoint.read_bytes(run, "ema.safetensors")[0])
    if (run / "samples" / "grid.png").is_file():
        (dst / "samples").mkdir(exist_ok=True)
        shutil.copyfile(run / "samples" / "grid.png", dst / "samples" / "grid.png")
    rc = load_config(run)
    rc.sampling = C.from_dict(C.SamplingConfig, {"sampler": args.sampler, "steps": args.steps, "guidance": args.guidance,
                                                 "spacing": args.spacing, "guidance_interval": interval,
                                                 "sigma_max": args.sigma_max})
    save_config(dst, rc)
    s = run_summary(run)
    own = resolve_sampling(rc, SamplingConfig(autoguidance=0))
    sampler, steps, guidance, spacing, sigma_max = own.sampler, own.steps, own.guidance, own.spacing, own.sigma_max
    lines = [f"# Model card: `{args.name}`", "",
             f"Class-conditional FashionMNIST diffusion model shipped with ddpmlab (`ddpmlab sample {args.name}`).", "",
             "| | |", "|---|---|",
             f"| preset | `{rc.preset}`{model_changes(rc)} ({s['params']:,} parameters) |",
             f"| epochs completed | {s['epochs']} (+ {s['steps'] - s['epochs'] * (60000 // rc.train.batch_size)} steps of the next) |",
             f"| optimiser steps | {s['steps']:,} at batch {rc.train.batch_size} |",
             f"| training images seen | {s['train_images']:,} |",
             f"| wall time | {s['train_seconds'] / 3600:.2f} h of training (snapshots excluded) |",
             f"| images/s | {s['img_per_s']} |",
             f"| hardware | {args.hardware} |",
             f"| learning rate | {lr_history(run, rc.train.lr_schedule)} |",
             f"| recipe | {recipe(rc)} |",
             "| weights | `ema.safetensors` (the EMA weights) |",
             f"| last logged loss | {s['final_loss']:.4f} |" if s["final_loss"] else "",
             f"| sampling defaults | {sampler}, {steps} {spacing} steps"
             f"{f' from sigma {sigma_max:g}' if sigma_max else ''}, guidance {guidance:g}"
             f"{f' for t in {interval[0]}..{interval[1]}' if interval else ''} (config.json \"sampling\"; flags override) |",
             ""]
    if args.note:
        lines += [args.note, ""]
    evals = sorted(run_eval_dir(run).glob("*.json")) if run_eval_dir(run).is_dir() else []
    sched = make_schedule(rc.diffusion)
    if evals:
        lines += ["## Evaluation (`ddpmlab evaluate`)", "",
                  "| sampler | steps | spacing | guidance | NFE | network | n | seed | fd | fd floor | cond_acc | classifier acc on real "
                  "| entropy | precision | recall | flags | sampling s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for p in evals:
            r = json.loads(p.read_text())
            flags = "mode collapse" if r.get("mode_collapse") else ""
            if r.get("collapsed_classes"):
                flags += " collapsed " + ",".join(str(c["class"]) for c in r["collapsed_classes"])
            gi = r.get("guidance_interval")
            nfe = r.get("nfe") or count_nfe(sched, C.Sampling(r["sampler"], r["steps"], r["guidance"],
                                                              r.get("spacing") or "trailing",
                                                              None if gi is None else tuple(gi), r.get("sigma_max")))
            smax = f" from sigma {r['sigma_max']:g}" if r.get("sigma_max") else ""
            lines.append(f"| {r['sampler']} | {r['steps']} | {r.get('spacing') or 'trailing'}{smax} | {r['guidance']:g}"
                         f"{f' (t {gi[0]}..{gi[1]})' if gi else ''} | {nfe} | {r.get('sampling_precision', 'fp32')} | "
                         f"{r['n']} | {r.get('seed', 0)} | {r['fd']:.3f} | "
                         f"{r['fd_floor']:.2f} | {r['cond_acc']:.3f} | {r['classifier_test_acc']:.3f} | "
                         f"{r['pred_entropy']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | {flags.strip() or 'none'} | "
                         f"{r.get('sampling_seconds', '')} |")
        lines.append("")
    (dst / "MODEL_CARD.md").write_text("\n".join(l for l in lines if l is not None) + "\n")
    print(f"shipped {run} as {dst}")


if __name__ == "__main__":
    main()
