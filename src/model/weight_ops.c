// The products and gathers that read a model weight, in the weight's compute
// precision: fp32, or bf16 inputs with fp32 accumulation when the model runs
// in bf16 mode (see llava_load.c for which weights and why).
#include "llava_internal.h"

// A bf16 weight as the bf16 kernels take it: its bf16 values when it has
// them (frozen), else its fp32 master, rounded as the product reads it.
static Bf16Input weight_input(const Weight *w) {
    return w->bf16 ? (Bf16Input){.bf16 = w->bf16} : (Bf16Input){.f32 = w->data};
}

void weight_linear_forward(const Weight *w, const float *b, float *y, const float *x, int N, int In, int Out) {
    if (w->compute_bf16) linear_forward_bf16(y, x, weight_input(w), b, N, In, Out);
    else linear_forward(y, x, w->data, b, N, In, Out);
}

void weight_linear_backward(const Weight *w, float *dx, int accumulate_dx, float *db, const float *dy, const float *x,
                            int N, int In, int Out) {
    if (w->compute_bf16) linear_backward_bf16(dx, accumulate_dx, w->grad, db, dy, x, weight_input(w), N, In, Out);
    else linear_backward(dx, accumulate_dx, w->grad, db, dy, x, w->data, N, In, Out);
}

// Rows of a frozen bf16 table are exact bf16 values; a trainable table is
// gathered from its fp32 master (torch autocast does not cast an embedding).
void weight_embedding_forward(const Weight *table, float *out, const int32_t *ids, const uint8_t *skip, int N, int C) {
    if (table->bf16) embedding_forward_bf16(out, table->bf16, ids, skip, N, C);
    else embedding_forward(out, table->data, ids, skip, N, C);
}
