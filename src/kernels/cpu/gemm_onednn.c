// oneDNN (libdnnl, C API) behind the bf16 GEMM seam, and the GEMM peak the
// benchmark compares vlft against.
//
// A matmul primitive is specialised to its shapes, strides and attributes,
// and creating one costs far more than a small product, so primitives are
// cached by all of those (a training step meets the same few dozen shapes
// every time) together with the memory objects they run on; a call only
// points the memories at this call's buffers. oneDNN runs on vlft's OpenMP
// threads (the Debian build uses the OpenMP runtime).
//
// Callers hold gemm_bf16.c's lock, so the cache is touched by one thread at
// a time; gemm_peak_onednn builds its own primitive outside the cache.
#include <oneapi/dnnl/dnnl.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../kernels.h"
#include "cpu_internal.h"

#define CACHE_SIZE 128

typedef struct {
    int trans_a, trans_b, M, N, K, lda, ldb, ldc, bf16;
    float alpha, beta;
    dnnl_primitive_t primitive;
    dnnl_memory_t src, weights, dst;
    unsigned long last_used;
} CachedMatmul;

static struct {
    int started, failed;
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    CachedMatmul cache[CACHE_SIZE];
    int count;
    unsigned long clock;
    int reported;  // one message about a refused primitive is enough
    int bf16_probed, bf16_available;
} onednn;

int onednn_start(void) {
    if (onednn.started) return onednn.failed ? -1 : 0;
    onednn.started = 1;
    if (dnnl_engine_create(&onednn.engine, dnnl_cpu, 0) != dnnl_success ||
        dnnl_stream_create(&onednn.stream, onednn.engine, dnnl_stream_default_flags) != dnnl_success) {
        fprintf(stderr, "vlft: oneDNN could not create a CPU engine\n");
        onednn.failed = 1;
        return -1;
    }
    return 0;
}

int onednn_native_bf16(void) {
    dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    // ISA values are bit sets, each including the ones below it; avx2_vnni
    // is numerically larger than avx512_core_bf16 without having bf16.
    return (isa & dnnl_cpu_isa_avx512_core_bf16) == dnnl_cpu_isa_avx512_core_bf16;
}

const char *gemm_onednn_isa_name(void) {
    switch (dnnl_get_effective_cpu_isa()) {
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    case dnnl_cpu_isa_avx512_mic: return "avx512_mic";
    case dnnl_cpu_isa_avx512_mic_4ops: return "avx512_mic_4ops";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    default: return "other";
    }
}

// [rows, cols] with row stride ld, or its transpose view when trans.
static void matrix_desc(dnnl_memory_desc_t *md, int rows, int cols, int ld, int trans, dnnl_data_type_t type) {
    dnnl_dims_t dims = {rows, cols};
    dnnl_dims_t strides = {trans ? 1 : ld, trans ? ld : 1};
    dnnl_memory_desc_init_by_strides(md, 2, dims, type, strides);
}

// A primitive and its memories for C[M,N] = alpha op(A)[M,K] op(B)[K,N] + beta C.
static int create_matmul(CachedMatmul *e, dnnl_data_type_t in_type, char *impl, size_t impl_size) {
    dnnl_memory_desc_t src_md, weights_md, dst_md;
    matrix_desc(&src_md, e->M, e->K, e->lda, e->trans_a, in_type);
    matrix_desc(&weights_md, e->K, e->N, e->ldb, e->trans_b, in_type);
    matrix_desc(&dst_md, e->M, e->N, e->ldc, 0, dnnl_f32);
    dnnl_matmul_desc_t desc;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t post_ops = NULL;
    dnnl_primitive_desc_t pd = NULL;
    int rc = -1;
    if (dnnl_matmul_desc_init(&desc, &src_md, &weights_md, NULL, &dst_md) != dnnl_success) goto done;
    if (dnnl_primitive_attr_create(&attr) != dnnl_success) goto done;
    if (e->alpha != 1.0f && dnnl_primitive_attr_set_output_scales(attr, 1, 0, &e->alpha) != dnnl_success) goto done;
    if (e->beta != 0.0f) {
        if (dnnl_post_ops_create(&post_ops) != dnnl_success || dnnl_post_ops_append_sum(post_ops, e->beta) != dnnl_success ||
            dnnl_primitive_attr_set_post_ops(attr, post_ops) != dnnl_success)
            goto done;
    }
    if (dnnl_primitive_desc_create(&pd, &desc, attr, onednn.engine, NULL) != dnnl_success) goto done;
    if (impl) {
        const char *name = NULL;
        dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &name);
        snprintf(impl, impl_size, "%s", name ? name : "?");
    }
    if (dnnl_primitive_create(&e->primitive, pd) != dnnl_success) goto done;
    // Memories without buffers of their own: each call sets the handles.
    if (dnnl_memory_create(&e->src, &src_md, onednn.engine, DNNL_MEMORY_NONE) != dnnl_success ||
        dnnl_memory_create(&e->weights, &weights_md, onednn.engine, DNNL_MEMORY_NONE) != dnnl_success ||
        dnnl_memory_create(&e->dst, &dst_md, onednn.engine, DNNL_MEMORY_NONE) != dnnl_success)
        goto done;
    rc = 0;
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (post_ops) dnnl_post_ops_destroy(post_ops);
    if (attr) dnnl_primitive_attr_destroy(attr);
    return rc;
}

static void destroy_matmul(CachedMatmul *e) {
    if (e->primitive) dnnl_primitive_destroy(e->primitive);
    if (e->src) dnnl_memory_destroy(e->src);
    if (e->weights) dnnl_memory_destroy(e->weights);
    if (e->dst) dnnl_memory_destroy(e->dst);
    memset(e, 0, sizeof *e);
}

static int run_matmul(const CachedMatmul *e, const void *A, const void *B, float *C) {
    if (dnnl_memory_set_data_handle(e->src, (void *)A) != dnnl_success ||
        dnnl_memory_set_data_handle(e->weights, (void *)B) != dnnl_success ||
        dnnl_memory_set_data_handle(e->dst, C) != dnnl_success)
        return -1;
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, e->src}, {DNNL_ARG_WEIGHTS, e->weights}, {DNNL_ARG_DST, e->dst}};
    if (dnnl_primitive_execute(e->primitive, onednn.stream, 3, args) != dnnl_success) return -1;
    return dnnl_stream_wait(onednn.stream) == dnnl_success ? 0 : -1;
}

static CachedMatmul *lookup(const CachedMatmul *key) {
    for (int i = 0; i < onednn.count; i++) {
        CachedMatmul *e = &onednn.cache[i];
        if (e->trans_a == key->trans_a && e->trans_b == key->trans_b && e->M == key->M && e->N == key->N &&
            e->K == key->K && e->lda == key->lda && e->ldb == key->ldb && e->ldc == key->ldc &&
            e->bf16 == key->bf16 && e->alpha == key->alpha && e->beta == key->beta)
            return e;
    }
    // New shape: a free slot, or the least recently used one.
    CachedMatmul *slot = NULL;
    if (onednn.count < CACHE_SIZE) slot = &onednn.cache[onednn.count++];
    else {
        slot = &onednn.cache[0];
        for (int i = 1; i < CACHE_SIZE; i++)
            if (onednn.cache[i].last_used < slot->last_used) slot = &onednn.cache[i];
        destroy_matmul(slot);
    }
    *slot = *key;
    if (create_matmul(slot, slot->bf16 ? dnnl_bf16 : dnnl_f32, NULL, 0) != 0) {
        destroy_matmul(slot);
        if (slot == &onednn.cache[onednn.count - 1]) onednn.count--;
        else *slot = onednn.cache[--onednn.count];  // keep the used slots packed
        return NULL;
    }
    return slot;
}

int onednn_bf16_matmul_available(void) {
    if (!onednn.bf16_probed) {
        onednn.bf16_probed = 1;
        CachedMatmul probe = {.M = 16, .N = 16, .K = 16, .lda = 16, .ldb = 16, .ldc = 16, .alpha = 1.0f};
        onednn.bf16_available = onednn_start() == 0 && create_matmul(&probe, dnnl_bf16, NULL, 0) == 0;
        destroy_matmul(&probe);
    }
    return onednn.bf16_available;
}

int onednn_matmul(int trans_a, int trans_b, int M, int N, int K, float alpha, const void *A, int lda, const void *B,
                  int ldb, int bf16_inputs, float beta, float *C, int ldc) {
    if (onednn_start() != 0) return -1;
    CachedMatmul key = {.trans_a = trans_a, .trans_b = trans_b, .M = M, .N = N, .K = K, .lda = lda, .ldb = ldb,
                        .ldc = ldc, .bf16 = bf16_inputs, .alpha = alpha, .beta = beta};
    CachedMatmul *e = lookup(&key);
    if (e && run_matmul(e, A, B, C) == 0) {
        e->last_used = ++onednn.clock;
        return 0;
    }
    if (!onednn.reported) {
        fprintf(stderr, "vlft: oneDNN refused a %s matmul (%d x %d x %d); using the fallback\n",
                bf16_inputs ? "bf16" : "f32", M, N, K);
        onednn.reported = 1;
    }
    return -1;
}

// ------------------------------------------------------------ GEMM peak

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int gemm_peak_onednn(int M, int N, int K, int bf16, int repeats, double *gflops, char *impl, size_t impl_size,
                     char *err_msg, size_t err_size) {
    *gflops = 0;
    if (onednn_start() != 0) {
        snprintf(err_msg, err_size, "oneDNN could not create a CPU engine");
        return -1;
    }
    size_t elem = bf16 ? sizeof(uint16_t) : sizeof(float);
    void *A = malloc((size_t)M * K * elem), *B = malloc((size_t)K * N * elem);
    float *C = malloc((size_t)M * N * sizeof(float));
    CachedMatmul e = {.M = M, .N = N, .K = K, .lda = K, .ldb = N, .ldc = N, .bf16 = bf16, .alpha = 1.0f};
    int rc = -1;
    if (!A || !B || !C) {
        snprintf(err_msg, err_size, "out of memory for a %d x %d x %d product", M, N, K);
        goto done;
    }
    // Values in [-1, 1): the timing does not depend on them, only denormals would.
    for (size_t i = 0; i < (size_t)M * K; i++) {
        float v = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
        if (bf16) bf16_from_f32((uint16_t *)A + i, &v, 1);
        else ((float *)A)[i] = v;
    }
    for (size_t i = 0; i < (size_t)K * N; i++) {
        float v = (float)((i * 40503u) % 2001) / 1000.0f - 1.0f;
        if (bf16) bf16_from_f32((uint16_t *)B + i, &v, 1);
        else ((float *)B)[i] = v;
    }
    if (create_matmul(&e, bf16 ? dnnl_bf16 : dnnl_f32, impl, impl_size) != 0) {
        snprintf(err_msg, err_size, "oneDNN has no %s matmul for %d x %d x %d", bf16 ? "bf16" : "f32", M, N, K);
        goto done;
    }
    if (run_matmul(&e, A, B, C) != 0) {  // warm-up: pages, caches, JIT
        snprintf(err_msg, err_size, "oneDNN failed to run the matmul");
        goto done;
    }
    double best = 0;
    for (int r = 0; r < repeats; r++) {
        double t0 = now_seconds();
        if (run_matmul(&e, A, B, C) != 0) goto done;
        double seconds = now_seconds() - t0;
        if (r == 0 || seconds < best) best = seconds;
    }
    *gflops = 2.0 * M * N * K / best * 1e-9;
    rc = 0;
done:
    destroy_matmul(&e);
    free(A);
    free(B);
    free(C);
    return rc;
}
