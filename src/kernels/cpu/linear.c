// CPU kernels: memory, matrix products (OpenBLAS), Linear and LoRA.
//
// One thread pool: OpenBLAS runs single-threaded and gemm() splits a product
// into row (or column) slices over the OpenMP threads. Two pools (OpenBLAS's
// spinning workers and OpenMP's) would fight over the same cores.
#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels.h"
#include "cpu_internal.h"

void kernel_init(int threads) {
    if (threads <= 0) threads = omp_get_max_threads();
    // OpenBLAS runs single-threaded inside the products vlft splits across
    // OpenMP threads itself. Its OpenMP build implements this call with
    // omp_set_num_threads, so it must come first or it would leave vlft
    // one thread.
    openblas_set_num_threads(1);
    omp_set_num_threads(threads);
    gemm_bf16_init();
}

float *kernel_alloc(size_t n) { return calloc(n ? n : 1, sizeof(float)); }
void kernel_free(float *p) { free(p); }
void kernel_zero(float *p, size_t n) { memset(p, 0, n * sizeof(float)); }
void kernel_copy(float *dst, const float *src, size_t n) { memcpy(dst, src, n * sizeof(float)); }

void kernel_add(float *y, const float *x, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > KERNEL_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

void kernel_scale(float *y, float a, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > KERNEL_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) y[i] *= a;
}

static void sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                  int ldb, float beta, float *C, int ldc) {
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, N, K,
                alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
          int ldb, float beta, float *C, int ldc) {
    if (M == 0 || N == 0) return;
    int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
    // Below about 5e5 multiply-adds waking the other threads costs more than
    // it saves (2 threads: 100 x 8 x 256 and 64^3 ran 0.85x); above it even
    // the thin LoRA products gain (385 rows x r=8 x 256..2048: 1.4-1.8x).
    if (threads == 1 || (double)M * N * K < 5e5) {
        sgemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    // Slice the longer side of C; each slice is an independent product.
    int by_rows = M >= N, extent = by_rows ? M : N;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int t = 0; t < threads; t++) {
        int begin = (int)((long)extent * t / threads), end = (int)((long)extent * (t + 1) / threads);
        if (begin == end) continue;
        if (by_rows) {
            // Rows [begin, end) of op(A): rows of A, or columns of A when transposed.
            const float *a = trans_a ? A + begin : A + (size_t)begin * lda;
            sgemm(trans_a, trans_b, end - begin, N, K, alpha, a, lda, B, ldb, beta, C + (size_t)begin * ldc, ldc);
        } else {
            const float *b = trans_b ? B + (size_t)begin * ldb : B + begin;
            sgemm(trans_a, trans_b, M, end - begin, K, alpha, A, lda, b, ldb, beta, C + begin, ldc);
        }
    }
}

// y[N,Out] += b[Out] on every row.
static void add_bias(float *y, const float *b, int N, int Out) {
#pragma omp parallel for schedule(static) if ((size_t)N * Out > KERNEL_PARALLEL_MIN)
    for (int n = 0; n < N; n++)
        for (int o = 0; o < Out; o++) y[(size_t)n * Out + o] += b[o];
}

// db[Out] += sum over rows of dy[N,Out].
static void bias_backward(float *db, const float *dy, int N, int Out) {
#pragma omp parallel for schedule(static) if ((size_t)N * Out > KERNEL_PARALLEL_MIN)
    for (int o = 0; o < Out; o++) {
        double s = 0;
        for (int n = 0; n < N; n++) s += dy[(size_t)n * Out + o];
        db[o] += (float)s;
    }
}

void linear_forward(float *y, const float *x, const float *w, const float *b, int N, int In, int Out) {
    // y[N,Out] = x[N,In] . w[Out,In]^T
    gemm(0, 1, N, Out, In, 1.0f, x, In, w, In, 0.0f, y, Out);
    if (b) add_bias(y, b, N, Out);
}

void linear_backward(float *dx, int accumulate_dx, float *dw, float *db, const float *dy, const float *x,
                     const float *w, int N, int In, int Out) {
    // dx[N,In] = dy[N,Out] . w[Out,In]
    if (dx) gemm(0, 0, N, In, Out, 1.0f, dy, Out, w, In, accumulate_dx ? 1.0f : 0.0f, dx, In);
    // dw[Out,In] += dy^T[Out,N] . x[N,In]
    if (dw) gemm(1, 0, Out, In, N, 1.0f, dy, Out, x, In, 1.0f, dw, In);
    if (db) bias_backward(db, dy, N, Out);
}

// The same products with bf16 inputs (gemm_bf16.c); bias and its gradient stay fp32.
void linear_forward_bf16(float *y, const float *x, Bf16Input w, const float *b, int N, int In, int Out) {
    gemm_bf16(0, 1, N, Out, In, 1.0f, (Bf16Input){.f32 = x}, In, w, In, 0.0f, y, Out);
    if (b) add_bias(y, b, N, Out);
}

void linear_backward_bf16(float *dx, int accumulate_dx, float *dw, float *db, const float *dy, const float *x,
                          Bf16Input w, int N, int In, int Out) {
    Bf16Input dy_in = {.f32 = dy};
    if (dx) gemm_bf16(0, 0, N, In, Out, 1.0f, dy_in, Out, w, In, accumulate_dx ? 1.0f : 0.0f, dx, In);
    if (dw) gemm_bf16(1, 0, Out, In, N, 1.0f, dy_in, Out, (Bf16Input){.f32 = x}, In, 1.0f, dw, In);
    if (db) bias_backward(db, dy, N, Out);
}

void lora_forward(float *y, float *u, float *dropped, const float *x, const uint8_t *keep_mask, float keep_scale,
                  const float *A, const float *B, float scale, int N, int In, int Out, int r) {
    const float *input = x;
    if (keep_mask) {
        size_t n = (size_t)N * In;
#pragma omp parallel for simd schedule(static) if (n > KERNEL_PARALLEL_MIN)
        for (size_t i = 0; i < n; i++) dropped[i] = keep_mask[i] ? x[i] * keep_scale : 0.0f;
        input = dropped;
    }
    gemm(0, 1, N, r, In, 1.0f, input, In, A, In, 0.0f, u, r);  // u[N,r] = drop(x) A^T
    gemm(0, 1, N, Out, r, scale, u, r, B, r, 1.0f, y, Out);     // y += scale u B^T
}

void lora_backward(float *dx, float *dA, float *dB, float *du, const float *dy, const float *x, const float *dropped,
                   const uint8_t *keep_mask, float keep_scale, const float *u, const float *A, const float *B,
                   float scale, int N, int In, int Out, int r) {
    const float *input = keep_mask ? dropped : x;
    if (dB) gemm(1, 0, Out, r, N, scale, dy, Out, u, r, 1.0f, dB, r);  // dB[Out,r] += scale dy^T u
    gemm(0, 0, N, r, Out, scale, dy, Out, B, r, 0.0f, du, r);          // du[N,r] = scale dy B
    if (dA) gemm(1, 0, r, In, N, 1.0f, du, r, input, In, 1.0f, dA, In);  // dA[r,In] += du^T drop(x)
    if (!dx) return;
    if (!keep_mask) {
        gemm(0, 0, N, In, r, 1.0f, du, r, A, In, 1.0f, dx, In);  // dx += du A
        return;
    }
    // With dropout the path runs through the mask: reuse 'dropped' as scratch is
    // not allowed (const), so add row by row through a temporary.
    float *t = malloc((size_t)N * In * sizeof(float));
    gemm(0, 0, N, In, r, 1.0f, du, r, A, In, 0.0f, t, In);
    size_t n = (size_t)N * In;
#pragma omp parallel for simd schedule(static) if (n > KERNEL_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) dx[i] += keep_mask[i] ? t[i] * keep_scale : 0.0f;
    free(t);
}
