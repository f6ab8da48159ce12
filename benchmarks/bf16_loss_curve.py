"""Does bf16 autocast train as well as fp32? The same short run twice, same seed, same batches.

    .venv/bin/python benchmarks/bf16_loss_curve.py [--preset resnet-noise] [--steps 150] [--out docs/bf16-vs-fp32.png]

Trains the preset at the quick budget's size (32 channels) for --steps optimiser steps in each
precision from the same seed (so the same images, timesteps and noise reach both), logs the loss
every 5 steps, and prints the two curves' mean over the last third and their ratio, plus the
images/s of each. On a CPU without native bf16 (no AVX512-BF16 / AMX) oneDNN emulates it and the
bf16 run is much slower; the curves are still the question this answers.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ddpmlab.run import read_metrics  # noqa: E402
from ddpmlab.train import make_run_config, train  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="resnet-noise")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", default="docs/bf16-vs-fp32.png")
    args = ap.parse_args()
    small = {"channels": 32, "num_blocks": 4} if args.preset.startswith("resnet") else \
        {"channels": 32, "channel_mults": (1, 2, 2), "blocks_per_level": 1}
    curves = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            rc = make_run_config(args.preset, small, precision=precision, max_steps=args.steps, log_every=5,
                                 batch_size=args.batch, snapshot_steps=0, device="cpu", seed=0)
            run = Path(tmp) / precision
            train(run, rc, progress=False)
            steps = [m for m in read_metrics(run) if m["kind"] == "step"]
            curves[precision] = ([m["step"] for m in steps], [m["loss"] for m in steps],
                                 sorted(m["img_per_s"] for m in steps)[len(steps) // 2])
    tail = {p: c[1][-len(c[1]) // 3:] for p, c in curves.items()}
    means = {p: sum(v) / len(v) for p, v in tail.items()}
    for p, (s, loss, ips) in curves.items():
        print(f"{p}: loss over the last third {means[p]:.4f}, median {ips:.1f} img/s")
    print(f"bf16 / fp32 loss over the last third: {means['bf16'] / means['fp32']:.3f}")
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for p, (s, loss, ips) in curves.items():
        ax.plot(s, loss, "--" if p == "bf16" else "-", label=f"{p} ({ips:.0f} img/s)")
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss (mean of 5 steps)")
    ax.set_title(f"{args.preset} at 32 channels, batch {args.batch}: bf16 autocast vs fp32")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
