// CPU kernels: activations, the SwiGLU gate, embedding gathers, row moves and
// the vision embedding assembly.
#include <math.h>
#include <string.h>

#include "../kernels.h"
#include "exp_approx.h"

int activation_from_name(const char *name, Activation *out) {
    if (strcmp(name, "gelu") == 0) *out = ACT_GELU;
    else if (strcmp(name, "quick_gelu") == 0) *out = ACT_QUICK_GELU;
    else if (strcmp(name, "silu") == 0 || strcmp(name, "swish") == 0) *out = ACT_SILU;
    else if (strcmp(name, "gelu_pytorch_tanh") == 0 || strcmp(name, "gelu_new") == 0) *out = ACT_GELU_TANH;
    else if (strcmp(name, "relu") == 0) *out = ACT_RELU;
    else return -1;
    return 0;
}

// GELU, GELU-tanh and ReLU go element by element through act_value and
// act_derivative (erff and tanhf are libm calls, so those loops stay scalar).
// SiLU and QuickGELU, x sigmoid(k x) with k = 1 and 1.702, the SwiGLU gate
// and GELU's derivative have loops of their own that vectorise (exp_approx,
// not libm's expf).
static inline float act_value(float x, Activation act) {
    switch (act) {
    case ACT_GELU: return 0.5f * x * (1.0f + erff(x * (float)M_SQRT1_2));
    case ACT_QUICK_GELU:
    case ACT_SILU: break;  // sigmoid_gated_forward
    case ACT_GELU_TANH: {
        float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
        return 0.5f * x * (1.0f + tanhf(u));
    }
    case ACT_RELU: return x > 0 ? x : 0.0f;
    }
    return x;
}

static inline float act_derivative(float x, Activation act) {
    switch (act) {
    case ACT_GELU:  // gelu_backward
    case ACT_QUICK_GELU:
    case ACT_SILU: break;  // sigmoid_gated_backward
    case ACT_GELU_TANH: {
        float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
        float t = tanhf(u);
        float du = 0.7978845608028654f * (1.0f + 3.0f * 0.044715f * x * x);
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
    }
    case ACT_RELU: return x > 0 ? 1.0f : 0.0f;
    }
    return 1.0f;
}

// y = x sigmoid(k x)   [n]
static void sigmoid_gated_forward(float *y, const float *x, size_t n, float k) {
#pragma omp parallel for simd schedule(static) if (n > KERNEL_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) y[i] = x[i] * sigmoid_approx(k * x[i]);
}

// dx = dy d/dx[x sigmoid(k x)] = dy (s + k x s (1 - s)), s = sigmoid(k x)   [n]
static void sigmoid_gated_backward(float *dx, const float *dy, const float *x, size_t n, float k) {
#pragma omp parallel for simd schedule(static) if (n > KERNEL_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) {
        float s = sigmoid_approx(k * x[i]);
        dx[i] = dy[i] * (s + k * x[i] * s * (1.0f - s));
    }
}

// dx = dy d/dx[x Phi(x)] = dy (Phi(x) + x phi(x))   [n]
// erff is a libm call, which stops a loop from vectorising, so each block of
// GELU_BLOCK elements first takes Phi in a scalar loop into a buffer, then
// the rest (phi's exp) in a vector loop. dx may be dy (in place).
#define GELU_BLOCK 256
static void gelu_backward(float *dx, const float *dy, const float *x, size_t n) {
    size_t blocks = (n + GELU_BLOCK - 1) / GELU_BLOCK;
#pragma omp parallel for schedule(static) if (n > KERNEL_PARALLEL_MIN)
    for (size_t b = 0; b < blocks; b++) {
        size_t i0 = b * GELU_BLOCK, len = n - i0 < GELU_BLOCK ? n - i0 : GELU_BLOCK;
        const float *xb = x + i0, *dyb = dy + i0;
        float *dxb = dx + i0, cdf[GELU_BLOCK];
        for (size_t i = 0; i < len; i++) cdf[i] = 0.5f * (1.0f + erff(xb[i] * (float)M_SQRT1_2));
#pragma omp simd
        for (size_t i = 0; i < len; i++) {
            float pdf = exp_approx(-0.5f * xb[i] * xb[i]) * 0.3989422804014327f;
            dxb[i] = dyb[i] * (cdf[i] + xb[i] * pdf);
        }
    }
}

void activation_forward(float *y, const float *x, size_t n, Activation act) {
    if (act == ACT_SILU || act == ACT_QUICK_GELU) {
        sigmoid_gated_forward(y, x, n, act == ACT_SILU ? 1.0f : 1.702f);
        return;
    }
#pragma omp parallel for schedule(static) if (n > KERNEL_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) y[i] = act_value(x[i], act);
}

void activation_backward(float *dx, const float *dy, const float *x, size_t n, Activation act) {
    if (act == ACT_SILU || act == ACT_QUICK_GELU) {
        sigmoid_gated_backward(dx, dy, x, n, act == ACT_SILU ? 1.0f : 1.702f);
        return;
    }
    if (act == ACT_GELU) {
        gelu_backward(dx, dy, x, n);
        return;
    }
#pragma omp parallel for schedule(static) if (n > KERNEL_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) dx[i] = dy[i] * act_derivative(x[i], act);
}

// h = silu(gate) up   [n]
void swiglu_forward(float *h, const float *gate, const float *up, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > KERNEL_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) h[i] = gate[i] * sigmoid_approx(gate[i]) * up[i];
}

void swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate, const float *up, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > KERNEL_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) {
        float s = sigmoid_approx(gate[i]);
        float silu = gate[i] * s;
        dup[i] = dh[i] * silu;
        dgate[i] = dh[i] * up[i] * s * (1.0f + gate[i] * (1.0f - s));
    }
}

void embedding_forward(float *out, const float *table, const int32_t *ids, const uint8_t *skip, int N, int C) {
#pragma omp parallel for schedule(static) if ((size_t)N * C > KERNEL_PARALLEL_MIN)
    for (int i = 0; i < N; i++)
        if (!skip || !skip[i]) memcpy(out + (size_t)i * C, table + (size_t)ids[i] * C, sizeof(float) * (size_t)C);
}

void embedding_forward_bf16(float *out, const uint16_t *table, const int32_t *ids, const uint8_t *skip, int N, int C) {
#pragma omp parallel for schedule(static) if ((size_t)N * C > KERNEL_PARALLEL_MIN)
    for (int i = 0; i < N; i++)
        if (!skip || !skip[i]) {
            const uint16_t *row = table + (size_t)ids[i] * C;
            float *dst = out + (size_t)i * C;
            for (int c = 0; c < C; c++) {
                uint32_t bits = (uint32_t)row[c] << 16;  // a bf16 is the top half of an fp32
                memcpy(&dst[c], &bits, sizeof bits);
            }
        }
}

void embedding_backward(float *dtable, const float *dout, const int32_t *ids, const uint8_t *skip, int N, int C) {
    // Serial over rows: two rows may hit the same id.
    for (int i = 0; i < N; i++) {
        if (skip && skip[i]) continue;
        float *dst = dtable + (size_t)ids[i] * C;
        const float *src = dout + (size_t)i * C;
        for (int c = 0; c < C; c++) dst[c] += src[c];
    }
}

void rows_scatter(float *dst, const int32_t *index, const float *src, int n, int C) {
#pragma omp parallel for schedule(static) if ((size_t)n * C > KERNEL_PARALLEL_MIN)
    for (int i = 0; i < n; i++) memcpy(dst + (size_t)index[i] * C, src + (size_t)i * C, sizeof(float) * (size_t)C);
}

void rows_scatter_add(float *dst, const int32_t *index, const float *src, int n, int C) {
#pragma omp parallel for schedule(static) if ((size_t)n * C > KERNEL_PARALLEL_MIN)
    for (int i = 0; i < n; i++) {
        float *d = dst + (size_t)index[i] * C;
        const float *s = src + (size_t)i * C;
        for (int c = 0; c < C; c++) d[c] += s[c];
    }
}

void rows_gather(float *dst, const float *src, const int32_t *index, int n, int C) {
#pragma omp parallel for schedule(static) if ((size_t)n * C > KERNEL_PARALLEL_MIN)
    for (int i = 0; i < n; i++) memcpy(dst + (size_t)i * C, src + (size_t)index[i] * C, sizeof(float) * (size_t)C);
}

void patches_from_pixels(float *patches, const float *pixels, int n, int channels, int S, int p) {
    int G = S / p, K = channels * p * p;
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)n * G * G * K > KERNEL_PARALLEL_MIN)
    for (int img = 0; img < n; img++) {
        for (int cell = 0; cell < G * G; cell++) {
            int gy = cell / G, gx = cell % G;
            float *dst = patches + ((size_t)img * G * G + cell) * K;
            for (int c = 0; c < channels; c++)
                for (int y = 0; y < p; y++)
                    memcpy(dst + ((size_t)c * p + y) * p,
                           pixels + (((size_t)img * channels + c) * S + (size_t)gy * p + y) * S + (size_t)gx * p,
                           sizeof(float) * (size_t)p);
        }
    }
}

void vision_embed_forward(float *out, const float *patch_embeds, const float *class_embedding, const float *pos, int n,
                          int P, int C) {
    int T = P + 1;
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)n * T * C > KERNEL_PARALLEL_MIN)
    for (int img = 0; img < n; img++) {
        for (int t = 0; t < T; t++) {
            float *dst = out + ((size_t)img * T + t) * C;
            const float *src = t == 0 ? class_embedding : patch_embeds + ((size_t)img * P + t - 1) * C;
            const float *pr = pos + (size_t)t * C;
            for (int c = 0; c < C; c++) dst[c] = src[c] + pr[c];
        }
    }
}

void vision_embed_backward(float *dpatch, float *dclass, float *dpos, const float *dout, int n, int P, int C) {
    int T = P + 1;
    if (dpatch) {
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)n * P * C > KERNEL_PARALLEL_MIN)
        for (int img = 0; img < n; img++)
            for (int t = 1; t < T; t++)
                memcpy(dpatch + ((size_t)img * P + t - 1) * C, dout + ((size_t)img * T + t) * C,
                       sizeof(float) * (size_t)C);
    }
    if (dpos || dclass) {
#pragma omp parallel for schedule(static) if ((size_t)n * T * C > KERNEL_PARALLEL_MIN)
        for (int c = 0; c < C; c++) {
            for (int t = 0; t < T; t++) {
                double s = 0;
                for (int img = 0; img < n; img++) s += dout[((size_t)img * T + t) * C + c];
                if (dpos) dpos[(size_t)t * C + c] += (float)s;
                if (dclass && t == 0) dclass[c] += (float)s;
            }
        }
    }
}

void drop_first_row(float *dst, const float *src, int n, int P, int C) {
    for (int img = 0; img < n; img++)
        memcpy(dst + (size_t)img * P * C, src + ((size_t)img * (P + 1) + 1) * C, sizeof(float) * (size_t)P * C);
}

void drop_first_row_backward(float *dsrc, const float *ddst, int n, int P, int C) {
    for (int img = 0; img < n; img++) {
        memset(dsrc + (size_t)img * (P + 1) * C, 0, sizeof(float) * (size_t)C);
        memcpy(dsrc + ((size_t)img * (P + 1) + 1) * C, ddst + (size_t)img * P * C, sizeof(float) * (size_t)P * C);
    }
}
