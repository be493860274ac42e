// attention_parity: the CUDA attention (every implementation: "simple",
// "flash", "mma", and mma with the backward's GQA group kept in one block,
// VLFT_CUDA_ATTENTION_SPLIT=1) against the CPU attention_forward/backward of
// kernels.h, each fast one against simple, then a timing table. Run on a
// machine with a GPU:
//   build-cuda/tests/cuda/attention_parity [--no-timing]
// Exit 0 when every check passes, 1 when one fails, 77 when no CUDA device.
//
// For each shape the inputs q, k, v, dout are fresh random values rounded to
// bf16; the CPU reference runs in fp32 on exactly those values. Each CUDA
// implementation's backward is fed its own out and lse (as the model does);
// the CPU backward its own. Outputs are poisoned with NaN before each run so
// an element never written shows up. Errors are ||gpu - cpu|| / ||cpu||.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/kernels/cuda/cuda.h"
#include "../../src/kernels/kernels.h"

typedef struct {
    const char *name;
    int B, L, Hq, Hkv, D, causal;
    int pad;  // 0 none, 1 right padding (sequence b > 0 shorter), 2 left padding (rows that see no key)
} Shape;

typedef struct {
    int passed, failed;
} Tally;

// Host buffers of one shape: bf16 inputs, their fp32 values, the CPU results.
typedef struct {
    size_t nq, nkv, nlse;
    uint16_t *q16, *k16, *v16, *do16;
    float *q, *k, *v, *dout;
    int32_t *mask;  // NULL when the shape has none
    float *out, *lse, *dq, *dk, *dv;
} Host;

// Device buffers.
typedef struct {
    uint16_t *q, *k, *v, *dout, *out, *dq, *dk, *dv;
    float *lse;
    int32_t *mask;
    void *workspace;
} Dev;

// One implementation's results, downloaded.
typedef struct {
    uint16_t *out, *dq, *dk, *dv;
    float *lse;
} Result;

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float uniform_pm1(void) {  // xorshift64*, [-1, 1)
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    uint64_t r = rng_state * 0x2545f4914f6cdd1dull;
    return (float)((double)(r >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static void fill_random(uint16_t *x16, float *x, size_t n, float amplitude) {
    for (size_t i = 0; i < n; i++) x[i] = amplitude * uniform_pm1();
    bf16_from_f32(x16, x, n);
    f32_from_bf16(x, x16, n);
}

static void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (p == NULL) {
        fprintf(stderr, "attention_parity: out of host memory (%zu bytes)\n", bytes);
        exit(2);
    }
    return p;
}

static void *dmalloc(CudaContext *ctx, size_t bytes, const char *what) {
    Error err;
    void *p = cuda_malloc(ctx, bytes ? bytes : 16, what, &err);
    if (p == NULL) {
        fprintf(stderr, "attention_parity: %s\n", err.message);
        exit(2);
    }
    return p;
}

static void die_on(int rc, const Error *err) {
    if (rc != 0) {
        fprintf(stderr, "attention_parity: CUDA error: %s\n", err->message);
        exit(1);
    }
}

// ||a - b|| / ||b|| over bf16 a (the GPU) and fp32 b; *unwritten counts NaN in a.
static double rel_err_bf16(const uint16_t *a16, const float *b, size_t n, size_t *unwritten) {
    double diff = 0, norm = 0;
    *unwritten = 0;
    float *a = xmalloc(sizeof(float) * n);
    f32_from_bf16(a, a16, n);
    for (size_t i = 0; i < n; i++) {
        if (isnan(a[i])) {
            (*unwritten)++;
            continue;
        }
        double d = (double)a[i] - b[i];
        diff += d * d;
        norm += (double)b[i] * b[i];
    }
    free(a);
    return norm > 0 ? sqrt(diff / norm) : sqrt(diff);
}

// The same for lse (fp32): a row the CPU gives +inf (saw no key) must be
// +inf here too (*mismatched counts those that are not, and the reverse);
// the error is over the finite ones.
static double rel_err_lse(const float *a, const float *b, size_t n, size_t *unwritten, size_t *mismatched) {
    double diff = 0, norm = 0;
    *unwritten = *mismatched = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(a[i])) {
            (*unwritten)++;
            continue;
        }
        if (isinf(b[i]) || isinf(a[i])) {
            if (a[i] != b[i]) (*mismatched)++;
            continue;
        }
        double d = (double)a[i] - b[i];
        diff += d * d;
        norm += (double)b[i] * b[i];
    }
    return norm > 0 ? sqrt(diff / norm) : sqrt(diff);
}

static void report(Tally *t, const char *what, const Shape *s, double err, double threshold, size_t unwritten,
                   size_t mismatched) {
    int ok = unwritten == 0 && mismatched == 0 && err <= threshold && !isnan(err);
    printf("%s %-30s B=%d L=%d Hq=%d Hkv=%d D=%d %s%s  %.3e  %.0e", ok ? "PASS" : "FAIL", what, s->B, s->L, s->Hq,
           s->Hkv, s->D, s->causal ? "causal" : "full", s->pad == 1 ? "+rpad" : s->pad == 2 ? "+lpad" : "", err,
           threshold);
    if (unwritten) printf("  (%zu elements never written)", unwritten);
    if (mismatched) printf("  (%zu rows +inf on one side only)", mismatched);
    printf("\n");
    if (ok)
        t->passed++;
    else
        t->failed++;
    fflush(stdout);
}

static void host_init(Host *h, const Shape *s) {
    h->nq = (size_t)s->B * s->L * s->Hq * s->D;
    h->nkv = (size_t)s->B * s->L * s->Hkv * s->D;
    h->nlse = (size_t)s->B * s->Hq * s->L;
    h->q16 = xmalloc(2 * h->nq), h->do16 = xmalloc(2 * h->nq);
    h->k16 = xmalloc(2 * h->nkv), h->v16 = xmalloc(2 * h->nkv);
    h->q = xmalloc(4 * h->nq), h->dout = xmalloc(4 * h->nq), h->out = xmalloc(4 * h->nq), h->dq = xmalloc(4 * h->nq);
    h->k = xmalloc(4 * h->nkv), h->v = xmalloc(4 * h->nkv), h->dk = xmalloc(4 * h->nkv), h->dv = xmalloc(4 * h->nkv);
    h->lse = xmalloc(4 * h->nlse);
    // Scores of a few units (q, k ~ U(-2, 2) at scale 1/sqrt(D)): softmax
    // neither flat nor one-hot.
    fill_random(h->q16, h->q, h->nq, 2.0f);
    fill_random(h->k16, h->k, h->nkv, 2.0f);
    fill_random(h->v16, h->v, h->nkv, 1.0f);
    fill_random(h->do16, h->dout, h->nq, 1.0f);
    h->mask = NULL;
    if (s->pad) {
        h->mask = xmalloc(sizeof(int32_t) * (size_t)s->B * s->L);
        for (int b = 0; b < s->B; b++) {
            int valid = s->L - b * (s->L / 3) / (s->B > 1 ? s->B - 1 : 1);  // sequence 0 whole, the last keeps 2/3
            for (int t = 0; t < s->L; t++) {
                int keep = s->pad == 1 ? t < valid : t >= s->L - valid;
                h->mask[(size_t)b * s->L + t] = keep;
            }
        }
    }
    float scale = 1.0f / sqrtf((float)s->D);
    attention_forward(h->out, h->lse, h->q, h->k, h->v, h->mask, s->B, s->L, s->Hq, s->Hkv, s->D, s->causal, scale);
    attention_backward(h->dq, h->dk, h->dv, h->dout, h->out, h->lse, h->q, h->k, h->v, h->mask, s->B, s->L, s->Hq,
                       s->Hkv, s->D, s->causal, scale);
}

static void host_free(Host *h) {
    free(h->q16), free(h->k16), free(h->v16), free(h->do16);
    free(h->q), free(h->k), free(h->v), free(h->dout), free(h->mask);
    free(h->out), free(h->lse), free(h->dq), free(h->dk), free(h->dv);
}

static void dev_init(CudaContext *ctx, Dev *d, const Host *h, const Shape *s) {
    Error err;
    d->q = dmalloc(ctx, 2 * h->nq, "q"), d->dout = dmalloc(ctx, 2 * h->nq, "dout");
    d->out = dmalloc(ctx, 2 * h->nq, "out"), d->dq = dmalloc(ctx, 2 * h->nq, "dq");
    d->k = dmalloc(ctx, 2 * h->nkv, "k"), d->v = dmalloc(ctx, 2 * h->nkv, "v");
    d->dk = dmalloc(ctx, 2 * h->nkv, "dk"), d->dv = dmalloc(ctx, 2 * h->nkv, "dv");
    d->lse = dmalloc(ctx, 4 * h->nlse, "lse");
    d->workspace = dmalloc(ctx, cuda_attention_workspace_bytes(s->B, s->L, s->Hq, s->Hkv, s->D), "workspace");
    d->mask = NULL;
    die_on(cuda_upload(ctx, d->q, h->q16, 2 * h->nq, &err), &err);
    die_on(cuda_upload(ctx, d->dout, h->do16, 2 * h->nq, &err), &err);
    die_on(cuda_upload(ctx, d->k, h->k16, 2 * h->nkv, &err), &err);
    die_on(cuda_upload(ctx, d->v, h->v16, 2 * h->nkv, &err), &err);
    if (h->mask) {
        size_t bytes = sizeof(int32_t) * (size_t)s->B * s->L;
        d->mask = dmalloc(ctx, bytes, "key_mask");
        die_on(cuda_upload(ctx, d->mask, h->mask, bytes, &err), &err);
    }
}

static void dev_free(CudaContext *ctx, Dev *d) {
    cuda_free(ctx, d->q), cuda_free(ctx, d->k), cuda_free(ctx, d->v), cuda_free(ctx, d->dout);
    cuda_free(ctx, d->out), cuda_free(ctx, d->dq), cuda_free(ctx, d->dk), cuda_free(ctx, d->dv);
    cuda_free(ctx, d->lse), cuda_free(ctx, d->workspace);
    if (d->mask) cuda_free(ctx, d->mask);
}

// Poison with 0xFF bytes: bf16 0xFFFF and fp32 0xFFFFFFFF are both NaN.
static void poison(CudaContext *ctx, void *p, size_t bytes) { cudaMemsetAsync(p, 0xFF, bytes, cuda_stream(ctx)); }

// An implementation as the environment selects it: VLFT_CUDA_ATTENTION and
// VLFT_CUDA_ATTENTION_SPLIT (unset when split is NULL: mma picks a split).
typedef struct {
    const char *label, *impl, *split;
} Impl;

enum { N_IMPLS = 4 };
static const Impl IMPLS[N_IMPLS] = {
    {"simple", "simple", NULL},
    {"flash", "flash", NULL},
    {"mma", "mma", NULL},       // small shapes: the group split over blocks, dK/dV through fp32 atomics
    {"mma-s1", "mma", "1"},     // each block loops over its whole group, writes dK/dV directly
};

static void select_impl(const Impl *m) {
    setenv("VLFT_CUDA_ATTENTION", m->impl, 1);
    if (m->split)
        setenv("VLFT_CUDA_ATTENTION_SPLIT", m->split, 1);
    else
        unsetenv("VLFT_CUDA_ATTENTION_SPLIT");
}

static void run_impl(CudaContext *ctx, const Impl *impl, const Shape *s, const Host *h, Dev *d, Result *r) {
    Error err;
    select_impl(impl);
    cudaStream_t st = cuda_stream(ctx);
    float scale = 1.0f / sqrtf((float)s->D);
    poison(ctx, d->out, 2 * h->nq), poison(ctx, d->lse, 4 * h->nlse);
    poison(ctx, d->dq, 2 * h->nq), poison(ctx, d->dk, 2 * h->nkv), poison(ctx, d->dv, 2 * h->nkv);
    // A dirty workspace: the backward must not rely on it being zero.
    poison(ctx, d->workspace, cuda_attention_workspace_bytes(s->B, s->L, s->Hq, s->Hkv, s->D));
    cuda_attention_forward(st, d->out, d->lse, d->q, d->k, d->v, d->mask, s->B, s->L, s->Hq, s->Hkv, s->D, s->causal,
                           scale);
    cuda_attention_backward(st, d->dq, d->dk, d->dv, d->dout, d->out, d->lse, d->q, d->k, d->v, d->mask, s->B, s->L,
                            s->Hq, s->Hkv, s->D, s->causal, scale, d->workspace);
    die_on(cuda_sync(ctx, &err), &err);
    r->out = xmalloc(2 * h->nq), r->dq = xmalloc(2 * h->nq), r->dk = xmalloc(2 * h->nkv), r->dv = xmalloc(2 * h->nkv);
    r->lse = xmalloc(4 * h->nlse);
    die_on(cuda_download(ctx, r->out, d->out, 2 * h->nq, &err), &err);
    die_on(cuda_download(ctx, r->lse, d->lse, 4 * h->nlse, &err), &err);
    die_on(cuda_download(ctx, r->dq, d->dq, 2 * h->nq, &err), &err);
    die_on(cuda_download(ctx, r->dk, d->dk, 2 * h->nkv, &err), &err);
    die_on(cuda_download(ctx, r->dv, d->dv, 2 * h->nkv, &err), &err);
}

static void result_free(Result *r) { free(r->out), free(r->lse), free(r->dq), free(r->dk), free(r->dv); }

// Thresholds: bf16 outputs 1e-2, lse (fp32 from fp32 math) 1e-5.

static void check_shape(CudaContext *ctx, Tally *t, const Shape *s) {
    Host h;
    host_init(&h, s);
    Dev d;
    dev_init(ctx, &d, &h, s);
    Result r[N_IMPLS];
    for (int m = 0; m < N_IMPLS; m++) {
        // The implementation that really runs for this D (flash and mma fall back where D is not a multiple of 16).
        select_impl(&IMPLS[m]);
        const char *ran = cuda_attention_impl(s->D);
        run_impl(ctx, &IMPLS[m], s, &h, &d, &r[m]);
        char name[96];
        size_t unwritten, mismatched;
        double e;
        e = rel_err_bf16(r[m].out, h.out, h.nq, &unwritten);
        snprintf(name, sizeof name, "%s/%s %s", IMPLS[m].label, ran, "out");
        report(t, name, s, e, 1e-2, unwritten, 0);
        e = rel_err_lse(r[m].lse, h.lse, h.nlse, &unwritten, &mismatched);
        snprintf(name, sizeof name, "%s/%s %s", IMPLS[m].label, ran, "lse");
        report(t, name, s, e, 1e-5, unwritten, mismatched);
        e = rel_err_bf16(r[m].dq, h.dq, h.nq, &unwritten);
        snprintf(name, sizeof name, "%s/%s %s", IMPLS[m].label, ran, "dq");
        report(t, name, s, e, 1e-2, unwritten, 0);
        e = rel_err_bf16(r[m].dk, h.dk, h.nkv, &unwritten);
        snprintf(name, sizeof name, "%s/%s %s", IMPLS[m].label, ran, "dk");
        report(t, name, s, e, 1e-2, unwritten, 0);
        e = rel_err_bf16(r[m].dv, h.dv, h.nkv, &unwritten);
        snprintf(name, sizeof name, "%s/%s %s", IMPLS[m].label, ran, "dv");
        report(t, name, s, e, 1e-2, unwritten, 0);
    }
    // Each fast implementation against simple directly (simple's bf16
    // outputs as the reference).
    for (int m = 1; m < N_IMPLS; m++) {
        struct {
            const char *what;
            const uint16_t *fast, *simple;
            size_t n;
        } pairs[] = {{"out", r[m].out, r[0].out, h.nq},
                     {"dq", r[m].dq, r[0].dq, h.nq},
                     {"dk", r[m].dk, r[0].dk, h.nkv},
                     {"dv", r[m].dv, r[0].dv, h.nkv}};
        for (int p = 0; p < 4; p++) {
            float *ref = xmalloc(sizeof(float) * pairs[p].n);
            f32_from_bf16(ref, pairs[p].simple, pairs[p].n);
            size_t unwritten;
            double e = rel_err_bf16(pairs[p].fast, ref, pairs[p].n, &unwritten);
            char name[64];
            snprintf(name, sizeof name, "%s-vs-simple %s", IMPLS[m].label, pairs[p].what);
            report(t, name, s, e, 1e-2, unwritten, 0);
            free(ref);
        }
    }
    for (int m = 0; m < N_IMPLS; m++) result_free(&r[m]);
    dev_free(ctx, &d);
    host_free(&h);
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

// Median milliseconds of `reps` runs of the forward (which = 0) or the backward (1).
static float time_median(CudaContext *ctx, const Shape *s, Dev *d, int which, int reps) {
    cudaStream_t st = cuda_stream(ctx);
    float scale = 1.0f / sqrtf((float)s->D), ms[64];
    cudaEvent_t start, stop;
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    for (int rep = -3; rep < reps; rep++) {  // 3 warm-up runs
        cudaEventRecord(start, st);
        if (which == 0)
            cuda_attention_forward(st, d->out, d->lse, d->q, d->k, d->v, d->mask, s->B, s->L, s->Hq, s->Hkv, s->D,
                                   s->causal, scale);
        else
            cuda_attention_backward(st, d->dq, d->dk, d->dv, d->dout, d->out, d->lse, d->q, d->k, d->v, d->mask, s->B,
                                    s->L, s->Hq, s->Hkv, s->D, s->causal, scale, d->workspace);
        cudaEventRecord(stop, st);
        cudaEventSynchronize(stop);
        if (rep >= 0) cudaEventElapsedTime(&ms[rep], start, stop);
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    qsort(ms, (size_t)reps, sizeof(float), cmp_float);
    return ms[reps / 2];
}

static void timing(CudaContext *ctx, Tally *t) {
    const Shape shapes[] = {
        {"yi-6b text", 1, 2048, 32, 4, 128, 1, 0},
        {"clip vit-h", 1, 1025, 16, 16, 80, 0, 0},
    };
    printf("\n== timing (median of 20 after 3 warm-up runs; fwd FLOPs 4*B*Hq*L^2*D, /2 causal; bwd 2.5x fwd)\n");
    printf("%-12s %-7s %9s %9s %9s %9s %9s %9s\n", "shape", "impl", "fwd ms", "fwd TF/s", "bwd ms", "bwd TF/s",
           "total ms", "tot TF/s");
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const Shape *s = &shapes[i];
        Host h;
        // Only the inputs are needed: random bf16 values, no CPU reference.
        h.nq = (size_t)s->B * s->L * s->Hq * s->D;
        h.nkv = (size_t)s->B * s->L * s->Hkv * s->D;
        h.nlse = (size_t)s->B * s->Hq * s->L;
        h.q16 = xmalloc(2 * h.nq), h.do16 = xmalloc(2 * h.nq), h.k16 = xmalloc(2 * h.nkv), h.v16 = xmalloc(2 * h.nkv);
        h.q = xmalloc(4 * h.nq), h.dout = xmalloc(4 * h.nq), h.k = xmalloc(4 * h.nkv), h.v = xmalloc(4 * h.nkv);
        fill_random(h.q16, h.q, h.nq, 2.0f);
        fill_random(h.k16, h.k, h.nkv, 2.0f);
        fill_random(h.v16, h.v, h.nkv, 1.0f);
        fill_random(h.do16, h.dout, h.nq, 1.0f);
        h.mask = NULL;
        Dev d;
        dev_init(ctx, &d, &h, s);
        double fwd_flop = 4.0 * s->B * s->Hq * (double)s->L * s->L * s->D / (s->causal ? 2 : 1);
        double bwd_flop = 2.5 * fwd_flop;
        for (int m = 0; m < N_IMPLS; m++) {
            select_impl(&IMPLS[m]);
            float f = time_median(ctx, s, &d, 0, 20), b = time_median(ctx, s, &d, 1, 20);
            Error err;
            if (cuda_sync(ctx, &err) != 0) {
                printf("FAIL timing %s %s: %s\n", s->name, IMPLS[m].label, err.message);
                t->failed++;
                continue;
            }
            printf("%-12s %-7s %9.3f %9.1f %9.3f %9.1f %9.3f %9.1f\n", s->name, IMPLS[m].label, f,
                   fwd_flop / f / 1e9, b, bwd_flop / b / 1e9, f + b, (fwd_flop + bwd_flop) / (f + b) / 1e9);
            fflush(stdout);
        }
        dev_free(ctx, &d);
        free(h.q16), free(h.do16), free(h.k16), free(h.v16), free(h.q), free(h.dout), free(h.k), free(h.v);
    }
}

int main(int argc, char **argv) {
    int do_timing = !(argc > 1 && strcmp(argv[1], "--no-timing") == 0);
    if (!cuda_available()) {
        int n = 0;
        cudaError_t e = cudaGetDeviceCount(&n);
        printf("SKIP: no CUDA device (%s)\n", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
        return 77;
    }
    CudaContext *ctx;
    Error err;
    if (cuda_open(0, &ctx, &err) != 0) {
        printf("SKIP: no CUDA device (%s)\n", err.message);
        return 77;
    }
    kernel_init(0);
    printf("attention_parity on %s\n", cuda_device_name(ctx));
    printf("result impl/ran what                    shape                             rel_err  threshold\n");
    const Shape shapes[] = {
        {"tiny d16", 2, 61, 4, 2, 16, 1, 1},     // tiny models: causal, right padding, GQA 2
        {"tiny d16 lpad", 2, 61, 4, 2, 16, 1, 2},  // left padding: rows that see no key (out 0, lse +inf)
        {"tiny d32", 2, 150, 4, 4, 32, 1, 1},
        {"tiny d32 full", 2, 197, 4, 1, 32, 0, 1},  // non-causal with a key mask, one KV head
        {"d24 (simple only)", 2, 70, 4, 2, 24, 1, 1},  // D not a multiple of 16: flash falls back
        {"gqa 300", 2, 300, 8, 2, 64, 1, 1},
        {"yi 1100", 1, 1100, 32, 4, 128, 1, 0},
        {"clip", 1, 1025, 16, 16, 80, 0, 0},
        // mma at its real head sizes with the corners: rows that see no key and
        // whole key tiles masked (lpad, GQA, D=128), a key mask without causal
        // at D=80 with L not a multiple of 64, and a single KV head at D=64.
        {"d128 lpad gqa", 2, 200, 8, 2, 128, 1, 2},
        {"d80 full mask", 2, 130, 4, 4, 80, 0, 1},
        {"d64 full lpad mqa", 2, 100, 4, 1, 64, 0, 2},
    };
    Tally t = {0, 0};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) check_shape(ctx, &t, &shapes[i]);
    if (do_timing) timing(ctx, &t);
    cuda_close(ctx);
    printf("\n%d passed, %d failed\n", t.passed, t.failed);
    return t.failed > 0 ? 1 : 0;
}
