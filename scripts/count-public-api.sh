#!/usr/bin/env bash
# Counts MoEKit's public API: declarations in Sources/MoEKit marked `public` or `open` (one per
# line: types, members, initialisers, extensions), excluding comments. Run from anywhere:
#
#   scripts/count-public-api.sh            # the total
#   scripts/count-public-api.sh --files    # per file, largest first
set -euo pipefail
cd "$(dirname "$0")/.."
pattern='^[[:space:]]*(@[A-Za-z_]+(\([^)]*\))?[[:space:]]+)*((nonisolated|final|static|class|override|indirect|convenience|required|mutating|nonmutating|@[A-Za-z_]+)[[:space:]]+)*(public|open)([[:space:]]|\()'
if [[ ${1:-} == --files ]]; then
    grep -rEc "$pattern" Sources/MoEKit --include='*.swift' | grep -v ':0$' | sort -t: -k2 -rn
else
    grep -rEh "$pattern" Sources/MoEKit --include='*.swift' | wc -l
fi
