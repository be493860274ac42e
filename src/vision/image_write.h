// image_write.h - encode 8-bit images as JPEG (libjpeg-turbo) or PNG (libpng),
// into memory or atomically into a file.
#ifndef VLFT_IMAGE_WRITE_H
#define VLFT_IMAGE_WRITE_H

#include <stddef.h>
#include <stdint.h>

#include "../base/error.h"
#include "image.h"

// RGB or L images; quality 1..100, 4:2:0 subsampling (libjpeg's default).
// *out is malloc'd.
int image_encode_jpeg(const Image *image, int quality, uint8_t **out, size_t *size, Error *err);
// L, LA, RGB or RGBA images, 8 bits per sample. *out is malloc'd.
int image_encode_png(const Image *image, uint8_t **out, size_t *size, Error *err);
// Picks the format from the extension (.jpg/.jpeg: quality 90, .png) and
// writes atomically.
int image_write_file(const char *path, const Image *image, Error *err);

#endif
