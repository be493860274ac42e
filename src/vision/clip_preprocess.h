// clip_preprocess.h - an image file's pixels as the vision tower sees them:
// LLaMA-Factory's mm_plugin size bounds, then transformers' CLIPImageProcessor.
//
// Order, each step Pillow/numpy-exact:
//  1. bounds (mm_plugin _preprocess_image): if w*h > max_pixels, Pillow-resize
//     (in the image's own mode) to int(w*f) x int(h*f), f = sqrt(max/(w*h));
//     then the same upward for w*h < min_pixels; then convert("RGB").
//  2. optional LLaVA pad-to-square (expand2square) with int(mean*255) colour,
//     when preprocessor_config.json says "image_aspect_ratio": "pad".
//  3. resize (do_resize): shortest edge to S, long edge int(S*long/short), or
//     to a fixed {"height","width"}; Pillow BICUBIC on uint8 RGB.
//  4. center crop (do_center_crop): offset floor((size - crop)/2), zeros where
//     the image is smaller than the crop (transformers pads, then crops).
//  5. rescale: float32(double(x) * rescale_factor); normalize: (x - mean) / std
//     in float32; output channels-first 3 x H x W.
#ifndef VLFT_CLIP_PREPROCESS_H
#define VLFT_CLIP_PREPROCESS_H

#include "../base/error.h"
#include "image.h"

typedef struct {
    int do_resize;
    int shortest_edge;                 // > 0: resize the short side to this
    int resize_height, resize_width;   // > 0 (and shortest_edge == 0): fixed size
    int do_center_crop;
    int crop_height, crop_width;
    int do_rescale;
    double rescale_factor;
    int do_normalize;
    double image_mean[3], image_std[3];
    int pad_to_square;                 // LLaVA "image_aspect_ratio": "pad"
} ClipConfig;

// LLaMA-Factory's recipe keys image_max_pixels / image_min_pixels.
typedef struct {
    long long max_pixels;  // default 768 * 768
    long long min_pixels;  // default 32 * 32
} ImageBounds;

// A preprocessed image: data holds 3 * height * width floats, channel-major.
typedef struct {
    int height, width;
    float *data;
} ClipTensor;

// Intermediate images, for tests and debugging (each optional).
typedef struct {
    Image *bounded;  // RGB after step 1 (and 2)
    Image *resized;  // RGB after step 3, the whole resized image
} ClipStages;

// CLIPImageProcessor's defaults (shortest edge 224, crop 224, OpenAI mean/std).
void clip_config_defaults(ClipConfig *config);
// Reads preprocessor_config.json; `path` is that file or the model folder
// holding it. Unknown keys are ignored; a resample other than 3 (BICUBIC) or
// an image_processor_type other than CLIPImageProcessor is an error.
int clip_config_load(const char *path, ClipConfig *config, Error *err);

void image_bounds_defaults(ImageBounds *bounds);

// The tensor size clip_preprocess gives for an image of this size after
// bounding (fixed when do_center_crop is on).
void clip_output_size(const ClipConfig *config, int width, int height, int *out_h, int *out_w);

// Runs steps 1-5 on a decoded image (any mode). out->data is malloc'd;
// free with clip_tensor_free. `stages` may be NULL.
int clip_preprocess(const ClipConfig *config, const ImageBounds *bounds, const Image *image, ClipTensor *out,
                    ClipStages *stages, Error *err);
// Decodes `path` and runs clip_preprocess; errors name the file.
int clip_preprocess_file(const ClipConfig *config, const ImageBounds *bounds, const char *path, ClipTensor *out,
                         Error *err);

// Step 1 alone: the mm_plugin bounds and convert("RGB"); `out` is RGB.
int image_apply_bounds(const Image *image, const ImageBounds *bounds, Image *out, Error *err);

void clip_tensor_free(ClipTensor *tensor);

#endif
