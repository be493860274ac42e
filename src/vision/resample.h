// resample.h - Pillow-exact image resizing (Image.resize in Pillow 9/10/11).
//
// BICUBIC is Pillow's two-pass separable convolution: horizontal pass first
// into an 8-bit intermediate, then vertical; filter a = -0.5 with support 2
// widened by the scale factor when downscaling (antialiasing); coefficients
// normalised per output pixel, then turned into 22-bit fixed point and
// accumulated in int32 with a half-unit bias, clamped to 0..255. Mode I uses
// the same coefficients in double precision and rounds half away from zero.
// NEAREST follows Pillow's affine scaling path (accumulated source position).
#ifndef VLFT_RESAMPLE_H
#define VLFT_RESAMPLE_H

#include <stdint.h>

#include "../base/error.h"
#include "image.h"

// A window of the output to compute: resizing then cropping equals computing
// only the cropped pixels, which is cheaper (see clip_preprocess.c).
typedef struct {
    int x, y, width, height;
} ResampleWindow;

// 8-bit interleaved pixels (1..4 channels), BICUBIC. `in` is in_w x in_h;
// the full output would be out_w x out_h; only `window` (inside the output)
// is computed and written to `out` (window->width x window->height, same
// channel count). Returns 0, or -1 on allocation failure.
int resample_bicubic_u8(const uint8_t *in, int in_w, int in_h, int channels, int out_w, int out_h,
                        const ResampleWindow *window, uint8_t *out, Error *err);

// The span [*first, *end) of source indices that outputs [out_first,
// out_first + out_count) of an in_size -> out_size BICUBIC pass read (the
// window itself when the sizes are equal, since then no pass runs).
void resample_source_span(int in_size, int out_size, int out_first, int out_count, int *first, int *end);

// 32-bit integer grey (Pillow mode I), BICUBIC, whole output.
int resample_bicubic_i32(const int32_t *in, int in_w, int in_h, int out_w, int out_h, int32_t *out, Error *err);

// Nearest neighbour over any bytes-per-pixel, whole output.
void resample_nearest(const uint8_t *in, int in_w, int in_h, int bytes_per_pixel, int out_w, int out_h,
                      uint8_t *out);

// Pillow's Image.resize(size) with its default filter, mode by mode: 1 and P
// by nearest neighbour, LA and RGBA premultiplied by alpha around the
// resize, the rest BICUBIC. `out` receives a new image of the same mode.
int image_resize(const Image *in, int out_w, int out_h, Image *out, Error *err);

#endif
