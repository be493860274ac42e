"""Independent references for the image pipeline, from Debian's python3-pil
and numpy: LLaMA-Factory's mm_plugin _preprocess_image, LLaVA's
expand2square, and a numpy restatement of transformers' CLIPImageProcessor
(resize shortest edge via PIL BICUBIC from a uint8 array, center_crop with its
zero padding, rescale in float64 then float32, normalize in float32).
Also a raw PNG writer for the bit depths / colour types PIL cannot save."""
import json
import math
import struct
import zlib

import numpy as np
from PIL import Image

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def clip_config(shortest_edge=448, crop=448, **extra):
    config = {"crop_size": {"height": crop, "width": crop}, "do_center_crop": True, "do_convert_rgb": True,
              "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": CLIP_MEAN,
              "image_processor_type": "CLIPImageProcessor", "image_std": CLIP_STD, "resample": 3,
              "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": shortest_edge}}
    config.update(extra)
    return config


def mm_plugin_bounds(image, max_pixels=768 * 768, min_pixels=32 * 32):
    """LLaMA-Factory (March 2025) BasePlugin._preprocess_image."""
    if image.width * image.height > max_pixels:
        factor = math.sqrt(max_pixels / (image.width * image.height))
        image = image.resize((int(image.width * factor), int(image.height * factor)))
    if image.width * image.height < min_pixels:
        factor = math.sqrt(min_pixels / (image.width * image.height))
        image = image.resize((int(image.width * factor), int(image.height * factor)))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def expand2square(image, mean):
    width, height = image.size
    colour = tuple(int(x * 255) for x in mean)
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), colour)
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


def _size_pair(value, int_means_square):
    if isinstance(value, int):
        return (value, value) if int_means_square else value
    if "shortest_edge" in value and not int_means_square:
        return value["shortest_edge"]
    return (value["height"], value["width"])


def clip_reference(rgb, config):
    """CLIPImageProcessor.preprocess on one RGB PIL image, restated in numpy.
    Returns (resized uint8 HxWx3, pixel_values float32 3xHxW)."""
    array = np.array(rgb)
    if config.get("do_resize", True):
        size = _size_pair(config.get("size", {"shortest_edge": 224}), False)
        height, width = array.shape[:2]
        if isinstance(size, int):
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = size, int(size * long / short)
            out_h, out_w = (new_long, new_short) if width <= height else (new_short, new_long)
        else:
            out_h, out_w = size
        array = np.array(Image.fromarray(array).resize((out_w, out_h), resample=Image.BICUBIC))
    resized = array
    if config.get("do_center_crop", True):
        crop_h, crop_w = _size_pair(config.get("crop_size", 224), True)
        h, w = array.shape[:2]
        top, left = (h - crop_h) // 2, (w - crop_w) // 2
        if top >= 0 and left >= 0 and top + crop_h <= h and left + crop_w <= w:
            array = array[top:top + crop_h, left:left + crop_w]
        else:
            new_h, new_w = max(crop_h, h), max(crop_w, w)
            padded = np.zeros((new_h, new_w, 3), dtype=array.dtype)
            top_pad, left_pad = math.ceil((new_h - h) / 2), math.ceil((new_w - w) / 2)
            padded[top_pad:top_pad + h, left_pad:left_pad + w] = array
            top, left = top + top_pad, left + left_pad
            array = padded[max(0, top):min(new_h, top + crop_h), max(0, left):min(new_w, left + crop_w)]
    values = array
    if config.get("do_rescale", True):
        values = (values.astype(np.float64) * config.get("rescale_factor", 1 / 255)).astype(np.float32)
    if config.get("do_normalize", True):
        values = values.astype(np.float32)
        mean = np.array(config.get("image_mean", CLIP_MEAN), dtype=values.dtype)
        std = np.array(config.get("image_std", CLIP_STD), dtype=values.dtype)
        values = (values - mean) / std
    return resized, np.ascontiguousarray(values.transpose(2, 0, 1)).astype(np.float32)


def full_reference(path, config, max_pixels=768 * 768, min_pixels=32 * 32):
    """(bounded RGB uint8, resized uint8, pixel_values) for an image file."""
    with Image.open(path) as opened:
        image = opened.copy()
    bounded = mm_plugin_bounds(image, max_pixels, min_pixels)
    if config.get("image_aspect_ratio") == "pad":
        bounded = expand2square(bounded, config.get("image_mean", CLIP_MEAN))
    resized, values = clip_reference(bounded, config)
    return np.array(bounded), resized, values


def write_config(path, config):
    with open(path, "w") as f:
        json.dump(config, f)


def write_png_raw(path, width, height, bit_depth, colour_type, rows, palette=None, trns=None):
    """A minimal PNG writer (filter 0, no interlace): rows is a list of
    bytes, each already packed at bit_depth."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
    raw = b"".join(b"\x00" + bytes(r) for r in rows)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0))
    if palette is not None:
        out += chunk(b"PLTE", bytes(palette))
    if trns is not None:
        out += chunk(b"tRNS", bytes(trns))
    out += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(out)


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def write_png_adam7(path, array):
    """An Adam7-interlaced 8-bit PNG of an HxWxC uint8 array (C = 1, 2, 3, 4)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
    h, w, c = array.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = b""
    for x0, y0, dx, dy in ADAM7:
        sub = array[y0::dy, x0::dx]
        if sub.shape[0] == 0 or sub.shape[1] == 0:
            continue
        raw += b"".join(b"\x00" + row.tobytes() for row in sub)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 1))
    out += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(out)


def pack_bits(values, bit_depth):
    """Packs small integers MSB-first into bytes at bit_depth (1, 2, 4)."""
    per_byte = 8 // bit_depth
    out = bytearray()
    for i in range(0, len(values), per_byte):
        byte = 0
        group = list(values[i:i + per_byte]) + [0] * (per_byte - len(values[i:i + per_byte]))
        for v in group:
            byte = (byte << bit_depth) | int(v)
        out.append(byte)
    return bytes(out)
