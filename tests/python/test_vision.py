"""Image pipeline parity: vlft preprocess against Pillow + numpy references
(vision_reference.py). Every resized uint8 image must equal Pillow's byte for
byte and every tensor the numpy CLIPImageProcessor restatement within 1e-6."""
import os

import numpy as np
from PIL import Image

from vision_reference import (clip_config, full_reference, pack_bits, write_config, write_png_adam7, write_png_raw)
from vlft_testing import read_safetensors, run_vlft, tempdir


def run_preprocess(folder, config, paths, max_pixels=None, min_pixels=None):
    config_path = os.path.join(folder, "preprocessor_config.json")
    write_config(config_path, config)
    out = os.path.join(folder, "out.safetensors")
    args = ["preprocess", "--config", config_path, "--out", out]
    if max_pixels is not None:
        args += ["--max-pixels", max_pixels]
    if min_pixels is not None:
        args += ["--min-pixels", min_pixels]
    run_vlft(*args, *paths)
    tensors, _ = read_safetensors(out)
    return tensors


def compare_all(folder, config, paths, max_pixels=768 * 768, min_pixels=32 * 32):
    """Runs vlft on paths and asserts every stage against the reference."""
    got = run_preprocess(folder, config, paths, max_pixels, min_pixels)
    worst = 0.0
    for i, path in enumerate(paths):
        bounded, resized, values = full_reference(path, config, max_pixels, min_pixels)
        name = os.path.basename(path)
        assert got[f"bounded.{i}"].shape == bounded.shape, (name, got[f"bounded.{i}"].shape, bounded.shape)
        diff = np.abs(got[f"bounded.{i}"].astype(int) - bounded.astype(int))
        assert diff.max() == 0, f"{name}: bounded image differs in {np.count_nonzero(diff)} bytes (max {diff.max()})"
        assert got[f"resized.{i}"].shape == resized.shape, (name, got[f"resized.{i}"].shape, resized.shape)
        diff = np.abs(got[f"resized.{i}"].astype(int) - resized.astype(int))
        assert diff.max() == 0, f"{name}: resized image differs in {np.count_nonzero(diff)} bytes (max {diff.max()})"
        assert got[f"pixel_values.{i}"].shape == values.shape, (name, got[f"pixel_values.{i}"].shape, values.shape)
        error = float(np.abs(got[f"pixel_values.{i}"] - values).max())
        assert error <= 1e-6, f"{name}: pixel_values differ by {error}"
        worst = max(worst, error)
    return worst


def random_image(rng, width, height):
    """Noise plus gradients and hard edges: every rounding path gets exercised."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                     ((x + y) % 256)], axis=-1).astype(np.int32)
    noise = rng.integers(0, 256, size=(height, width, 3))
    mix = rng.integers(0, 3)
    array = noise if mix == 0 else (base if mix == 1 else (base + noise) // 2)
    if width > 4 and height > 4:
        array[height // 3:height // 2, width // 4:width // 2] = rng.integers(0, 256, size=3)
    return array.astype(np.uint8)


def random_sizes(rng, count, low, high, max_aspect):
    sizes = []
    while len(sizes) < count:
        w, h = int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1))
        if max(w, h) / min(w, h) <= max_aspect:
            sizes.append((w, h))
    return sizes


def save_images(folder, rng, sizes, prefix):
    paths = []
    for k, (w, h) in enumerate(sizes):
        path = os.path.join(folder, f"{prefix}{k}_{w}x{h}.png")
        Image.fromarray(random_image(rng, w, h)).save(path, compress_level=1)
        paths.append(path)
    return paths


def test_parity_random_sizes():
    """>= 200 random sizes across upscale, heavy downscale, 1xN, odd sizes,
    mm_plugin bounds both ways, crops larger than the image, fixed sizes,
    no resize, and LLaVA pad-to-square."""
    rng = np.random.default_rng(1234)
    total = 0
    groups = [
        # Yi-VL: 448 shortest edge; some images above 768*768 get bounded first.
        (clip_config(448, 448), random_sizes(rng, 44, 40, 1300, 3.0) + [(1024, 768), (769, 769), (2000, 300)]),
        # Heavy downscale to a tiny edge, with 1xN and Nx1 strips (min bound kicks in).
        (clip_config(16, 12), random_sizes(rng, 40, 2, 700, 40.0) + [(1, 57), (83, 1), (1, 1), (1, 2000), (3000, 1),
                                                                     (2, 2), (7, 3)]),
        # The tiny model's 112: up and down.
        (clip_config(112, 112), random_sizes(rng, 45, 3, 400, 5.0)),
        # Crop larger than the resized image along one axis: zero padding.
        (clip_config(100, 120), random_sizes(rng, 20, 20, 300, 2.0)),
        # Fixed output size, no crop.
        (clip_config(224, 224, size={"height": 77, "width": 131}, do_center_crop=False), random_sizes(rng, 20, 5, 500, 6)),
        # No resize, crop only (pads small images); integer size/crop forms.
        (clip_config(224, 224, size=448, crop_size=64, do_resize=False), random_sizes(rng, 12, 30, 120, 3.0)),
        # LLaVA pad to square with the mean colour.
        (clip_config(112, 112, image_aspect_ratio="pad"), random_sizes(rng, 12, 20, 500, 4.0)),
    ]
    for g, (config, sizes) in enumerate(groups):
        folder = tempdir()
        paths = save_images(folder, rng, sizes, f"g{g}_")
        compare_all(folder, config, paths)
        total += len(paths)
    assert total >= 200, total


def test_parity_bounds_parameters():
    """image_max_pixels / image_min_pixels from the recipe, unusual values."""
    rng = np.random.default_rng(7)
    folder = tempdir()
    paths = save_images(folder, rng, random_sizes(rng, 12, 10, 300, 3.0), "b")
    compare_all(folder, clip_config(64, 56), paths, max_pixels=5000, min_pixels=4000)
    compare_all(folder, clip_config(64, 56), paths, max_pixels=100000, min_pixels=0)
    # Extreme downscales: thousands of taps per output pixel (the kernel's
    # scalar fallback) and a 1-pixel-wide intermediate.
    big = save_images(folder, rng, [(2100, 1900), (1500, 40)], "big")
    compare_all(folder, clip_config(8, 8), big[:1], max_pixels=4, min_pixels=0)
    compare_all(folder, clip_config(8, 8), big, max_pixels=40, min_pixels=0)
    # A side that would round to zero is an error naming the file (Pillow
    # cannot preprocess it either).
    result = run_vlft("preprocess", "--config", os.path.join(folder, "preprocessor_config.json"), "--out",
                      os.path.join(folder, "x.safetensors"), "--max-pixels", 4, big[1], check=False)
    assert result.returncode == 1 and big[1] in result.stderr, result.stderr


def test_jpeg_variants_match_pillow():
    """Baseline, progressive, 4:2:0 / 4:4:4, greyscale and CMYK JPEGs decode
    to Pillow's pixels, with and without the mm_plugin downscale."""
    rng = np.random.default_rng(3)
    folder = tempdir()
    rgb = Image.fromarray(random_image(rng, 203, 151))
    paths = []
    for name, kwargs in [("base", {}), ("prog", {"progressive": True}), ("q30", {"quality": 30}),
                         ("444", {"subsampling": 0}), ("422", {"subsampling": 1, "progressive": True})]:
        path = os.path.join(folder, name + ".jpg")
        rgb.save(path, **kwargs)
        paths.append(path)
    grey = os.path.join(folder, "grey.jpg")
    rgb.convert("L").save(grey)
    cmyk = os.path.join(folder, "cmyk.jpg")
    rgb.convert("CMYK").save(cmyk)
    cmyk_prog = os.path.join(folder, "cmyk_prog.jpg")
    rgb.convert("CMYK").save(cmyk_prog, progressive=True)
    paths += [grey, cmyk, cmyk_prog]
    for path in [grey, cmyk]:
        assert Image.open(path).mode in ("L", "CMYK")
    compare_all(folder, clip_config(112, 112), paths)
    compare_all(folder, clip_config(112, 112), paths, max_pixels=9000)


def png_variants(folder, rng):
    """Every PNG colour type and bit depth, written independently of vlft."""
    w, h = 37, 29
    paths = []

    def raw(name, depth, colour, rows, **kw):
        path = os.path.join(folder, name + ".png")
        write_png_raw(path, w, h, depth, colour, rows, **kw)
        paths.append(path)

    for depth in (1, 2, 4):
        values = rng.integers(0, 1 << depth, size=(h, w))
        raw(f"grey{depth}", depth, 0, [pack_bits(r, depth) for r in values])
        palette = rng.integers(0, 256, size=3 * (1 << depth)).tolist()
        raw(f"pal{depth}", depth, 3, [pack_bits(r, depth) for r in values], palette=palette)
    grey16 = rng.integers(0, 65536, size=(h, w))
    grey16[:, :8] = rng.integers(0, 300, size=(h, 8))  # values around 0..255 survive Pillow's I -> RGB clamp
    raw("grey16", 16, 0, [r.astype(">u2").tobytes() for r in grey16])
    raw("grey16_trns", 16, 0, [r.astype(">u2").tobytes() for r in grey16], trns=b"\x00\x10")
    raw("rgb16", 16, 2, [r.astype(">u2").tobytes() for r in rng.integers(0, 65536, size=(h, w * 3))])
    raw("la16", 16, 4, [r.astype(">u2").tobytes() for r in rng.integers(0, 65536, size=(h, w * 2))])
    raw("rgba16", 16, 6, [r.astype(">u2").tobytes() for r in rng.integers(0, 65536, size=(h, w * 4))])
    raw("la8", 8, 4, [bytes(r.astype(np.uint8)) for r in rng.integers(0, 256, size=(h, w * 2))])
    rgba = rng.integers(0, 256, size=(h, w * 4))
    rgba[:, 3::4][:5] = 0    # fully transparent rows: alpha is dropped, colour kept
    rgba[:, 3::4][5:9] = 255
    raw("rgba8", 8, 6, [bytes(r.astype(np.uint8)) for r in rgba])
    raw("grey8_trns", 8, 0, [bytes(r.astype(np.uint8)) for r in rng.integers(0, 256, size=(h, w))], trns=b"\x00\x07")
    # Palette of 5 entries with indices past the end, plus a tRNS chunk.
    short = rng.integers(0, 9, size=(h, w))
    raw("pal8_short", 8, 3, [bytes(r.astype(np.uint8)) for r in short], palette=list(range(15)), trns=b"\x00\x80")
    raw("pal8", 8, 3, [bytes(r.astype(np.uint8)) for r in rng.integers(0, 256, size=(h, w))],
        palette=rng.integers(0, 256, size=768).tolist())
    # Adam7-interlaced, including sizes smaller than one 8x8 block.
    for (iw, ih, c) in [(w, h, 3), (5, 3, 4), (1, 1, 3), (9, 2, 1), (13, 11, 2)]:
        path = os.path.join(folder, f"adam7_{iw}x{ih}x{c}.png")
        write_png_adam7(path, rng.integers(0, 256, size=(ih, iw, c), dtype=np.uint8))
        paths.append(path)
    # PIL-written ones too.
    img = Image.fromarray(random_image(rng, w, h))
    for mode in ("RGB", "RGBA", "L", "LA", "P"):
        path = os.path.join(folder, f"pil_{mode}.png")
        (img.convert(mode) if mode != "RGBA" else img.convert("RGBA")).save(path)
        paths.append(path)
    return paths


def test_png_variants_match_pillow():
    rng = np.random.default_rng(11)
    folder = tempdir()
    paths = png_variants(folder, rng)
    compare_all(folder, clip_config(64, 64), paths)
    # Bounds that force a resize in the native mode (premultiplied RGBA / LA,
    # nearest for P and 1, 32-bit for I) before convert("RGB").
    compare_all(folder, clip_config(64, 64), paths, max_pixels=600)
    compare_all(folder, clip_config(64, 64), paths, min_pixels=5000)


def test_bad_files_are_errors_naming_the_file():
    rng = np.random.default_rng(5)
    folder = tempdir()
    good_jpeg = os.path.join(folder, "good.jpg")
    Image.fromarray(random_image(rng, 64, 48)).save(good_jpeg, progressive=True)
    good_png = os.path.join(folder, "good.png")
    Image.fromarray(random_image(rng, 64, 48)).save(good_png)
    jpeg = open(good_jpeg, "rb").read()
    png = open(good_png, "rb").read()
    cases = {
        "empty.jpg": b"",
        "text.png": b"hello, not an image\n",
        "gif.gif": b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
        "cut.jpg": jpeg[:len(jpeg) // 2],
        "header_only.jpg": jpeg[:200],
        "cut.png": png[:len(png) // 2],
        "magic_only.png": png[:8],
        "badcrc.png": png[:29] + bytes([png[29] ^ 0xff]) + png[30:],
        "noise.jpg": b"\xff\xd8\xff" + rng.integers(0, 256, size=3000, dtype=np.uint8).tobytes(),
        "noise.png": png[:33] + rng.integers(0, 256, size=3000, dtype=np.uint8).tobytes(),
    }
    import struct
    import zlib

    def ihdr(w, h):
        body = b"IHDR" + struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + body + struct.pack(">I", zlib.crc32(body))
    cases["zero.png"] = ihdr(0, 10) + png[33:]
    cases["bomb.png"] = ihdr(20000, 20000) + png[33:]
    # A JPEG whose SOF claims 65000 x 65000: over Pillow's bomb limit.
    sof = jpeg.find(b"\xff\xc2")
    cases["bomb.jpg"] = jpeg[:sof + 5] + struct.pack(">HH", 65000, 65000) + jpeg[sof + 9:]
    cases["zero.jpg"] = jpeg[:sof + 5] + struct.pack(">HH", 0, 64) + jpeg[sof + 9:]
    config = os.path.join(folder, "preprocessor_config.json")
    write_config(config, clip_config(32, 32))
    for name, data in cases.items():
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(data)
        result = run_vlft("preprocess", "--config", config, "--out", os.path.join(folder, "o.safetensors"), path,
                          check=False)
        assert result.returncode == 1, f"{name}: exit {result.returncode}: {result.stderr}"
        assert path in result.stderr and result.stderr.count("\n") == 1, f"{name}: {result.stderr!r}"
        # Pillow refuses these too (the reference we follow).
        try:
            with Image.open(path) as im:
                im.load()
                pillow_ok = True
        except Exception:
            pillow_ok = False
        assert not pillow_ok, f"{name}: Pillow reads it, vlft refused: {result.stderr}"
    missing = os.path.join(folder, "missing.jpg")
    result = run_vlft("preprocess", "--config", config, "--out", os.path.join(folder, "o.safetensors"), missing,
                      check=False)
    assert result.returncode == 1 and missing in result.stderr


def test_bad_preprocessor_configs():
    folder = tempdir()
    img = os.path.join(folder, "a.png")
    Image.new("RGB", (10, 10)).save(img)
    for name, text in [("notjson", "{"), ("resample", '{"resample": 2}'), ("type", '{"image_processor_type": "X"}'),
                       ("size", '{"size": {"longest": 3}}'), ("mean", '{"image_mean": [1, 2]}'),
                       ("std", '{"image_std": [0, 1, 1]}'), ("bool", '{"do_resize": 3}')]:
        path = os.path.join(folder, name + ".json")
        with open(path, "w") as f:
            f.write(text)
        result = run_vlft("preprocess", "--config", path, "--out", os.path.join(folder, "o.safetensors"), img,
                          check=False)
        assert result.returncode == 1 and path in result.stderr, (name, result.returncode, result.stderr)


def test_model_folder_config_and_demo_images():
    """--config takes a model folder (init-tiny writes its preprocessor_config.json);
    the demo dataset's JPEG and PNG pictures go through exactly."""
    import json
    model, data = tempdir(), tempdir()
    run_vlft("init-tiny", model)
    run_vlft("demo-data", data, "--n", 6, "--seed", 2)
    with open(os.path.join(model, "preprocessor_config.json")) as f:
        config = json.load(f)
    samples = json.load(open(os.path.join(data, "mllm_demo.json")))
    paths = [os.path.join(data, rel) for s in samples for rel in s["images"]]
    out = os.path.join(data, "out.safetensors")
    run_vlft("preprocess", "--config", model, "--out", out, *paths)
    got, _ = read_safetensors(out)
    for i, path in enumerate(paths):
        _, _, values = full_reference(path, config)
        assert got[f"pixel_values.{i}"].shape == (3, 112, 112)
        assert np.abs(got[f"pixel_values.{i}"] - values).max() <= 1e-6, path


def test_webp_variants_match_pillow():
    """Lossy, lossless, with and without alpha, and an animation's first frame."""
    rng = np.random.default_rng(21)
    folder = tempdir()
    rgb = Image.fromarray(random_image(rng, 97, 61))
    rgba = rgb.convert("RGBA")
    alpha = np.array(rgba)
    alpha[..., 3] = rng.integers(0, 256, size=alpha.shape[:2])
    rgba = Image.fromarray(alpha, "RGBA")
    paths = []
    for name, image, kwargs in [("lossy", rgb, {"quality": 70}), ("lossless", rgb, {"lossless": True}),
                                ("lossy_alpha", rgba, {"quality": 80}), ("lossless_alpha", rgba, {"lossless": True})]:
        path = os.path.join(folder, name + ".webp")
        image.save(path, **kwargs)
        paths.append(path)
    animated = os.path.join(folder, "animated.webp")
    rgb.save(animated, save_all=True, append_images=[rgb.transpose(Image.FLIP_LEFT_RIGHT)], duration=100)
    paths.append(animated)
    with Image.open(paths[2]) as im:
        assert im.mode == "RGBA"
    with Image.open(paths[0]) as im:
        assert im.mode == "RGB"
    compare_all(folder, clip_config(64, 64), paths)
    compare_all(folder, clip_config(64, 64), paths, max_pixels=2000)
    data = open(paths[0], "rb").read()
    for cut in (12, 40, len(data) // 2, len(data) - 3):
        path = os.path.join(folder, f"cut{cut}.webp")
        with open(path, "wb") as f:
            f.write(data[:cut])
        result = run_vlft("preprocess", "--config", os.path.join(folder, "preprocessor_config.json"), "--out",
                          os.path.join(folder, "o.safetensors"), path, check=False)
        assert result.returncode == 1 and path in result.stderr, (cut, result.stderr)
