"""Finding (f): do the write-up's BatchNorm UNets collapse to "the same blob regardless of sampling
or class label" after a few epochs? Long runs under the collapse monitor, then sampling-time
ablations of the finished model.

    .venv/bin/python benchmarks/collapse_study.py [--presets unet-cbn,unet-input] [--epochs 25]
        [--subset 4000] [--out REPRO/studies]

Each preset is the standard budget's design (`ddpmlab reproduce --budget standard`: 32 channels,
one block per level, the write-up's recipe) trained for --epochs epochs of the first --subset
FashionMNIST images, with the per-epoch snapshots and collapse monitor on. Runs live in
OUT/collapse/PRESET and resume where they stopped (run it again after an interruption).

Ablations of each finished run, on the monitor's 80 snapshot samples from the same seeds (a
collapse that only shows under one of them names its cause):
    ema+running   the default: EMA weights, BatchNorm in eval mode with the running statistics
                  copied from the trained network (ddpmlab's EMA copies buffers, it does not average them)
    ema+batch     EMA weights, BatchNorm normalising with each sampling batch's own statistics
    raw+running   the trained (not averaged) weights with their own running statistics

Writes OUT/collapse.json and OUT/collapse.png; with OUT = REPRO/studies, `ddpmlab reproduce` and
`ddpmlab report --out REPRO` use it for finding (f).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from pathlib import Path

import torch

from ddpmlab import checkpoint, plots
from ddpmlab.data import load_fashion_mnist
from ddpmlab.diffusion import generate, make_schedule
from ddpmlab.findings import collapse_epochs
from ddpmlab.monitor import CollapseWatch, collapse_symptoms
from ddpmlab.render import SNAPSHOT_SEEDS, image_seeds
from ddpmlab.reproduce import BUDGETS, is_finished
from ddpmlab.run import load_model, read_metrics
from ddpmlab.train import snapshot_classifier, train
from common import command_line, machine   # benchmarks/ is on sys.path when run as a script


SMOKE = {"model": {"channels": 8, "time_dim": 16}, "train": {"batch_size": 16, "snapshot_steps": 2,
                                                            "snapshot_per_class": 2}}


def train_long(run_dir: Path, preset: str, epochs: int, subset: int, smoke: bool = False) -> None:
    b = BUDGETS["standard"]
    if smoke:
        b = dataclasses.replace(b, model={"unet": {**b.model["unet"], **SMOKE["model"]}}, train=SMOKE["train"])
    rc = b.run_config(preset, epochs=epochs, subset=subset)
    if is_finished(run_dir, epochs):
        return
    if checkpoint.exists(run_dir):
        train(run_dir, resume=True, epochs=epochs)
    else:
        train(run_dir, rc)


def ablations(run_dir: Path, per_class: int = 8, steps: int = 20) -> dict:
    """Monitor scores of the final model's snapshots under each way of sampling it."""
    data = load_fashion_mnist()
    watch = None      # one reference and classifier for every ablation: the same real images and labels
    out = {}
    for name, ema, batch_stats in (("ema+running", True, False), ("ema+batch", True, True),
                                   ("raw+running", False, False)):
        model, rc = load_model(run_dir, ema=ema)
        if batch_stats:   # normalise with the sampling batch's statistics, keep no running ones
            model = copy.deepcopy(model)
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.train()
                    m.track_running_stats, m.running_mean, m.running_var = False, None, None
        k = rc.model.num_classes
        labels = torch.arange(k).repeat_interleave(per_class)
        seeds = image_seeds(rc.train.seed, per_class, SNAPSHOT_SEEDS) * k
        x = generate(model, make_schedule(rc.diffusion), (1, 28, 28), seeds=seeds, labels=labels, sampler="ddim",
                     steps=steps, null_label=k)
        watch = watch or CollapseWatch(data.images, data.labels, k, per_class,
                                       classifier=lambda: snapshot_classifier(data.class_names))
        scores = watch(x, -1, run_dir)
        out[name] = {**scores, "symptoms": collapse_symptoms(scores, k)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="unet-cbn,unet-input")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--subset", type=int, default=4000)
    ap.add_argument("--out", default="runs/studies")
    ap.add_argument("--smoke", action="store_true", help="a tiny unet-cbn, 2 epochs of 64 images (tests)")
    args = ap.parse_args()
    if args.smoke:
        args.presets, args.epochs, args.subset = "unet-cbn", 2, 64
    out = Path(args.out)
    runs = {}
    for preset in args.presets.split(","):
        run_dir = out / "collapse" / preset
        train_long(run_dir, preset, args.epochs, args.subset, args.smoke)
        metrics = read_metrics(run_dir)
        epochs = [m for m in metrics if m.get("kind") == "epoch"]
        sick = collapse_epochs(metrics)
        runs[preset] = {"epochs": len(epochs), "images": epochs[-1]["step"] * 64 if epochs else 0,
                        "collapsed_at": sick[0] if sick else None,
                        "per_epoch": [{k: m[k] for k in ("epoch", "step", "loss", "lr", "diversity", "label_separation",
                                                         "adherence", "classes_predicted") if k in m} for m in epochs],
                        "ablations": ablations(run_dir, per_class=2 if args.smoke else 8, steps=2 if args.smoke else 20)}
        plots.plot_monitor({p: read_metrics(out / "collapse" / p) for p in runs}, out / "collapse.png")
    collapsed = {p: r["collapsed_at"] for p, r in runs.items() if r["collapsed_at"]}
    sick_ablations = {p: [a for a, s in r["ablations"].items() if s["symptoms"]] for p, r in runs.items()}
    conclusion = (f"collapsed: {collapsed}" if collapsed else
                  f"no collapse in {args.epochs} epochs of {args.subset:,} images ({args.epochs * args.subset:,} images)")
    if any(sick_ablations.values()):
        conclusion += f"; symptoms at the end only when sampled as {sick_ablations}"
    else:
        conclusion += "; the final models are healthy under every ablation (EMA or raw weights, running or batch statistics)"
    result = {"finding": "f", "command": command_line(), "machine": machine(),
              "epochs": args.epochs, "subset": args.subset, "runs": runs, "conclusion": conclusion}
    out.mkdir(parents=True, exist_ok=True)
    (out / "collapse.json").write_text(json.dumps(result, indent=2) + "\n")
    print(conclusion)
    for p, r in runs.items():
        print(p, {a: {k: s.get(k) for k in ("diversity", "label_separation", "adherence")} for a, s in r["ablations"].items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
