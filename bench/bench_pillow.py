"""Times Pillow + numpy on the same job as bench_image.c: open + decode,
LLaMA-Factory's mm_plugin bounds, CLIPImageProcessor (numpy restatement of
transformers: PIL resize from a uint8 array, center crop, rescale, normalize,
channels first). Single thread. Prints "pillow_ms_per_image <ms>"."""
import json
import math
import sys
import time

import numpy as np
from PIL import Image


def preprocess(path, config):
    with Image.open(path) as opened:
        image = opened.copy()
    max_pixels, min_pixels = 768 * 768, 32 * 32
    if image.width * image.height > max_pixels:
        f = math.sqrt(max_pixels / (image.width * image.height))
        image = image.resize((int(image.width * f), int(image.height * f)))
    if image.width * image.height < min_pixels:
        f = math.sqrt(min_pixels / (image.width * image.height))
        image = image.resize((int(image.width * f), int(image.height * f)))
    if image.mode != "RGB":
        image = image.convert("RGB")
    array = np.array(image)
    size = config["size"]["shortest_edge"]
    h, w = array.shape[:2]
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    out_h, out_w = (new_long, size) if w <= h else (size, new_long)
    array = np.array(Image.fromarray(array).resize((out_w, out_h), resample=Image.BICUBIC))
    ch, cw = config["crop_size"]["height"], config["crop_size"]["width"]
    top, left = (out_h - ch) // 2, (out_w - cw) // 2
    array = array[top:top + ch, left:left + cw]
    values = (array.astype(np.float64) * config["rescale_factor"]).astype(np.float32)
    values = (values - np.array(config["image_mean"], dtype=np.float32)) / np.array(config["image_std"], dtype=np.float32)
    return np.ascontiguousarray(values.transpose(2, 0, 1))


def main():
    config = json.load(open(sys.argv[1]))
    path, iterations = sys.argv[2], int(sys.argv[3])
    best = 1e30
    checksum = 0.0
    for _ in range(iterations):
        start = time.perf_counter()
        values = preprocess(path, config)
        best = min(best, time.perf_counter() - start)
        checksum += float(values[1, 0, 0])
    print(f"pillow_ms_per_image {best * 1e3:.3f} (best of {iterations}, checksum {checksum / iterations:.4f})")


if __name__ == "__main__":
    main()
