// cuda_attention.cu - scaled dot-product attention on the GPU, forward and
// backward, with the semantics of kernels.h's attention_forward/backward
// (src/kernels/cpu/attention.c): q [B*L, Hq*D], k, v [B*L, Hkv*D], query head h
// reads KV head h / (Hq / Hkv), causal (key j <= query i), key_mask (keys with
// 0 never attended), lse [B, Hq, L] = natural log-sum-exp of the scaled
// scores. A query row that sees no key at all gets out = 0 and lse = +inf,
// and the backward passes no gradient through it (as the CPU does).
//
// Two implementations:
//   "simple": one warp per query row (forward, dq) or per key row (dk, dv),
//     fp32 math on CUDA cores, online softmax, no L x L buffer, no atomics,
//     deterministic. The reference the fast one is checked against.
//   "flash": FlashAttention-2 style tiles on tensor cores (see the second half).
// cuda_attention_impl() says which runs.
#include <cuda_bf16.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "cuda.h"
}

// ------------------------------------------------------------ helpers

static __device__ __forceinline__ float bf16_to_f32(uint16_t x) { return __uint_as_float((uint32_t)x << 16); }
// Round to nearest even (NaN stays NaN), as the CPU's bf16 rounding.
static __device__ __forceinline__ uint16_t f32_to_bf16(float x) { return __bfloat16_as_ushort(__float2bfloat16(x)); }

static __device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}
static __device__ __forceinline__ float warp_max(float x) {
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

// sum_d a[d] * row[d] over D (a multiple of 8) with row bf16 in global memory
// read 16 bytes (8 values) at a time; a fp32 in shared memory.
static __device__ __forceinline__ float dot_f32_bf16(const float *a, const uint16_t *row, int D) {
    float s = 0.0f;
    for (int d = 0; d < D; d += 8) {
        uint4 packed = *(const uint4 *)(row + d);
        uint32_t w[4] = {packed.x, packed.y, packed.z, packed.w};
        for (int t = 0; t < 4; t++) {
            s += a[d + 2 * t] * __uint_as_float(w[t] << 16);
            s += a[d + 2 * t + 1] * __uint_as_float(w[t] & 0xffff0000u);
        }
    }
    return s;
}

// Whether key j of a sequence is visible from query i.
static __device__ __forceinline__ int key_visible(const int32_t *mask_row, int causal, int i, int j) {
    return (!causal || j <= i) && (mask_row == NULL || mask_row[j] != 0);
}

static void check_launch(const char *what) {
    // Peek (not Get): the error stays for cuda_sync to report as well.
    cudaError_t e = cudaPeekAtLastError();
    if (e != cudaSuccess) fprintf(stderr, "cuda_attention: launching %s failed: %s\n", what, cudaGetErrorString(e));
}

// The arguments the kernels rely on: a bad call is reported and not run
// (its outputs are left as they were) rather than read out of bounds.
static int attention_args_ok(const char *who, const void *q, const void *k, const void *v, int B, int L, int Hq,
                             int Hkv, int D) {
    const char *why = NULL;
    if (B <= 0 || L <= 0 || Hq <= 0 || Hkv <= 0) why = "B, L, Hq and Hkv must be positive";
    else if (Hq % Hkv != 0) why = "Hq must be a multiple of Hkv";
    else if (D <= 0 || D > 128 || D % 8 != 0) why = "D must be a multiple of 8 in 8..128";
    else if (((uintptr_t)q | (uintptr_t)k | (uintptr_t)v) % 16 != 0) why = "q, k, v must be 16-byte aligned";
    if (why == NULL) return 1;
    fprintf(stderr, "%s: %s (B=%d L=%d Hq=%d Hkv=%d D=%d); nothing computed\n", who, why, B, L, Hq, Hkv, D);
    return 0;
}

// Workspace: delta [B, Hq, L] (rowsum(dO * O)), then fp32 accumulators dq
// [B*L, Hq*D], dk, dv [B*L, Hkv*D] (used by flash only), each section
// starting on a 256-byte boundary.
typedef struct {
    float *delta, *dq, *dk, *dv;
} AttentionWorkspace;

static size_t round_up_64(size_t n) { return (n + 63) / 64 * 64; }

static size_t workspace_layout(int B, int L, int Hq, int Hkv, int D, void *base, AttentionWorkspace *w) {
    size_t n_delta = round_up_64((size_t)B * Hq * L), n_dq = round_up_64((size_t)B * L * Hq * D);
    size_t n_dkv = round_up_64((size_t)B * L * Hkv * D);
    if (w != NULL) {
        float *f = (float *)base;
        w->delta = f;
        w->dq = f + n_delta;
        w->dk = w->dq + n_dq;
        w->dv = w->dk + n_dkv;
    }
    return sizeof(float) * (n_delta + n_dq + 2 * n_dkv);
}

size_t cuda_attention_workspace_bytes(int B, int L, int Hq, int Hkv, int D) {
    return workspace_layout(B, L, Hq, Hkv, D, NULL, NULL);
}

static int flash_supported(int D) { return D >= 16 && D <= 128 && D % 16 == 0; }

const char *cuda_attention_impl(int D) {
    const char *force = getenv("VLFT_CUDA_ATTENTION");
    if (force != NULL && strcmp(force, "simple") == 0) return "simple";
    // "flash" forced, or the default: flash where its tiles fit D.
    return flash_supported(D) ? "flash" : "simple";
}

// ------------------------------------------------------------ simple
//
// A block is SIMPLE_WARPS warps; each warp owns one row (b, h, i) and keeps
// its fp32 copies of the row's vectors in shared memory. Keys (or queries)
// are taken 32 at a time: lane c computes the dot products of row j0 + c,
// then the warp walks the 32 results, broadcasting each, and accumulates
// the output vector with lane d holding elements d, d+32, d+64, d+96.

enum { SIMPLE_WARPS = 8, MAX_D = 128, PER_LANE = MAX_D / 32 };

// out, lse for rows (b, h, i) in order b, h, i (one warp each).
__global__ void __launch_bounds__(SIMPLE_WARPS * 32)
    simple_forward_kernel(uint16_t *out, float *lse, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                          const int32_t *key_mask, int B, int L, int Hq, int Hkv, int D, int causal, float scale) {
    __shared__ float s_q[SIMPLE_WARPS][MAX_D];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    long row = (long)blockIdx.x * SIMPLE_WARPS + warp;
    if (row >= (long)B * Hq * L) return;  // whole warp; no block barrier below
    int i = (int)(row % L), h = (int)(row / L % Hq), b = (int)(row / ((long)L * Hq)), g = h / (Hq / Hkv);
    size_t qs = (size_t)Hq * D, ks = (size_t)Hkv * D;
    const uint16_t *q_row = q + ((size_t)b * L + i) * qs + (size_t)h * D;
    const uint16_t *K = k + (size_t)b * L * ks + (size_t)g * D, *V = v + (size_t)b * L * ks + (size_t)g * D;
    const int32_t *mask_row = key_mask ? key_mask + (size_t)b * L : NULL;
    float *sq = s_q[warp];
    for (int d = lane; d < D; d += 32) sq[d] = bf16_to_f32(q_row[d]) * scale;
    __syncwarp();

    float o[PER_LANE] = {0.0f, 0.0f, 0.0f, 0.0f};
    float m = -INFINITY, l = 0.0f;  // running max and sum of exp(s - m)
    int end = causal ? i + 1 : L;
    for (int j0 = 0; j0 < end; j0 += 32) {
        int j = j0 + lane;
        float s = -INFINITY;
        if (j < end && key_visible(mask_row, causal, i, j)) s = dot_f32_bf16(sq, K + (size_t)j * ks, D);
        float tile_max = warp_max(s);
        if (tile_max == -INFINITY) continue;  // warp-uniform: nothing visible here
        float m_new = fmaxf(m, tile_max), alpha = expf(m - m_new);  // m = -inf: alpha = 0
        float p = s == -INFINITY ? 0.0f : expf(s - m_new);
        l = l * alpha + warp_sum(p);
        m = m_new;
        for (int t = 0; t < PER_LANE; t++) o[t] *= alpha;
        int count = min(32, end - j0);
        for (int c = 0; c < count; c++) {
            float pc = __shfl_sync(0xffffffffu, p, c);
            if (pc == 0.0f) continue;  // warp-uniform (broadcast value)
            const uint16_t *v_row = V + (size_t)(j0 + c) * ks;
            for (int t = 0; t < PER_LANE; t++) {
                int d = lane + 32 * t;
                if (d < D) o[t] += pc * bf16_to_f32(v_row[d]);
            }
        }
    }
    float inv = m == -INFINITY ? 0.0f : 1.0f / l;  // no visible key: out = 0
    uint16_t *out_row = out + ((size_t)b * L + i) * qs + (size_t)h * D;
    for (int t = 0; t < PER_LANE; t++) {
        int d = lane + 32 * t;
        if (d < D) out_row[d] = f32_to_bf16(o[t] * inv);
    }
    if (lane == 0) lse[((size_t)b * Hq + h) * L + i] = m == -INFINITY ? INFINITY : m + logf(l);
}

// delta [B, Hq, L] = rowsum(dO * O) per (b, h, i), one warp each (both impls).
__global__ void __launch_bounds__(SIMPLE_WARPS * 32)
    delta_kernel(float *delta, const uint16_t *dout, const uint16_t *out, int B, int L, int Hq, int D) {
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    long row = (long)blockIdx.x * SIMPLE_WARPS + warp;
    if (row >= (long)B * Hq * L) return;
    int i = (int)(row % L), h = (int)(row / L % Hq), b = (int)(row / ((long)L * Hq));
    size_t at = ((size_t)b * L + i) * Hq * D + (size_t)h * D;
    float s = 0.0f;
    for (int d = lane; d < D; d += 32) s += bf16_to_f32(dout[at + d]) * bf16_to_f32(out[at + d]);
    s = warp_sum(s);
    if (lane == 0) delta[row] = s;  // row = (b * Hq + h) * L + i
}

// dq for rows (b, h, i), one warp each: dq_i = sum_j dS_ij k_j with
// P_ij = exp(scale q_i.k_j - lse_i), dS_ij = P_ij (dO_i.v_j - delta_i) scale.
__global__ void __launch_bounds__(SIMPLE_WARPS * 32)
    simple_dq_kernel(uint16_t *dq, const uint16_t *dout, const float *lse, const float *delta, const uint16_t *q,
                     const uint16_t *k, const uint16_t *v, const int32_t *key_mask, int B, int L, int Hq, int Hkv,
                     int D, int causal, float scale) {
    __shared__ float s_q[SIMPLE_WARPS][MAX_D], s_do[SIMPLE_WARPS][MAX_D];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    long row = (long)blockIdx.x * SIMPLE_WARPS + warp;
    if (row >= (long)B * Hq * L) return;
    int i = (int)(row % L), h = (int)(row / L % Hq), b = (int)(row / ((long)L * Hq)), g = h / (Hq / Hkv);
    size_t qs = (size_t)Hq * D, ks = (size_t)Hkv * D, at = ((size_t)b * L + i) * qs + (size_t)h * D;
    const uint16_t *K = k + (size_t)b * L * ks + (size_t)g * D, *V = v + (size_t)b * L * ks + (size_t)g * D;
    const int32_t *mask_row = key_mask ? key_mask + (size_t)b * L : NULL;
    float *sq = s_q[warp], *sdo = s_do[warp];
    for (int d = lane; d < D; d += 32) {
        sq[d] = bf16_to_f32(q[at + d]) * scale;
        sdo[d] = bf16_to_f32(dout[at + d]);
    }
    __syncwarp();
    float row_lse = lse[row], row_delta = delta[row];
    float acc[PER_LANE] = {0.0f, 0.0f, 0.0f, 0.0f};
    int end = row_lse == INFINITY ? 0 : causal ? i + 1 : L;  // a row that saw no key passes no gradient
    for (int j0 = 0; j0 < end; j0 += 32) {
        int j = j0 + lane;
        float ds = 0.0f;
        if (j < end && key_visible(mask_row, causal, i, j)) {
            float p = expf(dot_f32_bf16(sq, K + (size_t)j * ks, D) - row_lse);
            ds = p * (dot_f32_bf16(sdo, V + (size_t)j * ks, D) - row_delta) * scale;
        }
        int count = min(32, end - j0);
        for (int c = 0; c < count; c++) {
            float dsc = __shfl_sync(0xffffffffu, ds, c);
            if (dsc == 0.0f) continue;
            const uint16_t *k_row = K + (size_t)(j0 + c) * ks;
            for (int t = 0; t < PER_LANE; t++) {
                int d = lane + 32 * t;
                if (d < D) acc[t] += dsc * bf16_to_f32(k_row[d]);
            }
        }
    }
    for (int t = 0; t < PER_LANE; t++) {
        int d = lane + 32 * t;
        if (d < D) dq[at + d] = f32_to_bf16(acc[t]);
    }
}

// dk, dv for key rows (b, g, j) in order b, g, j, one warp each, over every
// query row of every head of the group that sees key j: dv_j = sum P_ij dO_i,
// dk_j = sum dS_ij q_i. Each warp owns its output rows: no atomics.
__global__ void __launch_bounds__(SIMPLE_WARPS * 32)
    simple_dkv_kernel(uint16_t *dk, uint16_t *dv, const uint16_t *dout, const float *lse, const float *delta,
                      const uint16_t *q, const uint16_t *k, const uint16_t *v, const int32_t *key_mask, int B, int L,
                      int Hq, int Hkv, int D, int causal, float scale) {
    __shared__ float s_k[SIMPLE_WARPS][MAX_D], s_v[SIMPLE_WARPS][MAX_D];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    long row = (long)blockIdx.x * SIMPLE_WARPS + warp;
    if (row >= (long)B * Hkv * L) return;
    int j = (int)(row % L), g = (int)(row / L % Hkv), b = (int)(row / ((long)L * Hkv)), group = Hq / Hkv;
    size_t qs = (size_t)Hq * D, ks = (size_t)Hkv * D, at = ((size_t)b * L + j) * ks + (size_t)g * D;
    float *sk = s_k[warp], *sv = s_v[warp];
    for (int d = lane; d < D; d += 32) {
        sk[d] = bf16_to_f32(k[at + d]) * scale;
        sv[d] = bf16_to_f32(v[at + d]);
    }
    __syncwarp();
    int masked = key_mask != NULL && key_mask[(size_t)b * L + j] == 0;  // never attended: zero gradients
    float acc_k[PER_LANE] = {0.0f, 0.0f, 0.0f, 0.0f}, acc_v[PER_LANE] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int hh = 0; hh < group && !masked; hh++) {
        int h = g * group + hh;
        const uint16_t *Q = q + (size_t)b * L * qs + (size_t)h * D, *dO = dout + (size_t)b * L * qs + (size_t)h * D;
        const float *row_lse = lse + ((size_t)b * Hq + h) * L, *row_delta = delta + ((size_t)b * Hq + h) * L;
        for (int i0 = causal ? j : 0; i0 < L; i0 += 32) {
            int i = i0 + lane;
            float p = 0.0f, ds = 0.0f;
            if (i < L && row_lse[i] != INFINITY) {
                p = expf(dot_f32_bf16(sk, Q + (size_t)i * qs, D) - row_lse[i]);
                ds = p * (dot_f32_bf16(sv, dO + (size_t)i * qs, D) - row_delta[i]) * scale;
            }
            int count = min(32, L - i0);
            for (int c = 0; c < count; c++) {
                float pc = __shfl_sync(0xffffffffu, p, c), dsc = __shfl_sync(0xffffffffu, ds, c);
                if (pc == 0.0f && dsc == 0.0f) continue;
                const uint16_t *q_row = Q + (size_t)(i0 + c) * qs, *do_row = dO + (size_t)(i0 + c) * qs;
                for (int t = 0; t < PER_LANE; t++) {
                    int d = lane + 32 * t;
                    if (d < D) {
                        acc_v[t] += pc * bf16_to_f32(do_row[d]);
                        acc_k[t] += dsc * bf16_to_f32(q_row[d]);
                    }
                }
            }
        }
    }
    for (int t = 0; t < PER_LANE; t++) {
        int d = lane + 32 * t;
        if (d < D) {
            dk[at + d] = f32_to_bf16(acc_k[t]);
            dv[at + d] = f32_to_bf16(acc_v[t]);
        }
    }
}

static unsigned int warp_blocks(long rows) { return (unsigned int)((rows + SIMPLE_WARPS - 1) / SIMPLE_WARPS); }

static void simple_forward(cudaStream_t s, uint16_t *out, float *lse, const uint16_t *q, const uint16_t *k,
                           const uint16_t *v, const int32_t *key_mask, int B, int L, int Hq, int Hkv, int D,
                           int causal, float scale) {
    simple_forward_kernel<<<warp_blocks((long)B * Hq * L), SIMPLE_WARPS * 32, 0, s>>>(out, lse, q, k, v, key_mask, B,
                                                                                        L, Hq, Hkv, D, causal, scale);
    check_launch("simple_forward_kernel");
}

static void simple_backward(cudaStream_t s, uint16_t *dq, uint16_t *dk, uint16_t *dv, const uint16_t *dout,
                            const float *lse, const float *delta, const uint16_t *q, const uint16_t *k,
                            const uint16_t *v, const int32_t *key_mask, int B, int L, int Hq, int Hkv, int D,
                            int causal, float scale) {
    simple_dq_kernel<<<warp_blocks((long)B * Hq * L), SIMPLE_WARPS * 32, 0, s>>>(dq, dout, lse, delta, q, k, v,
                                                                                   key_mask, B, L, Hq, Hkv, D, causal,
                                                                                   scale);
    check_launch("simple_dq_kernel");
    simple_dkv_kernel<<<warp_blocks((long)B * Hkv * L), SIMPLE_WARPS * 32, 0, s>>>(dk, dv, dout, lse, delta, q, k, v,
                                                                                     key_mask, B, L, Hq, Hkv, D,
                                                                                     causal, scale);
    check_launch("simple_dkv_kernel");
}

// ------------------------------------------------------------ entry points

void cuda_attention_forward(cudaStream_t s, uint16_t *out, float *lse, const uint16_t *q, const uint16_t *k,
                            const uint16_t *v, const int32_t *key_mask, int B, int L, int Hq, int Hkv, int D,
                            int causal, float scale) {
    if (!attention_args_ok("cuda_attention_forward", q, k, v, B, L, Hq, Hkv, D)) return;
    simple_forward(s, out, lse, q, k, v, key_mask, B, L, Hq, Hkv, D, causal, scale);
}

void cuda_attention_backward(cudaStream_t s, uint16_t *dq, uint16_t *dk, uint16_t *dv, const uint16_t *dout,
                             const uint16_t *out, const float *lse, const uint16_t *q, const uint16_t *k,
                             const uint16_t *v, const int32_t *key_mask, int B, int L, int Hq, int Hkv, int D,
                             int causal, float scale, void *workspace) {
    if (!attention_args_ok("cuda_attention_backward", q, k, v, B, L, Hq, Hkv, D)) return;
    AttentionWorkspace w;
    workspace_layout(B, L, Hq, Hkv, D, workspace, &w);
    delta_kernel<<<warp_blocks((long)B * Hq * L), SIMPLE_WARPS * 32, 0, s>>>(w.delta, dout, out, B, L, Hq, D);
    check_launch("delta_kernel");
    simple_backward(s, dq, dk, dv, dout, lse, w.delta, q, k, v, key_mask, B, L, Hq, Hkv, D, causal, scale);
}
