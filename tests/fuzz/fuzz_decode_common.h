// fuzz_decode_common.h - shared body of the JPEG and PNG fuzz targets: decode
// the bytes; when that succeeds, push the image through convert("RGB") and
// the whole CLIP pipeline with tight bounds so the native-mode resizers run.
#ifndef VLFT_FUZZ_DECODE_COMMON_H
#define VLFT_FUZZ_DECODE_COMMON_H

#include <stdint.h>
#include <string.h>

#include "../../src/vision/clip_preprocess.h"
#include "../../src/vision/image.h"
#include "../../src/vision/image_decode.h"

static void fuzz_after_decode(const Image *image, int ok, const Error *err) {
    if (!ok) {
        // A failure must come with a message naming the input.
        if (strstr(err->message, "fuzz-input") == NULL) __builtin_trap();
        return;
    }
    if ((long long)image->width * image->height > 4000000) return;  // keep each run fast
    Error e;
    Image rgb;
    if (image_convert_rgb(image, &rgb, &e) == 0) image_free(&rgb);
    ClipConfig config;
    clip_config_defaults(&config);
    config.shortest_edge = 24;
    config.crop_height = 20;
    config.crop_width = 28;
    ImageBounds bounds = {.max_pixels = 3000, .min_pixels = 200};
    ClipTensor tensor;
    if (clip_preprocess(&config, &bounds, image, &tensor, NULL, &e) == 0) clip_tensor_free(&tensor);
}

#endif
