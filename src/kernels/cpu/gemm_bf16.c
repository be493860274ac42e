// The bf16 GEMM seam (see kernels.h): products of bf16 inputs with fp32
// accumulation and output, through oneDNN where the CPU multiplies bf16
// natively, else through a fallback built on OpenBLAS sgemm.
//
// The fallback. A bf16 value is exactly representable in fp32, so a product
// of bf16 inputs accumulated in fp32 is an sgemm of the inputs widened (or,
// for fp32 inputs, rounded to bf16 and widened back). Widening a whole weight
// would need an fp32 copy of it (1 GB for Yi-VL's lm_head), so the larger of
// the two inputs is widened in panels, in scratch of the thread that
// multiplies it: a block along C's side, K_BLOCK deep (later depth blocks add
// onto C), as wide as PANEL_FLOATS allows, because OpenBLAS's sgemm slows
// down 2-3x on products narrower than a few hundred columns. The smaller
// input is widened once, whole. Each thread owns one slice of C, as gemm()
// does, and runs single-threaded sgemms on its panels. On AVX2 this is the
// fastest bf16 product available (oneDNN 2.6 has no bf16 matmul there and
// torch's runs at ~2 GFLOP/s): bf16's memory, fp32's arithmetic speed,
// within ~10% of the fp32 gemm() on the shapes of the models.
//
// Scratch is kept between calls (grow-only), so steps after the first
// allocate nothing here.
#include <cblas.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels.h"
#include "cpu_internal.h"

// Panel size in fp32 values (4 MiB) and depth; overridable for tuning.
#ifndef PANEL_FLOATS
#define PANEL_FLOATS ((size_t)1 << 20)
#endif
#ifndef K_BLOCK
#define K_BLOCK 256
#endif

typedef struct {
    float *data;
    size_t capacity;  // floats
} Scratch;

// The backend's state: one per process, as OpenBLAS's and oneDNN's own are.
static struct {
    pthread_mutex_t lock;
    int initialized;
    Bf16GemmImpl impl;
    Scratch whole;         // the smaller input, widened (fallback)
    Scratch *panels;       // one per thread (fallback)
    int n_panels;
    uint16_t *narrow_a, *narrow_b;  // fp32 inputs rounded to bf16 (oneDNN)
    Scratch wide_b;                 // B widened (oneDNN without a bf16 matmul)
    size_t narrow_a_capacity, narrow_b_capacity;
} backend = {.lock = PTHREAD_MUTEX_INITIALIZER};

// ------------------------------------------------------------ conversions

// The bf16 nearest to x (ties to even), as its 32-bit pattern's top half;
// NaN stays a quiet NaN. Branch-free so the loops below vectorize.
static inline uint32_t rounded_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
    uint32_t quiet_nan = u | 0x00400000u;
    return ((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded) & 0xffff0000u;
}

static inline float round_to_bf16(float x) {
    uint32_t u = rounded_bits(x);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float widen(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

void bf16_from_f32(uint16_t *dst, const float *src, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > KERNEL_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) dst[i] = (uint16_t)(rounded_bits(src[i]) >> 16);
}

void f32_from_bf16(float *dst, const uint16_t *src, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > KERNEL_PARALLEL_MIN)
    for (size_t i = 0; i < n; i++) dst[i] = widen(src[i]);
}

uint16_t *kernel_alloc_bf16(size_t n) { return calloc(n ? n : 1, sizeof(uint16_t)); }
void kernel_free_bf16(uint16_t *p) { free(p); }

// dst [rows, cols] (compact) = the input's block at (r0, c0), row stride ld,
// as bf16 values in fp32. One thread.
static void widen_block(float *dst, Bf16Input in, int ld, int r0, int rows, int c0, int cols) {
    for (int r = 0; r < rows; r++) {
        size_t src = (size_t)(r0 + r) * ld + c0;
        float *out = dst + (size_t)r * cols;
        if (in.bf16) {
            const uint16_t *s = in.bf16 + src;
#pragma omp simd
            for (int c = 0; c < cols; c++) out[c] = widen(s[c]);
        } else {
            const float *s = in.f32 + src;
#pragma omp simd
            for (int c = 0; c < cols; c++) out[c] = round_to_bf16(s[c]);
        }
    }
}

// The same over all threads (rows split).
static void widen_block_parallel(float *dst, Bf16Input in, int ld, int rows, int cols) {
#pragma omp parallel for schedule(static) if ((size_t)rows * cols > KERNEL_PARALLEL_MIN)
    for (int r = 0; r < rows; r++) widen_block(dst + (size_t)r * cols, in, ld, r, 1, 0, cols);
}

static int reserve(Scratch *s, size_t n) {
    if (n <= s->capacity) return 0;
    float *grown = malloc(n * sizeof(float));
    if (grown == NULL) return -1;
    free(s->data);
    s->data = grown;
    s->capacity = n;
    return 0;
}

static int reserve_u16(uint16_t **p, size_t *capacity, size_t n) {
    if (n <= *capacity) return 0;
    uint16_t *grown = malloc(n * sizeof(uint16_t));
    if (grown == NULL) return -1;
    free(*p);
    *p = grown;
    *capacity = n;
    return 0;
}

// ------------------------------------------------------------ fallback

static void sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                  int ldb, float beta, float *C, int ldc) {
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, N, K,
                alpha, A, lda, B, ldb, beta, C, ldc);
}

static void scale_c(int M, int N, float beta, float *C, int ldc) {
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) C[(size_t)m * ldc + n] = beta == 0.0f ? 0.0f : beta * C[(size_t)m * ldc + n];
}

static inline float input_at(Bf16Input in, size_t i) { return in.bf16 ? widen(in.bf16[i]) : round_to_bf16(in.f32[i]); }

// Dot products element by element: no scratch at all (the out-of-memory path).
static void direct_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, Bf16Input A, int lda, Bf16Input B,
                        int ldb, float beta, float *C, int ldc) {
#pragma omp parallel for schedule(static)
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            float sum = 0.0f;
            for (int k = 0; k < K; k++)
                sum += input_at(A, trans_a ? (size_t)k * lda + m : (size_t)m * lda + k) *
                       input_at(B, trans_b ? (size_t)n * ldb + k : (size_t)k * ldb + n);
            float *c = &C[(size_t)m * ldc + n];
            *c = alpha * sum + (beta == 0.0f ? 0.0f : beta * *c);
        }
}

// Returns -1 when scratch memory ran out (C untouched).
static int fallback_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, Bf16Input A, int lda,
                         Bf16Input B, int ldb, float beta, float *C, int ldc) {
    // Stored shapes: A is [M,K] ([K,M] when transposed), B [K,N] ([N,K]).
    int a_rows = trans_a ? K : M, a_cols = trans_a ? M : K;
    int b_rows = trans_b ? N : K, b_cols = trans_b ? K : N;
    // The larger input goes in panels along its side of C (columns for B,
    // rows for A); the smaller one is widened whole.
    int over_b = (size_t)M * K <= (size_t)K * N;
    int extent = over_b ? N : M;
    int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
    if ((double)M * N * K < 4e6) threads = 1;  // as gemm(): waking threads costs more
    if (threads > extent) threads = extent;
    // A panel: up to PANEL_FLOATS values, K_BLOCK deep (the depth OpenBLAS
    // itself blocks K by) and as wide as that allows: sgemm slows down
    // sharply on narrow products.
    int depth = K <= 2 * K_BLOCK ? K : K_BLOCK;
    size_t width_max = PANEL_FLOATS / (size_t)depth, slice = ((size_t)extent + threads - 1) / threads;
    int width = (int)(width_max < 16 ? 16 : width_max < slice ? width_max : slice);
    if (reserve(&backend.whole, over_b ? (size_t)M * K : (size_t)K * N) != 0) return -1;
    if (backend.n_panels < threads) {
        Scratch *grown = realloc(backend.panels, sizeof(Scratch) * (size_t)threads);
        if (grown == NULL) return -1;
        memset(grown + backend.n_panels, 0, sizeof(Scratch) * (size_t)(threads - backend.n_panels));
        backend.panels = grown;
        backend.n_panels = threads;
    }
    for (int t = 0; t < threads; t++)
        if (reserve(&backend.panels[t], (size_t)width * depth) != 0) return -1;
    float *whole = backend.whole.data;
    if (over_b) widen_block_parallel(whole, A, lda, a_rows, a_cols);
    else widen_block_parallel(whole, B, ldb, b_rows, b_cols);
    // Each thread: one contiguous slice of C (as gemm()), panel by panel.
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int t = 0; t < threads; t++) {
        float *panel = backend.panels[t].data;
        int begin = (int)((long)extent * t / threads), end = (int)((long)extent * (t + 1) / threads);
        for (int s0 = begin; s0 < end; s0 += width) {
            int w = end - s0 < width ? end - s0 : width;
            for (int k0 = 0; k0 < K; k0 += depth) {
                int d = K - k0 < depth ? K - k0 : depth;
                float b_k = k0 == 0 ? beta : 1.0f;  // later depth blocks add to the first
                if (over_b) {
                    // whole = A: columns k0.. of [M,K], or rows k0.. of [K,M]
                    const float *a = trans_a ? whole + (size_t)k0 * M : whole + k0;
                    float *c = C + s0;
                    if (trans_b) {  // B [N,K]: rows s0.., columns k0..
                        widen_block(panel, B, ldb, s0, w, k0, d);
                        sgemm(trans_a, 1, M, w, d, alpha, a, a_cols, panel, d, b_k, c, ldc);
                    } else {  // B [K,N]: rows k0.., columns s0..
                        widen_block(panel, B, ldb, k0, d, s0, w);
                        sgemm(trans_a, 0, M, w, d, alpha, a, a_cols, panel, w, b_k, c, ldc);
                    }
                } else {
                    // whole = B: rows k0.. of [K,N], or columns k0.. of [N,K]
                    const float *b = trans_b ? whole + k0 : whole + (size_t)k0 * N;
                    float *c = C + (size_t)s0 * ldc;
                    if (!trans_a) {  // A [M,K]: rows s0.., columns k0..
                        widen_block(panel, A, lda, s0, w, k0, d);
                        sgemm(0, trans_b, w, N, d, alpha, panel, d, b, b_cols, b_k, c, ldc);
                    } else {  // A [K,M]: rows k0.., columns s0..
                        widen_block(panel, A, lda, k0, d, s0, w);
                        sgemm(1, trans_b, w, N, d, alpha, panel, w, b, b_cols, b_k, c, ldc);
                    }
                }
            }
        }
    }
    return 0;
}

// ------------------------------------------------------------ oneDNN

// An fp32 input rounded into compact bf16 scratch; bf16 inputs pass through.
static const uint16_t *as_bf16(Bf16Input in, int rows, int cols, int ld, uint16_t **scratch, size_t *capacity,
                               int *ld_out) {
    *ld_out = ld;
    if (in.bf16) return in.bf16;
    if (reserve_u16(scratch, capacity, (size_t)rows * cols) != 0) return NULL;
#pragma omp parallel for schedule(static) if ((size_t)rows * cols > KERNEL_PARALLEL_MIN)
    for (int r = 0; r < rows; r++) bf16_from_f32(*scratch + (size_t)r * cols, in.f32 + (size_t)r * ld, (size_t)cols);
    *ld_out = cols;
    return *scratch;
}

// Where oneDNN has a bf16 matmul, the inputs go to it as bf16 (fp32 ones
// rounded into scratch). Where it has none (oneDNN 2.6 below AVX512, e.g.
// when VLFT_BF16_GEMM=onednn forces it on an AVX2 machine to test it), the
// inputs are widened to fp32 whole and oneDNN's f32 matmul multiplies them:
// the same numbers (bf16 values, fp32 accumulation), the memory of fp32.
static int onednn_path(int trans_a, int trans_b, int M, int N, int K, float alpha, Bf16Input A, int lda, Bf16Input B,
                       int ldb, float beta, float *C, int ldc) {
    int a_rows = trans_a ? K : M, a_cols = trans_a ? M : K, b_rows = trans_b ? N : K, b_cols = trans_b ? K : N;
    if (onednn_bf16_matmul_available()) {
        int a_ld, b_ld;
        const uint16_t *a = as_bf16(A, a_rows, a_cols, lda, &backend.narrow_a, &backend.narrow_a_capacity, &a_ld);
        const uint16_t *b = as_bf16(B, b_rows, b_cols, ldb, &backend.narrow_b, &backend.narrow_b_capacity, &b_ld);
        if (a == NULL || b == NULL) return -1;
        return onednn_matmul(trans_a, trans_b, M, N, K, alpha, a, a_ld, b, b_ld, 1, beta, C, ldc);
    }
    if (reserve(&backend.whole, (size_t)a_rows * a_cols) != 0 || reserve(&backend.wide_b, (size_t)b_rows * b_cols) != 0)
        return -1;
    widen_block_parallel(backend.whole.data, A, lda, a_rows, a_cols);
    widen_block_parallel(backend.wide_b.data, B, ldb, b_rows, b_cols);
    return onednn_matmul(trans_a, trans_b, M, N, K, alpha, backend.whole.data, a_cols, backend.wide_b.data, b_cols, 0,
                         beta, C, ldc);
}

// ------------------------------------------------------------ the seam

const char *gemm_bf16_impl_name(Bf16GemmImpl impl) { return impl == BF16_GEMM_ONEDNN ? "onednn" : "fallback"; }

void gemm_bf16_init(void) {
    pthread_mutex_lock(&backend.lock);
    if (!backend.initialized) {
        backend.impl = onednn_native_bf16() ? BF16_GEMM_ONEDNN : BF16_GEMM_FALLBACK;
        const char *forced = getenv("VLFT_BF16_GEMM");
        if (forced && strcmp(forced, "onednn") == 0) backend.impl = BF16_GEMM_ONEDNN;
        else if (forced && strcmp(forced, "fallback") == 0) backend.impl = BF16_GEMM_FALLBACK;
        else if (forced && forced[0])
            fprintf(stderr, "vlft: VLFT_BF16_GEMM must be 'onednn' or 'fallback', got '%s'; using %s\n", forced,
                    gemm_bf16_impl_name(backend.impl));
        backend.initialized = 1;
    }
    pthread_mutex_unlock(&backend.lock);
}

Bf16GemmImpl gemm_bf16_impl(void) {
    gemm_bf16_init();
    return backend.impl;
}

int gemm_bf16_set_impl(Bf16GemmImpl impl) {
    gemm_bf16_init();
    pthread_mutex_lock(&backend.lock);
    if (impl == BF16_GEMM_ONEDNN && onednn_start() != 0) {
        pthread_mutex_unlock(&backend.lock);
        return -1;
    }
    backend.impl = impl;
    pthread_mutex_unlock(&backend.lock);
    return 0;
}

void gemm_bf16(int trans_a, int trans_b, int M, int N, int K, float alpha, Bf16Input A, int lda, Bf16Input B,
               int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        scale_c(M, N, beta, C, ldc);
        return;
    }
    gemm_bf16_init();
    pthread_mutex_lock(&backend.lock);
    int rc = backend.impl == BF16_GEMM_ONEDNN
                 ? onednn_path(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
                 : fallback_gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    if (rc != 0 && backend.impl == BF16_GEMM_ONEDNN)  // oneDNN refused (reported): same numbers another way
        rc = fallback_gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    if (rc != 0) {
        // Out of scratch memory. The kernels have no error path and a wrong
        // product would train on garbage, so compute it slowly without any.
        fprintf(stderr, "vlft: no memory for bf16 GEMM scratch (%d x %d x %d); using the slow path\n", M, N, K);
        direct_gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    }
    pthread_mutex_unlock(&backend.lock);
}
