#!/usr/bin/env bash
# `ddpmlab reproduce --budget full` (the write-up's recipe: every preset at full size, 20 epochs)
# on one GPU in one go, recording the wall time. Meant for the day a GPU is at hand; README says
# whether it has run.
#
#   bash benchmarks/full_budget_gpu.sh [OUT]        # default runs/full
#
# Interrupted, a rerun continues where it stopped (reproduce resumes unfinished runs); the wall
# time of each attempt is appended to OUT/wall_time.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/full}
D=.venv/bin/ddpmlab
.venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script is for a GPU')"
mkdir -p "$OUT"
GPU=$(.venv/bin/python -c "import torch; print(torch.cuda.get_device_name(0))")
START=$(date +%s)
$D reproduce --budget full --out "$OUT" --quiet
END=$(date +%s)
printf '{"gpu": "%s", "seconds": %d, "finished": "%s"}\n' "$GPU" "$((END - START))" "$(date -Is)" >> "$OUT/wall_time.jsonl"
echo "reproduce --budget full: $((END - START)) s on $GPU; report: $OUT/report.html"
