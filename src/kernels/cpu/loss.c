// CPU kernels: softmax cross-entropy with an ignore index.
//
// The exps over a vocabulary row (32000 wide for LLaMA) are exp_approx in
// `omp simd` loops, 4 lanes wide; the row sum is still accumulated in double
// so a long row of small terms loses nothing to rounding.
#include <math.h>

#include "../kernels.h"
#include "exp_approx.h"

// Largest logit of a row [V]. A NaN logit makes the loss NaN either way:
// through m, or through its term of the sum of exps.
static float row_max(const float *row, int V) {
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int v = 0; v < V; v++) m = row[v] > m ? row[v] : m;
    return m;
}

// sum_v e^(row[v] - m)   [V] -> scalar
static double row_sum_exp(const float *row, int V, float m) {
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int v = 0; v < V; v++) s += (double)exp_approx(row[v] - m);
    return s;
}

// lse [N] = log sum_v e^logits[n, v]; returns sum_n (lse[n] - logits[n, target[n]])
// over the rows whose target is not KERNEL_IGNORE_INDEX (their lse is 0).
double cross_entropy_forward(float *lse, const float *logits, const int32_t *targets, int N, int V) {
    double total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total) if ((size_t)N * V > KERNEL_PARALLEL_MIN)
    for (int n = 0; n < N; n++) {
        if (targets[n] == KERNEL_IGNORE_INDEX) {
            lse[n] = 0.0f;
            continue;
        }
        const float *row = logits + (size_t)n * V;
        float m = row_max(row, V);
        double l = m + log(row_sum_exp(row, V, m));
        lse[n] = (float)l;
        total += l - row[targets[n]];
    }
    return total;
}

// In place: logits [N, V] becomes d loss / d logits = row_scale (softmax - onehot(target)),
// zero rows for ignored targets.
void cross_entropy_backward(float *logits, const float *lse, const int32_t *targets, int N, int V, float row_scale) {
#pragma omp parallel for schedule(static) if ((size_t)N * V > KERNEL_PARALLEL_MIN)
    for (int n = 0; n < N; n++) {
        float *row = logits + (size_t)n * V;
        if (targets[n] == KERNEL_IGNORE_INDEX) {
            for (int v = 0; v < V; v++) row[v] = 0.0f;
            continue;
        }
        float row_lse = lse[n];
#pragma omp simd
        for (int v = 0; v < V; v++) row[v] = row_scale * exp_approx(row[v] - row_lse);
        row[targets[n]] -= row_scale;
    }
}
