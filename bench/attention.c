// bench/attention.c - times attention_forward + attention_backward of the
// current build against a baseline implementation linked into the same
// binary (the functions renamed old_attention_*), alternating the two in one
// run, and reports the peak heap bytes each call allocates (malloc/free are
// wrapped at link time). Built and run by bench/attention.sh:
//
//   bench/attention.sh [THREADS (default 2)] [REPEAT (default 3)] [BASELINE_REV (default e929027)]
//
// Profiling one side: KEEP=DIR bench/attention.sh keeps the binary in DIR;
// DIR/bench_attention THREADS REPEAT new|baseline times only that one.
//
// "cpu s" is CPU seconds of all threads (fwd + bwd): on a machine shared with
// other work it is steadier than the wall times, which include time the
// process was not scheduled. "balance" says how evenly the threads were
// busy in each phase (see balance() below).
//
// Shapes: the Yi-VL-6B language model's attention on 1024 image + 256 text
// tokens (B=1, L=1280, Hq=32, Hkv=4, D=128, causal) and its CLIP ViT-H/14
// tower at 448 px (B=1, L=1025, H=16, D=80, not causal).
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../src/kernels/kernels.h"

void old_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                           const int32_t *key_mask, int B, int L, int Hq, int Hkv, int D, int causal, float scale);
void old_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                            const float *q, const float *k, const float *v, const int32_t *key_mask, int B, int L,
                            int Hq, int Hkv, int D, int causal, float scale);

// --- heap accounting (the program is linked with -Wl,--wrap=malloc etc.) --
// Each block carries its size in a 16-byte header so free() can subtract it.
void *__real_malloc(size_t n);
void __real_free(void *p);
static size_t live_bytes, peak_bytes;

void *__wrap_malloc(size_t n) {
    char *p = __real_malloc(n + 16);
    if (p == NULL) return NULL;
    memcpy(p, &n, sizeof n);
#pragma omp atomic
    live_bytes += n;
#pragma omp critical(bench_heap)
    if (live_bytes > peak_bytes) peak_bytes = live_bytes;
    return p + 16;
}

void __wrap_free(void *p) {
    if (p == NULL) return;
    char *base = (char *)p - 16;
    size_t n;
    memcpy(&n, base, sizeof n);
#pragma omp atomic
    live_bytes -= n;
    __real_free(base);
}

void *__wrap_calloc(size_t count, size_t size) {
    void *p = __wrap_malloc(count * size);
    if (p) memset(p, 0, count * size);
    return p;
}

static double clock_seconds(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static double now(void) { return clock_seconds(CLOCK_MONOTONIC); }
// CPU seconds of all threads: on a machine shared with other work, time the
// process was not scheduled does not count (idle OpenMP threads sleep, see
// OMP_WAIT_POLICY in bench/attention.sh, so waiting does not count either).
static double cpu_now(void) { return clock_seconds(CLOCK_PROCESS_CPUTIME_ID); }

// CPU seconds each OpenMP thread of the pool has run so far (a pool thread
// keeps its number from one parallel region to the next).
enum { MAX_THREADS = 256 };
static void thread_cpu(double *per_thread) {
#pragma omp parallel
    per_thread[omp_get_thread_num()] = clock_seconds(CLOCK_THREAD_CPUTIME_ID);
}

// How evenly a phase kept the threads busy: their CPU seconds summed over
// (threads x the busiest one's). 100% = every thread worked as long as the
// busiest; a serial section shows as 1/threads of its share. On a busy
// machine a few percent under 100% can also be a dynamic schedule handing
// fewer tasks to a thread that got less CPU.
static double balance(const double *before, const double *after, int threads) {
    double sum = 0, most = 0;
    for (int i = 0; i < threads; i++) {
        sum += after[i] - before[i];
        most = fmax(most, after[i] - before[i]);
    }
    return most > 0 ? sum / (threads * most) : 1;
}

typedef struct {
    const char *name;
    int B, L, Hq, Hkv, D, causal;
} Shape;

typedef struct {
    double fwd, bwd;    // best wall seconds
    double cpu;         // best CPU seconds of fwd + bwd
    size_t peak_fwd, peak_bwd;  // heap bytes allocated inside the call
    double balance_fwd, balance_bwd;  // of the last repetition
} Timing;

static void run(int old, const Shape *s, float *out, float *lse, float *dq, float *dk, float *dv, const float *q,
                const float *k, const float *v, const float *dout, Timing *t) {
    float scale = 1.0f / sqrtf((float)s->D);
    int threads = omp_get_max_threads();
    double before[MAX_THREADS], middle[MAX_THREADS], after[MAX_THREADS];
    thread_cpu(before);
    live_bytes = peak_bytes = 0;
    double c0 = cpu_now(), t0 = now();
    if (old) old_attention_forward(out, lse, q, k, v, NULL, s->B, s->L, s->Hq, s->Hkv, s->D, s->causal, scale);
    else attention_forward(out, lse, q, k, v, NULL, s->B, s->L, s->Hq, s->Hkv, s->D, s->causal, scale);
    double t1 = now();
    thread_cpu(middle);
    size_t peak_fwd = peak_bytes;
    live_bytes = peak_bytes = 0;
    if (old)
        old_attention_backward(dq, dk, dv, dout, out, lse, q, k, v, NULL, s->B, s->L, s->Hq, s->Hkv, s->D, s->causal,
                               scale);
    else
        attention_backward(dq, dk, dv, dout, out, lse, q, k, v, NULL, s->B, s->L, s->Hq, s->Hkv, s->D, s->causal,
                           scale);
    double t2 = now(), c2 = cpu_now();
    thread_cpu(after);
    t->balance_fwd = balance(before, middle, threads);
    t->balance_bwd = balance(middle, after, threads);
    if (t->cpu == 0 || c2 - c0 < t->cpu) t->cpu = c2 - c0;
    if (t->fwd == 0 || t1 - t0 < t->fwd) t->fwd = t1 - t0;
    if (t->bwd == 0 || t2 - t1 < t->bwd) t->bwd = t2 - t1;
    t->peak_fwd = peak_fwd;
    t->peak_bwd = peak_bytes;
}

static double max_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    if (threads < 1 || threads > MAX_THREADS) {
        fprintf(stderr, "bench_attention: THREADS must be 1..%d\n", MAX_THREADS);
        return 2;
    }
    int repeat = argc > 2 ? atoi(argv[2]) : 3;
    // Third argument "new" or "baseline": time only that one (for profiling).
    int first = argc > 3 && strcmp(argv[3], "new") == 0 ? 0 : 1;
    int last = argc > 3 && strcmp(argv[3], "baseline") == 0 ? 1 : 0;
    kernel_init(threads);
    Shape shapes[] = {{"mid text L=385 Hq=12 Hkv=4 D=64 causal", 1, 385, 12, 4, 64, 1},
                      {"mid vit L=257 H=12 D=64 full", 1, 257, 12, 12, 64, 0},
                      {"yi-vl-6b text L=1280 Hq=32 Hkv=4 D=128 causal", 1, 1280, 32, 4, 128, 1},
                      {"vit-h/14 448px L=1025 H=16 D=80 full", 1, 1025, 16, 16, 80, 0}};
    printf("threads %d, best of %d\n", threads, repeat);
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const Shape *s = &shapes[si];
        size_t nq = (size_t)s->B * s->L * s->Hq * s->D, nk = (size_t)s->B * s->L * s->Hkv * s->D;
        size_t nl = (size_t)s->B * s->Hq * s->L;
        float *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nk * 4), *dout = malloc(nq * 4);
        float *out[2], *lse[2], *dq[2], *dk[2], *dv[2];
        for (int i = 0; i < 2; i++) {
            out[i] = malloc(nq * 4), lse[i] = malloc(nl * 4), dq[i] = malloc(nq * 4);
            dk[i] = malloc(nk * 4), dv[i] = malloc(nk * 4);
        }
        unsigned seed = 1;
        for (size_t i = 0; i < nq; i++) {
            seed = seed * 1103515245u + 12345u;
            q[i] = ((float)(seed >> 8) / 16777216.0f - 0.5f) * 2.0f;
            seed = seed * 1103515245u + 12345u;
            dout[i] = ((float)(seed >> 8) / 16777216.0f - 0.5f) * 0.1f;
        }
        for (size_t i = 0; i < nk; i++) {
            seed = seed * 1103515245u + 12345u;
            k[i] = ((float)(seed >> 8) / 16777216.0f - 0.5f) * 2.0f;
            seed = seed * 1103515245u + 12345u;
            v[i] = (float)(seed >> 8) / 16777216.0f - 0.5f;
        }
        Timing t[2] = {{0}, {0}};
        for (int r = 0; r < repeat; r++)
            for (int old = first; old >= last; old--)
                run(old, s, out[old], lse[old], dq[old], dk[old], dv[old], q, k, v, dout, &t[old]);
        printf("\n%s\n", s->name);
        printf("  %-8s %9s %9s %9s %9s %14s %14s %17s\n", "", "fwd s", "bwd s", "total s", "cpu s", "fwd scratch B",
               "bwd scratch B", "balance fwd/bwd");
        for (int old = first; old >= last; old--)
            printf("  %-8s %9.4f %9.4f %9.4f %9.4f %14zu %14zu %8.0f%%/%3.0f%%\n", old ? "baseline" : "new", t[old].fwd,
                   t[old].bwd, t[old].fwd + t[old].bwd, t[old].cpu, t[old].peak_fwd, t[old].peak_bwd,
                   100 * t[old].balance_fwd, 100 * t[old].balance_bwd);
        if (first != last) {
            printf("  speed-up (baseline / new): fwd %.2fx  bwd %.2fx  total %.2fx  (cpu seconds %.2fx)\n",
                   t[1].fwd / t[0].fwd, t[1].bwd / t[0].bwd, (t[1].fwd + t[1].bwd) / (t[0].fwd + t[0].bwd),
                   t[1].cpu / t[0].cpu);
            printf("  max |new - baseline|: out %.2e  lse %.2e  dq %.2e  dk %.2e  dv %.2e\n",
                   max_diff(out[0], out[1], nq), max_diff(lse[0], lse[1], nl), max_diff(dq[0], dq[1], nq),
                   max_diff(dk[0], dk[1], nk), max_diff(dv[0], dv[1], nk));
        }
        free(q), free(k), free(v), free(dout);
        for (int i = 0; i < 2; i++) free(out[i]), free(lse[i]), free(dq[i]), free(dk[i]), free(dv[i]);
    }
    return 0;
}
