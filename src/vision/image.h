// image.h - decoded images in the pixel modes Pillow would give them, and
// their conversion to 8-bit RGB the way Pillow's convert("RGB") does it.
//
// Why keep the native mode at all: LLaMA-Factory resizes an over-large image
// (image_max_pixels) *before* it converts to RGB, and Pillow resizes RGBA and
// LA premultiplied, palette images by nearest neighbour, and 16-bit grey as
// 32-bit integers. Matching its bytes means resizing in the same mode first.
//
// Formats: JPEG (baseline, progressive, grey, RGB, CMYK/YCCK) via libjpeg-turbo,
// PNG (every colour type, 1-16 bits, interlaced) via libpng, WebP via libwebp.
#ifndef VLFT_IMAGE_H
#define VLFT_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "../base/error.h"

typedef enum {
    IMAGE_MODE_L,     // 8-bit grey, 1 byte per pixel
    IMAGE_MODE_LA,    // grey + alpha, 2 bytes
    IMAGE_MODE_RGB,   // 3 bytes
    IMAGE_MODE_RGBA,  // 4 bytes, straight (not premultiplied) alpha
    IMAGE_MODE_CMYK,  // 4 bytes, ink amounts (0 = no ink) as Pillow holds them
    IMAGE_MODE_P,     // 1 byte palette index + palette (256 RGB entries)
    IMAGE_MODE_1,     // bilevel, held as 0 / 255 bytes; resized by nearest neighbour
    IMAGE_MODE_I,     // 32-bit signed integer grey (16-bit PNG grey lands here)
} ImageMode;

typedef struct {
    ImageMode mode;
    int width, height;
    int channels;            // bytes per pixel for the 8-bit modes, 1 for MODE_I
    uint8_t *pixels;         // row-major, width * channels bytes per row (NULL for MODE_I)
    int32_t *pixels_i32;     // MODE_I only: width * height values
    uint8_t palette[256 * 3];  // MODE_P only
} Image;

// Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS): it refuses an
// image above twice this many pixels; so does vlft.
#define IMAGE_MAX_PIXELS_PILLOW 89478485LL

// Decodes a JPEG, PNG or WebP file (format detected from its first bytes) into its
// native mode. Errors name the file: missing, truncated, corrupt, zero or
// absurd size, unknown format.
int image_decode_file(const char *path, Image *out, Error *err);
// Same from memory; `name` is what error messages call the data.
int image_decode_memory(const uint8_t *data, size_t size, const char *name, Image *out, Error *err);

// Decodes a file and converts it to 8-bit RGB (out->mode == IMAGE_MODE_RGB).
// For training inputs prefer image_decode_file + clip_preprocess (or
// clip_preprocess_file): LLaMA-Factory bounds the size *before* converting,
// and for RGBA, LA, P and 16-bit grey images above image_max_pixels the
// order changes the bytes.
int image_load_rgb(const char *path, Image *out, Error *err);

// Pillow's convert("RGB"): alpha dropped (not composited), grey replicated,
// palette looked up, CMYK as 255-k - c*(255-k)/255, MODE_I clamped to 0..255.
// `out` receives a new RGB image; `in` is unchanged.
int image_convert_rgb(const Image *in, Image *out, Error *err);

// Allocates a zeroed image of the given mode and size.
int image_alloc(Image *out, ImageMode mode, int width, int height, Error *err);
void image_free(Image *image);

const char *image_mode_name(ImageMode mode);
int image_mode_channels(ImageMode mode);

#endif
