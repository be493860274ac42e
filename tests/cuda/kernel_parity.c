// kernel_parity: every CUDA kernel of cuda_elementwise.cu, cuda_norm.cu,
// cuda_rows.cu, cuda_loss.cu and cuda_adamw.cu against its CPU counterpart
// (src/kernels/kernels.h, src/train/optimizer.h; a plain loop where the CPU
// has no separate kernel), on fresh random data, small shapes and the model's
// large ones. The CPU runs in fp32 (or double) on the same bf16-rounded
// inputs. Outputs are poisoned with NaN before each run so an element the
// kernel never wrote fails. One line per check:
//   PASS|FAIL name shape rel_err threshold
// rel_err = ||out - ref|| / ||ref||; bit-exact checks print the fraction of
// differing elements (threshold 0), AdamW the largest difference in ulps.
// Ends with "N passed, M failed"; exit 1 if M > 0, 77 without a CUDA device.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/kernels/cuda/cuda.h"
#include "../../src/kernels/kernels.h"
#include "../../src/train/optimizer.h"

// Thresholds (relative norm errors).
#define TOL_BF16 1e-2    // outputs stored as bf16
#define TOL_F32 1e-5     // fp32 outputs from fp32 math
#define TOL_DOUBLE 1e-9  // double sums

// Device scratch for one check: bump-allocated, reset between checks (every
// check ends with a download, which waits for the stream).
#define ARENA_BYTES ((size_t)2 << 30)

typedef struct {
    CudaContext *ctx;
    cudaStream_t stream;
    char *arena;
    size_t arena_used;
    uint64_t rng;
    int passed, failed;
} Parity;

// ------------------------------------------------------------ host helpers

static void *host_alloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (p == NULL) {
        fprintf(stderr, "kernel_parity: out of host memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return p;
}

static uint64_t next_u64(Parity *t) {  // splitmix64
    uint64_t z = (t->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static float uniform01(Parity *t) { return (float)((next_u64(t) >> 40) * (1.0 / 16777216.0)); }
static float normal(Parity *t) {
    float u1 = uniform01(t), u2 = uniform01(t);
    if (u1 < 1e-7f) u1 = 1e-7f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}
static int rand_int(Parity *t, int n) { return (int)(next_u64(t) % (uint64_t)n); }

static float *random_f32(Parity *t, size_t n, float scale, float offset) {
    float *x = host_alloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = offset + scale * normal(t);
    return x;
}
// Rounds x to bf16 values in place (the CPU reference reads these) and
// returns the bf16 copy for the device.
static uint16_t *round_to_bf16(float *x, size_t n) {
    uint16_t *h = host_alloc(n * sizeof(uint16_t));
    bf16_from_f32(h, x, n);
    f32_from_bf16(x, h, n);
    return h;
}
static float *copy_f32(const float *x, size_t n) {
    float *c = host_alloc(n * sizeof(float));
    memcpy(c, x, n * sizeof(float));
    return c;
}
static float *widen(const uint16_t *h, size_t n) {
    float *x = host_alloc(n * sizeof(float));
    f32_from_bf16(x, h, n);
    return x;
}

// ------------------------------------------------------------ device helpers

static void fatal(Parity *t, const char *what, const char *message) {
    printf("FAIL %s: %s\n", what, message);
    t->failed++;
    printf("%d passed, %d failed (stopped: the CUDA context is not usable after this)\n", t->passed, t->failed);
    exit(1);
}

static void arena_reset(Parity *t) { t->arena_used = 0; }

static void *dev_alloc(Parity *t, size_t bytes) {
    size_t aligned = (bytes + 255) & ~(size_t)255;
    if (t->arena_used + aligned > ARENA_BYTES) fatal(t, "device arena", "a check needs more than ARENA_BYTES");
    void *p = t->arena + t->arena_used;
    t->arena_used += aligned;
    return p;
}
static void *dev_from(Parity *t, const void *host, size_t bytes) {
    void *p = dev_alloc(t, bytes);
    Error err;
    if (cuda_upload(t->ctx, p, host, bytes, &err) != 0) fatal(t, "upload", err.message);
    return p;
}
static float *dev_poison_f32(Parity *t, size_t n) {
    float *h = host_alloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = NAN;
    float *d = dev_from(t, h, n * sizeof(float));
    free(h);
    return d;
}
static uint16_t *dev_poison_bf16(Parity *t, size_t n) {
    uint16_t *h = host_alloc(n * sizeof(uint16_t));
    for (size_t i = 0; i < n; i++) h[i] = 0xFFFF;  // a NaN
    uint16_t *d = dev_from(t, h, n * sizeof(uint16_t));
    free(h);
    return d;
}
// Waits for the kernels (reporting any launch error) and copies back.
static void *download(Parity *t, const char *what, const void *dev, size_t bytes) {
    Error err;
    if (cuda_sync(t->ctx, &err) != 0) fatal(t, what, err.message);
    void *h = host_alloc(bytes);
    if (cuda_download(t->ctx, h, dev, bytes, &err) != 0) fatal(t, what, err.message);
    return h;
}
static float *download_f32(Parity *t, const char *what, const float *dev, size_t n) {
    return download(t, what, dev, n * sizeof(float));
}
static uint16_t *download_bf16(Parity *t, const char *what, const uint16_t *dev, size_t n) {
    return download(t, what, dev, n * sizeof(uint16_t));
}

// ------------------------------------------------------------ comparisons

static void report(Parity *t, int ok, const char *name, const char *shape, double err, double threshold,
                   const char *note) {
    printf("%s %s %s %.3e %.0e%s%s\n", ok ? "PASS" : "FAIL", name, shape, err, threshold, note[0] ? " " : "", note);
    if (ok)
        t->passed++;
    else
        t->failed++;
}

// Relative norm error of out against ref; every out element must be finite
// where ref is (a NaN left means the poison was never overwritten).
static void check_f32(Parity *t, const char *name, const char *shape, const float *out, const float *ref, size_t n,
                      double threshold) {
    double diff = 0, norm = 0;
    size_t not_finite = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(ref[i])) continue;
        if (!isfinite(out[i])) {
            not_finite++;
            continue;
        }
        double d = (double)out[i] - ref[i];
        diff += d * d;
        norm += (double)ref[i] * ref[i];
    }
    double err = norm > 0 ? sqrt(diff / norm) : sqrt(diff);
    char note[96] = "";
    if (not_finite) snprintf(note, sizeof note, "(%zu of %zu elements not finite: never written?)", not_finite, n);
    report(t, not_finite == 0 && err <= threshold, name, shape, err, threshold, note);
}

static void check_bf16(Parity *t, const char *name, const char *shape, const uint16_t *out, const float *ref,
                       size_t n, double threshold) {
    float *wide = widen(out, n);
    check_f32(t, name, shape, wide, ref, n, threshold);
    free(wide);
}

// Bit-exact comparison of n elements of `elem` bytes.
static void check_exact(Parity *t, const char *name, const char *shape, const void *out, const void *ref, size_t n,
                        size_t elem) {
    size_t differ = 0, first = n;
    for (size_t i = 0; i < n; i++)
        if (memcmp((const char *)out + i * elem, (const char *)ref + i * elem, elem) != 0) {
            if (first == n) first = i;
            differ++;
        }
    char note[96] = "";
    if (differ) snprintf(note, sizeof note, "(%zu of %zu differ, first at %zu)", differ, n, first);
    report(t, differ == 0, name, shape, n ? (double)differ / (double)n : 0.0, 0, note);
}

static int64_t ordered(float x) {
    int32_t i;
    memcpy(&i, &x, sizeof i);
    return i < 0 ? (int64_t)INT32_MIN - i : i;
}
// Largest distance in ulps (threshold max_ulp).
static void check_ulps(Parity *t, const char *name, const char *shape, const float *out, const float *ref, size_t n,
                       int64_t max_ulp) {
    int64_t worst = 0;
    size_t differ = 0, not_finite = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(out[i])) {
            not_finite++;
            continue;
        }
        int64_t d = ordered(out[i]) - ordered(ref[i]);
        if (d < 0) d = -d;
        if (d) differ++;
        if (d > worst) worst = d;
    }
    char note[128];
    snprintf(note, sizeof note, "(ulps; %zu of %zu differ%s)", differ, n, not_finite ? ", some not finite" : "");
    report(t, not_finite == 0 && worst <= max_ulp, name, shape, (double)worst, (double)max_ulp, note);
}

// ------------------------------------------------------------ checks

static void check_conversions(Parity *t, size_t n) {
    char shape[64];
    snprintf(shape, sizeof shape, "n=%zu", n);
    // Random bit patterns: every exponent, NaNs, infinities, subnormals, ties.
    float *x = host_alloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        uint32_t bits = (uint32_t)next_u64(t);
        if (i % 5 == 0) bits = (bits & 0xffff0000u) | 0x8000u;  // exact ties
        memcpy(&x[i], &bits, sizeof bits);
    }
    uint16_t *ref16 = host_alloc(n * sizeof(uint16_t));
    bf16_from_f32(ref16, x, n);
    arena_reset(t);
    float *dx = dev_from(t, x, n * sizeof(float));
    uint16_t *d16 = dev_poison_bf16(t, n);
    cuda_bf16_from_f32(t->stream, d16, dx, n);
    uint16_t *out16 = download_bf16(t, "bf16_from_f32", d16, n);
    check_exact(t, "bf16_from_f32", shape, out16, ref16, n, 2);
    // The same from an unaligned start (the scalar path), n - 1 elements.
    if (n > 1) {
        d16 = dev_poison_bf16(t, n);
        cuda_bf16_from_f32(t->stream, d16 + 1, dx + 1, n - 1);
        free(out16);
        out16 = download_bf16(t, "bf16_from_f32 unaligned", d16 + 1, n - 1);
        check_exact(t, "bf16_from_f32_unaligned", shape, out16, ref16 + 1, n - 1, 2);
    }
    // bf16 -> f32 from random bf16 patterns.
    for (size_t i = 0; i < n; i++) ref16[i] = (uint16_t)next_u64(t);
    float *ref32 = host_alloc(n * sizeof(float));
    f32_from_bf16(ref32, ref16, n);
    d16 = dev_from(t, ref16, n * sizeof(uint16_t));
    float *d32 = dev_poison_f32(t, n);
    cuda_f32_from_bf16(t->stream, d32, d16, n);
    float *out32 = download_f32(t, "f32_from_bf16", d32, n);
    check_exact(t, "f32_from_bf16", shape, out32, ref32, n, 4);
    if (n > 1) {
        d32 = dev_poison_f32(t, n);
        cuda_f32_from_bf16(t->stream, d32 + 1, d16 + 1, n - 1);
        free(out32);
        out32 = download_f32(t, "f32_from_bf16 unaligned", d32 + 1, n - 1);
        check_exact(t, "f32_from_bf16_unaligned", shape, out32, ref32 + 1, n - 1, 4);
    }
    free(x), free(ref16), free(out16), free(ref32), free(out32);
}

static void check_add_scale(Parity *t, size_t n, size_t offset) {
    char shape[64];
    snprintf(shape, sizeof shape, "n=%zu offset=%zu", n, offset);
    float *y = random_f32(t, n + offset, 1.0f, 0.0f), *x = random_f32(t, n + offset, 1.0f, 0.0f);
    arena_reset(t);
    float *dy = dev_from(t, y, (n + offset) * sizeof(float)), *dx = dev_from(t, x, (n + offset) * sizeof(float));
    cuda_add_f32(t->stream, dy + offset, dx + offset, n);
    float *out = download_f32(t, "add_f32", dy + offset, n);
    kernel_add(y + offset, x + offset, n);
    check_f32(t, "add_f32", shape, out, y + offset, n, TOL_F32);
    free(out);
    cuda_scale_f32(t->stream, dy + offset, -0.37f, n);
    out = download_f32(t, "scale_f32", dy + offset, n);
    kernel_scale(y + offset, -0.37f, n);
    check_f32(t, "scale_f32", shape, out, y + offset, n, TOL_F32);
    free(out), free(y), free(x);
}

static void check_bias(Parity *t, int N, int Out) {
    char shape[64];
    snprintf(shape, sizeof shape, "N=%d Out=%d", N, Out);
    size_t n = (size_t)N * Out;
    float *b = random_f32(t, (size_t)Out, 1.0f, 0.0f);
    for (int y_bf16 = 0; y_bf16 <= 1; y_bf16++) {
        float *y = random_f32(t, n, 1.0f, 0.0f);
        uint16_t *y16 = y_bf16 ? round_to_bf16(y, n) : NULL;
        arena_reset(t);
        void *dy = y_bf16 ? dev_from(t, y16, n * 2) : dev_from(t, y, n * 4);
        float *db = dev_from(t, b, (size_t)Out * 4);
        cuda_add_bias(t->stream, dy, y_bf16, db, N, Out);
        for (size_t i = 0; i < n; i++) y[i] += b[i % (size_t)Out];
        if (y_bf16) {
            uint16_t *out = download_bf16(t, "add_bias", dy, n);
            check_bf16(t, "add_bias_bf16", shape, out, y, n, TOL_BF16);
            free(out);
        } else {
            float *out = download_f32(t, "add_bias", dy, n);
            check_f32(t, "add_bias_f32", shape, out, y, n, TOL_F32);
            free(out);
        }
        free(y), free(y16);
    }
    for (int dy_bf16 = 0; dy_bf16 <= 1; dy_bf16++) {
        float *dy = random_f32(t, n, 1.0f, 0.1f);
        uint16_t *dy16 = dy_bf16 ? round_to_bf16(dy, n) : NULL;
        float *db0 = random_f32(t, (size_t)Out, 1.0f, 0.0f);  // accumulated into
        arena_reset(t);
        void *d_dy = dy_bf16 ? dev_from(t, dy16, n * 2) : dev_from(t, dy, n * 4);
        float *d_db = dev_from(t, db0, (size_t)Out * 4);
        cuda_bias_backward(t->stream, d_db, d_dy, dy_bf16, N, Out);
        float *out = download_f32(t, "bias_backward", d_db, (size_t)Out);
        for (int c = 0; c < Out; c++) {
            double s = 0;
            for (int r = 0; r < N; r++) s += dy[(size_t)r * Out + c];
            db0[c] += (float)s;
        }
        check_f32(t, dy_bf16 ? "bias_backward_dy_bf16" : "bias_backward_dy_f32", shape, out, db0, (size_t)Out, TOL_F32);
        free(out), free(dy), free(dy16), free(db0);
    }
    free(b);
}

static const char *act_names[] = {"gelu", "quick_gelu", "silu", "gelu_tanh", "relu"};

static void check_activations(Parity *t, size_t n) {
    char shape[64], name[96];
    snprintf(shape, sizeof shape, "n=%zu", n);
    for (int act = 0; act < 5; act++) {
        // forward: (x fp32, y fp32), (x bf16, y bf16), (x fp32, y bf16)
        static const int x_bf16s[3] = {0, 1, 0}, y_bf16s[3] = {0, 1, 1};
        for (int k = 0; k < 3; k++) {
            int x_bf16 = x_bf16s[k], y_bf16 = y_bf16s[k];
            float *x = random_f32(t, n, 2.5f, 0.0f);
            uint16_t *x16 = x_bf16 ? round_to_bf16(x, n) : NULL;
            float *ref = host_alloc(n * 4);
            activation_forward(ref, x, n, (Activation)act);
            arena_reset(t);
            void *dx = x_bf16 ? dev_from(t, x16, n * 2) : dev_from(t, x, n * 4);
            void *dy = y_bf16 ? (void *)dev_poison_bf16(t, n) : (void *)dev_poison_f32(t, n);
            cuda_activation_forward(t->stream, dy, y_bf16, dx, x_bf16, n, act);
            snprintf(name, sizeof name, "activation_forward_%s_x%s_y%s", act_names[act], x_bf16 ? "bf16" : "f32",
                     y_bf16 ? "bf16" : "f32");
            if (y_bf16) {
                uint16_t *out = download_bf16(t, name, dy, n);
                check_bf16(t, name, shape, out, ref, n, TOL_BF16);
                free(out);
            } else {
                float *out = download_f32(t, name, dy, n);
                check_f32(t, name, shape, out, ref, n, TOL_F32);
                free(out);
            }
            free(x), free(x16), free(ref);
        }
        // backward: dy bf16, x fp32 or bf16, dx bf16 (a separate buffer, then dx aliasing dy)
        for (int k = 0; k < 3; k++) {
            int x_bf16 = k == 1, alias = k == 2;
            float *x = random_f32(t, n, 2.5f, 0.0f), *g = random_f32(t, n, 1.0f, 0.0f);
            uint16_t *x16 = x_bf16 ? round_to_bf16(x, n) : NULL, *g16 = round_to_bf16(g, n);
            float *ref = host_alloc(n * 4);
            activation_backward(ref, g, x, n, (Activation)act);
            arena_reset(t);
            void *dx_in = x_bf16 ? dev_from(t, x16, n * 2) : dev_from(t, x, n * 4);
            uint16_t *d_dy = dev_from(t, g16, n * 2);
            uint16_t *d_dx = alias ? d_dy : dev_poison_bf16(t, n);
            cuda_activation_backward(t->stream, d_dx, d_dy, dx_in, x_bf16, n, act);
            snprintf(name, sizeof name, "activation_backward_%s_x%s%s", act_names[act], x_bf16 ? "bf16" : "f32",
                     alias ? "_dx_aliases_dy" : "");
            uint16_t *out = download_bf16(t, name, d_dx, n);
            check_bf16(t, name, shape, out, ref, n, TOL_BF16);
            free(out), free(x), free(g), free(x16), free(g16), free(ref);
        }
    }
}

static void check_swiglu(Parity *t, size_t n) {
    char shape[64];
    snprintf(shape, sizeof shape, "n=%zu", n);
    float *gate = random_f32(t, n, 2.0f, 0.0f), *up = random_f32(t, n, 1.0f, 0.0f), *dh = random_f32(t, n, 1.0f, 0.0f);
    uint16_t *gate16 = round_to_bf16(gate, n), *up16 = round_to_bf16(up, n), *dh16 = round_to_bf16(dh, n);
    float *h = host_alloc(n * 4), *dgate = host_alloc(n * 4), *dup = host_alloc(n * 4);
    swiglu_forward(h, gate, up, n);
    swiglu_backward(dgate, dup, dh, gate, up, n);
    arena_reset(t);
    uint16_t *d_gate = dev_from(t, gate16, n * 2), *d_up = dev_from(t, up16, n * 2), *d_dh = dev_from(t, dh16, n * 2);
    uint16_t *d_h = dev_poison_bf16(t, n), *d_dgate = dev_poison_bf16(t, n), *d_dup = dev_poison_bf16(t, n);
    cuda_swiglu_forward(t->stream, d_h, d_gate, d_up, n);
    cuda_swiglu_backward(t->stream, d_dgate, d_dup, d_dh, d_gate, d_up, n);
    uint16_t *o_h = download_bf16(t, "swiglu", d_h, n), *o_dgate = download_bf16(t, "swiglu", d_dgate, n),
             *o_dup = download_bf16(t, "swiglu", d_dup, n);
    check_bf16(t, "swiglu_forward", shape, o_h, h, n, TOL_BF16);
    check_bf16(t, "swiglu_backward_dgate", shape, o_dgate, dgate, n, TOL_BF16);
    check_bf16(t, "swiglu_backward_dup", shape, o_dup, dup, n, TOL_BF16);
    free(gate), free(up), free(dh), free(gate16), free(up16), free(dh16), free(h), free(dgate), free(dup);
    free(o_h), free(o_dgate), free(o_dup);
}

static void check_rope(Parity *t, int B, int L, int H, int D, float theta) {
    char shape[96];
    snprintf(shape, sizeof shape, "B=%d L=%d H=%d D=%d theta=%g", B, L, H, D, theta);
    size_t n = (size_t)B * L * H * D;
    for (int inverse = 0; inverse <= 1; inverse++) {
        float *x = random_f32(t, n, 1.0f, 0.0f);
        uint16_t *x16 = round_to_bf16(x, n);
        if (inverse)
            rope_backward(x, B, L, H, D, theta);
        else
            rope_forward(x, B, L, H, D, theta);
        arena_reset(t);
        uint16_t *dx = dev_from(t, x16, n * 2);
        cuda_rope(t->stream, dx, B, L, H, D, theta, inverse);
        uint16_t *out = download_bf16(t, "rope", dx, n);
        check_bf16(t, inverse ? "rope_inverse" : "rope_forward", shape, out, x, n, TOL_BF16);
        free(out), free(x), free(x16);
    }
}

static void check_layernorm(Parity *t, int N, int C, int with_bias) {
    char shape[64];
    snprintf(shape, sizeof shape, "N=%d C=%d%s", N, C, with_bias ? "" : " b=NULL");
    size_t n = (size_t)N * C;
    float eps = 1e-5f;
    float *x = random_f32(t, n, 1.5f, 0.3f), *w = random_f32(t, (size_t)C, 0.5f, 1.0f);
    float *b = with_bias ? random_f32(t, (size_t)C, 0.2f, 0.0f) : NULL;
    float *y = host_alloc(n * 4), *mean = host_alloc((size_t)N * 4), *rstd = host_alloc((size_t)N * 4);
    layernorm_forward(y, mean, rstd, x, w, b, N, C, eps);
    arena_reset(t);
    float *d_x = dev_from(t, x, n * 4), *d_w = dev_from(t, w, (size_t)C * 4);
    float *d_b = b ? dev_from(t, b, (size_t)C * 4) : NULL;
    for (int y_bf16 = 0; y_bf16 <= 1; y_bf16++) {
        void *d_y = y_bf16 ? (void *)dev_poison_bf16(t, n) : (void *)dev_poison_f32(t, n);
        float *d_mean = dev_poison_f32(t, (size_t)N), *d_rstd = dev_poison_f32(t, (size_t)N);
        cuda_layernorm_forward(t->stream, d_y, y_bf16, d_mean, d_rstd, d_x, d_w, d_b, N, C, eps);
        if (y_bf16) {
            uint16_t *out = download_bf16(t, "layernorm_forward", d_y, n);
            check_bf16(t, "layernorm_forward_y_bf16", shape, out, y, n, TOL_BF16);
            free(out);
        } else {
            float *out = download_f32(t, "layernorm_forward", d_y, n);
            check_f32(t, "layernorm_forward_y_f32", shape, out, y, n, TOL_F32);
            free(out);
        }
        float *o_mean = download_f32(t, "layernorm_forward", d_mean, (size_t)N),
              *o_rstd = download_f32(t, "layernorm_forward", d_rstd, (size_t)N);
        check_f32(t, y_bf16 ? "layernorm_forward_mean(y_bf16)" : "layernorm_forward_mean", shape, o_mean, mean,
                  (size_t)N, TOL_F32);
        check_f32(t, y_bf16 ? "layernorm_forward_rstd(y_bf16)" : "layernorm_forward_rstd", shape, o_rstd, rstd,
                  (size_t)N, TOL_F32);
        free(o_mean), free(o_rstd);
    }
    // Backward from the CPU's mean/rstd, so it is checked on its own.
    float *dy = random_f32(t, n, 1.0f, 0.0f);
    float *dx = host_alloc(n * 4), *dw = random_f32(t, (size_t)C, 1.0f, 0.0f), *db = random_f32(t, (size_t)C, 1.0f, 0.0f);
    float *dx_prev = random_f32(t, n, 1.0f, 0.0f);
    float *d_dy = dev_from(t, dy, n * 4), *d_mean = dev_from(t, mean, (size_t)N * 4),
          *d_rstd = dev_from(t, rstd, (size_t)N * 4);
    float *d_dx = dev_poison_f32(t, n), *d_dw = dev_from(t, dw, (size_t)C * 4), *d_db = dev_from(t, db, (size_t)C * 4);
    float *d_dx_acc = dev_from(t, dx_prev, n * 4);
    cuda_layernorm_backward(t->stream, d_dx, 0, d_dw, d_db, d_dy, d_x, d_mean, d_rstd, d_w, N, C);
    cuda_layernorm_backward(t->stream, d_dx_acc, 1, NULL, NULL, d_dy, d_x, d_mean, d_rstd, d_w, N, C);
    layernorm_backward(dx, dw, db, dy, x, mean, rstd, w, N, C);
    for (size_t i = 0; i < n; i++) dx_prev[i] += dx[i];
    float *o_dx = download_f32(t, "layernorm_backward", d_dx, n), *o_dx_acc = download_f32(t, "layernorm_backward", d_dx_acc, n);
    float *o_dw = download_f32(t, "layernorm_backward", d_dw, (size_t)C), *o_db = download_f32(t, "layernorm_backward", d_db, (size_t)C);
    check_f32(t, "layernorm_backward_dx", shape, o_dx, dx, n, TOL_F32);
    check_f32(t, "layernorm_backward_dx_accumulate", shape, o_dx_acc, dx_prev, n, TOL_F32);
    check_f32(t, "layernorm_backward_dw", shape, o_dw, dw, (size_t)C, TOL_F32);
    check_f32(t, "layernorm_backward_db", shape, o_db, db, (size_t)C, TOL_F32);
    free(x), free(w), free(b), free(y), free(mean), free(rstd), free(dy), free(dx), free(dw), free(db), free(dx_prev);
    free(o_dx), free(o_dx_acc), free(o_dw), free(o_db);
}

static void check_rmsnorm(Parity *t, int N, int C) {
    char shape[64];
    snprintf(shape, sizeof shape, "N=%d C=%d", N, C);
    size_t n = (size_t)N * C;
    float eps = 1e-6f;
    float *x = random_f32(t, n, 1.5f, 0.3f), *w = random_f32(t, (size_t)C, 0.5f, 1.0f);
    float *y = host_alloc(n * 4), *rstd = host_alloc((size_t)N * 4);
    rmsnorm_forward(y, rstd, x, w, N, C, eps);
    arena_reset(t);
    float *d_x = dev_from(t, x, n * 4), *d_w = dev_from(t, w, (size_t)C * 4);
    for (int y_bf16 = 0; y_bf16 <= 1; y_bf16++) {
        void *d_y = y_bf16 ? (void *)dev_poison_bf16(t, n) : (void *)dev_poison_f32(t, n);
        float *d_rstd = dev_poison_f32(t, (size_t)N);
        cuda_rmsnorm_forward(t->stream, d_y, y_bf16, d_rstd, d_x, d_w, N, C, eps);
        if (y_bf16) {
            uint16_t *out = download_bf16(t, "rmsnorm_forward", d_y, n);
            check_bf16(t, "rmsnorm_forward_y_bf16", shape, out, y, n, TOL_BF16);
            free(out);
        } else {
            float *out = download_f32(t, "rmsnorm_forward", d_y, n);
            check_f32(t, "rmsnorm_forward_y_f32", shape, out, y, n, TOL_F32);
            free(out);
        }
        float *o_rstd = download_f32(t, "rmsnorm_forward", d_rstd, (size_t)N);
        check_f32(t, y_bf16 ? "rmsnorm_forward_rstd(y_bf16)" : "rmsnorm_forward_rstd", shape, o_rstd, rstd, (size_t)N,
                  TOL_F32);
        free(o_rstd);
    }
    float *dy = random_f32(t, n, 1.0f, 0.0f);
    float *dx = host_alloc(n * 4), *dw = random_f32(t, (size_t)C, 1.0f, 0.0f), *dx_prev = random_f32(t, n, 1.0f, 0.0f);
    float *d_dy = dev_from(t, dy, n * 4), *d_rstd = dev_from(t, rstd, (size_t)N * 4);
    float *d_dx = dev_poison_f32(t, n), *d_dw = dev_from(t, dw, (size_t)C * 4), *d_dx_acc = dev_from(t, dx_prev, n * 4);
    cuda_rmsnorm_backward(t->stream, d_dx, 0, d_dw, d_dy, d_x, d_rstd, d_w, N, C);
    cuda_rmsnorm_backward(t->stream, d_dx_acc, 1, NULL, d_dy, d_x, d_rstd, d_w, N, C);
    rmsnorm_backward(dx, dw, dy, x, rstd, w, N, C);
    for (size_t i = 0; i < n; i++) dx_prev[i] += dx[i];
    float *o_dx = download_f32(t, "rmsnorm_backward", d_dx, n), *o_dx_acc = download_f32(t, "rmsnorm_backward", d_dx_acc, n);
    float *o_dw = download_f32(t, "rmsnorm_backward", d_dw, (size_t)C);
    check_f32(t, "rmsnorm_backward_dx", shape, o_dx, dx, n, TOL_F32);
    check_f32(t, "rmsnorm_backward_dx_accumulate", shape, o_dx_acc, dx_prev, n, TOL_F32);
    check_f32(t, "rmsnorm_backward_dw", shape, o_dw, dw, (size_t)C, TOL_F32);
    free(x), free(w), free(y), free(rstd), free(dy), free(dx), free(dw), free(dx_prev), free(o_dx), free(o_dx_acc), free(o_dw);
}

static void check_embedding(Parity *t, int V, int N, int C) {
    char shape[64];
    snprintf(shape, sizeof shape, "V=%d N=%d C=%d", V, N, C);
    size_t tn = (size_t)V * C, n = (size_t)N * C;
    float *table = random_f32(t, tn, 1.0f, 0.0f);
    uint16_t *table16 = round_to_bf16(table, tn);
    int32_t *ids = host_alloc((size_t)N * 4);
    uint8_t *skip = host_alloc((size_t)N);
    for (int i = 0; i < N; i++) {
        ids[i] = rand_int(t, V);
        skip[i] = rand_int(t, 10) == 0;
    }
    // Skipped rows keep what was there (random); the others start as NaN.
    float *out = random_f32(t, n, 1.0f, 0.0f);
    for (int i = 0; i < N; i++)
        if (!skip[i])
            for (int c = 0; c < C; c++) out[(size_t)i * C + c] = NAN;
    arena_reset(t);
    uint16_t *d_table = dev_from(t, table16, tn * 2);
    int32_t *d_ids = dev_from(t, ids, (size_t)N * 4);
    uint8_t *d_skip = dev_from(t, skip, (size_t)N);
    float *d_out = dev_from(t, out, n * 4);
    cuda_embedding_forward(t->stream, d_out, d_table, d_ids, d_skip, N, C);
    embedding_forward_bf16(out, table16, ids, skip, N, C);
    float *o = download_f32(t, "embedding_forward", d_out, n);
    check_f32(t, "embedding_forward", shape, o, out, n, TOL_F32);
    free(o);
    // Backward into a random dtable; ids repeat (atomics on one row).
    float *dtable = random_f32(t, tn, 1.0f, 0.0f), *dout = random_f32(t, n, 1.0f, 0.0f);
    float *d_dtable = dev_from(t, dtable, tn * 4), *d_dout = dev_from(t, dout, n * 4);
    cuda_embedding_backward(t->stream, d_dtable, d_dout, d_ids, d_skip, N, C);
    embedding_backward(dtable, dout, ids, skip, N, C);
    o = download_f32(t, "embedding_backward", d_dtable, tn);
    check_f32(t, "embedding_backward", shape, o, dtable, tn, TOL_F32);
    free(o), free(table), free(table16), free(ids), free(skip), free(out), free(dtable), free(dout);
}

static void check_rows(Parity *t, int n_rows, int C) {
    char shape[64];
    snprintf(shape, sizeof shape, "n=%d C=%d", n_rows, C);
    size_t n = (size_t)n_rows * C;
    int dst_rows = n_rows + 3;
    size_t dn = (size_t)dst_rows * C;
    // scatter: index = n_rows distinct rows of dst_rows (a shuffled prefix)
    int32_t *perm = host_alloc((size_t)dst_rows * 4);
    for (int i = 0; i < dst_rows; i++) perm[i] = i;
    for (int i = dst_rows - 1; i > 0; i--) {
        int j = rand_int(t, i + 1);
        int32_t tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
    float *src = random_f32(t, n, 1.0f, 0.0f), *dst = random_f32(t, dn, 1.0f, 0.0f);
    for (int i = 0; i < n_rows; i++)
        for (int c = 0; c < C; c++) dst[(size_t)perm[i] * C + c] = NAN;
    arena_reset(t);
    int32_t *d_perm = dev_from(t, perm, (size_t)n_rows * 4);
    float *d_src = dev_from(t, src, n * 4), *d_dst = dev_from(t, dst, dn * 4);
    cuda_rows_scatter(t->stream, d_dst, d_perm, d_src, n_rows, C);
    rows_scatter(dst, perm, src, n_rows, C);
    float *o = download_f32(t, "rows_scatter", d_dst, dn);
    check_exact(t, "rows_scatter", shape, o, dst, dn, 4);
    free(o);
    // gather with repeats, fp32 and bf16
    int32_t *index = host_alloc((size_t)n_rows * 4);
    for (int i = 0; i < n_rows; i++) index[i] = rand_int(t, dst_rows);
    float *table = random_f32(t, dn, 1.0f, 0.0f), *ref = host_alloc(n * 4);
    rows_gather(ref, table, index, n_rows, C);
    int32_t *d_index = dev_from(t, index, (size_t)n_rows * 4);
    float *d_table = dev_from(t, table, dn * 4), *d_out = dev_poison_f32(t, n);
    cuda_rows_gather(t->stream, d_out, d_table, d_index, n_rows, C, 4);
    o = download_f32(t, "rows_gather", d_out, n);
    check_exact(t, "rows_gather_f32", shape, o, ref, n, 4);
    uint16_t *table16 = round_to_bf16(table, dn), *ref16 = host_alloc(n * 2);
    for (int i = 0; i < n_rows; i++) memcpy(ref16 + (size_t)i * C, table16 + (size_t)index[i] * C, (size_t)C * 2);
    uint16_t *d_table16 = dev_from(t, table16, dn * 2), *d_out16 = dev_poison_bf16(t, n);
    cuda_rows_gather(t->stream, d_out16, d_table16, d_index, n_rows, C, 2);
    uint16_t *o16 = download_bf16(t, "rows_gather", d_out16, n);
    check_exact(t, "rows_gather_bf16", shape, o16, ref16, n, 2);
    free(perm), free(src), free(dst), free(o), free(index), free(table), free(ref), free(table16), free(ref16), free(o16);
}

static void check_vision_input(Parity *t, int n_img, int ch, int S, int p, int C) {
    char shape[96];
    int G = S / p, P = G * G, K = ch * p * p;
    snprintf(shape, sizeof shape, "n=%d ch=%d S=%d p=%d", n_img, ch, S, p);
    size_t npix = (size_t)n_img * ch * S * S, npatch = (size_t)n_img * P * K;
    float *pixels = random_f32(t, npix, 1.0f, 0.0f), *patches = host_alloc(npatch * 4);
    patches_from_pixels(patches, pixels, n_img, ch, S, p);
    uint16_t *ref16 = host_alloc(npatch * 2);
    bf16_from_f32(ref16, patches, npatch);
    arena_reset(t);
    float *d_pixels = dev_from(t, pixels, npix * 4);
    uint16_t *d_patches = dev_poison_bf16(t, npatch);
    cuda_patches_from_pixels(t->stream, d_patches, d_pixels, n_img, ch, S, p);
    uint16_t *o16 = download_bf16(t, "patches_from_pixels", d_patches, npatch);
    check_exact(t, "patches_from_pixels", shape, o16, ref16, npatch, 2);
    // class token + positions, then dropping the class rows
    snprintf(shape, sizeof shape, "n=%d P=%d C=%d", n_img, P, C);
    size_t nemb = (size_t)n_img * P * C, nout = (size_t)n_img * (P + 1) * C;
    float *emb = random_f32(t, nemb, 1.0f, 0.0f), *cls = random_f32(t, (size_t)C, 1.0f, 0.0f),
          *pos = random_f32(t, (size_t)(P + 1) * C, 1.0f, 0.0f), *out = host_alloc(nout * 4), *dropped = host_alloc(nemb * 4);
    vision_embed_forward(out, emb, cls, pos, n_img, P, C);
    drop_first_row(dropped, out, n_img, P, C);
    float *d_emb = dev_from(t, emb, nemb * 4), *d_cls = dev_from(t, cls, (size_t)C * 4),
          *d_pos = dev_from(t, pos, (size_t)(P + 1) * C * 4), *d_out = dev_poison_f32(t, nout), *d_dropped = dev_poison_f32(t, nemb);
    cuda_vision_embed_forward(t->stream, d_out, d_emb, d_cls, d_pos, n_img, P, C);
    float *o = download_f32(t, "vision_embed_forward", d_out, nout);
    check_f32(t, "vision_embed_forward", shape, o, out, nout, TOL_F32);
    float *d_out_cpu = dev_from(t, out, nout * 4);  // drop_first_row on the CPU's embeddings
    cuda_drop_first_row(t->stream, d_dropped, d_out_cpu, n_img, P, C);
    float *od = download_f32(t, "drop_first_row", d_dropped, nemb);
    check_exact(t, "drop_first_row", shape, od, dropped, nemb, 4);
    free(pixels), free(patches), free(ref16), free(o16), free(emb), free(cls), free(pos), free(out), free(dropped);
    free(o), free(od);
}

static void check_cross_entropy(Parity *t, int N, int V) {
    char shape[64];
    snprintf(shape, sizeof shape, "N=%d V=%d", N, V);
    size_t n = (size_t)N * V;
    float *logits = random_f32(t, n, 2.0f, 0.0f);
    int32_t *targets = host_alloc((size_t)N * 4);
    int counted = 0;
    for (int i = 0; i < N; i++) {
        targets[i] = (i % 8 == 3) ? KERNEL_IGNORE_INDEX : rand_int(t, V);
        if (targets[i] != KERNEL_IGNORE_INDEX) counted++;
        if (i % 5 == 1)  // a shifted row: the max subtraction must hold it
            for (int v = 0; v < V; v++) logits[(size_t)i * V + v] += 40.0f;
    }
    float row_scale = counted ? 1.0f / (float)counted : 1.0f;
    float *lse = host_alloc((size_t)N * 4), *loss = host_alloc((size_t)N * 4), *dlogits = copy_f32(logits, n);
    cross_entropy_forward(lse, logits, targets, N, V);
    for (int i = 0; i < N; i++)
        loss[i] = targets[i] == KERNEL_IGNORE_INDEX ? 0.0f : lse[i] - logits[(size_t)i * V + targets[i]];
    cross_entropy_backward(dlogits, lse, targets, N, V, row_scale);
    arena_reset(t);
    float *d_logits = dev_from(t, logits, n * 4), *d_loss = dev_poison_f32(t, (size_t)N);
    int32_t *d_targets = dev_from(t, targets, (size_t)N * 4);
    uint16_t *d_dlogits = dev_poison_bf16(t, n);
    cuda_cross_entropy(t->stream, d_loss, d_dlogits, d_logits, d_targets, N, V, row_scale);
    float *o_loss = download_f32(t, "cross_entropy", d_loss, (size_t)N);
    uint16_t *o_d = download_bf16(t, "cross_entropy", d_dlogits, n);
    check_f32(t, "cross_entropy_loss_rows", shape, o_loss, loss, (size_t)N, TOL_F32);
    check_bf16(t, "cross_entropy_dlogits", shape, o_d, dlogits, n, TOL_BF16);
    // loss only (dlogits NULL)
    float *d_loss2 = dev_poison_f32(t, (size_t)N);
    cuda_cross_entropy(t->stream, d_loss2, NULL, d_logits, d_targets, N, V, row_scale);
    float *o_loss2 = download_f32(t, "cross_entropy", d_loss2, (size_t)N);
    check_f32(t, "cross_entropy_loss_only", shape, o_loss2, loss, (size_t)N, TOL_F32);
    free(logits), free(targets), free(lse), free(loss), free(dlogits), free(o_loss), free(o_d), free(o_loss2);
}

static void check_sums(Parity *t, size_t n) {
    char shape[64];
    snprintf(shape, sizeof shape, "n=%zu", n);
    float *x = random_f32(t, n, 1.0f, 0.2f);
    double start = 2.5, sum = start, sum_sq = start;
    for (size_t i = 0; i < n; i++) {
        sum += x[i];
        sum_sq += (double)x[i] * x[i];
    }
    arena_reset(t);
    float *d_x = dev_from(t, x, n * 4);
    double *d_sum = dev_from(t, &start, 8), *d_sq = dev_from(t, &start, 8);
    cuda_sum_accumulate(t->stream, d_sum, d_x, n);
    cuda_sum_squares_accumulate(t->stream, d_sq, d_x, n);
    double *o_sum = download(t, "sum_accumulate", d_sum, 8), *o_sq = download(t, "sum_squares_accumulate", d_sq, 8);
    double e1 = fabs(*o_sum - sum) / fabs(sum), e2 = fabs(*o_sq - sum_sq) / fabs(sum_sq);
    report(t, isfinite(*o_sum) && e1 <= TOL_DOUBLE, "sum_accumulate", shape, e1, TOL_DOUBLE, "");
    report(t, isfinite(*o_sq) && e2 <= TOL_DOUBLE, "sum_squares_accumulate", shape, e2, TOL_DOUBLE, "");
    free(x), free(o_sum), free(o_sq);
}

static void check_adamw(Parity *t, size_t n, int decay, int with_coef, int with_bf16) {
    char shape[96], name[96];
    snprintf(shape, sizeof shape, "n=%zu decay=%d coef=%s p_bf16=%s", n, decay, with_coef ? "0.37" : "NULL",
             with_bf16 ? "yes" : "NULL");
    float *p = random_f32(t, n, 0.02f, 0.0f), *g = random_f32(t, n, 1e-3f, 0.0f), *m = random_f32(t, n, 1e-3f, 0.0f);
    float *v = random_f32(t, n, 1e-3f, 0.0f);
    for (size_t i = 0; i < n; i++) v[i] *= v[i];
    float coef = 0.37f;
    AdamWScalars s = adamw_scalars(0.9, 0.999, 1e-8, 0.01, 3, 2e-4);
    CudaAdamWScalars cs = {s.decay_keep, s.beta1, s.one_minus_beta1, s.beta2, s.one_minus_beta2,
                           s.step_size, s.bc2_sqrt, s.eps};
    arena_reset(t);
    float *d_p = dev_from(t, p, n * 4), *d_g = dev_from(t, g, n * 4), *d_m = dev_from(t, m, n * 4),
          *d_v = dev_from(t, v, n * 4);
    float *d_coef = with_coef ? dev_from(t, &coef, 4) : NULL;
    uint16_t *d_p16 = with_bf16 ? dev_poison_bf16(t, n) : NULL;
    cuda_adamw_update(t->stream, d_p, d_p16, d_g, d_m, d_v, n, decay, cs, d_coef);
    // CPU: clip_grad_norm's g *= c, then the step.
    if (with_coef)
        for (size_t i = 0; i < n; i++) g[i] *= coef;
    adamw_update_span(p, g, m, v, n, decay, &s);
    float *o_p = download_f32(t, "adamw", d_p, n), *o_m = download_f32(t, "adamw", d_m, n),
          *o_v = download_f32(t, "adamw", d_v, n);
    check_ulps(t, "adamw_p", shape, o_p, p, n, 1);
    check_ulps(t, "adamw_m", shape, o_m, m, n, 1);
    check_ulps(t, "adamw_v", shape, o_v, v, n, 1);
    if (with_bf16) {
        uint16_t *o16 = download_bf16(t, "adamw", d_p16, n), *ref16 = host_alloc(n * 2);
        bf16_from_f32(ref16, o_p, n);  // the bf16 copy of the device's own fp32 result
        snprintf(name, sizeof name, "adamw_p_bf16");
        check_exact(t, name, shape, o16, ref16, n, 2);
        free(o16), free(ref16);
    }
    free(p), free(g), free(m), free(v), free(o_p), free(o_m), free(o_v);
}

// The multi-tensor update (tensors of mixed sizes, decay and bf16 copies,
// cut into chunks of chunk elements) against the single-tensor kernel: the
// same element math, so the same bits; and its sum of squares against the
// per-tensor sums.
static void check_adamw_multi(Parity *t, size_t chunk) {
    enum { T = 5 };
    size_t sizes[T] = {1, 4096, 100003, 8, 262144};
    char shape[96];
    snprintf(shape, sizeof shape, "%d tensors, chunks of %zu", T, chunk);
    AdamWScalars s = adamw_scalars(0.9, 0.999, 1e-8, 0.01, 7, 3e-4);
    CudaAdamWScalars cs = {s.decay_keep, s.beta1, s.one_minus_beta1, s.beta2, s.one_minus_beta2,
                           s.step_size, s.bc2_sqrt, s.eps};
    float coef = 0.61f;
    arena_reset(t);
    float *d_coef = dev_from(t, &coef, 4);
    CudaAdamWTensor multi[T], single[T];
    CudaTensorChunk chunks[512];
    int n_chunks = 0;
    double sum_sq_ref = 0;
    for (int i = 0; i < T; i++) {
        size_t n = sizes[i];
        float *p = random_f32(t, n, 0.02f, 0.0f), *g = random_f32(t, n, 1e-3f, 0.0f);
        float *m = random_f32(t, n, 1e-3f, 0.0f), *v = random_f32(t, n, 1e-3f, 0.0f);
        for (size_t j = 0; j < n; j++) v[j] *= v[j];
        for (size_t j = 0; j < n; j++) sum_sq_ref += (double)g[j] * g[j];
        CudaAdamWTensor *pair[2] = {&multi[i], &single[i]};
        for (int k = 0; k < 2; k++)
            *pair[k] = (CudaAdamWTensor){.p = dev_from(t, p, n * 4), .g = dev_from(t, g, n * 4),
                                         .m = dev_from(t, m, n * 4), .v = dev_from(t, v, n * 4), .n = n,
                                         .decay = i % 2, .p_bf16 = i % 3 ? dev_poison_bf16(t, n) : NULL};
        for (size_t off = 0; off < n; off += chunk)
            chunks[n_chunks++] = (CudaTensorChunk){.tensor = i, .offset = off, .length = n - off < chunk ? n - off : chunk};
        free(p), free(g), free(m), free(v);
    }
    CudaAdamWTensor *d_tensors = dev_from(t, multi, sizeof multi);
    CudaTensorChunk *d_chunks = dev_from(t, chunks, sizeof(CudaTensorChunk) * (size_t)n_chunks);
    double zero = 0;
    double *d_sum = dev_from(t, &zero, 8);
    cuda_grad_sum_squares_multi(t->stream, d_sum, d_tensors, d_chunks, n_chunks);
    cuda_adamw_update_multi(t->stream, d_tensors, d_chunks, n_chunks, cs, d_coef);
    for (int i = 0; i < T; i++)
        cuda_adamw_update(t->stream, single[i].p, single[i].p_bf16, single[i].g, single[i].m, single[i].v, single[i].n,
                          single[i].decay, cs, d_coef);
    double *sum_sq = download(t, "grad_sum_squares_multi", d_sum, 8);
    double rel = fabs(*sum_sq - sum_sq_ref) / sum_sq_ref;
    report(t, rel <= 1e-9, "grad_sum_squares_multi", shape, rel, 1e-9, "");
    free(sum_sq);
    for (int i = 0; i < T; i++) {
        size_t n = sizes[i];
        float *a[3] = {multi[i].p, multi[i].m, multi[i].v}, *b[3] = {single[i].p, single[i].m, single[i].v};
        const char *names[3] = {"adamw_multi_p", "adamw_multi_m", "adamw_multi_v"};
        for (int k = 0; k < 3; k++) {
            float *x = download_f32(t, names[k], a[k], n), *y = download_f32(t, names[k], b[k], n);
            check_exact(t, names[k], shape, x, y, n, 4);
            free(x), free(y);
        }
        if (multi[i].p_bf16) {
            uint16_t *x = download_bf16(t, "adamw_multi_bf16", multi[i].p_bf16, n);
            uint16_t *y = download_bf16(t, "adamw_multi_bf16", single[i].p_bf16, n);
            check_exact(t, "adamw_multi_p_bf16", shape, x, y, n, 2);
            free(x), free(y);
        }
    }
}

static void check_clip_coef(Parity *t, double sum_squares, float max_norm) {
    char shape[64];
    snprintf(shape, sizeof shape, "sum_sq=%g max_norm=%g", sum_squares, max_norm);
    double norm = sqrt(sum_squares);
    float ref[2] = {(float)norm, 1.0f};
    if (max_norm > 0) {
        double c = max_norm / (norm + 1e-6);
        if (c < 1.0) ref[1] = (float)c;
    }
    arena_reset(t);
    double *d_sum = dev_from(t, &sum_squares, 8);
    float *d_out = dev_poison_f32(t, 2);
    cuda_clip_coef(t->stream, d_out + 1, d_out, d_sum, max_norm);
    float *o = download_f32(t, "clip_coef", d_out, 2);
    check_exact(t, "clip_coef_norm_and_coef", shape, o, ref, 2, 4);
    free(o);
}

int main(int argc, char **argv) {
    if (!cuda_available()) {
        printf("SKIP: no CUDA device (cudaGetDeviceCount found none or failed)\n");
        return 77;
    }
    Parity t = {0};
    t.rng = argc > 1 ? strtoull(argv[1], NULL, 10) : 20240611;
    Error err;
    if (cuda_open(0, &t.ctx, &err) != 0) {
        printf("SKIP: no CUDA device (%s)\n", err.message);
        return 77;
    }
    kernel_init(0);
    t.stream = cuda_stream(t.ctx);
    t.arena = cuda_malloc(t.ctx, ARENA_BYTES, "kernel_parity arena", &err);
    if (t.arena == NULL) {
        printf("FAIL arena: %s\n0 passed, 1 failed\n", err.message);
        return 1;
    }
    printf("kernel_parity on %s (seed %llu)\n", cuda_device_name(t.ctx), (unsigned long long)t.rng);

    check_conversions(&t, 7);
    check_conversions(&t, 1000003);
    check_add_scale(&t, 13, 0);
    check_add_scale(&t, 1000003, 0);
    check_add_scale(&t, 1000003, 1);
    check_bias(&t, 5, 33);
    check_bias(&t, 2048, 4096);
    check_activations(&t, 1000);
    check_activations(&t, ((size_t)1 << 20) + 3);
    check_swiglu(&t, 101);
    check_swiglu(&t, 3000001);
    check_rope(&t, 2, 37, 3, 16, 10000.0f);
    check_rope(&t, 1, 2048, 32, 128, 5000000.0f);
    check_rope(&t, 2, 300, 4, 80, 10000.0f);
    check_layernorm(&t, 7, 33, 1);
    check_layernorm(&t, 7, 33, 0);
    check_layernorm(&t, 1025, 1280, 1);
    check_layernorm(&t, 2048, 4096, 1);
    check_rmsnorm(&t, 7, 33);
    check_rmsnorm(&t, 2048, 4096);
    check_embedding(&t, 10, 7, 33);
    check_embedding(&t, 5000, 2048, 4096);
    check_embedding(&t, 50, 2048, 4096);  // many rows share an id
    check_rows(&t, 9, 33);
    check_rows(&t, 2048, 4096);
    check_vision_input(&t, 2, 3, 28, 14, 33);
    check_vision_input(&t, 3, 3, 30, 7, 5);  // S not a multiple of p
    check_vision_input(&t, 1, 3, 448, 14, 1280);
    check_cross_entropy(&t, 5, 100);
    check_cross_entropy(&t, 64, 64000);
    check_cross_entropy(&t, 2048, 1000);
    check_sums(&t, 1000);
    check_sums(&t, 3000001);
    for (int decay = 0; decay <= 1; decay++)
        for (int with_coef = 0; with_coef <= 1; with_coef++)
            for (int with_bf16 = 0; with_bf16 <= 1; with_bf16++) check_adamw(&t, 3000001, decay, with_coef, with_bf16);
    check_adamw(&t, 1000, 1, 1, 1);
    check_adamw_multi(&t, 65536);
    check_adamw_multi(&t, 1000);
    check_clip_coef(&t, 16.0, 1.0f);   // norm 4: clipped
    check_clip_coef(&t, 0.25, 1.0f);   // norm 0.5: coefficient 1
    check_clip_coef(&t, 16.0, 0.0f);   // no clipping asked
    check_clip_coef(&t, 123.456, 0.5f);

    printf("%d passed, %d failed\n", t.passed, t.failed);
    cuda_close(t.ctx);
    return t.failed > 0 ? 1 : 0;
}
