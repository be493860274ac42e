// png_decode.c - PNG -> Image with libpng, in the modes Pillow opens PNGs in.
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <png.h>

#include "image_decode.h"

typedef struct {
    const uint8_t *data;
    size_t size, offset;
    char message[256];
} PngReadState;

static void on_read(png_structp png, png_bytep dst, size_t length) {
    PngReadState *state = png_get_io_ptr(png);
    if (length > state->size - state->offset) {
        snprintf(state->message, sizeof state->message, "file is truncated");
        png_longjmp(png, 1);
    }
    memcpy(dst, state->data + state->offset, length);
    state->offset += length;
}

static void on_error(png_structp png, png_const_charp message) {
    PngReadState *state = png_get_error_ptr(png);
    snprintf(state->message, sizeof state->message, "%s", message);
    png_longjmp(png, 1);
}

static void on_warning(png_structp png, png_const_charp message) { (void)png, (void)message; }

int png_decode(const uint8_t *data, size_t size, const char *name, Image *out, Error *err) {
    memset(out, 0, sizeof *out);
    PngReadState state = {data, size, 0, {0}};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &state, on_error, on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (png == NULL || info == NULL) {
        png_destroy_read_struct(&png, &info, NULL);
        return error_set(err, "%s: out of memory starting the PNG decoder", name);
    }
    // Written after setjmp and freed by its error path, so volatile.
    png_bytep *volatile rows = NULL;
    uint8_t *volatile scratch = NULL;
    Image *volatile result = out;
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        free(rows);
        free(scratch);
        image_free(result);
        return error_set(err, "%s: corrupt PNG: %s", name, state.message);
    }
    png_set_read_fn(png, &state, on_read);
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
    // Under a fuzzer, let mutated chunks past their CRCs so the decoder
    // behind them is exercised (the usual libFuzzer convention).
    png_set_crc_action(png, PNG_CRC_QUIET_USE, PNG_CRC_QUIET_USE);
#endif
    // Sizes are checked below against Pillow's limit; let libpng read any.
    png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
    png_read_info(png, info);
    png_uint_32 width = 0, height = 0;
    int bit_depth = 0, color_type = 0, interlace = 0;
    png_get_IHDR(png, info, &width, &height, &bit_depth, &color_type, &interlace, NULL, NULL);
    long long pixels = (long long)width * height;
    if (width == 0 || height == 0 || pixels > 2 * IMAGE_MAX_PIXELS_PILLOW || width > 0x7fffffff / 8) {
        png_destroy_read_struct(&png, &info, NULL);
        return error_set(err, "%s: PNG size %ux%u is zero or beyond the decompression-bomb limit of %lld pixels",
                         name, (unsigned)width, (unsigned)height, 2 * IMAGE_MAX_PIXELS_PILLOW);
    }
    ImageMode mode;
    int sixteen_bit_grey = 0;
    switch (color_type) {
    case PNG_COLOR_TYPE_GRAY:
        if (bit_depth == 16) {
            mode = IMAGE_MODE_I;
            sixteen_bit_grey = 1;
        } else {
            mode = bit_depth == 1 ? IMAGE_MODE_1 : IMAGE_MODE_L;
            png_set_expand_gray_1_2_4_to_8(png);  // scales to 0..255 as Pillow's L;2 / L;4 / 1 do
        }
        break;
    case PNG_COLOR_TYPE_RGB: mode = IMAGE_MODE_RGB; break;
    case PNG_COLOR_TYPE_PALETTE:
        mode = IMAGE_MODE_P;
        png_set_packing(png);
        break;
    case PNG_COLOR_TYPE_GRAY_ALPHA:
        if (bit_depth == 16) {
            mode = IMAGE_MODE_RGBA;  // Pillow's PNG plugin opens LA;16B as RGBA
            png_set_gray_to_rgb(png);
        } else mode = IMAGE_MODE_LA;
        break;
    case PNG_COLOR_TYPE_RGB_ALPHA: mode = IMAGE_MODE_RGBA; break;
    default:
        png_destroy_read_struct(&png, &info, NULL);
        return error_set(err, "%s: unsupported PNG colour type %d", name, color_type);
    }
    // Pillow keeps the high byte of 16-bit samples (except 16-bit grey).
    if (bit_depth == 16 && !sixteen_bit_grey) png_set_strip_16(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    Error alloc_err;
    if (image_alloc(out, mode, (int)width, (int)height, &alloc_err) != 0) {
        png_destroy_read_struct(&png, &info, NULL);
        return error_set(err, "%s: %s", name, alloc_err.message);
    }
    size_t rowbytes = png_get_rowbytes(png, info);
    size_t expected = (size_t)width * (sixteen_bit_grey ? 2 : (size_t)out->channels);
    if (rowbytes != expected) {
        png_destroy_read_struct(&png, &info, NULL);
        image_free(out);
        return error_set(err, "%s: PNG row size %zu, expected %zu", name, rowbytes, expected);
    }
    // 16-bit grey is read into a scratch buffer of big-endian pairs first.
    uint8_t *target = out->pixels;
    if (sixteen_bit_grey) {
        scratch = malloc(rowbytes * height);
        target = scratch;
    }
    rows = malloc(sizeof(png_bytep) * height);
    if (target == NULL || rows == NULL) {
        png_destroy_read_struct(&png, &info, NULL);
        free(scratch);
        free(rows);
        image_free(out);
        return error_set(err, "%s: out of memory decoding a %ux%u PNG", name, (unsigned)width, (unsigned)height);
    }
    for (png_uint_32 y = 0; y < height; y++) rows[y] = target + (size_t)y * rowbytes;
    if (mode == IMAGE_MODE_P) {
        png_colorp palette = NULL;
        int count = 0;
        if (png_get_PLTE(png, info, &palette, &count) & PNG_INFO_PLTE)
            for (int i = 0; i < count && i < 256; i++) {
                out->palette[3 * i] = palette[i].red;
                out->palette[3 * i + 1] = palette[i].green;
                out->palette[3 * i + 2] = palette[i].blue;
            }
    }
    png_read_image(png, rows);
    if (sixteen_bit_grey)
        for (size_t i = 0; i < (size_t)width * height; i++)
            out->pixels_i32[i] = (int32_t)((scratch[2 * i] << 8) | scratch[2 * i + 1]);
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);
    free(scratch);
    return 0;
}
