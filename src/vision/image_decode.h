// image_decode.h - the per-format decoders behind image_decode_memory. Each
// fills `out` in the mode Pillow would open the file in (see image.h) and
// returns 0, or returns -1 with an error naming `name`. Internal to
// src/vision; callers use image_decode_file / image_decode_memory.
#ifndef VLFT_IMAGE_DECODE_H
#define VLFT_IMAGE_DECODE_H

#include "image.h"

// JPEG via libjpeg-turbo with its defaults (islow DCT, fancy upsampling), as
// Pillow decodes: grey -> L, colour -> RGB, CMYK/YCCK -> CMYK inverted
// (Pillow assumes Adobe polarity). A truncated file is an error, as in Pillow.
int jpeg_decode(const uint8_t *data, size_t size, const char *name, Image *out, Error *err);

// PNG via libpng without gamma or transparency expansion, matching Pillow's
// modes: grey 1 bit -> 1, 2/4/8 -> L, 16 -> I; RGB 16 -> high bytes;
// palette -> P; grey+alpha 8 -> LA, 16 -> RGBA; RGBA 16 -> high bytes.
int png_decode(const uint8_t *data, size_t size, const char *name, Image *out, Error *err);

// WebP (lossy, lossless, alpha, animated: first frame) via libwebp's
// animation decoder as Pillow uses it: RGBA when the file has alpha, else RGB.
int webp_decode(const uint8_t *data, size_t size, const char *name, Image *out, Error *err);

#endif
