#!/usr/bin/env bash
# unet-small against unet-block at equal training compute on this CPU: the same wall time, given
# by their measured training images/s (RATIO = unet-small's over unet-block's, from
# benchmarks/preset_throughput.py --presets unet-small,unet-block --settings bf16/off; the default
# is the ratio README.md reports), then both evaluated the same way (dpm++2m, 20 steps, guidance 1,
# N samples, the network in bf16 where native).
# Usage: [RATIO=3.25] bash benchmarks/equal_compute.sh [BLOCK_STEPS] [N]   (unet-small gets RATIO x the steps)
set -euo pipefail
cd "$(dirname "$0")/.."
BLOCK_STEPS=${1:-300}
N=${2:-500}
RATIO=${RATIO:-3.25}
SMALL_STEPS=$(python3 -c "print(round($BLOCK_STEPS * $RATIO))")
OUT=${OUT:-runs/equal-compute}
D=.venv/bin/ddpmlab
for spec in "unet-block:$BLOCK_STEPS" "unet-small:$SMALL_STEPS"; do
    p=${spec%%:*}; s=${spec##*:}
    [ -f "$OUT/$p/checkpoint.json" ] && continue
    /usr/bin/time -f "$p: $s steps, %e s of training" $D train --preset "$p" --max-steps "$s" --snapshot-steps 0 \
        --out "$OUT/$p" --quiet
done
for p in unet-block unet-small; do
    $D evaluate "$OUT/$p" --n "$N" --sampler dpm++2m --steps 20 --guidance 1 --precision "${PRECISION:-auto}"
done
