#!/usr/bin/env bash
# The shared-experts experiment of docs/experiments/shared-experts.md: DeepSeekMoE's shared expert
# (arXiv 2401.06066) against routed experts only, at the same active and total parameters:
#   routed8-top2:        8 routed experts, top-2                       (2 FFNs per token, 8 in all)
#   shared1-routed7-top1: 1 shared expert + 7 routed experts, top-1   (2 FFNs per token, 8 in all)
# both copy-upcycled from Notebooks-data/demo-dense with DeepSeek's routing (softmax → top-k, weights
# not renormalised: with top-1 renormalised weights are always 1 and the router would get no gradient
# from the loss) and --weight-scale auto, so that the expected output at the start is the dense one
# (routed W2 × E/K, and × 1/(S+1) with S shared experts). The router starts small, N(0, 0.01²), so
# that its scores are near 1/E as that factor assumes (MiniCPM-MoE's N(0, 0.1²) gives logits of std
# ≈ 1.1 at hidden 128, and the upcycled logits then differ from the dense ones by ~100 %). Both are
# trained the same steps on the same batches of the demo corpus.
# From a clean checkout after `swift build -c release`; writes ${OUT:-build/shared-experts};
# table and figure with plot_shared_experts.py. A run whose inspect output exists is skipped.
set -euo pipefail
M=${MOEKIT:-.build/release/moekit}
OUT=${OUT:-build/shared-experts}
STEPS=${STEPS:-150}
SEEDS=${SEEDS:-0}
DENSE=Notebooks-data/demo-dense
mkdir -p "$OUT"

[ -e "$OUT/corpus.bin" ] || $M corpus "$OUT/corpus.bin" --tokens 1000000 --seed 1
for seed in $SEEDS; do
    [ -e "$OUT/routed8-top2-s$seed" ] || $M upcycle "$DENSE" "$OUT/routed8-top2-s$seed" --experts 8 --top-k 2 --seed "$seed" \
        --router switch --weight-scale auto --router-std 0.01 --quiet
    [ -e "$OUT/shared1-routed7-top1-s$seed" ] || $M upcycle "$DENSE" "$OUT/shared1-routed7-top1-s$seed" --experts 7 --top-k 1 \
        --shared-experts 1 --seed "$seed" --router switch --weight-scale auto --router-std 0.01 --quiet
    for run in "routed8-top2-s$seed" "shared1-routed7-top1-s$seed"; do
        [ -e "$OUT/$run-inspect.json" ] && continue
        $M train "$OUT/$run" --data "$OUT/corpus.bin" --steps "$STEPS" --batch 8 --seq 128 --lr 0.01 --aux-loss 0.01 \
            --validation-fraction 0.02 --eval-every 50 --out "$OUT/$run-trained" --log "$OUT/$run.h5" --force --quiet
        $M inspect "$OUT/$run.h5" --json > "$OUT/$run-inspect.json"
        rm -rf "$OUT/$run-trained"
    done
done
