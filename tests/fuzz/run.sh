#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) into build-fuzz/ and runs
# each for SECONDS (default 60) on a copy of its seed corpus.
# Usage: tests/fuzz/run.sh [SECONDS]
set -euo pipefail
seconds=${1:-60}
root=$(cd "$(dirname "$0")/../.." && pwd)
out="$root/build-fuzz"
mkdir -p "$out"
pkgs="libpng libjpeg libwebpdemux libcjson"
sources="src/vision/image.c src/vision/jpeg_decode.c src/vision/png_decode.c src/vision/webp_decode.c src/vision/resample.c
         src/vision/clip_preprocess.c src/base/error.c src/base/fs.c"
flags="-std=c11 -D_GNU_SOURCE -DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined"
status=0
for target in jpeg png webp; do
    (cd "$root" && clang $flags $(pkg-config --cflags $pkgs) "tests/fuzz/fuzz_$target.c" $sources \
        -o "$out/fuzz_$target" $(pkg-config --libs $pkgs) -lm -lpthread)
    rm -rf "$out/corpus_$target"
    cp -r "$root/tests/fuzz/corpus/$target" "$out/corpus_$target"
    echo "== fuzz_$target for ${seconds}s"
    "$out/fuzz_$target" -max_total_time="$seconds" -rss_limit_mb=4096 -max_len=65536 \
        -artifact_prefix="$out/crash_${target}_" "$out/corpus_$target" 2>&1 | tail -5 || status=1
done
exit $status
