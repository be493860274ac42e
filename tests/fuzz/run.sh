#!/usr/bin/env bash
# Builds every tests/fuzz/fuzz_*.c as a libFuzzer target (clang, ASan+UBSan)
# and runs each for SECONDS seconds on its corpus tests/fuzz/corpus/NAME.
# Crashes land in tests/fuzz/findings/NAME/ (git-ignored); turn each into a
# regression test. Usage: tests/fuzz/run.sh [SECONDS] [NAME ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-60}
shift || true
# Include and link flags of the library's dependencies as the Makefile has them.
flags="-std=c11 -D_GNU_SOURCE -DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION -g -O1 -fopenmp -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined $(make -s --no-print-directory lib-cflags)"
libs=$(make -s --no-print-directory lib-ldlibs)
out=build-fuzz
mkdir -p "$out/obj"
# The library as the Makefile builds it without CUDA (make lib-sources), less
# the command-line front end, which no target calls.
lib_src=$(make -s --no-print-directory lib-sources | grep -v '^src/cli/')
objs=()
for f in $lib_src; do
    o="$out/obj/$(echo "$f" | tr / _).o"
    if [ ! -f "$o" ] || [ "$f" -nt "$o" ]; then clang $flags -c "$f" -o "$o"; fi
    objs+=("$o")
done
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for f in tests/fuzz/fuzz_*.c; do targets+=("$(basename "$f" .c | sed 's/^fuzz_//')"); done
fi
status=0
for name in "${targets[@]}"; do
    clang $flags -fsanitize=fuzzer "tests/fuzz/fuzz_$name.c" "${objs[@]}" -o "$out/fuzz_$name" \
        $libs
    corpus="tests/fuzz/corpus/$name"
    work="$out/corpus_$name"
    findings="tests/fuzz/findings/$name"
    mkdir -p "$work" "$findings" "$corpus"
    dict=()
    [ -f "tests/fuzz/$name.dict" ] && dict=(-dict="tests/fuzz/$name.dict")
    echo "== fuzz_$name for ${seconds}s"
    if ! "$out/fuzz_$name" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -artifact_prefix="$findings/" -print_final_stats=1 "${dict[@]}" "$work" "$corpus" 2>&1 | \
        grep -E "^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss|==[0-9]+==ERROR|SUMMARY|artifact_prefix|Test unit written)"; then
        :
    fi
    if ls "$findings"/crash-* "$findings"/leak-* "$findings"/timeout-* >/dev/null 2>&1; then
        echo "fuzz_$name: findings in $findings"
        status=1
    fi
done
exit $status
