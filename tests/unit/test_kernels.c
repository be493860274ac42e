// Finite-difference checks of every kernel's backward: for an objective
// f = sum(out * R) with a fixed random R, each analytic gradient must match
// central differences (f(x + h) - f(x - h)) / 2h over every input element.
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/base/rng.h"
#include "../../src/kernels/kernels.h"

typedef struct Case Case;
struct Case {
    void (*forward)(Case *c, float *out);
    size_t n_out;
    float *R;  // objective weights [n_out]
    // op inputs and sizes (used as each op needs)
    float *a, *b, *c, *d, *e;
    int i0, i1, i2, i3, i4, i5;
    float f0;
    const int32_t *ids;
    const int32_t *mask;
    const uint8_t *keep;
};

static void fill(float *x, size_t n, Rng *rng, double scale) {
    for (size_t i = 0; i < n; i++) x[i] = (float)(scale * rng_normal(rng));
}

static float *randn(size_t n, Rng *rng, double scale) {
    float *x = malloc(n * sizeof(float));
    fill(x, n, rng, scale);
    return x;
}


// Every buffer a test allocates, freed at its end (keeps LeakSanitizer quiet).
typedef struct {
    void *ptrs[64];
    int count;
} Pool;

static void *pool_add(Pool *pool, void *p) {
    cr_assert_not_null(p);
    cr_assert_lt(pool->count, 64);
    pool->ptrs[pool->count++] = p;
    return p;
}

static void pool_free(Pool *pool) {
    for (int i = 0; i < pool->count; i++) free(pool->ptrs[i]);
    pool->count = 0;
}

static float *prandn(Pool *pool, size_t n, Rng *rng, double scale) { return pool_add(pool, randn(n, rng, scale)); }
static void *pcalloc(Pool *pool, size_t n, size_t size) { return pool_add(pool, calloc(n, size)); }
static void *pmalloc(Pool *pool, size_t n) { return pool_add(pool, malloc(n)); }

static double objective(Case *c) {
    float *out = calloc(c->n_out, sizeof(float));
    c->forward(c, out);
    double s = 0;
    for (size_t i = 0; i < c->n_out; i++) s += (double)out[i] * c->R[i];
    free(out);
    return s;
}

// Relative norm error between analytic and central-difference gradients of x.
static double fd_error(Case *c, float *x, size_t n, const float *analytic, float h) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        float saved = x[i];
        x[i] = saved + h;
        double plus = objective(c);
        x[i] = saved - h;
        double minus = objective(c);
        x[i] = saved;
        double fd = (plus - minus) / (2.0 * h);
        num += (fd - analytic[i]) * (fd - analytic[i]);
        den += fd * fd;
    }
    cr_assert(den > 0, "finite-difference gradient is zero: the check would be empty");
    return sqrt(num / den);
}

#define TOL 5e-3

// ---------------------------------------------------------------- linear
static void linear_fw(Case *c, float *out) { linear_forward(out, c->a, c->b, c->c, c->i0, c->i1, c->i2); }

Test(kernels, linear_backward) {
    Pool pool = {0};
    Rng rng;
    rng_seed(&rng, 1);
    int N = 5, In = 7, Out = 4;
    Case c = {.forward = linear_fw, .n_out = (size_t)N * Out, .i0 = N, .i1 = In, .i2 = Out};
    c.R = prandn(&pool, c.n_out, &rng, 1), c.a = prandn(&pool, (size_t)N * In, &rng, 1), c.b = prandn(&pool, (size_t)Out * In, &rng, 1);
    c.c = prandn(&pool, Out, &rng, 1);
    float *dx = pcalloc(&pool, (size_t)N * In, 4), *dw = pcalloc(&pool, (size_t)Out * In, 4), *db = pcalloc(&pool, Out, 4);
    linear_backward(dx, 0, dw, db, c.R, c.a, c.b, N, In, Out);
    cr_expect_lt(fd_error(&c, c.a, (size_t)N * In, dx, 1e-2f), TOL);
    cr_expect_lt(fd_error(&c, c.b, (size_t)Out * In, dw, 1e-2f), TOL);
    cr_expect_lt(fd_error(&c, c.c, Out, db, 1e-2f), TOL);
    // Weight gradients accumulate: a second backward doubles them.
    linear_backward(NULL, 0, dw, NULL, c.R, c.a, c.b, N, In, Out);
    float *dw1 = pcalloc(&pool, (size_t)Out * In, 4);
    linear_backward(NULL, 0, dw1, NULL, c.R, c.a, c.b, N, In, Out);
    for (int i = 0; i < Out * In; i++) cr_expect_float_eq(dw[i], 2 * dw1[i], 1e-5f * (1 + fabsf(dw[i])));
    pool_free(&pool);
}

// ------------------------------------------------------------------ LoRA
static void lora_fw(Case *c, float *out) {
    // out = x W^T + scale (drop(x) A^T) B^T with W = c->e
    int N = c->i0, In = c->i1, Out = c->i2, r = c->i3;
    float *u = calloc((size_t)N * r, 4), *dropped = calloc((size_t)N * In, 4);
    linear_forward(out, c->a, c->e, NULL, N, In, Out);
    lora_forward(out, u, dropped, c->a, c->keep, 1.0f / 0.75f, c->b, c->c, c->f0, N, In, Out, r);
    free(u);
    free(dropped);
}

static void lora_case(int with_dropout) {
    Pool pool = {0};
    Rng rng;
    rng_seed(&rng, 2);
    int N = 6, In = 5, Out = 4, r = 3;
    uint8_t *keep = pmalloc(&pool, (size_t)N * In);
    for (int i = 0; i < N * In; i++) keep[i] = rng_uniform(&rng) >= 0.25;
    Case c = {.forward = lora_fw, .n_out = (size_t)N * Out, .i0 = N, .i1 = In, .i2 = Out, .i3 = r, .f0 = 1.7f,
              .keep = with_dropout ? keep : NULL};
    c.R = prandn(&pool, c.n_out, &rng, 1), c.a = prandn(&pool, (size_t)N * In, &rng, 1), c.b = prandn(&pool, (size_t)r * In, &rng, 1);
    c.c = prandn(&pool, (size_t)Out * r, &rng, 1), c.e = prandn(&pool, (size_t)Out * In, &rng, 1);
    float *u = pcalloc(&pool, (size_t)N * r, 4), *dropped = pcalloc(&pool, (size_t)N * In, 4), *y = pcalloc(&pool, (size_t)N * Out, 4);
    lora_forward(y, u, dropped, c.a, c.keep, 1.0f / 0.75f, c.b, c.c, c.f0, N, In, Out, r);
    float *dx = pcalloc(&pool, (size_t)N * In, 4), *dA = pcalloc(&pool, (size_t)r * In, 4), *dB = pcalloc(&pool, (size_t)Out * r, 4);
    float *du = pcalloc(&pool, (size_t)N * r, 4);
    linear_backward(dx, 0, NULL, NULL, c.R, c.a, c.e, N, In, Out);
    lora_backward(dx, dA, dB, du, c.R, c.a, dropped, c.keep, 1.0f / 0.75f, u, c.b, c.c, c.f0, N, In, Out, r);
    cr_expect_lt(fd_error(&c, c.a, (size_t)N * In, dx, 1e-2f), TOL);
    cr_expect_lt(fd_error(&c, c.b, (size_t)r * In, dA, 1e-2f), TOL);
    cr_expect_lt(fd_error(&c, c.c, (size_t)Out * r, dB, 1e-2f), TOL);
    pool_free(&pool);
}

Test(kernels, lora_backward) { lora_case(0); }
Test(kernels, lora_backward_with_dropout) { lora_case(1); }

// ------------------------------------------------------------ norms
static void layernorm_fw(Case *c, float *out) {
    float mean[16], rstd[16];
    layernorm_forward(out, mean, rstd, c->a, c->b, c->c, c->i0, c->i1, 1e-5f);
}

Test(kernels, layernorm_backward) {
    Pool pool = {0};
    Rng rng;
    rng_seed(&rng, 3);
    int N = 4, C = 9;
    Case c = {.forward = layernorm_fw, .n_out = (size_t)N * C, .i0 = N, .i1 = C};
    c.R = prandn(&pool, c.n_out, &rng, 1), c.a = prandn(&pool, (size_t)N * C, &rng, 2), c.b = prandn(&pool, C, &rng, 1), c.c = prandn(&pool, C, &rng, 1);
    float mean[16], rstd[16], *y = pcalloc(&pool, (size_t)N * C, 4);
    layernorm_forward(y, mean, rstd, c.a, c.b, c.c, N, C, 1e-5f);
    float *dx = pcalloc(&pool, (size_t)N * C, 4), *dw = pcalloc(&pool, C, 4), *db = pcalloc(&pool, C, 4);
    layernorm_backward(dx, dw, db, c.R, c.a, mean, rstd, c.b, N, C);
    cr_expect_lt(fd_error(&c, c.a, (size_t)N * C, dx, 1e-2f), TOL);
    cr_expect_lt(fd_error(&c, c.b, C, dw, 1e-2f), TOL);
    cr_expect_lt(fd_error(&c, c.c, C, db, 1e-2f), TOL);
    pool_free(&pool);
}

static void rmsnorm_fw(Case *c, float *out) {
    float rstd[16];
    rmsnorm_forward(out, rstd, c->a, c->b, c->i0, c->i1, 1e-5f);
}

Test(kernels, rmsnorm_backward) {
    Pool pool = {0};
    Rng rng;
    rng_seed(&rng, 4);
    int N = 4, C = 10;
    Case c = {.forward = rmsnorm_fw, .n_out = (size_t)N * C, .i0 = N, .i1 = C};
    c.R = prandn(&pool, c.n_out, &rng, 1), c.a = prandn(&pool, (size_t)N * C, &rng, 1), c.b = prandn(&pool, C, &rng, 1);
    float rstd[16], *y = pcalloc(&pool, (size_t)N * C, 4);
    rmsnorm_forward(y, rstd, c.a, c.b, N, C, 1e-5f);
    float *dx = pcalloc(&pool, (size_t)N * C, 4), *dw = pcalloc(&pool, C, 4);
    rmsnorm_backward(dx, dw, c.R, c.a, rstd, c.b, N, C);
    cr_expect_lt(fd_error(&c, c.a, (size_t)N * C, dx, 1e-2f), TOL);
    cr_expect_lt(fd_error(&c, c.b, C, dw, 1e-2f), TOL);
    pool_free(&pool);
}

// ------------------------------------------------------------------ RoPE
static void rope_fw(Case *c, float *out) {
    memcpy(out, c->a, c->n_out * sizeof(float));
    rope_forward(out, c->i0, c->i1, c->i2, c->i3, 100.0f);
}

Test(kernels, rope_backward_and_rotation) {
    Pool pool = {0};
    Rng rng;
    rng_seed(&rng, 5);
    int B = 2, L = 5, H = 3, D = 8;
    size_t n = (size_t)B * L * H * D;
    Case c = {.forward = rope_fw, .n_out = n, .i0 = B, .i1 = L, .i2 = H, .i3 = D};
    c.R = prandn(&pool, n, &rng, 1), c.a = prandn(&pool, n, &rng, 1);
    float *dx = pmalloc(&pool, n * 4);
    memcpy(dx, c.R, n * 4);
    rope_backward(dx, B, L, H, D, 100.0f);
    cr_expect_lt(fd_error(&c, c.a, n, dx, 1e-2f), TOL);
    // Independent value check: position t, pair i rotates by t * 100^(-2i/D).
    float *y = pmalloc(&pool, n * 4);
    rope_fw(&c, y);
    int b = 1, t = 3, h = 2, i = 1;
    const float *x = c.a + (((size_t)b * L + t) * H + h) * D;
    double ang = t * pow(100.0, -2.0 * i / D);
    double want = x[i] * cos(ang) - x[i + D / 2] * sin(ang);
    cr_expect_float_eq(y[(((size_t)b * L + t) * H + h) * D + i], want, 1e-5);
    pool_free(&pool);
}

// ------------------------------------------------------------- attention
static void attention_fw(Case *c, float *out) {
    int B = c->i0, L = c->i1, Hq = c->i2, Hkv = c->i3, D = c->i4;
    float *lse = calloc((size_t)B * Hq * L, 4);
    attention_forward(out, lse, c->a, c->b, c->c, c->mask, B, L, Hq, Hkv, D, c->i5, 0.4f);
    free(lse);
}

static void attention_case(int causal, int Hq, int Hkv, int use_mask) {
    Pool pool = {0};
    Rng rng;
    rng_seed(&rng, 6);
    int B = 2, L = 5, D = 4;
    int32_t mask[10] = {1, 1, 1, 1, 0, 1, 1, 1, 0, 0};  // right padding
    size_t nq = (size_t)B * L * Hq * D, nk = (size_t)B * L * Hkv * D;
    Case c = {.forward = attention_fw, .n_out = nq, .i0 = B, .i1 = L, .i2 = Hq, .i3 = Hkv, .i4 = D, .i5 = causal,
              .mask = use_mask ? mask : NULL};
    c.R = prandn(&pool, nq, &rng, 1), c.a = prandn(&pool, nq, &rng, 1), c.b = prandn(&pool, nk, &rng, 1), c.c = prandn(&pool, nk, &rng, 1);
    float *out = pcalloc(&pool, nq, 4), *lse = pcalloc(&pool, (size_t)B * Hq * L, 4);
    attention_forward(out, lse, c.a, c.b, c.c, c.mask, B, L, Hq, Hkv, D, causal, 0.4f);
    float *dq = pcalloc(&pool, nq, 4), *dk = pcalloc(&pool, nk, 4), *dv = pcalloc(&pool, nk, 4);
    attention_backward(dq, dk, dv, c.R, out, lse, c.a, c.b, c.c, c.mask, B, L, Hq, Hkv, D, causal, 0.4f);
    cr_expect_lt(fd_error(&c, c.a, nq, dq, 1e-2f), TOL);
    cr_expect_lt(fd_error(&c, c.b, nk, dk, 1e-2f), TOL);
    cr_expect_lt(fd_error(&c, c.c, nk, dv, 1e-2f), TOL);
    // Independent value check of one row: softmax over visible keys.
    int b = 1, h = Hq - 1, g = h / (Hq / Hkv), i = 3;
    double w[8], s = 0, m = -1e30;
    for (int j = 0; j < L; j++) {
        int visible = (!causal || j <= i) && (!use_mask || mask[b * L + j]);
        w[j] = -INFINITY;
        if (!visible) continue;
        double dot = 0;
        for (int d = 0; d < D; d++)
            dot += (double)c.a[((size_t)(b * L + i) * Hq + h) * D + d] * c.b[((size_t)(b * L + j) * Hkv + g) * D + d];
        w[j] = 0.4 * dot;
        m = fmax(m, w[j]);
    }
    for (int j = 0; j < L; j++) s += (w[j] = exp(w[j] - m));
    for (int d = 0; d < D; d++) {
        double want = 0;
        for (int j = 0; j < L; j++) want += w[j] / s * c.c[((size_t)(b * L + j) * Hkv + g) * D + d];
        cr_expect_float_eq(out[((size_t)(b * L + i) * Hq + h) * D + d], want, 1e-5);
    }
    pool_free(&pool);
}

Test(kernels, attention_causal_masked_gqa) { attention_case(1, 4, 2, 1); }
Test(kernels, attention_full_no_mask) { attention_case(0, 2, 2, 0); }

// ----------------------------------------------------------- activations
static void act_fw(Case *c, float *out) { activation_forward(out, c->a, c->n_out, (Activation)c->i0); }

Test(kernels, activation_backward) {
    Pool pool = {0};
    Activation acts[] = {ACT_GELU, ACT_QUICK_GELU, ACT_SILU, ACT_GELU_TANH};
    for (int k = 0; k < 4; k++) {
        Rng rng;
        rng_seed(&rng, 7);
        size_t n = 23;
        Case c = {.forward = act_fw, .n_out = n, .i0 = acts[k]};
        c.R = prandn(&pool, n, &rng, 1), c.a = prandn(&pool, n, &rng, 2);
        float *dx = pcalloc(&pool, n, 4);
        activation_backward(dx, c.R, c.a, n, acts[k]);
        cr_expect_lt(fd_error(&c, c.a, n, dx, 1e-2f), TOL, "activation %d", k);
    }
    // Values against closed forms: gelu(1) = 0.5 (1 + erf(1/sqrt 2)); quick_gelu(1) = sigmoid(1.702).
    float x = 1.0f, y;
    activation_forward(&y, &x, 1, ACT_GELU);
    cr_expect_float_eq(y, 0.8413447460685429, 1e-6);
    activation_forward(&y, &x, 1, ACT_QUICK_GELU);
    cr_expect_float_eq(y, 1.0 / (1.0 + exp(-1.702)), 1e-6);
    pool_free(&pool);
}

static void swiglu_fw(Case *c, float *out) { swiglu_forward(out, c->a, c->b, c->n_out); }

Test(kernels, swiglu_backward) {
    Pool pool = {0};
    Rng rng;
    rng_seed(&rng, 8);
    size_t n = 17;
    Case c = {.forward = swiglu_fw, .n_out = n};
    c.R = prandn(&pool, n, &rng, 1), c.a = prandn(&pool, n, &rng, 2), c.b = prandn(&pool, n, &rng, 1);
    float *dg = pcalloc(&pool, n, 4), *du = pcalloc(&pool, n, 4);
    swiglu_backward(dg, du, c.R, c.a, c.b, n);
    cr_expect_lt(fd_error(&c, c.a, n, dg, 1e-2f), TOL);
    cr_expect_lt(fd_error(&c, c.b, n, du, 1e-2f), TOL);
    pool_free(&pool);
}

// ------------------------------------------------------------ embeddings
static void embed_fw(Case *c, float *out) { embedding_forward(out, c->a, c->ids, c->keep, c->i0, c->i1); }

Test(kernels, embedding_backward_skips_and_repeats) {
    Pool pool = {0};
    Rng rng;
    rng_seed(&rng, 9);
    int N = 6, C = 3, V = 5;
    int32_t ids[6] = {4, 1, 4, 0, 2, 1};
    uint8_t skip[6] = {0, 0, 0, 1, 0, 0};
    Case c = {.forward = embed_fw, .n_out = (size_t)N * C, .i0 = N, .i1 = C, .ids = ids, .keep = skip};
    c.R = prandn(&pool, c.n_out, &rng, 1), c.a = prandn(&pool, (size_t)V * C, &rng, 1);
    float *dt = pcalloc(&pool, (size_t)V * C, 4);
    embedding_backward(dt, c.R, ids, skip, N, C);
    cr_expect_lt(fd_error(&c, c.a, (size_t)V * C, dt, 1e-2f), TOL);
    for (int k = 0; k < C; k++) cr_expect_eq(dt[0 * C + k], 0.0f);  // only a skipped row used id 0
    pool_free(&pool);
}

static void vembed_fw(Case *c, float *out) { vision_embed_forward(out, c->a, c->b, c->c, c->i0, c->i1, c->i2); }

Test(kernels, vision_embed_backward) {
    Pool pool = {0};
    Rng rng;
    rng_seed(&rng, 10);
    int n = 2, P = 4, C = 3;
    Case c = {.forward = vembed_fw, .n_out = (size_t)n * (P + 1) * C, .i0 = n, .i1 = P, .i2 = C};
    c.R = prandn(&pool, c.n_out, &rng, 1), c.a = prandn(&pool, (size_t)n * P * C, &rng, 1), c.b = prandn(&pool, C, &rng, 1);
    c.c = prandn(&pool, (size_t)(P + 1) * C, &rng, 1);
    float *dp = pcalloc(&pool, (size_t)n * P * C, 4), *dc = pcalloc(&pool, C, 4), *dpos = pcalloc(&pool, (size_t)(P + 1) * C, 4);
    vision_embed_backward(dp, dc, dpos, c.R, n, P, C);
    cr_expect_lt(fd_error(&c, c.a, (size_t)n * P * C, dp, 1e-2f), TOL);
    cr_expect_lt(fd_error(&c, c.b, C, dc, 1e-2f), TOL);
    cr_expect_lt(fd_error(&c, c.c, (size_t)(P + 1) * C, dpos, 1e-2f), TOL);
    pool_free(&pool);
}

Test(kernels, patches_match_conv_weight_layout) {
    Pool pool = {0};
    // pixels [1, 2, 4, 4], patch 2: patch (gy=1, gx=0), channel 1, row 1, col 0.
    float pixels[32], patches[4 * 8];
    for (int i = 0; i < 32; i++) pixels[i] = (float)i;
    patches_from_pixels(patches, pixels, 1, 2, 4, 2);
    int cell = 1 * 2 + 0, k = (1 * 2 + 1) * 2 + 0;
    cr_expect_eq(patches[cell * 8 + k], pixels[(1 * 4 + 2 + 1) * 4 + 0]);
    pool_free(&pool);
}

// ------------------------------------------------------------------ loss
static void ce_fw(Case *c, float *out) {
    float lse[8];
    out[0] = (float)cross_entropy_forward(lse, c->a, c->ids, c->i0, c->i1);
}

Test(kernels, cross_entropy_backward_with_ignore) {
    Pool pool = {0};
    Rng rng;
    rng_seed(&rng, 11);
    int N = 4, V = 7;
    int32_t targets[4] = {3, KERNEL_IGNORE_INDEX, 0, 6};
    float R = 1.0f;
    Case c = {.forward = ce_fw, .n_out = 1, .R = &R, .i0 = N, .i1 = V, .ids = targets};
    c.a = prandn(&pool, (size_t)N * V, &rng, 2);
    float lse[4], *d = pmalloc(&pool, (size_t)N * V * 4);
    double total = cross_entropy_forward(lse, c.a, targets, N, V);
    memcpy(d, c.a, (size_t)N * V * 4);
    cross_entropy_backward(d, lse, targets, N, V, 1.0f);
    cr_expect_lt(fd_error(&c, c.a, (size_t)N * V, d, 1e-2f), TOL);
    // Value: -log softmax(row 0)[3] computed here in double.
    double s = 0;
    for (int v = 0; v < V; v++) s += exp(c.a[v]);
    double row0 = log(s) - c.a[3];
    double rest = 0;
    for (int n = 2; n < 4; n++) {
        double t = 0;
        for (int v = 0; v < V; v++) t += exp(c.a[n * V + v]);
        rest += log(t) - c.a[n * V + targets[n]];
    }
    cr_expect_float_eq(total, row0 + rest, 1e-4);
    pool_free(&pool);
}

// Long causal sequences go in blocks of query rows: check values and a sample
// of gradient coordinates across block boundaries.
Test(kernels, attention_causal_spanning_blocks) {
    Pool pool = {0};
    kernel_init(1);  // many tiny calls: thread start-up would dominate
    Rng rng;
    rng_seed(&rng, 12);
    int B = 1, L = 300, Hq = 2, Hkv = 1, D = 4;
    int32_t *mask = pmalloc(&pool, sizeof(int32_t) * L);
    for (int j = 0; j < L; j++) mask[j] = j < L - 10;
    size_t nq = (size_t)B * L * Hq * D, nk = (size_t)B * L * Hkv * D;
    Case c = {.forward = attention_fw, .n_out = nq, .i0 = B, .i1 = L, .i2 = Hq, .i3 = Hkv, .i4 = D, .i5 = 1,
              .mask = mask};
    c.R = prandn(&pool, nq, &rng, 1), c.a = prandn(&pool, nq, &rng, 1), c.b = prandn(&pool, nk, &rng, 1);
    c.c = prandn(&pool, nk, &rng, 1);
    float *out = pcalloc(&pool, nq, 4), *lse = pcalloc(&pool, (size_t)B * Hq * L, 4);
    attention_forward(out, lse, c.a, c.b, c.c, mask, B, L, Hq, Hkv, D, 1, 0.4f);
    // Value of row 250 (third block), head 1, against a direct softmax.
    int i = 250, h = 1;
    double m = -1e30, s = 0, *w = pcalloc(&pool, L, sizeof(double));
    for (int j = 0; j <= i; j++) {
        double d = 0;
        for (int e = 0; e < D; e++) d += (double)c.a[((size_t)i * Hq + h) * D + e] * c.b[(size_t)j * D + e];
        w[j] = 0.4 * d;
        if (w[j] > m) m = w[j];
    }
    for (int j = 0; j <= i; j++) s += (w[j] = exp(w[j] - m));
    for (int e = 0; e < D; e++) {
        double want = 0;
        for (int j = 0; j <= i; j++) want += w[j] / s * c.c[(size_t)j * D + e];
        cr_expect_float_eq(out[((size_t)i * Hq + h) * D + e], want, 1e-5);
    }
    float *dq = pcalloc(&pool, nq, 4), *dk = pcalloc(&pool, nk, 4), *dv = pcalloc(&pool, nk, 4);
    attention_backward(dq, dk, dv, c.R, out, lse, c.a, c.b, c.c, mask, B, L, Hq, Hkv, D, 1, 0.4f);
    float *inputs[3] = {c.a, c.b, c.c}, *grads[3] = {dq, dk, dv};
    size_t sizes[3] = {nq, nk, nk};
    for (int t = 0; t < 3; t++) {
        double num = 0, den = 0;
        for (int k = 0; k < 25; k++) {
            size_t idx = (size_t)rng_below(&rng, sizes[t]);
            float saved = inputs[t][idx];
            inputs[t][idx] = saved + 1e-2f;
            double plus = objective(&c);
            inputs[t][idx] = saved - 1e-2f;
            double minus = objective(&c);
            inputs[t][idx] = saved;
            double fd = (plus - minus) / 2e-2;
            num += (fd - grads[t][idx]) * (fd - grads[t][idx]);
            den += fd * fd + grads[t][idx] * grads[t][idx];
        }
        cr_expect(den > 0);
        cr_expect_lt(sqrt(num / den), TOL, "input %d", t);
    }
    pool_free(&pool);
}

// gemm splits large products over the threads, by rows or by columns of C,
// for every transpose combination; compare with a plain triple loop.
Test(kernels, gemm_slices_match_naive_product) {
    Pool pool = {0};
    kernel_init(2);
    Rng rng;
    rng_seed(&rng, 13);
    int shapes[2][3] = {{210, 150, 160}, {90, 260, 200}};  // M >= N (rows), M < N (columns)
    for (int s = 0; s < 2; s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        float *A = prandn(&pool, (size_t)M * K, &rng, 1), *B = prandn(&pool, (size_t)K * N, &rng, 1);
        float *C = pcalloc(&pool, (size_t)M * N, 4);
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                // op(A)[m,k] = ta ? A[k*M + m] : A[m*K + k]; op(B)[k,n] = tb ? B[n*K + k] : B[k*N + n]
                for (size_t i = 0; i < (size_t)M * N; i++) C[i] = 1.0f;
                gemm(ta, tb, M, N, K, 0.5f, A, ta ? M : K, B, tb ? K : N, 2.0f, C, N);
                double worst = 0;
                for (int m = 0; m < M; m += 7)
                    for (int n = 0; n < N; n += 5) {
                        double want = 2.0;
                        for (int k = 0; k < K; k++)
                            want += 0.5 * (double)(ta ? A[(size_t)k * M + m] : A[(size_t)m * K + k]) *
                                    (tb ? B[(size_t)n * K + k] : B[(size_t)k * N + n]);
                        worst = fmax(worst, fabs(want - C[(size_t)m * N + n]));
                    }
                cr_expect_lt(worst, 1e-3, "shape %d trans %d%d: %g", s, ta, tb, worst);
            }
    }
    pool_free(&pool);
}
