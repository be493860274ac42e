// clip_preprocess.c - mm_plugin bounds + CLIPImageProcessor (see the header).
#include "clip_preprocess.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "../base/fs.h"
#include "resample.h"

void clip_config_defaults(ClipConfig *config) {
    static const double mean[3] = {0.48145466, 0.4578275, 0.40821073};
    static const double std[3] = {0.26862954, 0.26130258, 0.27577711};
    memset(config, 0, sizeof *config);
    config->do_resize = 1;
    config->shortest_edge = 224;
    config->do_center_crop = 1;
    config->crop_height = config->crop_width = 224;
    config->do_rescale = 1;
    config->rescale_factor = 1.0 / 255.0;
    config->do_normalize = 1;
    memcpy(config->image_mean, mean, sizeof mean);
    memcpy(config->image_std, std, sizeof std);
}

void image_bounds_defaults(ImageBounds *bounds) {
    bounds->max_pixels = 768 * 768;
    bounds->min_pixels = 32 * 32;
}

static int read_bool(const cJSON *root, const char *key, int *out, const char *path, Error *err) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, key);
    if (item == NULL || cJSON_IsNull(item)) return 0;
    if (!cJSON_IsBool(item)) return error_set(err, "%s: '%s' must be true or false", path, key);
    *out = cJSON_IsTrue(item);
    return 0;
}

static int read_size_value(const cJSON *item, const char *path, const char *key, int *out, Error *err) {
    double v = item ? item->valuedouble : 0;
    if (item == NULL || !cJSON_IsNumber(item) || v != floor(v) || v < 1 || v > 65536)
        return error_set(err, "%s: '%s' must be a size from 1 to 65536", path, key);
    *out = (int)v;
    return 0;
}

// transformers' get_size_dict: an int means shortest edge for `size` and a
// square for `crop_size`; dicts give shortest_edge or height + width.
static int read_size(const cJSON *root, const char *key, int int_means_square, int *shortest, int *height, int *width,
                     const char *path, Error *err) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, key);
    if (item == NULL || cJSON_IsNull(item)) return 0;
    if (cJSON_IsNumber(item)) {
        int v;
        if (read_size_value(item, path, key, &v, err) != 0) return -1;
        if (int_means_square) *height = *width = v, *shortest = 0;
        else *shortest = v, *height = *width = 0;
        return 0;
    }
    if (!cJSON_IsObject(item)) return error_set(err, "%s: '%s' must be a number or an object", path, key);
    const cJSON *edge = cJSON_GetObjectItemCaseSensitive(item, "shortest_edge");
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(item, "height");
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(item, "width");
    if (edge != NULL && !int_means_square) {
        if (read_size_value(edge, path, "shortest_edge", shortest, err) != 0) return -1;
        *height = *width = 0;
        return 0;
    }
    if (h != NULL && w != NULL) {
        if (read_size_value(h, path, "height", height, err) != 0 || read_size_value(w, path, "width", width, err) != 0)
            return -1;
        *shortest = 0;
        return 0;
    }
    return error_set(err, "%s: '%s' needs %s", path, key,
                     int_means_square ? "height and width" : "shortest_edge or height and width");
}

static int read_triple(const cJSON *root, const char *key, double out[3], const char *path, Error *err) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, key);
    if (item == NULL || cJSON_IsNull(item)) return 0;
    if (cJSON_IsNumber(item)) {
        out[0] = out[1] = out[2] = item->valuedouble;
        return 0;
    }
    if (!cJSON_IsArray(item) || cJSON_GetArraySize(item) != 3)
        return error_set(err, "%s: '%s' must be a list of 3 numbers", path, key);
    for (int i = 0; i < 3; i++) {
        const cJSON *v = cJSON_GetArrayItem(item, i);
        if (!cJSON_IsNumber(v)) return error_set(err, "%s: '%s' must be a list of 3 numbers", path, key);
        out[i] = v->valuedouble;
    }
    return 0;
}

static int parse_config(const cJSON *root, ClipConfig *config, const char *path, Error *err) {
    if (!cJSON_IsObject(root)) return error_set(err, "%s: not a JSON object", path);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(root, "image_processor_type");
    if (type != NULL && (!cJSON_IsString(type) || (strcmp(type->valuestring, "CLIPImageProcessor") != 0 &&
                                                   strcmp(type->valuestring, "CLIPImageProcessorFast") != 0)))
        return error_set(err, "%s: image_processor_type %s is not supported (only CLIPImageProcessor)", path,
                         cJSON_IsString(type) ? type->valuestring : "(not a string)");
    const cJSON *resample = cJSON_GetObjectItemCaseSensitive(root, "resample");
    if (resample != NULL && !(cJSON_IsNumber(resample) && resample->valuedouble == 3))
        return error_set(err, "%s: only resample 3 (BICUBIC) is supported", path);
    if (read_bool(root, "do_resize", &config->do_resize, path, err) != 0) return -1;
    if (read_bool(root, "do_center_crop", &config->do_center_crop, path, err) != 0) return -1;
    if (read_bool(root, "do_rescale", &config->do_rescale, path, err) != 0) return -1;
    if (read_bool(root, "do_normalize", &config->do_normalize, path, err) != 0) return -1;
    if (read_size(root, "size", 0, &config->shortest_edge, &config->resize_height, &config->resize_width, path, err))
        return -1;
    int unused = 0;
    if (read_size(root, "crop_size", 1, &unused, &config->crop_height, &config->crop_width, path, err)) return -1;
    const cJSON *factor = cJSON_GetObjectItemCaseSensitive(root, "rescale_factor");
    if (factor != NULL && !cJSON_IsNull(factor)) {
        if (!cJSON_IsNumber(factor)) return error_set(err, "%s: 'rescale_factor' must be a number", path);
        config->rescale_factor = factor->valuedouble;
    }
    if (read_triple(root, "image_mean", config->image_mean, path, err)) return -1;
    if (read_triple(root, "image_std", config->image_std, path, err)) return -1;
    for (int c = 0; c < 3; c++)
        if (config->do_normalize && config->image_std[c] == 0)
            return error_set(err, "%s: image_std has a zero entry", path);
    const cJSON *aspect = cJSON_GetObjectItemCaseSensitive(root, "image_aspect_ratio");
    if (cJSON_IsString(aspect) && strcmp(aspect->valuestring, "pad") == 0) config->pad_to_square = 1;
    return 0;
}

int clip_config_load(const char *path, ClipConfig *config, Error *err) {
    clip_config_defaults(config);
    char file[4096];
    if (dir_exists(path)) {
        if (path_join(file, sizeof file, path, "preprocessor_config.json", err) != 0) return -1;
    } else {
        snprintf(file, sizeof file, "%s", path);
    }
    char *text = NULL;
    size_t size = 0;
    if (read_file(file, 1 << 20, &text, &size, err) != 0) return -1;
    cJSON *root = cJSON_ParseWithLength(text, size);
    free(text);
    if (root == NULL) return error_set(err, "%s: not valid JSON", file);
    int rc = parse_config(root, config, file, err);
    cJSON_Delete(root);
    return rc;
}

// mm_plugin: the factor is sqrt(limit / (w*h)) in double, sizes truncated.
static int bounded_size(int width, int height, long long limit, int *new_w, int *new_h, Error *err) {
    double factor = sqrt((double)limit / ((double)width * (double)height));
    double w = width * factor, h = height * factor;
    if (w < 1.0 || h < 1.0 || w > 1e6 || h > 1e6)
        return error_set(err, "image %dx%d cannot be bounded to %lld pixels (a side would be %d x %d)", width, height,
                         limit, (int)fmin(w, 2e9), (int)fmin(h, 2e9));
    *new_w = (int)w;
    *new_h = (int)h;
    return 0;
}

int image_apply_bounds(const Image *image, const ImageBounds *bounds, Image *out, Error *err) {
    Image current = *image;  // borrowed until a resize makes one of our own
    int owned = 0;
    for (int pass = 0; pass < 2; pass++) {
        long long pixels = (long long)current.width * current.height;
        int too_big = pass == 0 && bounds->max_pixels > 0 && pixels > bounds->max_pixels;
        int too_small = pass == 1 && pixels < bounds->min_pixels;
        if (!too_big && !too_small) continue;
        int w = 0, h = 0;
        if (bounded_size(current.width, current.height, too_big ? bounds->max_pixels : bounds->min_pixels, &w, &h,
                         err) != 0)
            goto fail;
        Image resized;
        if (image_resize(&current, w, h, &resized, err) != 0) goto fail;
        if (owned) image_free(&current);
        current = resized;
        owned = 1;
    }
    if (current.mode == IMAGE_MODE_RGB) {
        if (owned) *out = current;
        else {
            if (image_alloc(out, IMAGE_MODE_RGB, current.width, current.height, err) != 0) return -1;
            memcpy(out->pixels, current.pixels, (size_t)current.width * current.height * 3);
        }
        return 0;
    }
    int rc = image_convert_rgb(&current, out, err);
    if (owned) image_free(&current);
    return rc;
fail:
    if (owned) image_free(&current);
    return -1;
}

// LLaVA's expand2square: the image centred on a square of int(mean * 255).
static int pad_to_square(Image *image, const double mean[3], Error *err) {
    if (image->width == image->height) return 0;
    int side = image->width > image->height ? image->width : image->height;
    Image square;
    if (image_alloc(&square, IMAGE_MODE_RGB, side, side, err) != 0) return -1;
    uint8_t colour[3];
    for (int c = 0; c < 3; c++) colour[c] = (uint8_t)(int)(mean[c] * 255);
    for (size_t i = 0; i < (size_t)side * side; i++) memcpy(square.pixels + 3 * i, colour, 3);
    int x0 = (side - image->width) / 2, y0 = (side - image->height) / 2;
    for (int y = 0; y < image->height; y++)
        memcpy(square.pixels + ((size_t)(y0 + y) * side + x0) * 3, image->pixels + (size_t)y * image->width * 3,
               (size_t)image->width * 3);
    image_free(image);
    *image = square;
    return 0;
}

// transformers' get_resize_output_image_size (default_to_square False).
static void resized_size(const ClipConfig *config, int width, int height, int *out_w, int *out_h) {
    if (!config->do_resize) {
        *out_w = width, *out_h = height;
    } else if (config->shortest_edge > 0) {
        int shorter = width <= height ? width : height, longer = width <= height ? height : width;
        int new_long = (int)((double)config->shortest_edge * longer / shorter);
        if (width <= height) *out_w = config->shortest_edge, *out_h = new_long;
        else *out_w = new_long, *out_h = config->shortest_edge;
    } else {
        *out_w = config->resize_width, *out_h = config->resize_height;
    }
}

void clip_output_size(const ClipConfig *config, int width, int height, int *out_h, int *out_w) {
    if (config->pad_to_square) width = height = width > height ? width : height;
    resized_size(config, width, height, out_w, out_h);
    if (config->do_center_crop) *out_w = config->crop_width, *out_h = config->crop_height;
}

static int floor_div2(int v) { return v >= 0 ? v / 2 : -((-v + 1) / 2); }

void clip_tensor_free(ClipTensor *tensor) {
    free(tensor->data);
    tensor->data = NULL;
}

// Where steps 3-4 take an image of width x height: the resized size, the
// output size, the crop offsets in resized coordinates (negative where
// transformers pads), and the part of the resized image the crop keeps.
typedef struct {
    int resized_w, resized_h, out_w, out_h, left, top;
    ResampleWindow window;
} CropGeometry;

static CropGeometry crop_geometry(const ClipConfig *config, int width, int height) {
    CropGeometry g;
    resized_size(config, width, height, &g.resized_w, &g.resized_h);
    g.out_w = config->do_center_crop ? config->crop_width : g.resized_w;
    g.out_h = config->do_center_crop ? config->crop_height : g.resized_h;
    g.left = config->do_center_crop ? floor_div2(g.resized_w - g.out_w) : 0;
    g.top = config->do_center_crop ? floor_div2(g.resized_h - g.out_h) : 0;
    g.window.x = g.left > 0 ? g.left : 0;
    g.window.y = g.top > 0 ? g.top : 0;
    g.window.width = (g.left + g.out_w < g.resized_w ? g.left + g.out_w : g.resized_w) - g.window.x;
    g.window.height = (g.top + g.out_h < g.resized_h ? g.top + g.out_h : g.resized_h) - g.window.y;
    return g;
}

// The common training case, an RGB image (JPEG) above image_max_pixels:
// step 1's resize only computes the pixels step 3 will read for the kept
// window, which is exact because every output pixel is computed on its own.
// Returns 1 with *rgb filled (pixels outside that region left zero), 0 when
// the case does not apply, -1 on error.
static int bounded_region_only(const ClipConfig *config, const ImageBounds *bounds, const Image *image, Image *rgb,
                               Error *err) {
    long long pixels = (long long)image->width * image->height;
    if (image->mode != IMAGE_MODE_RGB || config->pad_to_square || bounds->max_pixels <= 0 ||
        pixels <= bounds->max_pixels)
        return 0;
    int w = 0, h = 0;
    if (bounded_size(image->width, image->height, bounds->max_pixels, &w, &h, err) != 0) return -1;
    if ((long long)w * h < bounds->min_pixels) return 0;  // a second resize follows: take the general path
    CropGeometry g = crop_geometry(config, w, h);
    ResampleWindow region;
    int x_end, y_end;
    resample_source_span(w, g.resized_w, g.window.x, g.window.width, &region.x, &x_end);
    resample_source_span(h, g.resized_h, g.window.y, g.window.height, &region.y, &y_end);
    region.width = x_end - region.x;
    region.height = y_end - region.y;
    if (region.width <= 0 || region.height <= 0) return 0;
    if (image_alloc(rgb, IMAGE_MODE_RGB, w, h, err) != 0) return -1;
    uint8_t *part = malloc((size_t)region.width * region.height * 3);
    if (part == NULL) {
        image_free(rgb);
        return error_set(err, "out of memory bounding a %dx%d image", image->width, image->height);
    }
    if (resample_bicubic_u8(image->pixels, image->width, image->height, 3, w, h, &region, part, err) != 0) {
        free(part);
        image_free(rgb);
        return -1;
    }
    for (int y = 0; y < region.height; y++)
        memcpy(rgb->pixels + ((size_t)(region.y + y) * w + region.x) * 3, part + (size_t)y * region.width * 3,
               (size_t)region.width * 3);
    free(part);
    return 1;
}

int clip_preprocess(const ClipConfig *config, const ImageBounds *bounds, const Image *image, ClipTensor *out,
                    ClipStages *stages, Error *err) {
    memset(out, 0, sizeof *out);
    Image rgb;
    // With stages asked for, the whole bounded image is wanted: general path.
    int handled = stages == NULL ? bounded_region_only(config, bounds, image, &rgb, err) : 0;
    if (handled < 0) return -1;
    if (!handled && image_apply_bounds(image, bounds, &rgb, err) != 0) return -1;
    if (config->pad_to_square && pad_to_square(&rgb, config->image_mean, err) != 0) {
        image_free(&rgb);
        return -1;
    }
    CropGeometry geometry = crop_geometry(config, rgb.width, rgb.height);
    int resized_w = geometry.resized_w, resized_h = geometry.resized_h;
    int out_w = geometry.out_w, out_h = geometry.out_h, left = geometry.left, top = geometry.top;
    ResampleWindow window = geometry.window;
    uint8_t *kept = malloc((size_t)window.width * window.height * 3);
    out->data = malloc(sizeof(float) * 3 * (size_t)out_w * out_h);
    int rc = 0;
    if (kept == NULL || out->data == NULL) {
        rc = error_set(err, "out of memory preprocessing a %dx%d image", rgb.width, rgb.height);
        goto done;
    }
    if (stages && stages->bounded) {
        if (image_alloc(stages->bounded, IMAGE_MODE_RGB, rgb.width, rgb.height, err) != 0) goto fail;
        memcpy(stages->bounded->pixels, rgb.pixels, (size_t)rgb.width * rgb.height * 3);
    }
    if (stages && stages->resized) {
        if (image_alloc(stages->resized, IMAGE_MODE_RGB, resized_w, resized_h, err) != 0) goto fail;
        if (resample_bicubic_u8(rgb.pixels, rgb.width, rgb.height, 3, resized_w, resized_h, NULL,
                                stages->resized->pixels, err) != 0)
            goto fail;
    }
    if (resample_bicubic_u8(rgb.pixels, rgb.width, rgb.height, 3, resized_w, resized_h, &window, kept, err) != 0)
        goto fail;
    // uint8 -> float per channel is a 256-entry table: the same float32
    // operations numpy does (double rescale, float32 subtract and divide).
    float table[3][256];
    for (int c = 0; c < 3; c++) {
        float mean = (float)config->image_mean[c], std = (float)config->image_std[c];
        for (int v = 0; v < 256; v++) {
            float x = config->do_rescale ? (float)((double)v * config->rescale_factor) : (float)v;
            if (config->do_normalize) {
                float centred = x - mean;
                x = centred / std;
            }
            table[c][v] = x;
        }
    }
    out->height = out_h;
    out->width = out_w;
    size_t plane = (size_t)out_w * out_h;
    // Padding (where the crop is larger than the image) is pixel value 0.
    for (int c = 0; c < 3; c++)
        for (size_t i = 0; i < plane; i++) out->data[c * plane + i] = table[c][0];
    // The computed window lands at (window.x - left, window.y - top).
    int dst_x = window.x - left, dst_y = window.y - top;
    for (int y = 0; y < window.height; y++) {
        const uint8_t *src = kept + (size_t)y * window.width * 3;
        size_t row = (size_t)(dst_y + y) * out_w + (size_t)dst_x;
        float *r = out->data + row, *g = out->data + plane + row, *b = out->data + 2 * plane + row;
        for (int x = 0; x < window.width; x++) {
            r[x] = table[0][src[3 * x]];
            g[x] = table[1][src[3 * x + 1]];
            b[x] = table[2][src[3 * x + 2]];
        }
    }
    goto done;
fail:
    rc = -1;
    if (stages && stages->bounded) image_free(stages->bounded);
    if (stages && stages->resized) image_free(stages->resized);
done:
    free(kept);
    image_free(&rgb);
    if (rc != 0) clip_tensor_free(out);
    return rc;
}

int clip_preprocess_file(const ClipConfig *config, const ImageBounds *bounds, const char *path, ClipTensor *out,
                         Error *err) {
    Image image;
    if (image_decode_file(path, &image, err) != 0) return -1;
    int rc = clip_preprocess(config, bounds, &image, out, NULL, err);
    image_free(&image);
    if (rc != 0) return error_prefix(err, "%s", path);
    return 0;
}
