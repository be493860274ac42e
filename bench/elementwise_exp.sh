#!/usr/bin/env bash
# SwiGLU, the sigmoid-gated activations, GELU and cross-entropy (forward +
# backward), this checkout vs a baseline revision's src/kernels/cpu/
# elementwise.c and loss.c (libm expf per element), linked into one binary
# and timed alternately in the same run (bench/elementwise_exp.c).
# Usage: bench/elementwise_exp.sh [THREADS (default 2)] [REPEAT (default 20)] [BASELINE_REV (default 9d5cc73,
#        the commit before exp_approx)]
set -euo pipefail
threads=${1:-2}
repeat=${2:-20}
base=${3:-9d5cc73}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
make -s -j2 build/libvlft.a
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The libraries (and the OpenMP build of OpenBLAS) exactly as the Makefile links vlft.
libs=$(make -s --no-print-directory lib-ldlibs)
# The baseline's files, compiled as the Makefile does (-O2, OpenMP), with
# every function they define renamed old_* so both versions link.
for f in elementwise loss; do
    git show "$base:src/kernels/cpu/$f.c" | sed 's|#include "../kernels.h"|#include "kernels.h"|' >"$work/old_$f.c"
    cc -std=c11 -D_GNU_SOURCE -O2 -fopenmp -I"$root/src/kernels" -I"$root/src/kernels/cpu" -c "$work/old_$f.c" -o "$work/old_$f.o"
    nm --defined-only -g "$work/old_$f.o" | awk '$2 == "T" {print $3 " old_" $3}' >"$work/$f.syms"
    objcopy --redefine-syms="$work/$f.syms" "$work/old_$f.o"
done
cc -std=c11 -D_GNU_SOURCE -O2 -fopenmp "$root/bench/elementwise_exp.c" "$work/old_elementwise.o" "$work/old_loss.o" \
    "$root/build/libvlft.a" -o "$work/bench_elementwise_exp" $libs
OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} "$work/bench_elementwise_exp" "$threads" "$repeat"
