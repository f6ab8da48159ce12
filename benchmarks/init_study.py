"""Finding g: does the write-up's very basic model start badly because of its initialisation?
("The loss curve maybe shows some suboptimal initialization.")

    .venv/bin/python benchmarks/init_study.py [--steps 100] [--seeds 3] [--batch 64] [--out runs/studies]

resnet-basic (the noise level is not used at all) at the standard budget's size, 48 channels x 10
blocks, trained for the first --steps optimiser steps by ddpmlab's own step (Trainer.train_step:
Adam 1e-3, batch 64, the precision the budget trains in) on real FashionMNIST, reading the loss of
every step; seeds 0..N-1. Within a seed every variant sees the same batches, timesteps and noise.

Variants:
  ddpmlab                 the model as built: the last convolution of every residual branch (and
                          every conditioning projection) zero-initialised, so each block starts as
                          the identity
  pytorch-default         every Conv2d and Linear given PyTorch's default initialisation again
                          (reset_parameters): no zero-init, what a model written without it starts from
  pytorch-default+warmup  the same with the learning rate warmed up linearly over the first 25 steps
                          (then 1e-3, as the others): if the bad start is Adam's first full-size steps
                          on a badly scaled network, warmup should remove most of it

Writes OUT/init.json (per variant: mean, min and max loss per step over the seeds, the mean at a
few steps, the first step where the mean reaches 0.2 and 0.1) and OUT/init.png. About a minute per
variant and seed on 2 CPU cores (bf16, ~115 images/s), 9 of them. --smoke: 2 steps, 1 seed, a tiny
model (for the tests).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from ddpmlab.data import load_fashion_mnist  # noqa: E402
from ddpmlab.train import Trainer, make_run_config  # noqa: E402
from common import ROOT, command_line, machine  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

MODEL = {"channels": 48, "num_blocks": 10}          # reproduce --budget standard's ResNets
SMOKE_MODEL = {"channels": 8, "num_blocks": 2}
WARMUP = 25
LOSS_AT = (1, 10, 25, 50, 100)
THRESHOLDS = ("0.2", "0.1")


def pytorch_default_init(model: nn.Module) -> None:
    """PyTorch's own initialisation of every convolution and linear layer, undoing ddpmlab's
    zero-init (BatchNorm's default, weight 1 and bias 0, is the same in both)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.reset_parameters()


# name -> (training overrides, re-initialisation of the built model or None)
VARIANTS = {
    "ddpmlab": ({}, None),
    "pytorch-default": ({}, pytorch_default_init),
    # cosine from lr down to min_lr = lr: flat at 1e-3 after the warmup, like the others
    "pytorch-default+warmup": ({"lr_schedule": "cosine", "warmup_steps": WARMUP, "min_lr": 1e-3},
                               pytorch_default_init),
}


def step_losses(variant: str, seed: int, data, model: dict, steps: int, batch: int, precision: str,
                scratch: Path) -> list[float]:
    """The loss of each of the first `steps` optimiser steps of one variant and seed."""
    overrides, init = VARIANTS[variant]
    rc = make_run_config("resnet-basic", model, device="cpu", subset=len(data), batch_size=batch, seed=seed,
                         precision=precision, **overrides)
    tr = Trainer(scratch, rc, data=data, progress=False)      # writes nothing unless it saves
    if init is not None:
        torch.manual_seed(seed)
        init(tr.model)
        tr.ema.model.load_state_dict(tr.model.state_dict())   # (unused here: the loss is of the raw model)
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    losses = []
    for i in range(steps):
        losses.append(tr.train_step(perm[i * batch:(i + 1) * batch]).item())
        tr.step += 1                                           # the warmup reads the step, as in Trainer._loop
    return losses


def first_step_at_most(curve: np.ndarray, level: float) -> int | None:
    hits = np.flatnonzero(curve <= level)
    return int(hits[0]) + 1 if len(hits) else None


def summarise(runs: list[list[float]]) -> dict:
    """runs: one loss curve per seed -> the curves' statistics per step (steps count from 1)."""
    a = np.array(runs)                                         # (seeds, steps)
    mean = a.mean(0)
    return {"loss_mean": mean.tolist(), "loss_min": a.min(0).tolist(), "loss_max": a.max(0).tolist(),
            "loss_at": {str(k): float(mean[k - 1]) if k <= len(mean) else None for k in LOSS_AT},
            "steps_to_loss": {t: first_step_at_most(mean, float(t)) for t in THRESHOLDS}}


def plot(result: dict, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, v in result["variants"].items():
        x = np.arange(1, len(v["loss_mean"]) + 1)
        line, = ax.plot(x, v["loss_mean"], lw=1.6, label=name)
        ax.fill_between(x, v["loss_min"], v["loss_max"], color=line.get_color(), alpha=0.2, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("MSE loss on the noise (per step)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--precision", default="auto", help="auto (as the budget trains) | fp32 | bf16")
    ap.add_argument("--out", default=str(ROOT / "runs" / "studies"))
    ap.add_argument("--smoke", action="store_true", help="2 steps, 1 seed, a tiny model (tests)")
    args = ap.parse_args()
    model = MODEL
    if args.smoke:
        args.steps, args.seeds, args.batch, model = 2, 1, 16, SMOKE_MODEL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_fashion_mnist("train").subset(args.steps * args.batch)   # one pass, no image twice
    seeds = list(range(args.seeds))
    result = {"finding": "g", "command": command_line(), "machine": machine(), "steps": args.steps, "seeds": seeds,
              "preset": "resnet-basic", "model": model, "batch": args.batch, "variants": {}}
    for name in VARIANTS:
        runs = []
        for seed in seeds:
            t0 = time.perf_counter()
            runs.append(step_losses(name, seed, data, model, args.steps, args.batch, args.precision, out / "init-scratch"))
            print(f"{name} seed {seed}: loss {runs[-1][0]:.3f} at step 1, {runs[-1][-1]:.3f} at step {args.steps} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        result["variants"][name] = summarise(runs)
    (out / "init.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / "init.png", f"resnet-basic ({model['channels']} ch x {model['num_blocks']} blocks), first "
                                   f"{args.steps} steps of batch {args.batch}: mean and min-max over {len(seeds)} seed(s)")
    for name, v in result["variants"].items():
        print(f"{name:24s} loss at " + ", ".join(f"{k}: {x:.3f}" for k, x in v["loss_at"].items() if x is not None)
              + "; first step <= " + ", ".join(f"{t}: {s}" for t, s in v["steps_to_loss"].items()))
    print(f"wrote {out / 'init.json'} and {out / 'init.png'}")


if __name__ == "__main__":
    main()
