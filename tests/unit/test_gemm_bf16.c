// The bf16 GEMM seam (src/kernels/cpu/gemm_bf16.c) against a double
// reference computed on the bf16-rounded inputs: every transpose, odd and
// panel-crossing shapes, strided inputs, alpha/beta, fp32 and bf16 inputs, for
// both implementations (oneDNN and the OpenBLAS fallback); the rounding
// itself; the bf16 Linear and embedding built on it.
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/base/dtype.h"
#include "../../src/base/rng.h"
#include "../../src/kernels/kernels.h"

static uint32_t bits_of(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float float_of(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

// The bf16 value of an fp32 one, by the definition: the representable bf16
// values around x are x with its low 16 bits cleared (toward zero) and that
// plus one bf16 ulp; take the nearer, the even one on a tie. Written without
// the bias trick the kernel uses, so the two can disagree.
static double bf16_value(float x) {
    if (isnan(x)) return x;
    uint32_t u = bits_of(x);
    uint32_t down = u & 0xffff0000u, rest = u & 0xffffu;
    uint32_t chosen = down;
    if (rest > 0x8000u || (rest == 0x8000u && (down & 0x10000u))) chosen = down + 0x10000u;
    return (double)float_of(chosen);
}

Test(bf16, rounding_to_nearest_even) {
    struct {
        uint32_t in;
        uint16_t out;
    } cases[] = {
        {0x3f800000u, 0x3f80}, {0x3f808000u, 0x3f80},  // tie: stays even
        {0x3f818000u, 0x3f82},                         // tie: up to even
        {0x3f808001u, 0x3f81}, {0x3f807fffu, 0x3f80},  // above / below half
        {0xbf808001u, 0xbf81},                         // sign kept
        {0x7f7fffffu, 0x7f80},                         // FLT_MAX rounds to +inf
        {0x7f800000u, 0x7f80}, {0xff800000u, 0xff80},  // infinities
        {0x80000000u, 0x8000},                         // -0
        {0x00008000u, 0x0000}, {0x00018000u, 0x0002},  // subnormal ties
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        float x = float_of(cases[i].in);
        uint16_t got;
        bf16_from_f32(&got, &x, 1);
        cr_assert_eq(got, cases[i].out, "0x%08x -> 0x%04x, expected 0x%04x", cases[i].in, got, cases[i].out);
        float back;
        f32_from_bf16(&back, &got, 1);
        cr_assert_eq(bits_of(back), (uint32_t)cases[i].out << 16);
    }
    float nan = float_of(0x7fa00001u);  // a signalling NaN stays a NaN
    uint16_t h;
    bf16_from_f32(&h, &nan, 1);
    cr_assert((h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0, "NaN became 0x%04x", h);
    // Many random patterns against the definition and against base/dtype.c.
    Rng rng;
    rng_seed(&rng, 5);
    enum { n = 100000 };
    float *x = malloc(n * sizeof(float));
    uint16_t *y = malloc(n * sizeof(uint16_t));
    for (int i = 0; i < n; i++) {
        uint32_t u = (uint32_t)(rng_uniform(&rng) * 4294967296.0);
        x[i] = isnan(float_of(u)) ? 1.0f : float_of(u);
    }
    bf16_from_f32(y, x, n);
    for (int i = 0; i < n; i++) {
        cr_assert_eq(y[i], f32_to_bf16(x[i]));
        cr_assert_eq((double)float_of((uint32_t)y[i] << 16), bf16_value(x[i]), "0x%08x", bits_of(x[i]));
    }
    free(x);
    free(y);
}

// A test matrix: fp32 values (normal, spread over a few binades so rounding
// matters) and the same rounded to bf16.
typedef struct {
    float *f32;
    uint16_t *bf16;
    size_t n;
} Matrix;

static Matrix matrix(Rng *rng, size_t n) {
    Matrix m = {malloc((n ? n : 1) * sizeof(float)), malloc((n ? n : 1) * sizeof(uint16_t)), n};
    cr_assert(m.f32 && m.bf16);
    for (size_t i = 0; i < n; i++) m.f32[i] = (float)(rng_normal(rng) * exp(rng_normal(rng)));
    bf16_from_f32(m.bf16, m.f32, n);
    return m;
}

static void matrix_free(Matrix *m) {
    free(m->f32);
    free(m->bf16);
}

static Bf16Input input(const Matrix *m, int as_bf16) {
    return as_bf16 ? (Bf16Input){.bf16 = m->bf16} : (Bf16Input){.f32 = m->f32};
}

typedef struct {
    int ta, tb, M, N, K, pad;  // pad: extra elements on every row stride
    float alpha, beta;
    int a_bf16, b_bf16;
} Case;

// Runs one case with the current implementation and checks it element by
// element: |C - ref| <= (K + 4) * 2^-24 * (|alpha| sum_k |a b| + |beta c0|),
// the bound of fp32 summation in any order. Returns how many elements the
// same bound would have REJECTED against the unrounded inputs' product, so a
// caller can assert that the inputs really were rounded.
static int run_case(const Case *c, Rng *rng) {
    int a_rows = c->ta ? c->K : c->M, a_cols = c->ta ? c->M : c->K;
    int b_rows = c->tb ? c->N : c->K, b_cols = c->tb ? c->K : c->N;
    int lda = a_cols + c->pad, ldb = b_cols + c->pad, ldc = c->N + c->pad;
    Matrix A = matrix(rng, (size_t)a_rows * lda), B = matrix(rng, (size_t)b_rows * ldb);
    Matrix C0 = matrix(rng, (size_t)c->M * ldc);
    float *C = malloc(((size_t)c->M * ldc + 1) * sizeof(float));
    memcpy(C, C0.f32, (size_t)c->M * ldc * sizeof(float));
    if (c->beta == 0.0f)  // beta 0 must ignore C entirely, NaN included
        for (size_t i = 0; i < (size_t)c->M * ldc; i++) C[i] = NAN;
    gemm_bf16(c->ta, c->tb, c->M, c->N, c->K, c->alpha, input(&A, c->a_bf16), lda, input(&B, c->b_bf16), ldb, c->beta,
              C, ldc);
    int unrounded_rejects = 0;
    const double u = 1.0 / 16777216.0;
    for (int m = 0; m < c->M; m++) {
        for (int n = 0; n < c->N; n++) {
            double sum = 0, sum_abs = 0, raw = 0;
            for (int k = 0; k < c->K; k++) {
                size_t ai = c->ta ? (size_t)k * lda + m : (size_t)m * lda + k;
                size_t bi = c->tb ? (size_t)n * ldb + k : (size_t)k * ldb + n;
                double a = bf16_value(A.f32[ai]), b = bf16_value(B.f32[bi]);
                sum += a * b;
                sum_abs += fabs(a * b);
                raw += (double)A.f32[ai] * B.f32[bi];
            }
            double c0 = c->beta == 0.0f ? 0.0 : (double)c->beta * C0.f32[(size_t)m * ldc + n];
            double want = c->alpha * sum + c0;
            double tol = (c->K + 4) * u * (fabs(c->alpha) * sum_abs + fabs(c0)) + 1e-35;
            double got = C[(size_t)m * ldc + n];
            cr_assert(fabs(got - want) <= tol,
                      "%s ta=%d tb=%d %dx%dx%d: C[%d,%d] = %.9g, expected %.9g (tolerance %.3g)",
                      gemm_bf16_impl_name(gemm_bf16_impl()), c->ta, c->tb, c->M, c->N, c->K, m, n, got, want, tol);
            if (fabs(c->alpha * raw + c0 - want) > tol) unrounded_rejects++;
        }
        // Padding columns of C are never written.
        for (int n = c->N; n < ldc; n++) {
            float pad = C[(size_t)m * ldc + n];
            cr_assert(c->beta == 0.0f ? isnan(pad) : pad == C0.f32[(size_t)m * ldc + n]);
        }
    }
    matrix_free(&A);
    matrix_free(&B);
    matrix_free(&C0);
    free(C);
    return unrounded_rejects;
}

// Every transpose of one shape, with fp32 and bf16 inputs in turn.
static int shape_cases(const int *shape, int index, int large, Rng *rng) {
    int rejects = 0;
    for (int t = 0; t < 4; t++) {
        for (int kinds = 0; kinds < 4; kinds++) {
            if (large && kinds > 1) continue;  // large: bf16 weights, or both fp32
            Case c = {.ta = t & 1, .tb = t >> 1, .M = shape[0], .N = shape[1], .K = shape[2],
                      .pad = (index + t) % 3, .alpha = (kinds & 2) ? 0.5f : 1.0f,
                      .beta = (t + index) % 2 ? 1.5f : 0.0f, .a_bf16 = kinds == 3, .b_bf16 = kinds == 1 || kinds == 2};
            rejects += run_case(&c, rng);
        }
    }
    return rejects;
}

static void all_cases(Bf16GemmImpl impl, int large) {
    cr_assert_eq(gemm_bf16_set_impl(impl), 0);
    cr_assert_eq(gemm_bf16_impl(), impl);
    Rng rng;
    rng_seed(&rng, 11 + impl);
    const int small[][3] = {{1, 1, 1}, {3, 5, 7}, {17, 33, 65}, {64, 3, 130}, {2, 70, 9}};
    const int big[][3] = {
        {37, 301, 129},  // more than 4e6 flops: threads split C
        {3, 9000, 600},  // B in depth blocks, and on one thread in several panels
        {9000, 2, 600},  // A likewise
    };
    int rejects = 0;
    if (!large) {
        for (int s = 0; s < 5; s++) rejects += shape_cases(small[s], s, 0, &rng);
    } else {
        kernel_init(0);  // all threads: C split between them
        rejects += shape_cases(big[0], 0, 1, &rng);
        kernel_init(1);  // one thread: several panels on it
        for (int s = 1; s < 3; s++) rejects += shape_cases(big[s], s, 1, &rng);
        kernel_init(0);
    }
    // The unrounded product falls outside the tolerance somewhere: the
    // checks above can tell rounded inputs from unrounded ones.
    cr_assert_gt(rejects, 0);
    gemm_bf16_set_impl(BF16_GEMM_FALLBACK);
}

Test(bf16, gemm_fallback_small) { all_cases(BF16_GEMM_FALLBACK, 0); }
Test(bf16, gemm_fallback_panels, .timeout = 300) { all_cases(BF16_GEMM_FALLBACK, 1); }
Test(bf16, gemm_onednn_small) { all_cases(BF16_GEMM_ONEDNN, 0); }
Test(bf16, gemm_onednn_large, .timeout = 300) { all_cases(BF16_GEMM_ONEDNN, 1); }

Test(bf16, gemm_k_zero_scales_c) {
    float C[6] = {1, 2, 3, 4, 5, 6};
    float A[1] = {0}, B[1] = {0};
    for (int impl = 0; impl < 2; impl++) {
        gemm_bf16_set_impl((Bf16GemmImpl)impl);
        gemm_bf16(0, 0, 2, 3, 0, 1.0f, (Bf16Input){.f32 = A}, 1, (Bf16Input){.f32 = B}, 3, 2.0f, C, 3);
    }
    for (int i = 0; i < 6; i++) cr_assert_eq(C[i], 4.0f * (i + 1));
    gemm_bf16_set_impl(BF16_GEMM_FALLBACK);
}

// The two implementations agree with each other as closely as two fp32
// summation orders can, on repeated calls (cached oneDNN primitives reused
// with other buffers).
Test(bf16, implementations_agree_and_cache_reuse) {
    Rng rng;
    rng_seed(&rng, 3);
    int M = 50, N = 70, K = 90;
    float *out[2][2];
    for (int round = 0; round < 2; round++) {
        Matrix A = matrix(&rng, (size_t)M * K), B = matrix(&rng, (size_t)N * K);
        for (int impl = 0; impl < 2; impl++) {
            gemm_bf16_set_impl((Bf16GemmImpl)impl);
            out[round][impl] = calloc((size_t)M * N, sizeof(float));
            gemm_bf16(0, 1, M, N, K, 1.0f, input(&A, 0), K, input(&B, 1), K, 0.0f, out[round][impl], N);
        }
        for (int i = 0; i < M * N; i++) {
            float a = out[round][0][i], b = out[round][1][i];
            cr_assert(fabsf(a - b) <= 1e-4f * (1.0f + fabsf(a)), "round %d element %d: %g vs %g", round, i, a, b);
        }
        matrix_free(&A);
        matrix_free(&B);
    }
    // Different inputs gave different outputs (the second call did not reuse stale buffers).
    cr_assert(memcmp(out[0][1], out[1][1], sizeof(float) * M * N) != 0);
    for (int r = 0; r < 2; r++)
        for (int i = 0; i < 2; i++) free(out[r][i]);
    gemm_bf16_set_impl(BF16_GEMM_FALLBACK);
}

// linear_forward_bf16 / linear_backward_bf16 = the fp32 Linear on rounded
// x, dy and w; bias and its gradient in fp32 from the unrounded values.
Test(bf16, linear_matches_rounded_fp32_linear) {
    Rng rng;
    rng_seed(&rng, 8);
    int N = 13, In = 21, Out = 17;
    Matrix x = matrix(&rng, (size_t)N * In), w = matrix(&rng, (size_t)Out * In), dy = matrix(&rng, (size_t)N * Out);
    Matrix b = matrix(&rng, Out);
    float *xr = malloc(sizeof(float) * N * In), *wr = malloc(sizeof(float) * Out * In), *dyr = malloc(sizeof(float) * N * Out);
    f32_from_bf16(xr, x.bf16, (size_t)N * In);
    f32_from_bf16(wr, w.bf16, (size_t)Out * In);
    f32_from_bf16(dyr, dy.bf16, (size_t)N * Out);
    for (int weights_bf16 = 0; weights_bf16 < 2; weights_bf16++) {
        float y[13 * 17], y_ref[13 * 17], dx[13 * 21], dx_ref[13 * 21], dw[17 * 21] = {0}, dw_ref[17 * 21] = {0};
        float db[17] = {0}, db_ref[17] = {0};
        linear_forward_bf16(y, x.f32, input(&w, weights_bf16), b.f32, N, In, Out);
        linear_forward(y_ref, xr, wr, b.f32, N, In, Out);
        linear_backward_bf16(dx, 0, dw, db, dy.f32, x.f32, input(&w, weights_bf16), N, In, Out);
        linear_backward(dx_ref, 0, NULL, NULL, dyr, xr, wr, N, In, Out);
        linear_backward(NULL, 0, dw_ref, NULL, dyr, xr, wr, N, In, Out);
        linear_backward(NULL, 0, NULL, db_ref, dy.f32, xr, wr, N, In, Out);
        for (int i = 0; i < N * Out; i++) cr_assert_float_eq(y[i], y_ref[i], 1e-4f * (1 + fabsf(y_ref[i])));
        for (int i = 0; i < N * In; i++) cr_assert_float_eq(dx[i], dx_ref[i], 1e-4f * (1 + fabsf(dx_ref[i])));
        for (int i = 0; i < Out * In; i++) cr_assert_float_eq(dw[i], dw_ref[i], 1e-4f * (1 + fabsf(dw_ref[i])));
        for (int i = 0; i < Out; i++) cr_assert_float_eq(db[i], db_ref[i], 1e-5f * (1 + fabsf(db_ref[i])));
    }
    matrix_free(&x);
    matrix_free(&w);
    matrix_free(&dy);
    matrix_free(&b);
    free(xr);
    free(wr);
    free(dyr);
}

Test(bf16, embedding_rows) {
    uint16_t table[3 * 4];
    for (int i = 0; i < 12; i++) table[i] = (uint16_t)(0x3f80 + i);  // 1.0, 1.0078125, ...
    int32_t ids[3] = {2, 0, 1};
    uint8_t skip[3] = {0, 1, 0};
    float out[12];
    for (int i = 0; i < 12; i++) out[i] = -7.0f;
    embedding_forward_bf16(out, table, ids, skip, 3, 4);
    for (int c = 0; c < 4; c++) {
        cr_assert_eq(bits_of(out[c]), (uint32_t)table[8 + c] << 16);
        cr_assert_eq(out[4 + c], -7.0f);  // skipped row untouched
        cr_assert_eq(bits_of(out[8 + c]), (uint32_t)table[4 + c] << 16);
    }
}
