// Kernels for cached decoding: attention of a few new queries over a
// key/value cache (rope_forward_at, the rotary embedding at an absolute
// position, shares rope_forward's code in attention.c). Numerics follow
// rope_forward / attention_forward (attention.c) so that a cached decode
// gives the logits a full recomputation would.
#include <math.h>
#include <stdlib.h>

#include "../kernels.h"

// One (query head) at a time: S [n, T] = scale Q K^T over the T = pos0 + n
// cached keys, causal softmax per row, O = P V. With n = 1 (a decode step)
// the products are matrix-vector ones; the heads then run in parallel.
void attention_cached_forward(float *out, const float *q, const float *k, const float *v, int n, int pos0, int Hq,
                              int Hkv, int D, float scale) {
    int group = Hq / Hkv, qs = Hq * D, ks = Hkv * D, T = pos0 + n;
    float *S = malloc(sizeof(float) * (size_t)n * T * (n == 1 ? Hq : 1));
    if (S == NULL) return;
    if (n == 1) {
#pragma omp parallel for schedule(static) if ((size_t)Hq * T * D > KERNEL_PARALLEL_MIN)
        for (int h = 0; h < Hq; h++) {
            const float *Q = q + (size_t)h * D, *K = k + (size_t)(h / group) * D, *V = v + (size_t)(h / group) * D;
            float *row = S + (size_t)h * T, *O = out + (size_t)h * D;
            float m = -INFINITY;
            for (int j = 0; j < T; j++) {
                float s = 0;
                for (int d = 0; d < D; d++) s += Q[d] * K[(size_t)j * ks + d];
                row[j] = s * scale;
                if (row[j] > m) m = row[j];
            }
            double sum = 0;
            for (int j = 0; j < T; j++) {
                row[j] = expf(row[j] - m);
                sum += row[j];
            }
            float inv = (float)(1.0 / sum);
            for (int d = 0; d < D; d++) O[d] = 0.0f;
            for (int j = 0; j < T; j++) {
                float p = row[j] * inv;
                for (int d = 0; d < D; d++) O[d] += p * V[(size_t)j * ks + d];
            }
        }
        free(S);
        return;
    }
    for (int h = 0; h < Hq; h++) {
        const float *Q = q + (size_t)h * D, *K = k + (size_t)(h / group) * D, *V = v + (size_t)(h / group) * D;
        float *O = out + (size_t)h * D;
        gemm(0, 1, n, T, D, scale, Q, qs, K, ks, 0.0f, S, T);
#pragma omp parallel for schedule(static) if ((size_t)n * T > KERNEL_PARALLEL_MIN)
        for (int i = 0; i < n; i++) {
            float *row = S + (size_t)i * T;
            int visible = pos0 + i + 1;  // keys 0..pos0+i
            float m = -INFINITY;
            for (int j = 0; j < visible; j++)
                if (row[j] > m) m = row[j];
            double sum = 0;
            for (int j = 0; j < T; j++) {
                row[j] = j < visible ? expf(row[j] - m) : 0.0f;
                sum += row[j];
            }
            float inv = (float)(1.0 / sum);
            for (int j = 0; j < T; j++) row[j] *= inv;
        }
        gemm(0, 0, n, D, T, 1.0f, S, T, V, ks, 0.0f, O, qs);
    }
    free(S);
}
