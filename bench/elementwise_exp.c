// bench/elementwise_exp.c - times the CPU kernels whose exps went from libm
// (a call per element) to exp_approx in vectorised loops, current build
// against a baseline revision's src/kernels/cpu/elementwise.c and loss.c
// linked into the same binary (their symbols renamed old_*), alternating
// the two sides in one run and keeping the best time of each. Built and run
// by bench/elementwise_exp.sh:
//
//   bench/elementwise_exp.sh [THREADS (default 2)] [REPEAT (default 20)] [BASELINE_REV (default 9d5cc73)]
//
// Shapes, from bench/model_step.py's mid-size LLaVA (385 tokens: 256 image +
// 129 text): the LM's SwiGLU (385 x 2048), the vision tower's QuickGELU
// (257 x 3072), and cross-entropy over the LLaMA vocabulary (64 x 32000).
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/base/rng.h"
#include "../src/kernels/kernels.h"

void old_swiglu_forward(float *h, const float *gate, const float *up, size_t n);
void old_swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate, const float *up, size_t n);
void old_activation_forward(float *y, const float *x, size_t n, Activation act);
void old_activation_backward(float *dx, const float *dy, const float *x, size_t n, Activation act);
double old_cross_entropy_forward(float *lse, const float *logits, const int32_t *targets, int N, int V);
void old_cross_entropy_backward(float *logits, const float *lse, const int32_t *targets, int N, int V, float row_scale);

typedef struct {
    size_t n;                                       // elementwise size
    float *gate, *up, *dh, *h, *dgate, *dup;        // [n]
    int N, V;                                       // cross-entropy rows, vocabulary
    float *logits, *work, *lse;                     // [N, V], [N, V], [N]
    int32_t *targets;                               // [N]
    double loss;
} Data;

static float *randn(size_t n, Rng *rng, double scale) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = (float)(scale * rng_normal(rng));
    return x;
}

static double now(void) { return omp_get_wtime(); }

// One timed call of each kernel pair; the cross-entropy backward works in
// place, so its input is copied in first (outside the timing).
static double time_swiglu(Data *d, int old) {
    double t = now();
    if (old) {
        old_swiglu_forward(d->h, d->gate, d->up, d->n);
        old_swiglu_backward(d->dgate, d->dup, d->dh, d->gate, d->up, d->n);
    } else {
        swiglu_forward(d->h, d->gate, d->up, d->n);
        swiglu_backward(d->dgate, d->dup, d->dh, d->gate, d->up, d->n);
    }
    return now() - t;
}

static double time_activation(Data *d, int old, Activation act) {
    double t = now();
    if (old) {
        old_activation_forward(d->h, d->gate, d->n, act);
        old_activation_backward(d->dgate, d->dh, d->gate, d->n, act);
    } else {
        activation_forward(d->h, d->gate, d->n, act);
        activation_backward(d->dgate, d->dh, d->gate, d->n, act);
    }
    return now() - t;
}

static double time_cross_entropy(Data *d, int old) {
    memcpy(d->work, d->logits, sizeof(float) * (size_t)d->N * d->V);
    double t = now();
    if (old) {
        d->loss = old_cross_entropy_forward(d->lse, d->work, d->targets, d->N, d->V);
        old_cross_entropy_backward(d->work, d->lse, d->targets, d->N, d->V, 1.0f / d->N);
    } else {
        d->loss = cross_entropy_forward(d->lse, d->work, d->targets, d->N, d->V);
        cross_entropy_backward(d->work, d->lse, d->targets, d->N, d->V, 1.0f / d->N);
    }
    return now() - t;
}

enum { SWIGLU, QUICK_GELU, SILU, GELU, CROSS_ENTROPY, KERNELS };
static const char *names[KERNELS] = {"swiglu fwd+bwd 385x2048", "quick_gelu fwd+bwd 257x3072",
                                     "silu fwd+bwd 385x2048", "gelu fwd+bwd 257x3072",
                                     "cross_entropy fwd+bwd 64x32000"};

static double run(Data *d, int kernel, int old) {
    switch (kernel) {
    case SWIGLU: d->n = (size_t)385 * 2048; return time_swiglu(d, old);
    case QUICK_GELU: d->n = (size_t)257 * 3072; return time_activation(d, old, ACT_QUICK_GELU);
    case SILU: d->n = (size_t)385 * 2048; return time_activation(d, old, ACT_SILU);
    case GELU: d->n = (size_t)257 * 3072; return time_activation(d, old, ACT_GELU);
    case CROSS_ENTROPY: return time_cross_entropy(d, old);
    }
    return 0;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2, repeat = argc > 2 ? atoi(argv[2]) : 20;
    omp_set_num_threads(threads);
    Rng rng;
    rng_seed(&rng, 1);
    size_t n = (size_t)385 * 2048;
    Data d = {.n = n, .N = 64, .V = 32000};
    d.gate = randn(n, &rng, 2), d.up = randn(n, &rng, 1), d.dh = randn(n, &rng, 1);
    d.h = randn(n, &rng, 1), d.dgate = randn(n, &rng, 1), d.dup = randn(n, &rng, 1);
    d.logits = randn((size_t)d.N * d.V, &rng, 3), d.work = randn((size_t)d.N * d.V, &rng, 1);
    d.lse = malloc(sizeof(float) * d.N), d.targets = malloc(sizeof(int32_t) * d.N);
    for (int i = 0; i < d.N; i++) d.targets[i] = (int32_t)rng_below(&rng, (uint64_t)d.V);

    printf("threads %d, best of %d, alternating baseline / new\n", threads, repeat);
    printf("%-32s %12s %12s %8s\n", "kernel", "baseline ms", "new ms", "speedup");
    for (int k = 0; k < KERNELS; k++) {
        double best[2] = {INFINITY, INFINITY}, loss[2] = {0, 0};
        run(&d, k, 1), run(&d, k, 0);  // warm-up: pages, thread pool
        for (int r = 0; r < repeat; r++)
            for (int old = 1; old >= 0; old--) {
                double t = run(&d, k, old);
                if (t < best[old]) best[old] = t;
                loss[old] = d.loss;
            }
        printf("%-32s %12.3f %12.3f %7.2fx", names[k], best[1] * 1e3, best[0] * 1e3, best[1] / best[0]);
        if (k == CROSS_ENTROPY) printf("   (loss %.9g vs %.9g)", loss[1], loss[0]);
        printf("\n");
    }
    return 0;
}
