#!/usr/bin/env bash
# unet-small against unet-block at equal training compute on this CPU: the same wall time, given
# by their measured training images/s (benchmarks/preset_throughput.py: unet-block 14.5, unet-small
# 55.4 img/s on the 2-core EPYC, 3.8x), then both evaluated the same way.
# Usage: bash benchmarks/equal_compute.sh [BLOCK_STEPS] [N]   (unet-small gets 3.8x the steps)
set -euo pipefail
cd "$(dirname "$0")/.."
BLOCK_STEPS=${1:-80}
N=${2:-250}
SMALL_STEPS=$(python3 -c "print(round($BLOCK_STEPS * 55.4 / 14.5))")
OUT=${OUT:-runs/equal-compute}
D=.venv/bin/ddpmlab
for spec in "unet-block:$BLOCK_STEPS" "unet-small:$SMALL_STEPS"; do
    p=${spec%%:*}; s=${spec##*:}
    /usr/bin/time -f "$p: %e s of training" $D train --preset "$p" --max-steps "$s" --snapshot-steps 0 \
        --out "$OUT/$p" --quiet
done
for p in unet-block unet-small; do
    $D evaluate "$OUT/$p" --n "$N"
done
