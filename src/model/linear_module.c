// A Linear layer with its optional LoRA adapter.
#include <stdlib.h>

#include "llava_internal.h"

// y[N,out] = x W^T + b (+ LoRA). With cache != NULL the LoRA intermediates are
// kept on the tape for linear_module_backward.
void linear_module_forward(const Linear *l, float *y, const float *x, int N, LinearCache *cache, Tape *tape,
                           int vision, Rng *rng, int training) {
    weight_linear_forward(l->w, l->b ? l->b->data : NULL, y, x, N, l->in, l->out);
    const LoraAdapter *a = l->lora;
    if (a == NULL) return;
    size_t nu = (size_t)N * a->rank, nx = (size_t)N * l->in;
    float *u = cache ? tape_keep(tape, nu, vision) : tape_scratch(tape, nu);
    float *dropped = NULL;
    uint8_t *keep = NULL;
    float keep_scale = 1.0f;
    if (training && a->dropout > 0.0f) {
        // Dropout masks come from the model's own stream, so a run is repeatable.
        dropped = cache ? tape_keep(tape, nx, vision) : tape_scratch(tape, nx);
        keep = (uint8_t *)(cache ? tape_keep(tape, (nx + 3) / 4, vision) : tape_scratch(tape, (nx + 3) / 4));
        if (keep)
            for (size_t i = 0; i < nx; i++) keep[i] = rng_uniform(rng) >= a->dropout;
        keep_scale = 1.0f / (1.0f - a->dropout);
    }
    if (u == NULL || (training && a->dropout > 0.0f && (dropped == NULL || keep == NULL))) return;  // tape->failed set
    lora_forward(y, u, dropped, x, keep, keep_scale, a->A, a->B, a->scale, N, l->in, l->out, a->rank);
    if (cache) {
        cache->u = u;
        cache->dropped = dropped;
        cache->keep = keep;
    } else {
        tape_release_scratch(tape, u, nu);
        tape_release_scratch(tape, dropped, dropped ? nx : 0);
        tape_release_scratch(tape, (float *)keep, keep ? (nx + 3) / 4 : 0);
    }
}

// dx (overwritten, or added to when accumulate_dx; NULL = not needed).
void linear_module_backward(const Linear *l, float *dx, int accumulate_dx, const float *dy, const float *x, int N,
                            const LinearCache *cache, Tape *tape) {
    weight_linear_backward(l->w, dx, accumulate_dx, l->b ? l->b->grad : NULL, dy, x, N, l->in, l->out);
    const LoraAdapter *a = l->lora;
    if (a == NULL) return;
    size_t nu = (size_t)N * a->rank;
    float *du = tape_scratch(tape, nu);
    if (du == NULL) return;
    float keep_scale = a->dropout > 0.0f ? 1.0f / (1.0f - a->dropout) : 1.0f;
    lora_backward(dx, a->dA, a->dB, du, dy, x, cache->dropped, cache->keep, keep_scale, cache->u, a->A, a->B,
                  a->scale, N, l->in, l->out, a->rank);
    tape_release_scratch(tape, du, nu);
}
