#!/usr/bin/env bash
# Installs the Debian 12 packages vlft builds, runs and tests with.
# Run as root (or with sudo available). Idempotent.
set -euo pipefail
packages=(
    build-essential pkg-config git
    libyaml-dev libcjson-dev          # recipes, JSON configs
    libpng-dev libjpeg62-turbo-dev    # images
    libwebp-dev                       # WebP images
    libopenblas-openmp-dev            # CPU GEMMs (OpenMP build: one thread pool with vlft)
    libdnnl-dev                       # oneDNN: bf16 matmuls on AVX512-BF16 / AMX CPUs
    libcairo2-dev libfontconfig-dev   # loss plots (fontconfig: released after drawing)
    libopenmpi-dev openmpi-bin        # multi-process training (mpirun)
    libcriterion-dev                  # C unit tests
    python3 python3-numpy             # test-time references ...
    python3-torch python3-sentencepiece python3-pil
    tmux                              # the chat REPL test drives vlft chat in tmux
    clang libclang-rt-14-dev libomp-14-dev  # sanitizers and libFuzzer
)
if [ -n "${VLFT_EXTRA_PACKAGES:-}" ]; then
    # shellcheck disable=SC2206
    packages+=(${VLFT_EXTRA_PACKAGES})
fi
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q
    $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Test-time reference for tokenizer.json parity: Hugging Face tokenizers in
# pure JS (@huggingface/tokenizers, pinned by tests/npm/package-lock.json),
# installed into tests/npm/node_modules (git-ignored). Needs node and npm.
if ! command -v npm >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y -q --no-install-recommends nodejs npm
fi
root=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -d "$root/tests/npm/node_modules/@huggingface/tokenizers" ]; then
    (cd "$root/tests/npm" && npm ci --no-audit --no-fund)
fi
