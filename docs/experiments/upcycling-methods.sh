#!/usr/bin/env bash
# The upcycling-method experiments of docs/experiments/upcycling-methods.md, from a clean checkout
# (after `swift build -c release`), on the demo corpus and the shipped Notebooks-data/demo-dense:
#   1. Drop-Upcycling r = 0.5 vs copy upcycling (8 experts, top-2): loss and I(domain; expert) at
#      equal steps;
#   2. BTX vs copy upcycling (5 experts, top-2): five dense branches, one per corpus domain, merged
#      with `moekit merge`, then both MoEs fine-tuned the same steps on the same batches.
# Each comparison is run for the upcycling seeds in SEEDS (router draw, drop subsets; the training
# batches are the same in every run). A run whose trained model exists is skipped, so an
# interrupted script continues where it stopped.
# Writes into ${OUT:-build/upcycling-experiments}; figures and tables with plot_upcycling_methods.py.
# Sizes are set for a shared 2-core machine: STEPS (MoE fine-tuning) and BRANCH_STEPS per domain.
set -euo pipefail
M=${MOEKIT:-.build/release/moekit}
OUT=${OUT:-build/upcycling-experiments}
STEPS=${STEPS:-200}
BRANCH_STEPS=${BRANCH_STEPS:-60}
SEEDS=${SEEDS:-0 1}
DENSE=Notebooks-data/demo-dense
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"

# train RUN: fine-tune $OUT/RUN on the whole corpus (load-balancing loss 0.01, WSD), log every step.
train() {
    [ -e "$OUT/$1-trained" ] && return 0
    $M train "$OUT/$1" --data "$OUT/corpus.bin" --steps "$STEPS" --batch 8 --seq 128 --lr 0.01 --aux-loss 0.01 \
        --validation-fraction 0.02 --eval-every 50 --out "$OUT/$1-trained" --log "$OUT/$1.h5" --force
    $M inspect "$OUT/$1.h5" --json > "$OUT/$1-inspect.json"
}

# The corpus the demo model was trained on (2M tokens, seed 1; five domains with a sidecar).
[ -e "$OUT/corpus.bin" ] || $M corpus "$OUT/corpus.bin" --tokens 2000000 --seed 1

# 1. Drop-Upcycling vs copy. drop at the paper's settings (r = 0.5, router U(±√3·0.02)); copy with
#    the same router, so that only the redraw differs; and copy at MiniCPM-MoE's router N(0, 0.1²).
[ -e "$OUT/copy8" ] || $M upcycle "$DENSE" "$OUT/copy8" --experts 8 --top-k 2 --seed 0 --quiet
train copy8
for seed in $SEEDS; do
    [ -e "$OUT/copy8-u002-s$seed" ] || $M upcycle "$DENSE" "$OUT/copy8-u002-s$seed" --experts 8 --top-k 2 --seed "$seed" \
        --router-init uniform-std --router-std 0.02 --quiet
    [ -e "$OUT/drop8-s$seed" ] || $M upcycle "$DENSE" "$OUT/drop8-s$seed" --experts 8 --top-k 2 --seed "$seed" \
        --method drop --drop-ratio 0.5 --quiet
    train "copy8-u002-s$seed"
    train "drop8-s$seed"
done

# 2. BTX: branch the demo model into one dense model per domain, BRANCH_STEPS steps each on that
#    domain's tokens only (split_domains.py), merge (expert i = branch i's FFN, the rest averaged,
#    fresh router N(0, 0.1²)), fine-tune; against copy upcycling of the demo model into 5 experts
#    with the same router init.
[ -e "$OUT/domain-grammar.bin" ] || python3 "$HERE/split_domains.py" "$OUT/corpus.bin" "$OUT/domain"
BRANCHES=()
for domain in arithmetic brackets copy reverse grammar; do
    [ -e "$OUT/branch-$domain" ] || $M train "$DENSE" --data "$OUT/domain-$domain.bin" --steps "$BRANCH_STEPS" --batch 8 --seq 128 \
        --lr 0.01 --out "$OUT/branch-$domain" --log "$OUT/branch-$domain.h5" --force
    BRANCHES+=("$OUT/branch-$domain")
done
for seed in $SEEDS; do
    [ -e "$OUT/btx5-s$seed" ] || $M merge "${BRANCHES[@]}" "$OUT/btx5-s$seed" --top-k 2 --seed "$seed" --quiet
    [ -e "$OUT/copy5-s$seed" ] || $M upcycle "$DENSE" "$OUT/copy5-s$seed" --experts 5 --top-k 2 --seed "$seed" --quiet
    train "btx5-s$seed"
    train "copy5-s$seed"
done
