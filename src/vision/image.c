// image.c - Image allocation, format sniffing, and Pillow's convert("RGB").
#include "image.h"

#include <stdlib.h>
#include <string.h>

#include "../base/fs.h"
#include "image_decode.h"

// Encoded files larger than this are refused before reading: a 1 GiB image
// file is far beyond any training picture.
#define IMAGE_MAX_FILE_BYTES (1024ULL * 1024 * 1024)

const char *image_mode_name(ImageMode mode) {
    switch (mode) {
    case IMAGE_MODE_L: return "L";
    case IMAGE_MODE_LA: return "LA";
    case IMAGE_MODE_RGB: return "RGB";
    case IMAGE_MODE_RGBA: return "RGBA";
    case IMAGE_MODE_CMYK: return "CMYK";
    case IMAGE_MODE_P: return "P";
    case IMAGE_MODE_1: return "1";
    case IMAGE_MODE_I: return "I";
    }
    return "?";
}

int image_mode_channels(ImageMode mode) {
    switch (mode) {
    case IMAGE_MODE_LA: return 2;
    case IMAGE_MODE_RGB: return 3;
    case IMAGE_MODE_RGBA:
    case IMAGE_MODE_CMYK: return 4;
    default: return 1;
    }
}

int image_alloc(Image *out, ImageMode mode, int width, int height, Error *err) {
    memset(out, 0, sizeof *out);
    if (width <= 0 || height <= 0) return error_set(err, "image size %dx%d is empty", width, height);
    if ((long long)width * height > 2 * IMAGE_MAX_PIXELS_PILLOW)
        return error_set(err, "image size %dx%d (%lld pixels) exceeds the limit of %lld pixels", width, height,
                         (long long)width * height, 2 * IMAGE_MAX_PIXELS_PILLOW);
    out->mode = mode;
    out->width = width;
    out->height = height;
    out->channels = image_mode_channels(mode);
    size_t count = (size_t)width * (size_t)height;
    if (mode == IMAGE_MODE_I) out->pixels_i32 = calloc(count, sizeof(int32_t));
    else out->pixels = calloc(count, (size_t)out->channels);
    if (out->pixels == NULL && out->pixels_i32 == NULL)
        return error_set(err, "out of memory for a %dx%d image", width, height);
    // Pillow starts a palette as a grey ramp; PLTE entries overwrite the front.
    for (int i = 0; i < 256; i++) out->palette[3 * i] = out->palette[3 * i + 1] = out->palette[3 * i + 2] = (uint8_t)i;
    return 0;
}

void image_free(Image *image) {
    if (image == NULL) return;
    free(image->pixels);
    free(image->pixels_i32);
    image->pixels = NULL;
    image->pixels_i32 = NULL;
}

int image_decode_memory(const uint8_t *data, size_t size, const char *name, Image *out, Error *err) {
    memset(out, 0, sizeof *out);
    static const uint8_t png_magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (size >= 8 && memcmp(data, png_magic, 8) == 0) return png_decode(data, size, name, out, err);
    if (size >= 3 && data[0] == 0xff && data[1] == 0xd8 && data[2] == 0xff) return jpeg_decode(data, size, name, out, err);
    if (size >= 12 && memcmp(data, "RIFF", 4) == 0 && memcmp(data + 8, "WEBP", 4) == 0)
        return webp_decode(data, size, name, out, err);
    if (size == 0) return error_set(err, "%s: empty file, not an image", name);
    return error_set(err, "%s: unsupported image format (JPEG, PNG and WebP are read)", name);
}

int image_decode_file(const char *path, Image *out, Error *err) {
    memset(out, 0, sizeof *out);
    char *data = NULL;
    size_t size = 0;
    if (read_file(path, IMAGE_MAX_FILE_BYTES, &data, &size, err) != 0) return -1;
    int rc = image_decode_memory((const uint8_t *)data, size, path, out, err);
    free(data);
    return rc;
}

int image_load_rgb(const char *path, Image *out, Error *err) {
    Image native;
    if (image_decode_file(path, &native, err) != 0) return -1;
    if (native.mode == IMAGE_MODE_RGB) {
        *out = native;
        return 0;
    }
    int rc = image_convert_rgb(&native, out, err);
    image_free(&native);
    if (rc != 0) return error_prefix(err, "%s", path);
    return 0;
}

// (a * b) / 255 rounded the way Pillow's MULDIV255 does it.
static inline int muldiv255(int a, int b) {
    int t = a * b + 128;
    return ((t >> 8) + t) >> 8;
}

int image_convert_rgb(const Image *in, Image *out, Error *err) {
    if (image_alloc(out, IMAGE_MODE_RGB, in->width, in->height, err) != 0) return -1;
    size_t count = (size_t)in->width * (size_t)in->height;
    uint8_t *dst = out->pixels;
    const uint8_t *src = in->pixels;
    for (size_t i = 0; i < count; i++, dst += 3) {
        switch (in->mode) {
        case IMAGE_MODE_L:
        case IMAGE_MODE_1: dst[0] = dst[1] = dst[2] = src[i]; break;
        case IMAGE_MODE_LA: dst[0] = dst[1] = dst[2] = src[2 * i]; break;
        case IMAGE_MODE_RGB: memcpy(dst, src + 3 * i, 3); break;
        case IMAGE_MODE_RGBA: memcpy(dst, src + 4 * i, 3); break;
        case IMAGE_MODE_P: memcpy(dst, in->palette + 3 * src[i], 3); break;
        case IMAGE_MODE_CMYK: {
            int not_black = 255 - src[4 * i + 3];
            for (int c = 0; c < 3; c++) dst[c] = (uint8_t)(not_black - muldiv255(src[4 * i + c], not_black));
            break;
        }
        case IMAGE_MODE_I: {
            int32_t v = in->pixels_i32[i];
            dst[0] = dst[1] = dst[2] = (uint8_t)(v <= 0 ? 0 : v >= 255 ? 255 : v);
            break;
        }
        }
    }
    return 0;
}
