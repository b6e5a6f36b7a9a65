#!/usr/bin/env bash
# The balancing-granularity experiment of docs/experiments/balancing-granularity.md: global-batch
# vs micro-batch load balancing (Qwen, arXiv 2501.11873) at the same gradient accumulation, on
# the demo corpus laid out in single-domain blocks (block_domains.py), so that a micro-batch of
# one 64-token window mostly holds one domain while the global batch of 8 windows mixes them.
# From a clean checkout after `swift build -c release`; writes ${OUT:-build/balancing-experiments};
# figure and table with plot_balancing_granularity.py. A run whose inspect output exists is skipped.
# Sizes are set for a shared 2-core machine (a few CPU minutes a run).
set -euo pipefail
M=${MOEKIT:-.build/release/moekit}
OUT=${OUT:-build/balancing-experiments}
STEPS=${STEPS:-150}
COEFFICIENTS=${COEFFICIENTS:-0.01 0.1}
DENSE=Notebooks-data/demo-dense
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"

[ -e "$OUT/corpus.bin" ] || $M corpus "$OUT/corpus.bin" --tokens 1000000 --seed 1
[ -e "$OUT/blocked.bin" ] || python3 "$HERE/block_domains.py" "$OUT/corpus.bin" "$OUT/blocked.bin" 2048
[ -e "$OUT/moe8" ] || $M upcycle "$DENSE" "$OUT/moe8" --experts 8 --top-k 2 --seed 0 --quiet

# 8 windows of 64 tokens per step, as 8 micro-batches of one window (--accumulate 8).
for aux in $COEFFICIENTS; do
    for balance in micro global; do
        run="$balance-aux$aux"
        [ -e "$OUT/$run-inspect.json" ] && continue
        $M train "$OUT/moe8" --data "$OUT/blocked.bin" --steps "$STEPS" --batch 8 --seq 64 --accumulate 8 --balance "$balance" \
            --lr 0.01 --aux-loss "$aux" --validation-fraction 0.02 --eval-every 50 \
            --out "$OUT/$run-trained" --log "$OUT/$run.h5" --force --quiet
        $M inspect "$OUT/$run.h5" --json > "$OUT/$run-inspect.json"
        rm -rf "$OUT/$run-trained"
    done
done
