#!/usr/bin/env bash
# Upcycling throughput and memory: minicpm-2.4b cut to 4 layers (bf16) into 8 experts, against a
# plain copy of the same bytes on the same disk. Targets: upcycle bytes/s ≥ ½ of the copy's,
# peak RSS < 2 GB. Usage: docs/upcycle-benchmark.sh [WORK_DIR]   (needs a release build:
# swift build -c release --product moekit)
set -euo pipefail
MOEKIT=${MOEKIT:-.build/release/moekit}
WORK=${1:-$(mktemp -d)}
mkdir -p "$WORK"
rm -rf "$WORK/dense" "$WORK/moe" "$WORK/copy"
"$MOEKIT" init "$WORK/dense" --preset minicpm-2.4b --layers 4 --dtype bf16 --quiet >/dev/null
cat "$WORK/dense"/*.safetensors >/dev/null   # both runs start with the source in the page cache
sync
start=$(date +%s.%N)
/usr/bin/time -v -o "$WORK/time.txt" "$MOEKIT" upcycle "$WORK/dense" "$WORK/moe" --experts 8 --top-k 2 --verify 0 --quiet >/dev/null
sync
upcycle_seconds=$(echo "$(date +%s.%N) - $start" | bc)
bytes=$(du -cb "$WORK/moe"/*.safetensors | tail -1 | cut -f1)
# The plain copy: the same number of bytes, cache-hot source, same disk, synced the same way.
cat "$WORK/moe"/*.safetensors >/dev/null
start=$(date +%s.%N)
mkdir "$WORK/copy" && cp "$WORK/moe"/*.safetensors "$WORK/copy/"
sync
copy_seconds=$(echo "$(date +%s.%N) - $start" | bc)
rss_kb=$(grep "Maximum resident set size" "$WORK/time.txt" | awk '{print $NF}')
printf 'bytes written     %d\n' "$bytes"
printf 'upcycle           %.2f s  %.0f MB/s\n' "$upcycle_seconds" "$(echo "$bytes / $upcycle_seconds / 1000000" | bc -l)"
printf 'plain copy        %.2f s  %.0f MB/s\n' "$copy_seconds" "$(echo "$bytes / $copy_seconds / 1000000" | bc -l)"
printf 'ratio             %.2f (target ≥ 0.5)\n' "$(echo "$copy_seconds / $upcycle_seconds" | bc -l)"
printf 'peak RSS          %.0f MB (target < 2000)\n' "$(echo "$rss_kb / 1000" | bc -l)"
rm -rf "$WORK/dense" "$WORK/moe" "$WORK/copy"
