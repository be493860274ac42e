// resample.c - Pillow-exact BICUBIC and NEAREST resizing (see resample.h).
//
// Every expression that decides a coefficient is evaluated in the same order
// and precision as Pillow's Resample.c, because one ulp of difference in a
// weight can flip a rounding and change a byte.
#include "resample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

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

// Pillow's scale and filter support for in_size -> out_size; box edges are
// floats there, and for sizes below 2^24 that conversion is exact.
static void filter_geometry(int in_size, int out_size, double *scale, double *filter_scale, double *support) {
    *scale = (double)((float)in_size - 0.0f) / out_size;
    *filter_scale = *scale < 1.0 ? 1.0 : *scale;
    *support = BICUBIC_SUPPORT * *filter_scale;
}

// The source indices [*first, *first + *count) output xx reads.
static void tap_range(int in_size, double scale, double support, int xx, double *center, int *first, int *count) {
    *center = 0.0 + (xx + 0.5) * scale;
    int xmin = (int)(*center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = (int)(*center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    *first = xmin;
    *count = xmax - xmin < 0 ? 0 : xmax - xmin;
}

void resample_source_span(int in_size, int out_size, int out_first, int out_count, int *first, int *end) {
    if (in_size == out_size) {  // no pass in this direction: the window itself
        *first = out_first;
        *end = out_first + out_count;
        return;
    }
    double scale, filter_scale, support, center;
    filter_geometry(in_size, out_size, &scale, &filter_scale, &support);
    *first = in_size;
    *end = 0;
    for (int xx = out_first; xx < out_first + out_count; xx++) {
        int x0, n;
        tap_range(in_size, scale, support, xx, &center, &x0, &n);
        if (x0 < *first) *first = x0;
        if (x0 + n > *end) *end = x0 + n;
    }
}

static int coefficients_compute(int in_size, int out_size, Coefficients *c, Error *err) {
    memset(c, 0, sizeof *c);
    double scale, filter_scale, support;
    filter_geometry(in_size, out_size, &scale, &filter_scale, &support);
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
        double center, inv_filter_scale = 1.0 / filter_scale;
        int xmin, xmax;  // first source index and the number of them
        tap_range(in_size, scale, support, xx, &center, &xmin, &xmax);
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
        c->count[xx] = xmax;
    }
    return 0;
}

static inline uint8_t clamp_fixed_to_u8(int32_t sum) {
    int32_t v = sum >> FIXED_POINT_BITS;  // arithmetic shift = floor, as Pillow's lookup
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

// The one kernel both passes use: out[i] = clamp((bias + sum_j line_j[i] *
// k[j]) >> 22) for i < width, where line_j = base + (first + j) * stride.
// Integer sums are exact, so summing tap by tap over whole lines gives
// Pillow's per-pixel result bit for bit, in any order.
static void weighted_lines_scalar(const uint8_t *base, size_t stride, int first, int count, const int32_t *k,
                                  size_t begin, size_t width, uint8_t *out) {
    for (size_t i = begin; i < width; i++) {
        int32_t sum = 1 << (FIXED_POINT_BITS - 1);
        for (int j = 0; j < count; j++) sum += base[(size_t)(first + j) * stride + i] * k[j];
        out[i] = clamp_fixed_to_u8(sum);
    }
}

#ifdef __SSE2__
// SSE2 version. Each 22-bit weight is split as
// w = hi * 2048 + lo (0 <= lo < 2048) so both halves fit in int16 and
// _mm_madd_epi16 can multiply pixel pairs from two taps and add them into
// int32 lanes; hi * 2048 + lo recombines the exact integer sum.
static void weighted_lines(const uint8_t *base, size_t stride, int first, int count, const int32_t *k, size_t width,
                           uint8_t *out) {
    enum { MAX_TAP_PAIRS = 512 };
    if (count > 2 * MAX_TAP_PAIRS) {
        weighted_lines_scalar(base, stride, first, count, k, 0, width, out);
        return;
    }
    __m128i weights_hi[MAX_TAP_PAIRS], weights_lo[MAX_TAP_PAIRS];
    const uint8_t *lines[2 * MAX_TAP_PAIRS];
    int pairs = (count + 1) / 2;
    for (int j = 0; j < 2 * pairs; j++) {
        // An odd last tap pairs with a zero-weight copy of itself.
        lines[j] = base + (size_t)(first + (j < count ? j : count - 1)) * stride;
    }
    for (int p = 0; p < pairs; p++) {
        int32_t w0 = k[2 * p], w1 = 2 * p + 1 < count ? k[2 * p + 1] : 0;
        int16_t hi0 = (int16_t)(w0 >> 11), hi1 = (int16_t)(w1 >> 11);
        int16_t lo0 = (int16_t)(w0 - hi0 * 2048), lo1 = (int16_t)(w1 - hi1 * 2048);
        weights_hi[p] = _mm_set_epi16(hi1, hi0, hi1, hi0, hi1, hi0, hi1, hi0);
        weights_lo[p] = _mm_set_epi16(lo1, lo0, lo1, lo0, lo1, lo0, lo1, lo0);
    }
    const __m128i zero = _mm_setzero_si128();
    const __m128i bias = _mm_set1_epi32(1 << (FIXED_POINT_BITS - 1));
    size_t i = 0;
    // Eight outputs per step keeps the accumulators in registers.
    for (; i + 8 <= width; i += 8) {
        __m128i hi_first = zero, hi_second = zero, lo_first = zero, lo_second = zero;
        for (int p = 0; p < pairs; p++) {
            __m128i a = _mm_loadl_epi64((const __m128i *)(lines[2 * p] + i));
            __m128i b = _mm_loadl_epi64((const __m128i *)(lines[2 * p + 1] + i));
            __m128i ab = _mm_unpacklo_epi8(a, b);  // a0 b0 a1 b1 ... a7 b7
            __m128i first_four = _mm_unpacklo_epi8(ab, zero), second_four = _mm_unpackhi_epi8(ab, zero);
            hi_first = _mm_add_epi32(hi_first, _mm_madd_epi16(first_four, weights_hi[p]));
            lo_first = _mm_add_epi32(lo_first, _mm_madd_epi16(first_four, weights_lo[p]));
            hi_second = _mm_add_epi32(hi_second, _mm_madd_epi16(second_four, weights_hi[p]));
            lo_second = _mm_add_epi32(lo_second, _mm_madd_epi16(second_four, weights_lo[p]));
        }
        __m128i v0 = _mm_add_epi32(_mm_add_epi32(_mm_slli_epi32(hi_first, 11), lo_first), bias);
        __m128i v1 = _mm_add_epi32(_mm_add_epi32(_mm_slli_epi32(hi_second, 11), lo_second), bias);
        v0 = _mm_srai_epi32(v0, FIXED_POINT_BITS);
        v1 = _mm_srai_epi32(v1, FIXED_POINT_BITS);
        // Saturating packs clamp to 0..255 exactly as clamp_fixed_to_u8.
        __m128i packed = _mm_packus_epi16(_mm_packs_epi32(v0, v1), zero);
        _mm_storel_epi64((__m128i *)(out + i), packed);
    }
    weighted_lines_scalar(base, stride, first, count, k, i, width, out);
}
#else
static void weighted_lines(const uint8_t *base, size_t stride, int first, int count, const int32_t *k, size_t width,
                           uint8_t *out) {
    weighted_lines_scalar(base, stride, first, count, k, 0, width, out);
}
#endif

// Pixel transpose: dst[x][y] = src[y][x] for a rows x cols block of
// `channels`-byte pixels; src rows are src_stride bytes apart, dst rows
// (one per source column) dst_stride bytes apart. Tiled for the cache.
static void transpose_pixels(const uint8_t *src, size_t src_stride, int rows, int cols, int channels, uint8_t *dst,
                             size_t dst_stride) {
    enum { TILE = 32 };
    for (int y0 = 0; y0 < rows; y0 += TILE)
        for (int x0 = 0; x0 < cols; x0 += TILE) {
            int y1 = y0 + TILE < rows ? y0 + TILE : rows, x1 = x0 + TILE < cols ? x0 + TILE : cols;
            for (int x = x0; x < x1; x++) {
                uint8_t *d = dst + (size_t)x * dst_stride;
                const uint8_t *s = src + (size_t)x * channels;
                if (channels == 3) {
                    for (int y = y0; y < y1; y++) {
                        d[3 * y] = s[(size_t)y * src_stride];
                        d[3 * y + 1] = s[(size_t)y * src_stride + 1];
                        d[3 * y + 2] = s[(size_t)y * src_stride + 2];
                    }
                } else {
                    for (int y = y0; y < y1; y++)
                        for (int ch = 0; ch < channels; ch++)
                            d[(size_t)y * channels + ch] = s[(size_t)y * src_stride + ch];
                }
            }
        }
}

// Horizontal pass over rows [row0, row0 + rows) of `in`, output columns
// [col0, col0 + cols): out is rows x cols x channels. Done as a vertical
// pass on the transposed image, so the SIMD kernel above does the work.
static int horizontal_pass(const uint8_t *in, int in_w, int channels, int row0, int rows, int col0, int cols,
                           const Coefficients *c, uint8_t *out) {
    int src_first = c->first[col0], src_last = src_first;
    for (int x = col0; x < col0 + cols; x++) {
        if (c->first[x] < src_first) src_first = c->first[x];
        if (c->first[x] + c->count[x] > src_last) src_last = c->first[x] + c->count[x];
    }
    int src_cols = src_last - src_first;
    // Rows go through in strips, so the transposed strip stays in cache and
    // the scratch buffers stay small (no fresh pages per image).
    enum { STRIP_ROWS = 64 };
    size_t line = (size_t)STRIP_ROWS * channels;  // one transposed column of a strip
    uint8_t *columns = malloc(line * (size_t)(src_cols > 0 ? src_cols : 1));
    uint8_t *result = malloc(line * (size_t)cols);
    if (columns == NULL || result == NULL) {
        free(columns);
        free(result);
        return -1;
    }
    size_t in_stride = (size_t)in_w * channels, out_stride = (size_t)cols * channels;
    for (int strip = 0; strip < rows; strip += STRIP_ROWS) {
        int strip_rows = rows - strip < STRIP_ROWS ? rows - strip : STRIP_ROWS;
        size_t strip_line = (size_t)strip_rows * channels;
        transpose_pixels(in + (size_t)(row0 + strip) * in_stride + (size_t)src_first * channels, in_stride, strip_rows,
                         src_cols, channels, columns, strip_line);
        for (int x = 0; x < cols; x++) {
            int xx = col0 + x;
            weighted_lines(columns, strip_line, c->first[xx] - src_first, c->count[xx],
                           c->fixed + (size_t)xx * c->ksize, strip_line, result + (size_t)x * strip_line);
        }
        transpose_pixels(result, strip_line, cols, strip_rows, channels, out + (size_t)strip * out_stride, out_stride);
    }
    free(columns);
    free(result);
    return 0;
}

// Vertical pass: `in` holds rows starting at source row `row_base`, `width`
// bytes wide; output rows [row0, row0 + rows).
static void vertical_pass(const uint8_t *in, size_t width, int row_base, int row0, int rows, const Coefficients *c,
                          uint8_t *out) {
    for (int y = 0; y < rows; y++) {
        int yy = row0 + y;
        weighted_lines(in, width, c->first[yy] - row_base, c->count[yy], c->fixed + (size_t)yy * c->ksize, width,
                       out + (size_t)y * width);
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
    int rc = 0;
    if (middle == NULL) {
        rc = error_set(err, "out of memory resampling %dx%d -> %dx%d", in_w, in_h, out_w, out_h);
    } else {
        if (need_horizontal) {
            if (horizontal_pass(in, in_w, channels, row_first, rows, window->x, window->width, &horiz, middle) != 0)
                rc = error_set(err, "out of memory resampling %dx%d -> %dx%d", in_w, in_h, out_w, out_h);
        } else {
            for (int y = 0; y < rows; y++)
                memcpy(middle + (size_t)y * width, in + ((size_t)(row_first + y) * in_w + window->x) * channels, width);
        }
        if (rc == 0 && need_vertical)
            vertical_pass(middle, width, row_first, window->y, window->height, &vert, out);
        else if (rc == 0) memcpy(out, middle, width * (size_t)window->height);
    }
    free(middle);
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
