// bench_image.c - times decode + preprocess of one image file, single thread:
// LLaMA-Factory bounds + CLIPImageProcessor as vlft does it for training.
// Usage: bench_image MODEL_DIR|preprocessor_config.json IMAGE ITERATIONS
// Prints "vlft_ms_per_image <ms>". Run by bench/image_preprocess.sh.
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "../src/vision/clip_preprocess.h"

static double now_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: bench_image CONFIG IMAGE ITERATIONS\n");
        return 2;
    }
    Error err;
    ClipConfig config;
    if (clip_config_load(argv[1], &config, &err) != 0) {
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    ImageBounds bounds;
    image_bounds_defaults(&bounds);
    int iterations = atoi(argv[3]);
    double checksum = 0, best = 1e30;
    for (int i = 0; i < iterations; i++) {
        double start = now_seconds();
        ClipTensor tensor;
        if (clip_preprocess_file(&config, &bounds, argv[2], &tensor, &err) != 0) {
            fprintf(stderr, "%s\n", err.message);
            return 1;
        }
        double elapsed = now_seconds() - start;
        if (elapsed < best) best = elapsed;
        checksum += tensor.data[(size_t)tensor.height * tensor.width];
        clip_tensor_free(&tensor);
    }
    printf("vlft_ms_per_image %.3f (best of %d, %dx%d, checksum %.4f)\n", best * 1e3, iterations, config.crop_width,
           config.crop_height, checksum / iterations);
    return 0;
}
