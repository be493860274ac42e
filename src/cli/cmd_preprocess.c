// vlft preprocess: run the image pipeline on files and save every stage, to
// see (and test) exactly what the vision tower is given.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../io/safetensors.h"
#include "../vision/clip_preprocess.h"
#include "commands.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: vlft preprocess --config MODEL_DIR|preprocessor_config.json --out OUT.safetensors\n"
            "                       [--max-pixels N] [--min-pixels N] IMAGE...\n\n"
            "Decodes each image and runs LLaMA-Factory's size bounds (defaults 589824 / 1024 pixels) and\n"
            "CLIPImageProcessor on it. OUT holds, for image i: pixel_values.i (F32 3xHxW), bounded.i\n"
            "(U8 HxWx3, RGB after the bounds) and resized.i (U8, after the shortest-edge resize).\n");
}

static int parse_count(const char *text, long long *out) {
    char *end = NULL;
    long long v = strtoll(text, &end, 10);
    if (*text == '\0' || *end != '\0' || v < 0) return -1;
    *out = v;
    return 0;
}

int command_preprocess(int argc, char **argv) {
    const char *config_path = NULL, *out_path = NULL;
    ImageBounds bounds;
    image_bounds_defaults(&bounds);
    const char **images = calloc((size_t)argc, sizeof(char *));
    int n_images = 0;
    if (images == NULL) return EXIT_BAD_INPUT;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_value = i + 1 < argc;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            free(images);
            return EXIT_OK;
        } else if (strcmp(a, "--config") == 0 && has_value) config_path = argv[++i];
        else if (strcmp(a, "--out") == 0 && has_value) out_path = argv[++i];
        else if ((strcmp(a, "--max-pixels") == 0 || strcmp(a, "--min-pixels") == 0) && has_value) {
            long long v;
            if (parse_count(argv[++i], &v) != 0) {
                fprintf(stderr, "vlft preprocess: %s needs a pixel count, got '%s'\n", a, argv[i]);
                free(images);
                return EXIT_USAGE;
            }
            if (a[2] == 'm' && a[3] == 'a') bounds.max_pixels = v;
            else bounds.min_pixels = v;
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "vlft preprocess: unknown or incomplete option '%s'\n", a);
            free(images);
            return EXIT_USAGE;
        } else images[n_images++] = a;
    }
    if (config_path == NULL || out_path == NULL || n_images == 0) {
        usage(stderr);
        free(images);
        return EXIT_USAGE;
    }
    Error err;
    ClipConfig config;
    if (clip_config_load(config_path, &config, &err) != 0) {
        fprintf(stderr, "vlft preprocess: %s\n", err.message);
        free(images);
        return EXIT_BAD_INPUT;
    }
    ClipTensor *tensors = calloc((size_t)n_images, sizeof(ClipTensor));
    Image *bounded = calloc((size_t)n_images, sizeof(Image));
    Image *resized = calloc((size_t)n_images, sizeof(Image));
    TensorRef *refs = calloc((size_t)n_images * 3, sizeof(TensorRef));
    char (*names)[48] = calloc((size_t)n_images * 3, sizeof *names);
    int rc = EXIT_OK;
    if (!tensors || !bounded || !resized || !refs || !names) {
        fprintf(stderr, "vlft preprocess: out of memory\n");
        rc = EXIT_BAD_INPUT;
    }
    for (int i = 0; rc == EXIT_OK && i < n_images; i++) {
        Image image;
        if (image_decode_file(images[i], &image, &err) != 0) {
            fprintf(stderr, "vlft preprocess: %s\n", err.message);
            rc = EXIT_BAD_INPUT;
            break;
        }
        // The stages come from a run that keeps every intermediate; the
        // tensor saved is from the plain run training uses (which may skip
        // pixels the crop discards), and the two must agree exactly.
        ClipStages stages = {&bounded[i], &resized[i]};
        ClipTensor with_stages = {0};
        if (clip_preprocess(&config, &bounds, &image, &with_stages, &stages, &err) != 0 ||
            clip_preprocess(&config, &bounds, &image, &tensors[i], NULL, &err) != 0) {
            fprintf(stderr, "vlft preprocess: %s: %s\n", images[i], err.message);
            rc = EXIT_BAD_INPUT;
        } else if (memcmp(with_stages.data, tensors[i].data,
                          sizeof(float) * 3 * (size_t)tensors[i].height * tensors[i].width) != 0) {
            fprintf(stderr, "vlft preprocess: %s: internal error: the two preprocessing paths disagree\n", images[i]);
            rc = EXIT_BAD_INPUT;
        }
        clip_tensor_free(&with_stages);
        image_free(&image);
        if (rc != EXIT_OK) break;
        snprintf(names[3 * i], sizeof names[0], "pixel_values.%d", i);
        snprintf(names[3 * i + 1], sizeof names[0], "bounded.%d", i);
        snprintf(names[3 * i + 2], sizeof names[0], "resized.%d", i);
        refs[3 * i] = (TensorRef){.name = names[3 * i], .dtype = DTYPE_F32, .ndim = 3,
                                  .shape = {3, tensors[i].height, tensors[i].width}, .data = tensors[i].data};
        refs[3 * i + 1] = (TensorRef){.name = names[3 * i + 1], .dtype = DTYPE_U8, .ndim = 3,
                                      .shape = {bounded[i].height, bounded[i].width, 3}, .data = bounded[i].pixels};
        refs[3 * i + 2] = (TensorRef){.name = names[3 * i + 2], .dtype = DTYPE_U8, .ndim = 3,
                                      .shape = {resized[i].height, resized[i].width, 3}, .data = resized[i].pixels};
    }
    if (rc == EXIT_OK && safetensors_write(out_path, refs, n_images * 3, NULL, &err) != 0) {
        fprintf(stderr, "vlft preprocess: %s\n", err.message);
        rc = EXIT_BAD_INPUT;
    }
    for (int i = 0; tensors && bounded && resized && i < n_images; i++) {
        clip_tensor_free(&tensors[i]);
        image_free(&bounded[i]);
        image_free(&resized[i]);
    }
    free(tensors);
    free(bounded);
    free(resized);
    free(refs);
    free(names);
    free(images);
    return rc;
}
