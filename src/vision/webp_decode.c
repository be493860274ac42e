// webp_decode.c - WebP -> Image with libwebp's animation decoder, which is
// what Pillow opens WebP files with: the first frame, RGBA output, mode RGBA
// when the bitstream has alpha and RGB otherwise.
#include <stdlib.h>
#include <string.h>

#include <webp/decode.h>
#include <webp/demux.h>

#include "image_decode.h"

int webp_decode(const uint8_t *data, size_t size, const char *name, Image *out, Error *err) {
    memset(out, 0, sizeof *out);
    WebPBitstreamFeatures features;
    if (WebPGetFeatures(data, size, &features) != VP8_STATUS_OK)
        return error_set(err, "%s: corrupt or truncated WebP header", name);
    WebPAnimDecoderOptions options;
    if (!WebPAnimDecoderOptionsInit(&options)) return error_set(err, "%s: libwebp version mismatch", name);
    options.color_mode = MODE_RGBA;
    options.use_threads = 0;
    WebPData webp = {data, size};
    WebPAnimDecoder *decoder = WebPAnimDecoderNew(&webp, &options);
    if (decoder == NULL) return error_set(err, "%s: corrupt or truncated WebP file", name);
    WebPAnimInfo info;
    if (!WebPAnimDecoderGetInfo(decoder, &info)) {
        WebPAnimDecoderDelete(decoder);
        return error_set(err, "%s: corrupt WebP file (no canvas information)", name);
    }
    long long pixels = (long long)info.canvas_width * info.canvas_height;
    if (info.canvas_width == 0 || info.canvas_height == 0 || pixels > 2 * IMAGE_MAX_PIXELS_PILLOW) {
        WebPAnimDecoderDelete(decoder);
        return error_set(err, "%s: WebP size %ux%u is zero or beyond the decompression-bomb limit of %lld pixels",
                         name, info.canvas_width, info.canvas_height, 2 * IMAGE_MAX_PIXELS_PILLOW);
    }
    uint8_t *rgba = NULL;
    int timestamp = 0;
    if (!WebPAnimDecoderGetNext(decoder, &rgba, &timestamp)) {
        WebPAnimDecoderDelete(decoder);
        return error_set(err, "%s: corrupt or truncated WebP image data", name);
    }
    ImageMode mode = features.has_alpha ? IMAGE_MODE_RGBA : IMAGE_MODE_RGB;
    Error alloc_err;
    if (image_alloc(out, mode, (int)info.canvas_width, (int)info.canvas_height, &alloc_err) != 0) {
        WebPAnimDecoderDelete(decoder);
        return error_set(err, "%s: %s", name, alloc_err.message);
    }
    size_t count = (size_t)info.canvas_width * info.canvas_height;
    if (mode == IMAGE_MODE_RGBA) memcpy(out->pixels, rgba, count * 4);
    else
        for (size_t i = 0; i < count; i++) memcpy(out->pixels + 3 * i, rgba + 4 * i, 3);
    WebPAnimDecoderDelete(decoder);  // owns the frame buffer
    return 0;
}
