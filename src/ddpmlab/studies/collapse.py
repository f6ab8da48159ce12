"""Finding (f): do the write-up's BatchNorm UNets collapse to "the same blob regardless of sampling
or class label" after a few epochs? Long runs under the collapse monitor, then sampling-time
ablations of the finished model.

Each preset is the budget's design (32 channels, one block per level at the standard budget, the
write-up's recipe) trained for `epochs` epochs of the first `subset` FashionMNIST images, with the
per-epoch snapshots and the collapse monitor on. Runs live in OUT/collapse/PRESET and resume where
they stopped.

Ablations of each finished run, on the monitor's 80 snapshot samples from the same seeds (a
collapse that only shows under one of them names its cause):
    ema+running   the default: EMA weights, BatchNorm in eval mode with the running statistics
                  copied from the trained network (ddpmlab's EMA copies buffers, it does not average them)
    ema+batch     EMA weights, BatchNorm normalising with each sampling batch's own statistics
    raw+running   the trained (not averaged) weights with their own running statistics

Writes OUT/collapse.json and OUT/collapse.png.
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch

from .. import checkpoint, plots
from ..budgets import is_finished
from ..config import Sampling
from ..data import load_fashion_mnist
from ..diffusion import generate, make_schedule
from ..findings import collapse_epochs
from ..monitor import CollapseWatch, collapse_symptoms
from ..render import SNAPSHOT_SEEDS, image_seeds
from ..run import load_model, read_metrics
from ..runtime import machine
from ..recipes import make_run_config
from ..train import snapshot_classifier, train

log = logging.getLogger("ddpmlab.studies.collapse")


def train_long(run_dir: Path, preset: str, epochs: int, subset: int, model: dict, train_kw: dict,
               progress: bool = False) -> None:
    if is_finished(run_dir, epochs):
        return
    if checkpoint.exists(run_dir):
        train(run_dir, resume=True, epochs=epochs, progress=progress)
    else:
        train(run_dir, make_run_config(preset, model, epochs=epochs, subset=subset, **train_kw), progress=progress)


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
        x = generate(model, make_schedule(rc.diffusion), (1, 28, 28), Sampling("ddim", steps), seeds=seeds,
                     labels=labels, null_label=k)
        watch = watch or CollapseWatch(data.images, data.labels, k, per_class,
                                       classifier=lambda: snapshot_classifier(data.class_names))
        scores = watch(x, -1, run_dir)
        out[name] = {**scores, "symptoms": collapse_symptoms(scores, k)}
    return out


def run(out, *, presets: list, epochs: int, subset: int | None, model: dict, train: dict, per_class: int = 8,
        steps: int = 20, command: str = "", progress: bool = False) -> dict:
    out = Path(out)
    runs = {}
    for preset in presets:
        run_dir = out / "collapse" / preset
        train_long(run_dir, preset, epochs, subset, model, train, progress)
        metrics = read_metrics(run_dir)
        epoch_records = [m for m in metrics if m.get("kind") == "epoch"]
        sick = collapse_epochs(metrics)
        batch = load_model(run_dir)[1].train.batch_size
        runs[preset] = {"epochs": len(epoch_records), "images": epoch_records[-1]["step"] * batch if epoch_records else 0,
                        "collapsed_at": sick[0] if sick else None,
                        "per_epoch": [{k: m[k] for k in ("epoch", "step", "loss", "lr", "diversity", "label_separation",
                                                         "adherence", "classes_predicted") if k in m}
                                      for m in epoch_records],
                        "ablations": ablations(run_dir, per_class=per_class, steps=steps)}
        plots.plot_monitor({p: read_metrics(out / "collapse" / p) for p in runs}, out / "collapse.png")
    collapsed = {p: r["collapsed_at"] for p, r in runs.items() if r["collapsed_at"]}
    sick_ablations = {p: [a for a, s in r["ablations"].items() if s["symptoms"]] for p, r in runs.items()}
    conclusion = (f"collapsed: {collapsed}" if collapsed else
                  f"no collapse in {epochs} epochs of {subset or 60000:,} images ({epochs * (subset or 60000):,} images)")
    if any(sick_ablations.values()):
        conclusion += f"; symptoms at the end only when sampled as {sick_ablations}"
    else:
        conclusion += "; the final models are healthy under every ablation (EMA or raw weights, running or batch statistics)"
    result = {"finding": "f", "command": command, "machine": machine(),
              "epochs": epochs, "subset": subset, "runs": runs, "conclusion": conclusion}
    out.mkdir(parents=True, exist_ok=True)
    (out / "collapse.json").write_text(json.dumps(result, indent=2) + "\n")
    log.info("collapse study: %s", conclusion)
    return result
