// vlft _gemm-peak: the GEMM speed this machine reaches, for the benchmark's
// "achieved FLOP/s over peak" ratio. Times one large product through
// oneDNN's matmul in bf16 (bf16 inputs, f32 output) and in f32, and, for
// comparison, vlft's own gemm_bf16 (whichever implementation it picked) and
// gemm() (OpenBLAS sgemm), all on the same threads. Prints one JSON line.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include <time.h>

#include "../kernels/kernels.h"
#include "commands.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: vlft _gemm-peak [--shape M,N,K] [--threads N] [--repeat N]\n\n"
            "Times [M,K] x [K,N] products (default 2048,2048,2048): oneDNN bf16 and f32 matmul, vlft's bf16\n"
            "GEMM and its fp32 GEMM (OpenBLAS); prints GFLOP/s (best of N repeats) as one JSON line.\n");
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Best GFLOP/s of vlft's own products (bf16 seam or fp32 gemm) over repeats, after a warm-up.
static double time_vlft(int M, int N, int K, int bf16, int repeat) {
    float *A = kernel_alloc((size_t)M * K), *B = kernel_alloc((size_t)K * N), *C = kernel_alloc((size_t)M * N);
    uint16_t *A16 = kernel_alloc_bf16((size_t)M * K), *B16 = kernel_alloc_bf16((size_t)K * N);
    double best = -1;
    if (A && B && C && A16 && B16) {
        for (size_t i = 0; i < (size_t)M * K; i++) A[i] = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
        for (size_t i = 0; i < (size_t)K * N; i++) B[i] = (float)((i * 40503u) % 2001) / 1000.0f - 1.0f;
        bf16_from_f32(A16, A, (size_t)M * K);
        bf16_from_f32(B16, B, (size_t)K * N);
        for (int r = 0; r <= repeat; r++) {  // r == 0 warms up
            double t0 = now_seconds();
            if (bf16)
                gemm_bf16(0, 0, M, N, K, 1.0f, (Bf16Input){.bf16 = A16}, K, (Bf16Input){.bf16 = B16}, N, 0.0f, C, N);
            else gemm(0, 0, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N);
            double seconds = now_seconds() - t0;
            if (r > 0 && (best < 0 || seconds < best)) best = seconds;
        }
    }
    kernel_free(A);
    kernel_free(B);
    kernel_free(C);
    kernel_free_bf16(A16);
    kernel_free_bf16(B16);
    return best > 0 ? 2.0 * M * N * K / best * 1e-9 : -1;
}

static void print_escaped(const char *s) {
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') putchar('\\');
        if ((unsigned char)*s >= 0x20) putchar(*s);
    }
    putchar('"');
}

int command_gemm_peak(int argc, char **argv) {
    int M = 2048, N = 2048, K = 2048, threads = 0, repeat = 3;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return EXIT_OK;
        }
        int ok = v != NULL;
        if (ok && strcmp(a, "--shape") == 0) ok = sscanf(v, "%d,%d,%d", &M, &N, &K) == 3 && M > 0 && N > 0 && K > 0;
        else if (ok && strcmp(a, "--threads") == 0) ok = sscanf(v, "%d", &threads) == 1 && threads >= 0;
        else if (ok && strcmp(a, "--repeat") == 0) ok = sscanf(v, "%d", &repeat) == 1 && repeat > 0;
        else ok = 0;
        if (!ok) {
            fprintf(stderr, "vlft _gemm-peak: bad option '%s'%s%s\n", a, v ? " " : "", v ? v : "");
            usage(stderr);
            return EXIT_USAGE;
        }
        i++;
    }
    kernel_init(threads);
    char impl_bf16[256] = "", impl_f32[256] = "", err_bf16[256] = "", err_f32[256] = "";
    double bf16 = 0, f32 = 0;
    int bf16_ok = gemm_peak_onednn(M, N, K, 1, repeat, &bf16, impl_bf16, sizeof impl_bf16, err_bf16, sizeof err_bf16) == 0;
    int f32_ok = gemm_peak_onednn(M, N, K, 0, repeat, &f32, impl_f32, sizeof impl_f32, err_f32, sizeof err_f32) == 0;
    double vlft_bf16 = time_vlft(M, N, K, 1, repeat), vlft_f32 = time_vlft(M, N, K, 0, repeat);
    printf("{\"M\": %d, \"N\": %d, \"K\": %d, \"threads\": %d, \"isa\": \"%s\", ", M, N, K, omp_get_max_threads(),
           gemm_onednn_isa_name());
    printf("\"onednn_bf16_gflops\": %.3f, \"onednn_bf16_impl\": ", bf16_ok ? bf16 : -1.0);
    print_escaped(bf16_ok ? impl_bf16 : err_bf16);
    printf(", \"onednn_f32_gflops\": %.3f, \"onednn_f32_impl\": ", f32_ok ? f32 : -1.0);
    print_escaped(f32_ok ? impl_f32 : err_f32);
    printf(", \"vlft_bf16_gflops\": %.3f, \"vlft_bf16_impl\": \"%s\", \"vlft_f32_gflops\": %.3f}\n", vlft_bf16,
           gemm_bf16_impl_name(gemm_bf16_impl()), vlft_f32);
    // No bf16 matmul in oneDNN on this CPU is an answer (-1 and the reason), not a failure.
    return f32_ok ? EXIT_OK : EXIT_BAD_INPUT;
}
