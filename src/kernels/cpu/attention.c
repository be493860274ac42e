// CPU kernels: rotary position embedding and scaled dot-product attention.
//
// Attention keeps no L x L probability matrix between forward and backward:
// the forward saves each row's log-sum-exp and the backward recomputes the
// probabilities from q and k (the FlashAttention recipe), so kept activation
// memory grows with L, not L^2 (only one head's L x L scratch is live).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels.h"

// angle(t, i) = t * inv_freq_i, in fp32 as transformers computes it, with
// t = pos0 + the row's position in its sequence of L.
static void rope_apply(float *x, int B, int L, int H, int D, float theta, float sign, int pos0) {
    int half = D / 2;
    float *inv_freq = malloc(sizeof(float) * (size_t)half);
    if (inv_freq == NULL) return;
    for (int i = 0; i < half; i++) inv_freq[i] = (float)(1.0 / pow((double)theta, (double)(2 * i) / D));
#pragma omp parallel for schedule(static) if ((size_t)B * L * H * D > KERNEL_PARALLEL_MIN)
    for (int row = 0; row < B * L; row++) {
        int t = pos0 + row % L;
        for (int i = 0; i < half; i++) {
            float angle = (float)t * inv_freq[i];
            float c = (float)cos((double)angle), s = sign * (float)sin((double)angle);
            for (int h = 0; h < H; h++) {
                float *xh = x + ((size_t)row * H + h) * D;
                float a = xh[i], b = xh[i + half];
                // rotate_half: (a, b) -> (a c - b s, b c + a s)
                xh[i] = a * c - b * s;
                xh[i + half] = b * c + a * s;
            }
        }
    }
    free(inv_freq);
}

void rope_forward(float *x, int B, int L, int H, int D, float theta) { rope_apply(x, B, L, H, D, theta, 1.0f, 0); }
void rope_backward(float *dx, int B, int L, int H, int D, float theta) { rope_apply(dx, B, L, H, D, theta, -1.0f, 0); }
// Cached decoding: N rows of one sequence starting at position pos0.
void rope_forward_at(float *x, int N, int H, int D, float theta, int pos0) { rope_apply(x, 1, N, H, D, theta, 1.0f, pos0); }

static inline float dot(const float *a, const float *b, int n) {
    float s = 0;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static inline int key_visible(const int32_t *key_mask, int b, int L, int i, int j, int causal) {
    if (causal && j > i) return 0;
    return key_mask == NULL || key_mask[(size_t)b * L + j] != 0;
}

// Attention runs one (batch, head) at a time as matrix products on OpenBLAS
// (the products are where the time goes), with the row-wise softmax between
// them spread over the cores. Causal attention goes in blocks of query rows,
// each against only the keys it can see, which skips most of the masked
// upper triangle. S and P are [block, L] scratch, never kept.
enum { ATTENTION_BLOCK = 128 };

void attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, const int32_t *key_mask,
                       int B, int L, int Hq, int Hkv, int D, int causal, float scale) {
    int group = Hq / Hkv, qs = Hq * D, ks = Hkv * D;
    int block = causal ? ATTENTION_BLOCK : L;
    float *S = malloc(sizeof(float) * (size_t)(block < L ? block : L) * L);
    if (S == NULL) return;
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < Hq; h++) {
            int g = h / group;
            const float *K = k + (size_t)b * L * ks + (size_t)g * D;
            const float *V = v + (size_t)b * L * ks + (size_t)g * D;
            float *row_lse = lse + ((size_t)b * Hq + h) * L;
            for (int r0 = 0; r0 < L; r0 += block) {
                int rows = L - r0 < block ? L - r0 : block;
                int n = causal ? r0 + rows : L;  // keys this block can see
                const float *Q = q + ((size_t)b * L + r0) * qs + (size_t)h * D;
                float *O = out + ((size_t)b * L + r0) * qs + (size_t)h * D;
                gemm(0, 1, rows, n, D, scale, Q, qs, K, ks, 0.0f, S, n);  // S = scale Q K^T
#pragma omp parallel for schedule(static) if ((size_t)rows * n > KERNEL_PARALLEL_MIN)
                for (int ii = 0; ii < rows; ii++) {
                    int i = r0 + ii;
                    float *row = S + (size_t)ii * n;
                    float m = -INFINITY;
                    for (int j = 0; j < n; j++) {
                        if (!key_visible(key_mask, b, L, i, j, causal)) row[j] = -INFINITY;
                        else if (row[j] > m) m = row[j];
                    }
                    if (m == -INFINITY) {  // nothing visible: zero output
                        for (int j = 0; j < n; j++) row[j] = 0.0f;
                        row_lse[i] = INFINITY;
                        continue;
                    }
                    double sum = 0;
                    for (int j = 0; j < n; j++) {
                        row[j] = row[j] == -INFINITY ? 0.0f : expf(row[j] - m);
                        sum += row[j];
                    }
                    float inv = (float)(1.0 / sum);
                    for (int j = 0; j < n; j++) row[j] *= inv;
                    row_lse[i] = m + (float)log(sum);
                }
                gemm(0, 0, rows, D, n, 1.0f, S, n, V, ks, 0.0f, O, qs);  // O = P V
            }
        }
    }
    free(S);
}

void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                        const float *q, const float *k, const float *v, const int32_t *key_mask, int B, int L, int Hq,
                        int Hkv, int D, int causal, float scale) {
    int group = Hq / Hkv, qs = Hq * D, ks = Hkv * D;
    int block = causal ? ATTENTION_BLOCK : L;
    size_t scratch = (size_t)(block < L ? block : L) * L;
    float *P = malloc(sizeof(float) * scratch), *dS = malloc(sizeof(float) * scratch);
    if (P == NULL || dS == NULL) {
        free(P);
        free(dS);
        return;
    }
    for (int b = 0; b < B; b++) {
        for (int j = 0; j < L; j++) {
            memset(dk + ((size_t)b * L + j) * ks, 0, sizeof(float) * (size_t)ks);
            memset(dv + ((size_t)b * L + j) * ks, 0, sizeof(float) * (size_t)ks);
        }
        for (int h = 0; h < Hq; h++) {
            int g = h / group;
            const float *K = k + (size_t)b * L * ks + (size_t)g * D;
            const float *V = v + (size_t)b * L * ks + (size_t)g * D;
            float *dK = dk + (size_t)b * L * ks + (size_t)g * D;
            float *dV = dv + (size_t)b * L * ks + (size_t)g * D;
            const float *row_lse = lse + ((size_t)b * Hq + h) * L;
            for (int r0 = 0; r0 < L; r0 += block) {
                int rows = L - r0 < block ? L - r0 : block;
                int n = causal ? r0 + rows : L;
                size_t at = ((size_t)b * L + r0) * qs + (size_t)h * D;
                const float *Q = q + at, *O = out + at, *dO = dout + at;
                float *dQ = dq + at;
                gemm(0, 1, rows, n, D, scale, Q, qs, K, ks, 0.0f, P, n);   // S again
                gemm(0, 1, rows, n, D, 1.0f, dO, qs, V, ks, 0.0f, dS, n);  // dP = dO V^T
#pragma omp parallel for schedule(static) if ((size_t)rows * n > KERNEL_PARALLEL_MIN)
                for (int ii = 0; ii < rows; ii++) {
                    int i = r0 + ii;
                    float *p = P + (size_t)ii * n, *ds = dS + (size_t)ii * n;
                    if (row_lse[i] == INFINITY) {
                        for (int j = 0; j < n; j++) p[j] = ds[j] = 0.0f;
                        continue;
                    }
                    // delta_i = sum_j P_ij dP_ij = dO_i . O_i
                    float delta = dot(dO + (size_t)ii * qs, O + (size_t)ii * qs, D);
                    for (int j = 0; j < n; j++) {
                        p[j] = key_visible(key_mask, b, L, i, j, causal) ? expf(p[j] - row_lse[i]) : 0.0f;
                        ds[j] = p[j] * (ds[j] - delta) * scale;
                    }
                }
                gemm(0, 0, rows, D, n, 1.0f, dS, n, K, ks, 0.0f, dQ, qs);  // dQ = dS K
                gemm(1, 0, n, D, rows, 1.0f, dS, n, Q, qs, 1.0f, dK, ks);  // dK += dS^T Q
                gemm(1, 0, n, D, rows, 1.0f, P, n, dO, qs, 1.0f, dV, ks);  // dV += P^T dO
            }
        }
    }
    free(P);
    free(dS);
}
