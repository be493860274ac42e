// jpeg_decode.c - JPEG -> Image with libjpeg-turbo, the way Pillow decodes.
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>

#include "image_decode.h"

typedef struct {
    struct jpeg_error_mgr base;  // first, so libjpeg's pointer is ours too
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
    int truncated;  // libjpeg saw the data end early and padded it with an EOI
} JpegErrorState;

static void on_error_exit(j_common_ptr cinfo) {
    JpegErrorState *state = (JpegErrorState *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, state->message);
    longjmp(state->jump, 1);
}

// Warnings are ignored, as Pillow ignores them, except the one that says the
// file ended early: Pillow reports such a file as truncated.
static void on_emit_message(j_common_ptr cinfo, int level) {
    JpegErrorState *state = (JpegErrorState *)cinfo->err;
    if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) state->truncated = 1;
}

static void on_output_message(j_common_ptr cinfo) { (void)cinfo; }

int jpeg_decode(const uint8_t *data, size_t size, const char *name, Image *out, Error *err) {
    memset(out, 0, sizeof *out);
    struct jpeg_decompress_struct cinfo;
    JpegErrorState state;
    memset(&state, 0, sizeof state);
    cinfo.err = jpeg_std_error(&state.base);
    state.base.error_exit = on_error_exit;
    state.base.emit_message = on_emit_message;
    state.base.output_message = on_output_message;
    // Written before setjmp and read after a longjmp, so volatile.
    Image *volatile result = out;
    if (setjmp(state.jump)) {
        jpeg_destroy_decompress(&cinfo);
        image_free(result);
        return error_set(err, "%s: corrupt JPEG: %s", name, state.message);
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, (unsigned long)size);
    jpeg_read_header(&cinfo, TRUE);
    ImageMode mode;
    switch (cinfo.jpeg_color_space) {
    case JCS_GRAYSCALE:
        cinfo.out_color_space = JCS_GRAYSCALE;
        mode = IMAGE_MODE_L;
        break;
    case JCS_CMYK:
    case JCS_YCCK:
        cinfo.out_color_space = JCS_CMYK;
        mode = IMAGE_MODE_CMYK;
        break;
    default:
        cinfo.out_color_space = JCS_RGB;
        mode = IMAGE_MODE_RGB;
        break;
    }
    long long pixels = (long long)cinfo.image_width * cinfo.image_height;
    if (cinfo.image_width == 0 || cinfo.image_height == 0 || pixels > 2 * IMAGE_MAX_PIXELS_PILLOW ||
        cinfo.image_width > 65500 || cinfo.image_height > 65500) {
        jpeg_destroy_decompress(&cinfo);
        return error_set(err, "%s: JPEG size %ux%u is zero or beyond the decompression-bomb limit of %lld pixels",
                         name, cinfo.image_width, cinfo.image_height, 2 * IMAGE_MAX_PIXELS_PILLOW);
    }
    jpeg_start_decompress(&cinfo);
    Error alloc_err;
    if (image_alloc(out, mode, (int)cinfo.output_width, (int)cinfo.output_height, &alloc_err) != 0 ||
        cinfo.output_components != out->channels) {
        jpeg_destroy_decompress(&cinfo);
        image_free(out);
        return error_set(err, "%s: cannot hold the decoded JPEG (%s)", name, alloc_err.message);
    }
    size_t stride = (size_t)out->width * (size_t)out->channels;
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = out->pixels + (size_t)cinfo.output_scanline * stride;
        jpeg_read_scanlines(&cinfo, &row, 1);
        if (state.truncated) break;
    }
    int truncated = state.truncated;
    if (!truncated) jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    if (truncated || state.truncated) {
        image_free(out);
        return error_set(err, "%s: JPEG file is truncated", name);
    }
    if (mode == IMAGE_MODE_CMYK) {
        // Adobe writes CMYK inverted; Pillow always assumes that polarity.
        size_t n = stride * (size_t)out->height;
        for (size_t i = 0; i < n; i++) out->pixels[i] = (uint8_t)(255 - out->pixels[i]);
    }
    return 0;
}
