// CPU kernels: rotary position embedding and scaled dot-product attention.
//
// Attention keeps no L x L probability matrix: the forward saves each row's
// log-sum-exp and the backward recomputes the probabilities from q and k
// (the FlashAttention recipe), so activation memory grows with L, not L^2.
#include <math.h>
#include <stdlib.h>

#include "../kernels.h"

// angle(t, i) = t * inv_freq_i, in fp32 as transformers computes it.
static void rope_apply(float *x, int B, int L, int H, int D, float theta, float sign) {
    int half = D / 2;
    float *inv_freq = malloc(sizeof(float) * (size_t)half);
    for (int i = 0; i < half; i++) inv_freq[i] = (float)(1.0 / pow((double)theta, (double)(2 * i) / D));
#pragma omp parallel for schedule(static)
    for (int row = 0; row < B * L; row++) {
        int t = row % L;
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

void rope_forward(float *x, int B, int L, int H, int D, float theta) { rope_apply(x, B, L, H, D, theta, 1.0f); }
void rope_backward(float *dx, int B, int L, int H, int D, float theta) { rope_apply(dx, B, L, H, D, theta, -1.0f); }

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

void attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, const int32_t *key_mask,
                       int B, int L, int Hq, int Hkv, int D, int causal, float scale) {
    int group = Hq / Hkv;
    size_t qs = (size_t)Hq * D, ks = (size_t)Hkv * D;
#pragma omp parallel
    {
        float *p = malloc(sizeof(float) * (size_t)L);
#pragma omp for collapse(2) schedule(dynamic, 4)
        for (int bh = 0; bh < B * Hq; bh++) {
            for (int i = 0; i < L; i++) {
                int b = bh / Hq, h = bh % Hq, g = h / group;
                const float *qi = q + ((size_t)b * L + i) * qs + (size_t)h * D;
                float *oi = out + ((size_t)b * L + i) * qs + (size_t)h * D;
                int jmax = causal ? i + 1 : L;
                float m = -INFINITY;
                for (int j = 0; j < jmax; j++) {
                    if (!key_visible(key_mask, b, L, i, j, causal)) {
                        p[j] = -INFINITY;
                        continue;
                    }
                    p[j] = dot(qi, k + ((size_t)b * L + j) * ks + (size_t)g * D, D) * scale;
                    if (p[j] > m) m = p[j];
                }
                for (int d = 0; d < D; d++) oi[d] = 0.0f;
                float *row_lse = lse + (size_t)bh * L + i;
                if (m == -INFINITY) {  // nothing visible: output zero
                    *row_lse = INFINITY;
                    continue;
                }
                double sum = 0;
                for (int j = 0; j < jmax; j++) {
                    p[j] = (p[j] == -INFINITY) ? 0.0f : expf(p[j] - m);
                    sum += p[j];
                }
                float inv = (float)(1.0 / sum);
                for (int j = 0; j < jmax; j++) {
                    if (p[j] == 0.0f) continue;
                    float w = p[j] * inv;
                    const float *vj = v + ((size_t)b * L + j) * ks + (size_t)g * D;
#pragma omp simd
                    for (int d = 0; d < D; d++) oi[d] += w * vj[d];
                }
                *row_lse = m + (float)log(sum);
            }
        }
        free(p);
    }
}

void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                        const float *q, const float *k, const float *v, const int32_t *key_mask, int B, int L, int Hq,
                        int Hkv, int D, int causal, float scale) {
    int group = Hq / Hkv;
    size_t qs = (size_t)Hq * D, ks = (size_t)Hkv * D;
    // Each task owns one (batch, KV head): it writes the dk/dv rows of that head
    // alone, and the dq rows of the query heads that share it.
#pragma omp parallel
    {
#pragma omp for schedule(dynamic, 1)
        for (int bg = 0; bg < B * Hkv; bg++) {
            int b = bg / Hkv, g = bg % Hkv;
            for (int j = 0; j < L; j++) {
                float *dkj = dk + ((size_t)b * L + j) * ks + (size_t)g * D;
                float *dvj = dv + ((size_t)b * L + j) * ks + (size_t)g * D;
                for (int d = 0; d < D; d++) dkj[d] = dvj[d] = 0.0f;
            }
            for (int h = g * group; h < (g + 1) * group; h++) {
                for (int i = 0; i < L; i++) {
                    size_t qrow = ((size_t)b * L + i) * qs + (size_t)h * D;
                    const float *qi = q + qrow, *doi = dout + qrow, *oi = out + qrow;
                    float *dqi = dq + qrow;
                    for (int d = 0; d < D; d++) dqi[d] = 0.0f;
                    float row_lse = lse[((size_t)b * Hq + h) * L + i];
                    if (row_lse == INFINITY) continue;
                    // delta = sum_j p_ij dP_ij = dO_i . O_i
                    float delta = dot(doi, oi, D);
                    int jmax = causal ? i + 1 : L;
                    for (int j = 0; j < jmax; j++) {
                        if (!key_visible(key_mask, b, L, i, j, causal)) continue;
                        const float *kj = k + ((size_t)b * L + j) * ks + (size_t)g * D;
                        const float *vj = v + ((size_t)b * L + j) * ks + (size_t)g * D;
                        float pij = expf(dot(qi, kj, D) * scale - row_lse);
                        float dp = dot(doi, vj, D);
                        float ds = pij * (dp - delta) * scale;
                        float *dkj = dk + ((size_t)b * L + j) * ks + (size_t)g * D;
                        float *dvj = dv + ((size_t)b * L + j) * ks + (size_t)g * D;
#pragma omp simd
                        for (int d = 0; d < D; d++) {
                            dqi[d] += ds * kj[d];
                            dkj[d] += ds * qi[d];
                            dvj[d] += pij * doi[d];
                        }
                    }
                }
            }
        }
    }
}
