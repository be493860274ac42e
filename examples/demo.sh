#!/usr/bin/env bash
# The demo: a tiny random Yi-VL-style model, written in Hugging Face layout and
# checked back. (Later: demo images + LoRA training on them.)
set -euo pipefail
cd "$(dirname "$0")/.."
vlft=./build/vlft
out=${VLFT_DEMO_DIR:-demo}
rm -rf "$out/model"
"$vlft" init-tiny "$out/model" --seed 0
"$vlft" info "$out/model"
