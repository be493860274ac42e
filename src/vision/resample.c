// resample.c - Pillow-exact BICUBIC and NEAREST resizing (see resample.h).
//
// Every expression that decides a coefficient is evaluated in the same order
// and precision as Pillow's Resample.c, because one ulp of difference in a
// weight can flip a rounding and change a byte.
#include "resample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define FIXED_POINT_BITS 22  // Pillow's PRECISION_BITS = 32 - 8 - 2
#define BICUBIC_SUPPORT 2.0

// Keys' cubic with a = -0.5, as Pillow's bicubic_filter.
static double bicubic_weight(double x) {
    if (x < 0.0) x = -x;
    if (x < 1.0) return (1.5 * x - 2.5) * x * x + 1.0;
    if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * -0.5;
    return 0.0;
}

// Per output index: the first source index, how many sources, and their
// weights (double, normalised to sum 1) in a row of `ksize` slots.
typedef struct {
    int ksize;
    int *first;      // [out_size]
    int *count;      // [out_size]
    double *weight;  // [out_size * ksize]
    int32_t *fixed;  // [out_size * ksize], weight in 22-bit fixed point
} Coefficients;

static void coefficients_free(Coefficients *c) {
    free(c->first);
    free(c->count);
    free(c->weight);
    free(c->fixed);
}

static int coefficients_compute(int in_size, int out_size, Coefficients *c, Error *err) {
    memset(c, 0, sizeof *c);
    // Pillow's box edges are floats; for sizes below 2^24 the conversion is exact.
    double scale = (double)((float)in_size - 0.0f) / out_size;
    double filter_scale = scale < 1.0 ? 1.0 : scale;
    double support = BICUBIC_SUPPORT * filter_scale;
    c->ksize = (int)ceil(support) * 2 + 1;
    c->first = malloc(sizeof(int) * (size_t)out_size);
    c->count = malloc(sizeof(int) * (size_t)out_size);
    c->weight = calloc((size_t)out_size * (size_t)c->ksize, sizeof(double));
    c->fixed = calloc((size_t)out_size * (size_t)c->ksize, sizeof(int32_t));
    if (!c->first || !c->count || !c->weight || !c->fixed) {
        coefficients_free(c);
        return error_set(err, "out of memory for resampling coefficients (%d -> %d)", in_size, out_size);
    }
    for (int xx = 0; xx < out_size; xx++) {
        double center = 0.0 + (xx + 0.5) * scale;
        double inv_filter_scale = 1.0 / filter_scale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double *k = c->weight + (size_t)xx * c->ksize;
        double total = 0.0;
        for (int x = 0; x < xmax; x++) {
            double w = bicubic_weight((x + xmin - center + 0.5) * inv_filter_scale);
            k[x] = w;
            total += w;
        }
        for (int x = 0; x < xmax; x++)
            if (total != 0.0) k[x] /= total;
        int32_t *f = c->fixed + (size_t)xx * c->ksize;
        for (int x = 0; x < c->ksize; x++) {
            double scaled = k[x] * (1 << FIXED_POINT_BITS);
            f[x] = k[x] < 0 ? (int32_t)(-0.5 + scaled) : (int32_t)(0.5 + scaled);
        }
        c->first[xx] = xmin;
        c->count[xx] = xmax < 0 ? 0 : xmax;
    }
    return 0;
}

static inline uint8_t clamp_fixed_to_u8(int32_t sum) {
    int32_t v = sum >> FIXED_POINT_BITS;  // arithmetic shift = floor, as Pillow's lookup
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

// Horizontal pass over rows [row0, row0 + rows) of `in`, output columns
// [col0, col0 + cols): out is rows x cols x channels.
static inline void horizontal_pass(const uint8_t *in, int in_w, int channels, int row0, int rows, int col0, int cols,
                                   const Coefficients *c, uint8_t *out) {
    size_t in_stride = (size_t)in_w * channels;
    for (int y = 0; y < rows; y++) {
        const uint8_t *src = in + (size_t)(row0 + y) * in_stride;
        uint8_t *dst = out + (size_t)y * cols * channels;
        for (int x = 0; x < cols; x++) {
            int xx = col0 + x;
            const int32_t *k = c->fixed + (size_t)xx * c->ksize;
            const uint8_t *p = src + (size_t)c->first[xx] * channels;
            int n = c->count[xx];
            if (channels == 3) {
                int32_t s0 = 1 << (FIXED_POINT_BITS - 1), s1 = s0, s2 = s0;
                for (int i = 0; i < n; i++) {
                    s0 += p[3 * i] * k[i];
                    s1 += p[3 * i + 1] * k[i];
                    s2 += p[3 * i + 2] * k[i];
                }
                dst[3 * x] = clamp_fixed_to_u8(s0);
                dst[3 * x + 1] = clamp_fixed_to_u8(s1);
                dst[3 * x + 2] = clamp_fixed_to_u8(s2);
            } else {
                for (int ch = 0; ch < channels; ch++) {
                    int32_t s = 1 << (FIXED_POINT_BITS - 1);
                    for (int i = 0; i < n; i++) s += p[channels * i + ch] * k[i];
                    dst[channels * x + ch] = clamp_fixed_to_u8(s);
                }
            }
        }
    }
}

// Vertical pass: `in` holds rows starting at source row `row_base`, `width`
// bytes wide; output rows [row0, row0 + rows). Sums a whole row at a time
// (integer sums are exact, so the order does not matter).
static void vertical_pass(const uint8_t *in, size_t width, int row_base, int row0, int rows, const Coefficients *c,
                          int32_t *acc, uint8_t *out) {
    for (int y = 0; y < rows; y++) {
        int yy = row0 + y;
        const int32_t *k = c->fixed + (size_t)yy * c->ksize;
        for (size_t i = 0; i < width; i++) acc[i] = 1 << (FIXED_POINT_BITS - 1);
        for (int j = 0; j < c->count[yy]; j++) {
            const uint8_t *src = in + (size_t)(c->first[yy] + j - row_base) * width;
            int32_t w = k[j];
            for (size_t i = 0; i < width; i++) acc[i] += src[i] * w;
        }
        uint8_t *dst = out + (size_t)y * width;
        for (size_t i = 0; i < width; i++) dst[i] = clamp_fixed_to_u8(acc[i]);
    }
}

int resample_bicubic_u8(const uint8_t *in, int in_w, int in_h, int channels, int out_w, int out_h,
                        const ResampleWindow *window, uint8_t *out, Error *err) {
    ResampleWindow full = {0, 0, out_w, out_h};
    if (window == NULL) window = &full;
    if (window->x < 0 || window->y < 0 || window->width <= 0 || window->height <= 0 ||
        window->x + window->width > out_w || window->y + window->height > out_h)
        return error_set(err, "resample window %dx%d+%d+%d outside the %dx%d output", window->width, window->height,
                         window->x, window->y, out_w, out_h);
    int need_horizontal = out_w != in_w, need_vertical = out_h != in_h;
    Coefficients horiz = {0}, vert = {0};
    if (need_horizontal && coefficients_compute(in_w, out_w, &horiz, err) != 0) return -1;
    if (need_vertical && coefficients_compute(in_h, out_h, &vert, err) != 0) {
        coefficients_free(&horiz);
        return -1;
    }
    // Source rows the vertical pass reads for the window's output rows.
    int row_first = window->y, row_last = window->y + window->height;
    if (need_vertical) {
        row_first = vert.first[window->y];
        row_last = row_first;
        for (int y = window->y; y < window->y + window->height; y++) {
            int end = vert.first[y] + vert.count[y];
            if (end > row_last) row_last = end;
            if (vert.first[y] < row_first) row_first = vert.first[y];
        }
    }
    int rows = row_last - row_first;
    size_t width = (size_t)window->width * channels;
    uint8_t *middle = malloc(width * (size_t)(rows > 0 ? rows : 1));
    int32_t *acc = malloc(sizeof(int32_t) * width);
    int rc = 0;
    if (middle == NULL || acc == NULL) {
        rc = error_set(err, "out of memory resampling %dx%d -> %dx%d", in_w, in_h, out_w, out_h);
    } else {
        if (need_horizontal) {
            horizontal_pass(in, in_w, channels, row_first, rows, window->x, window->width, &horiz, middle);
        } else {
            for (int y = 0; y < rows; y++)
                memcpy(middle + (size_t)y * width, in + ((size_t)(row_first + y) * in_w + window->x) * channels, width);
        }
        if (need_vertical) vertical_pass(middle, width, row_first, window->y, window->height, &vert, acc, out);
        else memcpy(out, middle, width * (size_t)window->height);
    }
    free(middle);
    free(acc);
    coefficients_free(&horiz);
    coefficients_free(&vert);
    return rc;
}

// Pillow's ROUND_UP for the 32-bit passes: half away from zero.
static inline int32_t round_half_away(double v) { return (int32_t)(v >= 0.0 ? floor(v + 0.5) : -floor(fabs(v) + 0.5)); }

int resample_bicubic_i32(const int32_t *in, int in_w, int in_h, int out_w, int out_h, int32_t *out, Error *err) {
    int need_horizontal = out_w != in_w, need_vertical = out_h != in_h;
    Coefficients horiz = {0}, vert = {0};
    if (need_horizontal && coefficients_compute(in_w, out_w, &horiz, err) != 0) return -1;
    if (need_vertical && coefficients_compute(in_h, out_h, &vert, err) != 0) {
        coefficients_free(&horiz);
        return -1;
    }
    int mid_w = need_horizontal ? out_w : in_w;
    int32_t *middle = malloc(sizeof(int32_t) * (size_t)mid_w * (size_t)in_h);
    if (middle == NULL) {
        coefficients_free(&horiz);
        coefficients_free(&vert);
        return error_set(err, "out of memory resampling %dx%d -> %dx%d", in_w, in_h, out_w, out_h);
    }
    if (need_horizontal) {
        for (int y = 0; y < in_h; y++)
            for (int x = 0; x < out_w; x++) {
                const double *k = horiz.weight + (size_t)x * horiz.ksize;
                const int32_t *p = in + (size_t)y * in_w + horiz.first[x];
                double s = 0.0;
                for (int i = 0; i < horiz.count[x]; i++) s += p[i] * k[i];
                middle[(size_t)y * out_w + x] = round_half_away(s);
            }
    } else {
        memcpy(middle, in, sizeof(int32_t) * (size_t)in_w * in_h);
    }
    if (need_vertical) {
        for (int y = 0; y < out_h; y++) {
            const double *k = vert.weight + (size_t)y * vert.ksize;
            for (int x = 0; x < mid_w; x++) {
                double s = 0.0;
                for (int j = 0; j < vert.count[y]; j++) s += middle[(size_t)(vert.first[y] + j) * mid_w + x] * k[j];
                out[(size_t)y * out_w + x] = round_half_away(s);
            }
        }
    } else {
        memcpy(out, middle, sizeof(int32_t) * (size_t)mid_w * out_h);
    }
    free(middle);
    coefficients_free(&horiz);
    coefficients_free(&vert);
    return 0;
}

// Pillow's ImagingScaleAffine: the source position starts at half a step and
// is accumulated step by step in double precision, then truncated.
static int nearest_index(double position, int size) {
    int i = position < 0.0 ? -1 : (int)position;
    if (i < 0) i = 0;
    if (i >= size) i = size - 1;
    return i;
}

void resample_nearest(const uint8_t *in, int in_w, int in_h, int bytes_per_pixel, int out_w, int out_h,
                      uint8_t *out) {
    double step_x = (double)((float)in_w - 0.0f) / out_w, step_y = (double)((float)in_h - 0.0f) / out_h;
    int *columns = malloc(sizeof(int) * (size_t)out_w);
    double xo = 0.0 + step_x * 0.5;
    for (int x = 0; x < out_w; x++) {
        if (columns) columns[x] = nearest_index(xo, in_w);
        xo += step_x;
    }
    double yo = 0.0 + step_y * 0.5;
    for (int y = 0; y < out_h; y++) {
        const uint8_t *src = in + (size_t)nearest_index(yo, in_h) * in_w * bytes_per_pixel;
        uint8_t *dst = out + (size_t)y * out_w * bytes_per_pixel;
        xo = 0.0 + step_x * 0.5;
        for (int x = 0; x < out_w; x++) {
            int sx = columns ? columns[x] : nearest_index(xo, in_w);
            xo += step_x;
            memcpy(dst + (size_t)x * bytes_per_pixel, src + (size_t)sx * bytes_per_pixel, (size_t)bytes_per_pixel);
        }
        yo += step_y;
    }
    free(columns);
}

static inline int muldiv255(int a, int b) {
    int t = a * b + 128;
    return ((t >> 8) + t) >> 8;
}

// Pillow's RGBA -> RGBa (and LA -> La): colour times alpha / 255.
static void premultiply(uint8_t *pixels, size_t count, int channels) {
    for (size_t i = 0; i < count; i++) {
        uint8_t *p = pixels + i * channels;
        int alpha = p[channels - 1];
        for (int c = 0; c < channels - 1; c++) p[c] = (uint8_t)muldiv255(p[c], alpha);
    }
}

// Pillow's RGBa -> RGBA: alpha 0 and 255 leave colour as is, else
// min(255, colour * 255 / alpha) with integer division.
static void unpremultiply(uint8_t *pixels, size_t count, int channels) {
    for (size_t i = 0; i < count; i++) {
        uint8_t *p = pixels + i * channels;
        int alpha = p[channels - 1];
        if (alpha == 0 || alpha == 255) continue;
        for (int c = 0; c < channels - 1; c++) {
            int v = 255 * p[c] / alpha;
            p[c] = (uint8_t)(v > 255 ? 255 : v);
        }
    }
}

int image_resize(const Image *in, int out_w, int out_h, Image *out, Error *err) {
    if (image_alloc(out, in->mode, out_w, out_h, err) != 0) return -1;
    memcpy(out->palette, in->palette, sizeof out->palette);
    size_t in_count = (size_t)in->width * in->height;
    if (out_w == in->width && out_h == in->height) {
        if (in->mode == IMAGE_MODE_I) memcpy(out->pixels_i32, in->pixels_i32, in_count * sizeof(int32_t));
        else memcpy(out->pixels, in->pixels, in_count * in->channels);
        return 0;
    }
    int rc = 0;
    switch (in->mode) {
    case IMAGE_MODE_1:
    case IMAGE_MODE_P:
        resample_nearest(in->pixels, in->width, in->height, in->channels, out_w, out_h, out->pixels);
        break;
    case IMAGE_MODE_I:
        rc = resample_bicubic_i32(in->pixels_i32, in->width, in->height, out_w, out_h, out->pixels_i32, err);
        break;
    case IMAGE_MODE_LA:
    case IMAGE_MODE_RGBA: {
        uint8_t *premultiplied = malloc(in_count * in->channels);
        if (premultiplied == NULL) {
            rc = error_set(err, "out of memory resizing a %dx%d image", in->width, in->height);
            break;
        }
        memcpy(premultiplied, in->pixels, in_count * in->channels);
        premultiply(premultiplied, in_count, in->channels);
        rc = resample_bicubic_u8(premultiplied, in->width, in->height, in->channels, out_w, out_h, NULL, out->pixels,
                                 err);
        free(premultiplied);
        if (rc == 0) unpremultiply(out->pixels, (size_t)out_w * out_h, in->channels);
        break;
    }
    default:
        rc = resample_bicubic_u8(in->pixels, in->width, in->height, in->channels, out_w, out_h, NULL, out->pixels, err);
        break;
    }
    if (rc != 0) image_free(out);
    return rc;
}
