#!/usr/bin/env bash
# MiniCPM-MoE-8x2B at full size on one machine: init MiniCPM-2.4B in bf16, upcycle it to 8 experts
# top-2, trace >= 4,096 tokens of real text with per-token records, inspect the log, run forward
# through the whole 40-layer 13.6B model, check the copy-upcycled model's logits against the dense
# model's, and bench dense vs MoE at all 40 layers from the checkpoints. Every step reports its
# peak anonymous memory (RssAnon: weights stay in the file's page cache, not in the process).
#
#   Benchmarks/fullsize/run-8x2b.sh [WORK_DIR]      (default /tmp/moekit-8x2b; needs ~35 GB of disk)
#
# Existing checkpoints in WORK_DIR are reused. The text is this repository's README and docs,
# tokenised with the BPE tokenizer in Tests/Fixtures/tokenizer-bpe-bytefallback (the presets ship no
# tokenizer; its ids all lie inside MiniCPM's vocabulary).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
work=${1:-/tmp/moekit-8x2b}
moekit=${MOEKIT:-$repo/.build/release/moekit}
measure() { python3 "$here/peak_rss_anon.py" --label "$1" -- "${@:2}"; }
mkdir -p "$work"
cd "$work"
[ -x "$moekit" ] || (cd "$repo" && make build)

echo "== machine"
lscpu | grep -E 'Model name|^CPU\(s\)' || true
"$moekit" --version || true

if [ ! -f dense-2.4b/config.json ]; then
  echo "== init MiniCPM-2.4B (bf16)"
  measure "init" "$moekit" init dense-2.4b --preset minicpm-2.4b --dtype bf16 --seed 0 --quiet
fi
if [ ! -f moe-8x2b/config.json ]; then
  echo "== upcycle to 8 experts, top-2"
  measure "upcycle" "$moekit" upcycle dense-2.4b moe-8x2b --experts 8 --top-k 2 --verify 0 --quiet
fi
for model in dense-2.4b moe-8x2b; do cp "$repo/Tests/Fixtures/tokenizer-bpe-bytefallback/tokenizer.json" "$model/"; done

echo "== show"
"$moekit" show moe-8x2b > show.txt
head -4 show.txt

echo "== corpus: documents of README.md and docs/*.md up to >= 4,096 tokens"
cat "$repo/README.md" "$repo"/docs/*.md | tr -s '\n' | awk 'length > 40' > all-lines.txt
"$moekit" tokenize moe-8x2b --text all-lines.txt > all-lines.tokens
paste -d '\t' all-lines.tokens all-lines.txt > all-lines.tsv
awk -F '\t' '{ n += split($1, a, " "); print $2 > "corpus.txt"; if (n >= 4096) exit }' all-lines.tsv
tokens=$("$moekit" tokenize moe-8x2b --text corpus.txt | awk '{ n += NF } END { print n }')
echo "corpus.txt: $(wc -l < corpus.txt) documents, $tokens tokens"

echo "== trace (one batch of $tokens tokens, layer by layer, per-token records)"
measure "trace" "$moekit" trace moe-8x2b --text corpus.txt --log routing.h5 --per-token --batch-tokens 8192 --force --quiet

echo "== inspect"
measure "inspect" "$moekit" inspect routing.h5 > inspect.txt
head -60 inspect.txt

echo "== forward: 4 sequences through the 13.6B model"
head -4 corpus.txt > four.txt
measure "forward moe, 4 sequences" "$moekit" forward moe-8x2b --text four.txt --output four-logits.safetensors

echo "== copy-upcycled logits vs dense on a 64-token sequence"
"$moekit" tokenize moe-8x2b --text corpus.txt > corpus.tokens
awk 'NF >= 64 { for (i = 1; i <= 64; i++) printf "%s%s", $i, (i < 64 ? " " : "\n"); exit }' corpus.tokens > seq64.txt
measure "forward dense, 64 tokens" "$moekit" forward dense-2.4b --tokens-file seq64.txt --output dense64.safetensors
measure "forward moe, 64 tokens" "$moekit" forward moe-8x2b --tokens-file seq64.txt --output moe64.safetensors
python3 "$here/compare_logits.py" moe64.safetensors dense64.safetensors 1e-5

echo "== bench: dense vs MoE at all 40 layers, from the checkpoints"
measure "bench" "$moekit" bench --level model --dense-model dense-2.4b --moe-model moe-8x2b --tokens 128 --routing learned \
  --repeats 1 --decode 4 --json bench-8x2b.json
