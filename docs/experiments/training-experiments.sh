#!/usr/bin/env bash
# The two small-scale training experiments of docs/training.md, from a clean checkout:
#   1. WSD: the decay phase lowers the loss below the stable phase's (MiniCPM paper, §4);
#   2. load balancing: with the balancing loss (0.01) the expert-count CV ends lower than without.
# Writes into ${OUT:-build/experiments}; figures with plot_training_experiments.py.
set -euo pipefail
M=${MOEKIT:-.build/release/moekit}
OUT=${OUT:-build/experiments}
mkdir -p "$OUT"
# Experiment 1 is the run that made the shipped demo model (make demo-model): 600 steps of WSD.
$M init "$OUT/init" --preset tiny --seed 0 --force
$M corpus "$OUT/corpus.bin" --tokens 2000000 --seed 1 --force
$M train "$OUT/init" --data "$OUT/corpus.bin" --steps 600 --batch 8 --seq 128 --lr 0.01 \
    --validation-fraction 0.02 --eval-every 100 --out "$OUT/dense" --log "$OUT/dense-wsd.h5" --force
# Experiment 2: upcycle that dense model to 8 experts (top-2) and train 200 steps with and without
# the load-balancing loss; everything else (data, batches, seed, schedule) identical.
$M upcycle "$OUT/dense" "$OUT/moe-init" --experts 8 --top-k 2 --seed 0 --force
for aux in 0.01 0; do
    $M train "$OUT/moe-init" --data "$OUT/corpus.bin" --steps 200 --batch 8 --seq 128 --lr 0.01 --aux-loss $aux \
        --validation-fraction 0.02 --eval-every 50 --out "$OUT/moe-aux-$aux" --log "$OUT/moe-aux-$aux.h5" --force
done
