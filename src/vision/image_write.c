// image_write.c - JPEG and PNG encoders over libjpeg-turbo and libpng.
#include "image_write.h"

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jpeglib.h>
#include <png.h>

#include "../base/fs.h"

typedef struct {
    struct jpeg_error_mgr base;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
} JpegWriteError;

static void jpeg_write_error_exit(j_common_ptr cinfo) {
    JpegWriteError *state = (JpegWriteError *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, state->message);
    longjmp(state->jump, 1);
}

int image_encode_jpeg(const Image *image, int quality, uint8_t **out, size_t *size, Error *err) {
    *out = NULL;
    *size = 0;
    if (image->mode != IMAGE_MODE_RGB && image->mode != IMAGE_MODE_L)
        return error_set(err, "JPEG encoder takes RGB or L images, not %s", image_mode_name(image->mode));
    struct jpeg_compress_struct cinfo;
    JpegWriteError state;
    cinfo.err = jpeg_std_error(&state.base);
    state.base.error_exit = jpeg_write_error_exit;
    // libjpeg grows this buffer; its address escapes, so it stays in memory
    // and is current when an error jumps back here.
    unsigned char *dest = NULL;
    unsigned long buffer_size = 0;
    if (setjmp(state.jump)) {
        jpeg_destroy_compress(&cinfo);
        free(dest);
        return error_set(err, "JPEG encoding failed: %s", state.message);
    }
    jpeg_create_compress(&cinfo);
    jpeg_mem_dest(&cinfo, &dest, &buffer_size);
    cinfo.image_width = (JDIMENSION)image->width;
    cinfo.image_height = (JDIMENSION)image->height;
    cinfo.input_components = image->channels;
    cinfo.in_color_space = image->mode == IMAGE_MODE_RGB ? JCS_RGB : JCS_GRAYSCALE;
    jpeg_set_defaults(&cinfo);
    jpeg_set_quality(&cinfo, quality, TRUE);
    jpeg_start_compress(&cinfo, TRUE);
    size_t stride = (size_t)image->width * image->channels;
    while (cinfo.next_scanline < cinfo.image_height) {
        JSAMPROW row = image->pixels + (size_t)cinfo.next_scanline * stride;
        jpeg_write_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_compress(&cinfo);
    jpeg_destroy_compress(&cinfo);
    *out = dest;
    *size = buffer_size;
    return 0;
}

typedef struct {
    uint8_t *data;
    size_t size, capacity;
    int failed;
} GrowBuffer;

static void png_write_to_buffer(png_structp png, png_bytep data, size_t length) {
    GrowBuffer *buffer = png_get_io_ptr(png);
    if (buffer->size + length > buffer->capacity) {
        size_t capacity = buffer->capacity ? buffer->capacity : 4096;
        while (capacity < buffer->size + length) capacity *= 2;
        uint8_t *grown = realloc(buffer->data, capacity);
        if (grown == NULL) png_error(png, "out of memory");
        buffer->data = grown;
        buffer->capacity = capacity;
    }
    memcpy(buffer->data + buffer->size, data, length);
    buffer->size += length;
}

static void png_flush_nothing(png_structp png) { (void)png; }

static void png_write_error(png_structp png, png_const_charp message) {
    (void)message;
    png_longjmp(png, 1);
}

static void png_write_warning(png_structp png, png_const_charp message) { (void)png, (void)message; }

int image_encode_png(const Image *image, uint8_t **out, size_t *size, Error *err) {
    *out = NULL;
    *size = 0;
    int colour_type;
    switch (image->mode) {
    case IMAGE_MODE_L: colour_type = PNG_COLOR_TYPE_GRAY; break;
    case IMAGE_MODE_LA: colour_type = PNG_COLOR_TYPE_GRAY_ALPHA; break;
    case IMAGE_MODE_RGB: colour_type = PNG_COLOR_TYPE_RGB; break;
    case IMAGE_MODE_RGBA: colour_type = PNG_COLOR_TYPE_RGB_ALPHA; break;
    default: return error_set(err, "PNG encoder takes L, LA, RGB or RGBA images, not %s", image_mode_name(image->mode));
    }
    GrowBuffer buffer = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, png_write_error, png_write_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    png_bytep *volatile rows = NULL;
    if (png == NULL || info == NULL) {
        png_destroy_write_struct(&png, &info);
        return error_set(err, "out of memory starting the PNG encoder");
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(buffer.data);
        free(rows);
        return error_set(err, "PNG encoding failed");
    }
    png_set_write_fn(png, &buffer, png_write_to_buffer, png_flush_nothing);
    png_set_IHDR(png, info, (png_uint_32)image->width, (png_uint_32)image->height, 8, colour_type, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    rows = malloc(sizeof(png_bytep) * (size_t)image->height);
    if (rows == NULL) png_error(png, "out of memory");
    for (int y = 0; y < image->height; y++) rows[y] = image->pixels + (size_t)y * image->width * image->channels;
    png_set_rows(png, info, rows);
    png_write_png(png, info, PNG_TRANSFORM_IDENTITY, NULL);
    png_destroy_write_struct(&png, &info);
    free(rows);
    *out = buffer.data;
    *size = buffer.size;
    return 0;
}

int image_write_file(const char *path, const Image *image, Error *err) {
    const char *dot = strrchr(path, '.');
    uint8_t *data = NULL;
    size_t size = 0;
    int rc;
    if (dot && (strcasecmp(dot, ".jpg") == 0 || strcasecmp(dot, ".jpeg") == 0))
        rc = image_encode_jpeg(image, 90, &data, &size, err);
    else if (dot && strcasecmp(dot, ".png") == 0)
        rc = image_encode_png(image, &data, &size, err);
    else
        return error_set(err, "%s: unknown image extension (use .jpg or .png)", path);
    if (rc != 0) return error_prefix(err, "%s", path);
    rc = write_file_atomic(path, data, size, err);
    free(data);
    return rc;
}
