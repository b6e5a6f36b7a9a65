#!/usr/bin/env bash
# Counts MoEKit's public symbols from the compiled module with swift-symbolgraph-extract (types,
# members, enum cases, initialisers and synthesised operators such as Equatable's ==), after a
# release build (`swift build -c release`, with or without -enable-testing):
#
#   scripts/count-public-symbols.sh            # total, then per symbol kind
#   scripts/count-public-symbols.sh DIR        # the package checked out in DIR (built there)
#
# scripts/count-public-api.sh counts `public`/`open` declarations in the sources instead (no build).
set -euo pipefail
ROOT=$(cd "${1:-$(dirname "$0")/..}" && pwd)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
BUILD=$ROOT/.build/release
# shellcheck disable=SC2046
swift-symbolgraph-extract -module-name MoEKit -I "$BUILD/Modules" -I "$ROOT/Sources/CHDF5" -I "$ROOT/Sources/COpenBLAS" \
    $(pkg-config --cflags hdf5 openblas | sed 's/-I/-Xcc -I/g') -Xcc -fmodule-map-file="$BUILD/CMachinePeak.build/module.modulemap" -Xcc -fmodule-map-file="$BUILD/CMoEKernels.build/module.modulemap" \
    -target "$(uname -m)-unknown-linux-gnu" -minimum-access-level public -output-dir "$OUT" >/dev/null
python3 - "$OUT/MoEKit.symbols.json" <<'PY'
import collections, json, sys
symbols = [s for s in json.load(open(sys.argv[1]))["symbols"] if s["accessLevel"] in ("public", "open")]
print(len(symbols), "public symbols")
for kind, count in collections.Counter(s["kind"]["identifier"] for s in symbols).most_common():
    print(f"  {count:5d} {kind}")
PY
