"""Training images/s with glibc's default malloc against ddpmlab's `keep_freed_memory()`.

    .venv/bin/python benchmarks/allocator.py [--presets unet-block,unet-small,resnet-basic] [--rounds 3] [--steps 8]

malloc settings hold for a whole process, so each measurement is a fresh process running
ddpmlab's own training step (Trainer.train_step, bf16 where the CPU has it, batch 64, real
FashionMNIST), the two settings alternating for --rounds rounds. Prints, per preset and setting,
the median images/s over the rounds, the minor page faults per step and the peak resident memory,
and the ratio kept / default.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from common import output_dir   # benchmarks/ is on sys.path when run as a script

# The child keeps its own timing loop rather than common.median_time: malloc settings hold for a
# whole process, so each measurement is a fresh `python -c` process, and the page faults are read
# between the warm-up steps and the timed ones, outside any timed call.
CHILD = """
import json, resource, statistics, sys, time, torch
from ddpmlab.runtime import keep_freed_memory
applied = keep_freed_memory()
from ddpmlab.data import load_fashion_mnist
from ddpmlab.train import Trainer, make_run_config
preset, steps, run_dir, batch = sys.argv[1], int(sys.argv[2]), sys.argv[3], 64
data = load_fashion_mnist("train").subset(batch * (steps + 3))
tr = Trainer(run_dir, make_run_config(preset, batch_size=batch, device="cpu", snapshot_steps=0),
             data=data, progress=False)
times = []
for i in range(steps + 3):
    if i == 3:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    tr.train_step(torch.arange(i * batch, (i + 1) * batch)).item()
    times.append(time.perf_counter() - t0)
print(json.dumps({"applied": applied, "ips": batch / statistics.median(times[3:]),
                  "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(preset: str, steps: int, keep: bool) -> dict:
    env = dict(os.environ, DDPMLAB_KEEP_FREED_MEMORY="1" if keep else "0")
    out = subprocess.run([sys.executable, "-c", CHILD, preset, str(steps), str(output_dir("allocator"))], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="unet-block,unet-small,resnet-basic")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    print(f"{args.rounds} alternating rounds of {args.steps} timed steps per setting, batch 64")
    for preset in args.presets.split(","):
        results = {False: [], True: []}
        for _ in range(args.rounds):
            for keep in (False, True):
                results[keep].append(run(preset, args.steps, keep))
        if not results[True][0]["applied"]:
            print("keep_freed_memory() does not apply here (not Linux with glibc)")
            return
        ips = {k: statistics.median(r["ips"] for r in v) for k, v in results.items()}
        for keep, name in ((False, "glibc default"), (True, "keep_freed_memory")):
            rs = results[keep]
            runs = ", ".join(f"{r['ips']:.1f}" for r in rs)
            print(f"{preset:14s} {name:18s} {ips[keep]:7.1f} img/s (runs: {runs})  "
                  f"{statistics.median(r['faults'] for r in rs):8.0f} minor faults/step  "
                  f"peak RSS {statistics.median(r['rss_mb'] for r in rs):5.0f} MB")
        print(f"{preset:14s} kept / default = {ips[True] / ips[False]:.3f}x", flush=True)


if __name__ == "__main__":
    main()
