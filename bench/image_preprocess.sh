#!/usr/bin/env bash
# Decode + preprocess of a 1024x768 JPEG to a 448x448 tensor (Yi-VL's CLIP
# settings, LLaMA-Factory's default 768*768 bound), vlft vs Pillow + numpy,
# single thread each, measured side by side in this run. Prints the ratio.
# Usage: bench/image_preprocess.sh [ITERATIONS]   (after `make`)
set -euo pipefail
iterations=${1:-30}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -std=c11 -D_GNU_SOURCE -O2 $(make -s --no-print-directory -C "$root" lib-cflags) "$root/bench/bench_image.c" \
    "$root/build/libvlft.a" -o "$work/bench_image" $(make -s --no-print-directory -C "$root" lib-ldlibs)
/usr/bin/python3 - "$work" <<'PY'
import json, sys
import numpy as np
from PIL import Image
work = sys.argv[1]
rng = np.random.default_rng(0)
y, x = np.mgrid[0:768, 0:1024]
photo = np.stack([x * 255 // 1023, y * 255 // 767, (x + y) % 256], axis=-1) + rng.normal(0, 12, (768, 1024, 3))
Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)).save(f"{work}/photo.jpg", quality=90)
json.dump({"crop_size": {"height": 448, "width": 448}, "do_center_crop": True, "do_normalize": True,
           "do_rescale": True, "do_resize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
           "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3,
           "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 448}},
          open(f"{work}/preprocessor_config.json", "w"))
PY
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
vlft_line=$("$work/bench_image" "$work/preprocessor_config.json" "$work/photo.jpg" "$iterations")
pil_line=$(/usr/bin/python3 "$root/bench/bench_pillow.py" "$work/preprocessor_config.json" "$work/photo.jpg" "$iterations")
echo "$vlft_line"
echo "$pil_line"
vlft_ms=$(echo "$vlft_line" | awk '{print $2}')
pil_ms=$(echo "$pil_line" | awk '{print $2}')
awk -v a="$pil_ms" -v b="$vlft_ms" 'BEGIN { printf "speedup (Pillow+numpy time / vlft time): %.2fx\n", a / b }'
