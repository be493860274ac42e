#!/usr/bin/env bash
# Attention forward + backward, this checkout vs a baseline revision's
# src/kernels/cpu/attention.c, linked into one binary and timed alternately in
# the same run (bench/attention.c), with the peak heap bytes each call uses.
# Usage: bench/attention.sh [THREADS (default 2)] [REPEAT (default 3)] [BASELINE_REV (default e929027,
#        the per-head [128, L] / [L, L] score-buffer version)]
set -euo pipefail
threads=${1:-2}
repeat=${2:-3}
base=${3:-e929027}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
make -s -j2 build/libvlft.a
# KEEP=DIR keeps the built binary (DIR/bench_attention), e.g. for perf.
work=${KEEP:-$(mktemp -d)}
mkdir -p "$work"
[ -z "${KEEP:-}" ] && trap 'rm -rf "$work"' EXIT
# Same OpenBLAS (the OpenMP build) as the Makefile links.
blas_pc=$(ls -d /usr/lib/*/openblas-openmp/pkgconfig 2>/dev/null | head -1 || true)
[ -n "$blas_pc" ] && export PKG_CONFIG_PATH="$blas_pc${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
pkgs="yaml-0.1 libcjson libpng libjpeg libwebpdemux openblas cairo fontconfig"
rpath=${blas_pc:+-Wl,-rpath,${blas_pc%/pkgconfig}}
git show "$base:src/kernels/cpu/attention.c" | sed 's|#include "../kernels.h"|#include "kernels.h"|' >"$work/old_attention.c"
# The baseline's public functions get an old_ prefix so both versions link.
cc -std=c11 -D_GNU_SOURCE -O2 -fopenmp -I"$root/src/kernels" -I"$root/src/kernels/cpu" -c "$work/old_attention.c" -o "$work/old_attention.o" \
    -Dattention_forward=old_attention_forward -Dattention_backward=old_attention_backward \
    -Drope_forward=old_rope_forward -Drope_backward=old_rope_backward -Drope_forward_at=old_rope_forward_at
cc -std=c11 -D_GNU_SOURCE -O2 -fopenmp "$root/bench/attention.c" "$work/old_attention.o" "$root/build/libvlft.a" \
    -o "$work/bench_attention" -Wl,--wrap=malloc,--wrap=free,--wrap=calloc $(pkg-config --libs $pkgs) -ldnnl $rpath -lm -lpthread
OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} "$work/bench_attention" "$threads" "$repeat"
