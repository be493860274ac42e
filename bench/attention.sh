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
# The libraries (and the OpenMP build of OpenBLAS) exactly as the Makefile links vlft.
libs=$(make -s --no-print-directory lib-ldlibs)
git show "$base:src/kernels/cpu/attention.c" | sed 's|#include "../kernels.h"|#include "kernels.h"|' >"$work/old_attention.c"
# The baseline's public functions get an old_ prefix so both versions link.
cc -std=c11 -D_GNU_SOURCE -O2 -fopenmp -I"$root/src/kernels" -I"$root/src/kernels/cpu" -c "$work/old_attention.c" -o "$work/old_attention.o" \
    -Dattention_forward=old_attention_forward -Dattention_backward=old_attention_backward \
    -Drope_forward=old_rope_forward -Drope_backward=old_rope_backward -Drope_forward_at=old_rope_forward_at
cc -std=c11 -D_GNU_SOURCE -O2 -fopenmp "$root/bench/attention.c" "$work/old_attention.o" "$root/build/libvlft.a" \
    -o "$work/bench_attention" -Wl,--wrap=malloc,--wrap=free,--wrap=calloc $libs
OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} "$work/bench_attention" "$threads" "$repeat"
