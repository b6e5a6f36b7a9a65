#!/usr/bin/env bash
# Coverage-guided fuzzing of MoEKit's parsers of outside input with libFuzzer.
#
#   Fuzz/fuzz.sh build                      compile .build/fuzz/moekit-fuzz (Sources/MoEKit + Fuzz/FuzzTargets.swift,
#                                           -sanitize=fuzzer,address)
#   Fuzz/fuzz.sh run SECONDS [TARGET ...]   replay Fuzz/regressions/TARGET/*, then fuzz each target SECONDS
#                                           (all targets by default); exit 1 on any crash, sanitizer report,
#                                           per-input timeout or memory blow-up
#   Fuzz/fuzz.sh targets                    list the targets
#
# Each run starts from the committed seeds (Fuzz/corpus/TARGET) and the corpus grown by earlier runs
# (.build/fuzz/corpus/TARGET, not committed). A failing input is saved as
# .build/fuzz/artifacts/TARGET-crash-… (or -timeout-, -oom-); copy it to Fuzz/regressions/TARGET/
# once fixed, so every later run replays it. Limits: FUZZ_TIMEOUT seconds per input (default 10),
# FUZZ_RSS_MB of memory (default 2048; one allocation above it is a failure too). The routing-log
# target replays its timeout inputs through the release CLI (MOEKIT, default .build/release/moekit).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(safetensors torch-zip pickle tokenizer-json tokenizer-text config tokens-txt tokens-npy tokens-raw routing-log)
OUT=.build/fuzz
BINARY=$OUT/moekit-fuzz
TIMEOUT=${FUZZ_TIMEOUT:-10}
RSS_MB=${FUZZ_RSS_MB:-2048}
SWIFTC=${SWIFTC:-swiftc}
MOEKIT=${MOEKIT:-.build/release/moekit}

build() {
    local sources
    mapfile -t sources < <(find Sources/MoEKit -name '*.swift' | sort)
    if [[ -x $BINARY ]] && [[ -z $(find Sources/MoEKit Sources/CMachinePeak Sources/CMoEKernels Fuzz/FuzzTargets.swift -newer "$BINARY" \( -name '*.swift' -o -name '*.[ch]' \) | head -1) ]]; then
        return 0
    fi
    mkdir -p "$OUT/CMachinePeak" "$OUT/CMoEKernels"
    echo "fuzz: compiling $BINARY (${#sources[@]} MoEKit sources, -sanitize=fuzzer,address)"
    # The package's C targets, built as SwiftPM builds them: an object file and a module map over each header.
    local clang=${CLANG:-$(dirname "$(command -v "$SWIFTC")")/clang}
    printf 'module CMachinePeak {\n  header "%s"\n  export *\n}\n' "$PWD/Sources/CMachinePeak/include/machine_peak.h" > "$OUT/CMachinePeak/module.modulemap"
    "$clang" -O2 -c Sources/CMachinePeak/machine_peak.c -I Sources/CMachinePeak/include -o "$OUT/CMachinePeak/machine_peak.o"
    printf 'module CMoEKernels {\n  header "%s"\n  export *\n}\n' "$PWD/Sources/CMoEKernels/include/moe_kernels.h" > "$OUT/CMoEKernels/module.modulemap"
    "$clang" -O2 -c Sources/CMoEKernels/moe_kernels.c -I Sources/CMoEKernels/include -o "$OUT/CMoEKernels/moe_kernels.o"
    # shellcheck disable=SC2046
    "$SWIFTC" -parse-as-library -module-name MoEKit -O -sanitize=fuzzer,address \
        -I Sources/CHDF5 -I Sources/COpenBLAS -I "$OUT/CMachinePeak" -I "$OUT/CMoEKernels" $(pkg-config --cflags hdf5 openblas | sed 's/-I/-Xcc -I/g') \
        "${sources[@]}" Fuzz/FuzzTargets.swift "$OUT/CMachinePeak/machine_peak.o" "$OUT/CMoEKernels/moe_kernels.o" \
        $(pkg-config --libs hdf5 openblas) -o "$BINARY.tmp" 2>&1 | grep -v "warning: Cannot export local symbol" || true
    [[ -x $BINARY.tmp ]] || { echo "fuzz: build failed" >&2; exit 1; }
    mv "$BINARY.tmp" "$BINARY"
}

run_target() {
    local target=$1 seconds=$2 log=$OUT/logs/$1.log
    mkdir -p "$OUT/corpus/$target" "$OUT/artifacts" "$OUT/logs"
    export MOEKIT_FUZZ_TARGET=$target ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=0}
    local regressions=(Fuzz/regressions/"$target"/*)
    if [[ -e ${regressions[0]} ]]; then
        if ! "$BINARY" -timeout="$TIMEOUT" -rss_limit_mb="$RSS_MB" "${regressions[@]}" >"$log.regressions" 2>&1; then
            echo "fuzz: $target: a kept regression input fails again:"; tail -30 "$log.regressions"; return 1
        fi
    fi
    local status=0 mode=() marker
    marker=$(mktemp)
    if [[ $target == routing-log ]]; then
        # HDF5 1.10 itself can loop forever or crash on damaged metadata (its global heap code).
        # Fork mode keeps fuzzing past such an input; a crash whose sanitizer report lies in
        # libhdf5 is counted, one in MoEKit fails the run, and every such input is replayed through
        # the CLI, which must answer it with its one-line error (it reads logs in a child process
        # under a read deadline) — or the run fails.
        mode=(-fork=1 -ignore_timeouts=1 -ignore_crashes=1)
    fi
    "$BINARY" "${mode[@]}" -max_total_time="$seconds" -timeout="$TIMEOUT" -rss_limit_mb="$RSS_MB" -detect_leaks=0 -print_final_stats=1 \
        -artifact_prefix="$OUT/artifacts/$target-" "$OUT/corpus/$target" "Fuzz/corpus/$target" >"$log" 2>&1 || status=$?
    local executions coverage features corpus
    executions=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    [[ ${#mode[@]} == 0 ]] || executions=$(grep -oE '^#[0-9]+:' "$log" | tr -d '#:' | tail -1)
    coverage=$(grep -oE '(DONE|pulse|NEW|REDUCE|INITED|[0-9]:) +cov: [0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
    features=$(grep -oE 'ft: [0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
    local hdf5_hangs=0 artifact result
    if [[ ${#mode[@]} != 0 ]]; then
        # Fork mode's exit status reports the ignored timeouts and crashes too: judge from the log.
        status=0
        if grep -qE 'out-of-memory|rss limit' "$log"; then
            echo "fuzz: $target: memory blow-up:"; grep -E 'out-of-memory|rss limit' "$log" | head -3
            status=1
        fi
        if grep -E 'SUMMARY: (AddressSanitizer|UndefinedBehaviorSanitizer)|Fatal error|libFuzzer: deadly signal' "$log" | grep -qv libhdf5; then
            echo "fuzz: $target: a failure outside libhdf5:"
            grep -E 'SUMMARY:|Fatal error|deadly signal' "$log" | grep -v libhdf5 | head -5
            status=1
        fi
        while IFS= read -r artifact; do
            [[ -n $artifact ]] || continue
            hdf5_hangs=$((hdf5_hangs + 1))
            result=$(timeout 20 "$MOEKIT" inspect "$artifact" 2>&1 >/dev/null; echo "status $?")
            if [[ $(tail -1 <<<"$result") != "status 1" || $(wc -l <<<"$result") != 2 || $result != "moekit: error: "* ]]; then
                echo "fuzz: $target: the CLI did not answer the timeout input $artifact with one error line: $result"
                status=1
            fi
        done < <(find "$OUT/artifacts" \( -name "$target-timeout-*" -o -name "$target-crash-*" \) -newer "$marker")
    fi
    rm -f "$marker"
    corpus=$(ls "$OUT/corpus/$target" | wc -l)
    printf 'fuzz: %-15s %9s executions in %ss, coverage %s edges, %s features, corpus %s (+%s seeds)%s%s\n' \
        "$target" "${executions:-?}" "$seconds" "${coverage:-?}" "${features:-?}" "$corpus" "$(ls "Fuzz/corpus/$target" | wc -l)" \
        "$([[ $hdf5_hangs == 0 ]] || echo ", $hdf5_hangs HDF5-internal hangs or crashes, each answered by the CLI with one error line")" \
        "$([[ $status == 0 ]] || echo ", FAILED (exit $status)")"
    if [[ $status != 0 ]]; then
        grep -E 'ERROR|SUMMARY|Fatal error|==[0-9]+==|Test unit written|deadly signal|timeout|out-of-memory' "$log" | head -20
        return 1
    fi
}

case ${1:-} in
    build) build ;;
    targets) printf '%s\n' "${TARGETS[@]}" ;;
    run)
        seconds=${2:?usage: Fuzz/fuzz.sh run SECONDS [TARGET ...]}
        shift 2
        selected=("$@")
        [[ ${#selected[@]} -gt 0 ]] || selected=("${TARGETS[@]}")
        build
        failed=0
        for target in "${selected[@]}"; do run_target "$target" "$seconds" || failed=1; done
        exit $failed
        ;;
    *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
