// CPU kernels: softmax cross-entropy with an ignore index.
#include <math.h>

#include "../kernels.h"

double cross_entropy_forward(float *lse, const float *logits, const int32_t *targets, int N, int V) {
    double total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total) if ((size_t)N * V > KERNEL_PARALLEL_MIN)
    for (int n = 0; n < N; n++) {
        if (targets[n] == KERNEL_IGNORE_INDEX) {
            lse[n] = 0.0f;
            continue;
        }
        const float *row = logits + (size_t)n * V;
        float m = -INFINITY;
        for (int v = 0; v < V; v++) m = row[v] > m ? row[v] : m;
        double s = 0;
        for (int v = 0; v < V; v++) s += exp((double)(row[v] - m));
        double l = m + log(s);
        lse[n] = (float)l;
        total += l - row[targets[n]];
    }
    return total;
}

void cross_entropy_backward(float *logits, const float *lse, const int32_t *targets, int N, int V, float row_scale) {
#pragma omp parallel for schedule(static) if ((size_t)N * V > KERNEL_PARALLEL_MIN)
    for (int n = 0; n < N; n++) {
        float *row = logits + (size_t)n * V;
        if (targets[n] == KERNEL_IGNORE_INDEX) {
            for (int v = 0; v < V; v++) row[v] = 0.0f;
            continue;
        }
        for (int v = 0; v < V; v++) row[v] = row_scale * expf(row[v] - lse[n]);
        row[targets[n]] -= row_scale;
    }
}
