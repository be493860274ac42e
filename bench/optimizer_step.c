// Times one optimizer update (clip_grad_norm + AdamW) of vlft over n fp32
// parameters split into tensors of 4M elements. Prints seconds per update.
// Built and run by bench/optimizer.sh next to PyTorch's AdamW.
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "../src/train/optimizer.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    size_t total = argc > 1 ? strtoull(argv[1], NULL, 10) : 50000000;
    int repeats = argc > 2 ? atoi(argv[2]) : 5;
    size_t chunk = 4u << 20;
    int n = (int)((total + chunk - 1) / chunk);
    ParamRef *params = calloc((size_t)n, sizeof *params);
    for (int i = 0; i < n; i++) {
        size_t numel = (i + 1 < n) ? chunk : total - chunk * (size_t)(n - 1);
        params[i] = (ParamRef){.name = "p", .numel = numel, .ndim = 1, .shape = {(int64_t)numel}, .decay = i % 2};
        params[i].value = malloc(numel * sizeof(float));
        params[i].grad = malloc(numel * sizeof(float));
        for (size_t j = 0; j < numel; j++) {
            params[i].value[j] = 0.01f * (float)(j % 100);
            params[i].grad[j] = 0.001f * (float)(j % 37);
        }
    }
    AdamW opt;
    Error err;
    if (adamw_init(&opt, params, n, 0.9, 0.999, 1e-8, 0.01, &err) != 0) {
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    clip_grad_norm(params, n, 1.0);  // warm up
    adamw_step(&opt, params, n, 1e-4);
    double start = now();
    for (int r = 0; r < repeats; r++) {
        clip_grad_norm(params, n, 1.0);
        adamw_step(&opt, params, n, 1e-4);
    }
    printf("%.6f\n", (now() - start) / repeats);
    return 0;
}
