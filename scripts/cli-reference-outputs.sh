#!/usr/bin/env bash
# Runs a fixed set of moekit commands into DIR and records their stdout and the files they write,
# so two builds can be compared byte for byte (timings and throughput excluded):
#
#   scripts/cli-reference-outputs.sh MOEKIT DIR     # e.g. main's build into /tmp/ref-main
#   diff -r /tmp/ref-main /tmp/ref-branch           # after running it again with the branch's build
#
# Every run uses one OpenBLAS thread, so the numbers are deterministic. The commands run in a
# fixed scratch directory (/tmp/moekit-cli-reference) moved to DIR afterwards, so absolute paths
# in the outputs are the same for every build. Timings, throughput and wall-clock dates are masked.
set -euo pipefail
MOEKIT=$(realpath "$1")
OUT=$2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCRATCH=/tmp/moekit-cli-reference
rm -rf "$OUT" "$SCRATCH"; mkdir -p "$SCRATCH"
cd "$SCRATCH"
export OPENBLAS_NUM_THREADS=1
mask() {  # timings, rates and dates out of a command's output
    sed -E 's/[0-9.]+ ?(s|ms|tokens\/s|tok\/s|GFLOP\/s)\b/<t>\1/g; s/in [0-9.]+s/in <t>s/g; s/"created" : "[^"]*"/"created" : <date>/; s/created [0-9T:-]+Z/created <date>/; s/[0-9.]+% of step time/<share> of step time/' |
        sed -E '/^(layer|model|train) /{s/^(.{45}).*$/\1 <timings>/}; /^  (layer|model|dense|MoE) .*= [0-9.]+$/s/= [0-9.]+$/= <ratio>/; s/\([0-9]+% of peak\)/(<share> of peak)/'
}
run() {  # NAME ARGS...: stdout to NAME.out with timing-dependent figures masked, stderr dropped
    local name=$1; shift
    "$MOEKIT" "$@" 2>/dev/null | mask > "$name.out" || echo "exit $?" >> "$name.out"
}
run init init dense --preset tiny --layers 2 --seed 3 --dtype bf16 --quiet
run init-f32 init dense32 --preset tiny --layers 1 --dtype f32 --quiet
run upcycle upcycle dense moe --experts 4 --top-k 2 --seed 1 --quiet
run upcycle-noise upcycle dense moe-noise --experts 4 --top-k 2 --method noise --router-init uniform --quiet
run upcycle-partition upcycle dense moe-part --experts 4 --top-k 2 --method partition --partition-by cluster --weight-scale auto --quiet
run upcycle-dry upcycle dense --experts 4 --top-k 1 --method granular --granularity 2 --dry-run
run upcycle-router upcycle dense moe-router --experts 4 --top-k 2 --router "topk:cf=1.25" --dtype f32 --quiet
run merge merge dense dense32 merged --top-k 1 --router-init zero --quiet
run show show moe
run show-json show moe --json
run convert convert moe moe-converted --dtype f32 --shard-size 1MB --quiet
printf '1 2 3 4 5 6 7 8\n9 10 11 12\n' > tokens.txt
run forward forward moe --tokens-file tokens.txt --output logits.safetensors
run trace trace moe --tokens-file tokens.txt --log trace.h5 --batch-tokens 4 --per-token --quiet
run inspect inspect trace.h5
run inspect-json inspect trace.h5 --json
run inspect-layer inspect trace.h5 --layer 1 --last 1 --svg heat.svg
run corpus corpus corpus.bin --tokens 20000 --seed 5
run train train moe --data corpus.bin --steps 3 --batch 2 --seq 16 --lr 0.01 --schedule wsd --decay linear --out trained --log train.h5 --quiet
run train-resume train moe --data corpus.bin --steps 5 --batch 2 --seq 16 --lr 0.01 --schedule wsd --decay linear --out trained --log train.h5 --resume --quiet
run train-dense train dense --data corpus.bin --steps 2 --batch 2 --seq 16 --lr 0.01 --schedule cosine --data-dtype uint16 --validation-fraction 0.1 --out dense-trained --quiet
run inspect-train inspect train.h5 --json
run export export moe exported --format mixtral --dtype f32 --quiet
run export-back export exported back --format minicpm --quiet
run export-llama export dense llama --format llama --quiet
run bench bench --preset tiny --layers 1 --tokens 8,16 --routing learned,collapsed --decode 2 --repeats 1 --json bench.json --level layer
run bench-training bench --preset tiny --layers 1 --level training --batch 2 --seq 8 --repeats 1
# Bad input: one line and the exit status.
run bad-method upcycle dense moe-bad --experts 4 --top-k 2 --method nope
"$MOEKIT" show missing-dir > bad-show.out 2>&1 || echo "exit $?" >> bad-show.out
# bench.json holds timings: keep only its keys.
python3 -c 'import json,sys; d=json.load(open("bench.json")); print(sorted(d.keys())); print(sorted(d["results"][0].keys()) if d.get("results") else "")' > bench-keys.out
rm -f bench.json
# Remove what holds timings or paths of this run: HDF5 attributes with wall-clock times are compared through inspect above.
find . -name '*.h5' -delete
cd /; mv "$SCRATCH" "$OUT"
