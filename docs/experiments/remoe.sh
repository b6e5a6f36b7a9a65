#!/usr/bin/env bash
# The ReMoE experiment of docs/experiments/remoe.md: ReLU routing with the adaptive load-balanced L1
# penalty (Wang et al., ICLR 2025, arXiv 2412.14711; --router remoe: λ0 = 1e-8, α = 1.2) against
# MiniCPM-MoE's softmax → top-2 → renormalise (Switch aux loss 0.01), both copy-upcycled from
# Notebooks-data/demo-dense to 8 experts with target k = 2 (target sparsity 1 − 2/8 = 0.75), the
# router N(0, 0.01²), trained the same steps on the same batches of the demo corpus.
# From a clean checkout after `swift build -c release`; writes ${OUT:-build/remoe}; table and
# figure with plot_remoe.py. A run whose inspect output exists is skipped.
set -euo pipefail
M=${MOEKIT:-.build/release/moekit}
OUT=${OUT:-build/remoe}
STEPS=${STEPS:-150}
DENSE=Notebooks-data/demo-dense
mkdir -p "$OUT"

[ -e "$OUT/corpus.bin" ] || $M corpus "$OUT/corpus.bin" --tokens 1000000 --seed 1
[ -e "$OUT/topk-8e-k2" ] || $M upcycle "$DENSE" "$OUT/topk-8e-k2" --experts 8 --top-k 2 --seed 0 --router-std 0.01 --quiet
[ -e "$OUT/remoe-8e-k2" ] || $M upcycle "$DENSE" "$OUT/remoe-8e-k2" --experts 8 --top-k 2 --seed 0 --router remoe --router-std 0.01 --quiet
for run in topk-8e-k2 remoe-8e-k2; do
    [ -e "$OUT/$run-inspect.json" ] && continue
    $M train "$OUT/$run" --data "$OUT/corpus.bin" --steps "$STEPS" --batch 8 --seq 128 --lr 0.01 \
        --validation-fraction 0.02 --eval-every 50 --out "$OUT/$run-trained" --log "$OUT/$run.h5" --force --quiet
    $M inspect "$OUT/$run.h5" --json > "$OUT/$run-inspect.json"
    cp "$OUT/$run-trained/training_state/trainer_state.json" "$OUT/$run-trainer_state.json"
    rm -rf "$OUT/$run-trained"
done
