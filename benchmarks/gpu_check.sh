#!/usr/bin/env bash
# GPU check: train unet-block for a few hundred steps with bf16 (+ torch.compile), then print the
# training images/s and the achieved TFLOP/s as a fraction of the GPU's bf16 matmul rate measured
# in the same run. Usage: bash benchmarks/gpu_check.sh [STEPS] [BATCH]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-300}
BATCH=${2:-256}
PY=${PY:-.venv/bin/python}
OUT=$(mktemp -d)
$PY -m ddpmlab data
$PY -m ddpmlab train --preset unet-block --device cuda --precision bf16 --compile --max-steps "$STEPS" \
    --batch-size "$BATCH" --snapshot-steps 0 --out "$OUT/run" --quiet
$PY - "$OUT/run" "$BATCH" <<'PYEOF'
import json, statistics, sys
import torch
from ddpmlab.recipes import make_run_config
from ddpmlab.train import Trainer
from ddpmlab.data import load_fashion_mnist
sys.path.insert(0, "benchmarks")
from common import count_flops, median_time

run, batch = sys.argv[1], int(sys.argv[2])
steps = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if '"step"' in l]
ips = statistics.median(m["img_per_s"] for m in steps if m.get("kind") == "step" and m["step"] > 50)
rc = make_run_config("unet-block", batch_size=batch, device="cuda", precision="bf16", snapshot_steps=0)
tr = Trainer(f"{run}-flops", rc, data=load_fashion_mnist("train").subset(batch * 2), progress=False)
flops_per_img = count_flops(lambda: tr.train_step(torch.arange(batch, device="cuda"))) / batch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
peak = 2 * 8192 ** 3 / median_time(lambda i: a @ a, 20, 3, sync=torch.cuda.synchronize)[0]
achieved = ips * flops_per_img
print(f"{torch.cuda.get_device_name()}: unet-block bf16+compile, batch {batch}: {ips:.0f} img/s (median after step 50)")
print(f"{flops_per_img / 1e9:.2f} GFLOP per training image -> {achieved / 1e12:.1f} TFLOP/s; "
      f"bf16 matmul rate measured now {peak / 1e12:.0f} TFLOP/s; fraction {achieved / peak:.1%}")
PYEOF
