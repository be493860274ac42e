// cuda_attention_mma.cu - the "mma" attention implementation: FlashAttention-2
// with mma.sync.aligned.m16n8k16 bf16 tensor-core instructions (inline PTX),
// ldmatrix fragment loads, cp.async double-buffered tiles, and every
// accumulator (S, O; in the backward dP, dK, dV) resident in registers.
// Same semantics as the "simple" and "flash" implementations of
// cuda_attention.cu (see the top of that file and docs/cuda_attention.md).
//
// ---------------------------------------------------------------- fragments
//
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32: D (16x8) = A (16x16)
// * B (16x8) + C, per warp. With lane = threadIdx.x % 32, gid = lane / 4 and
// tig = lane % 4 (PTX ISA, "Matrix Fragments for mma.m16n8k16", .bf16):
//   A: 4 x .b32 (2 bf16 each; the lower column in the low 16 bits)
//      a0 = A[gid    ][2 tig, 2 tig + 1]     a1 = A[gid + 8][2 tig, 2 tig + 1]
//      a2 = A[gid    ][2 tig + 8, + 9]      a3 = A[gid + 8][2 tig + 8, + 9]
//   B: 2 x .b32 (2 bf16 each; the lower k in the low 16 bits)
//      b0 = B[2 tig, 2 tig + 1][gid]         b1 = B[2 tig + 8, + 9][gid]
//   C, D: 4 x f32
//      c0, c1 = C[gid][2 tig, 2 tig + 1]     c2, c3 = C[gid + 8][2 tig, 2 tig + 1]
// So element e (0..3) of a C fragment sits at row gid + 8 (e / 2), column
// 2 tig + (e % 2).
//
// The FA2 trick: a 16 x 16 block of a product held as two C fragments
// (columns 0-7: c, columns 8-15: c') is, converted to bf16 pairs, exactly an
// A fragment: a0 = (c0, c1), a1 = (c2, c3), a2 = (c'0, c'1), a3 = (c'2, c'3).
// P (forward) and P^T, dS^T (backward) go from one product to the next
// without leaving registers.
//
// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16 loads four 8x8 bf16
// matrices; lanes 8m .. 8m+7 give the addresses of the 8 rows of matrix m
// (16 contiguous bytes each) and register m receives matrix m. Without
// .trans lane holds row gid, columns 2 tig, 2 tig + 1 of the matrix (rows
// being what the addresses point at); with .trans it holds rows 2 tig,
// 2 tig + 1 of column gid. Hence three address patterns, for a 16x16 block
// at (r0, c0) of a row-major shared tile, lane supplying row r and column c:
//   A_ROWS (A fragment of the tile itself, non-trans):
//     r = r0 + lane % 8 + 8 ((lane / 8) % 2), c = c0 + 8 (lane / 16)
//     -> a0..a3 in registers 0..3.
//   B_OF_TRANSPOSE (B = tile^T, i.e. B[k][n] = tile[n][k]; n over rows, k
//     over columns; non-trans):
//     r = r0 + lane % 8 + 8 (lane / 16), c = c0 + 8 ((lane / 8) % 2)
//     -> registers 0, 1 = b0, b1 of n-tile rows r0..r0+7; 2, 3 = those of
//        rows r0+8..r0+15.
//   B_OF_TILE (B = tile, B[k][n] = tile[k][n]; k over rows, n over columns;
//     .trans):
//     r = r0 + lane % 8 + 8 ((lane / 8) % 2), c = c0 + 8 (lane / 16)
//     -> registers 0, 1 = b0, b1 of n-tile columns c0..c0+7; 2, 3 = those of
//        columns c0+8..c0+15.
//   A_OF_TRANSPOSE (A = tile^T, A[m][k] = tile[k][m]; .trans):
//     r (a k) = r0 + lane % 8 + 8 (lane / 16), c (an m) = c0 + 8 ((lane / 8) % 2)
//     -> a0..a3 in registers 0..3.
//
// Shared tiles are [64][D + 8] bf16 (and [64][72] for dS^T): the 16 bytes of
// padding per row put the 8 rows (16 bytes = 4 banks each) read by every
// ldmatrix phase on distinct banks. Row strides of 272, 176, 144 bytes at
// D = 128, 80, 64 are 68, 44, 36 words, i.e. 4, 12, 4 mod 32: 8 consecutive
// rows start at 8 distinct multiples of 4 banks.
//
// ---------------------------------------------------------------- forward
//
// Block = 4 warps = 64 query rows of one (b, h); warp w owns rows 16w..16w+15.
// Q goes once through shared memory (the second K buffer, not yet in use)
// into A fragments (registers). Key
// tiles of 64 (only up to the diagonal under causal; tiles whose keys are
// all masked are skipped) are brought in with cp.async, double-buffered: the
// next tile's K and V load while this one is computed. Per tile and warp:
//   S (16 x 64, 8 C fragments) = Q K^T; scale (in log2 units) and mask;
//   online softmax on registers: each thread holds 2 rows (gid, gid + 8) x 16
//   columns; row max over the quad (shuffles xor 1, 2); running max m and
//   the thread's partial sum l; O rescaled by exp2(m_old - m_new);
//   O (16 x D, D/8 C fragments) += P V with P straight from S's registers.
// At the end l is summed over the quad, out = O / l, lse = m ln 2 + log l.
//
// ---------------------------------------------------------------- backward
//
// delta = rowsum(dO * O) comes from cuda_attention.cu's delta_kernel. Block
// = 4 warps = 64 keys of one (b, KV head g); warp w owns keys 16w..16w+15.
// K, V stay in shared memory; the block loops over the query heads of the
// group it was given and, for each, over the query tiles of 64 that see the
// keys (from the diagonal under causal), Q, dO, lse, delta double-buffered.
// Working in the transposed orientation (keys as rows) keeps everything a
// warp accumulates in its own registers:
//   S^T (16 keys x 64 queries) = K Q^T, dP^T = V dO^T;
//   P^T = exp2(S^T scale log2e - lse log2e), dS^T = P^T (dP^T - delta) scale;
//   dV (16 x D) += P^T dO, dK += dS^T Q   (P^T, dS^T as A fragments);
//   dS^T to shared memory (bf16), then warp w computes dQ rows 16w..16w+15
//   = dS K over the tile's 64 keys and adds them into the fp32 dq
//   accumulator with atomicAdd.
// dK, dV go out at the end: straight to bf16 when the block looped over all
// the group's heads, else (the group split over several blocks, for
// parallelism when B * Hkv * key tiles is small) atomically added into fp32
// accumulators. A last kernel rounds the accumulators to bf16.
#include <cuda_bf16.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_attention_mma.h"

typedef __nv_bfloat16 bf16;

enum {
    MMA_WARPS = 4,
    MMA_THREADS = MMA_WARPS * 32,
    MMA_TILE = 64,             // query rows and keys per tile (16 per warp)
    MMA_LD_DS = MMA_TILE + 8,  // row stride of the dS^T tile [64 keys][64 queries]
};

static const float LOG2E = 1.4426950408889634f, LN2 = 0.6931471805599453f;

// ------------------------------------------------------------ PTX wrappers

static __device__ __forceinline__ uint32_t smem_addr(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

// 16 bytes global -> shared, asynchronous; src_bytes 0 writes 16 zero bytes
// and reads nothing (src must still be a valid address).
static __device__ __forceinline__ void cp_async_16(void *dst, const void *src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes)
                 : "memory");
}
static __device__ __forceinline__ void cp_async_commit(void) { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N> static __device__ __forceinline__ void cp_async_wait(void) {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

static __device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const bf16 *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
static __device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const bf16 *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

// c (16x8 fp32) += a (16x16 bf16) * (b0, b1) (16x8 bf16).
static __device__ __forceinline__ void mma_bf16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats rounded (to nearest even) to bf16, lo in the low 16 bits.
static __device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    return bits;
}

// The A fragment of columns 16j..16j+15 of a 16-row block held as C
// fragments c[2j] (columns 0-7) and c[2j+1] (columns 8-15).
static __device__ __forceinline__ void a_from_c(uint32_t a[4], const float lo[4], const float hi[4]) {
    a[0] = pack_bf16(lo[0], lo[1]);
    a[1] = pack_bf16(lo[2], lo[3]);
    a[2] = pack_bf16(hi[0], hi[1]);
    a[3] = pack_bf16(hi[2], hi[3]);
}

// dst[0], dst[1] += x, y (fp32 global; dst 8-byte aligned).
static __device__ __forceinline__ void atomic_add_pair(float *dst, float x, float y) {
#if __CUDA_ARCH__ >= 900
    atomicAdd((float2 *)dst, make_float2(x, y));
#else
    atomicAdd(dst, x);
    atomicAdd(dst + 1, y);
#endif
}

static void check_launch(const char *what) {
    cudaError_t e = cudaPeekAtLastError();  // Peek: the error stays for cuda_sync to report as well
    if (e != cudaSuccess) fprintf(stderr, "cuda_attention (mma): launching %s failed: %s\n", what, cudaGetErrorString(e));
}

// ------------------------------------------------------------ tiles

template <int D> struct MmaLayout {
    static const int LD = D + 8;  // row stride (elements) of the [64][D] bf16 tiles
    static const size_t TILE_BYTES = sizeof(bf16) * MMA_TILE * LD;
    // forward: (K, V)[2] | key_ok[2][64]; Q passes through buffer 1's K
    static const size_t FORWARD_BYTES = 4 * TILE_BYTES + 2 * MMA_TILE * sizeof(int);
    // backward: K | V | Q[2] | dO[2] | dS^T [64][72] bf16 | lse2[2][64], delta[2][64] | key_ok[64]
    static const size_t DS_BYTES = sizeof(bf16) * MMA_TILE * MMA_LD_DS;
    static const size_t BACKWARD_BYTES = 6 * TILE_BYTES + DS_BYTES + 4 * MMA_TILE * sizeof(float) +
                                         MMA_TILE * sizeof(int);
};

// dst [64][D + 8] (shared) = rows r0 .. r0+63 of src (row stride `stride`
// elements), rows >= L zero-filled. Asynchronous (cp.async); the caller
// commits and waits. r0 < L, so src + r0 * stride is a valid address.
template <int D>
static __device__ __forceinline__ void cp_async_tile(bf16 *dst, const uint16_t *src, size_t stride, int r0, int L) {
    const int LD = D + 8, CHUNKS = D / 8;  // 16-byte pieces per row
    for (int idx = threadIdx.x; idx < MMA_TILE * CHUNKS; idx += MMA_THREADS) {
        int r = idx / CHUNKS, c = idx % CHUNKS, row = r0 + r;
        int inside = row < L;
        cp_async_16(dst + r * LD + c * 8, src + (size_t)(inside ? row : r0) * stride + c * 8, inside ? 16 : 0);
    }
}

// The first key tile at or after j (a multiple of 64, below key_end) that
// has a visible key, or key_end when there is none. Leaves that tile's
// key_ok[c] = key j + c exists and is not masked. Every thread of the block
// calls it (it holds a barrier when there is a mask); the answer is the
// same in all of them.
static __device__ int next_key_tile(int j, int key_end, int L, const int32_t *mask_row, int *key_ok) {
    for (; j < key_end; j += MMA_TILE) {
        int ok = 0;
        if (threadIdx.x < MMA_TILE) {
            int key = j + threadIdx.x;
            ok = key < L && (mask_row == NULL || mask_row[key] != 0);
            key_ok[threadIdx.x] = ok;
        }
        if (mask_row == NULL) return j;  // key j < key_end <= L is visible
        if (__syncthreads_or(ok)) return j;
    }
    return key_end;
}

// ------------------------------------------------------------ forward

template <int D>
__global__ void __launch_bounds__(MMA_THREADS)
    mma_forward_kernel(uint16_t *out, float *lse, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                       const int32_t *key_mask, int L, int Hq, int Hkv, int causal, float scale) {
    const int LD = D + 8, NK = D / 16, ND = D / 8;  // k-steps over D; 8-column n-tiles over D
    extern __shared__ __align__(128) unsigned char smem[];
    bf16 *sKV = (bf16 *)smem;  // buffer t: K = tile 2t, V = tile 2t + 1
    // Q is needed only until it is in registers: it goes through buffer 1's
    // K tile, which the first prefetch overwrites after a barrier.
    bf16 *sQ = sKV + 2 * MMA_TILE * LD;
    int *key_ok = (int *)(smem + 4 * MmaLayout<D>::TILE_BYTES);  // [2][64]

    int b = blockIdx.x / Hq, h = blockIdx.x % Hq, g = h / (Hq / Hkv);
    int i0 = (gridDim.y - 1 - blockIdx.y) * MMA_TILE;  // the longest (last) query tiles start first
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gid = lane / 4, tig = lane % 4;
    int row_first = i0 + 16 * warp;  // the warp's first query row
    size_t qs = (size_t)Hq * D, ks = (size_t)Hkv * D;
    const uint16_t *Q = q + (size_t)b * L * qs + (size_t)h * D;
    const uint16_t *K = k + (size_t)b * L * ks + (size_t)g * D, *V = v + (size_t)b * L * ks + (size_t)g * D;
    const int32_t *mask_row = key_mask ? key_mask + (size_t)b * L : NULL;
    int key_end = causal ? min(L, i0 + MMA_TILE) : L;
    float scale_log2 = scale * LOG2E;

    // Q (group 1), then the first key tile into buffer 0 (group 2).
    cp_async_tile<D>(sQ, Q, qs, i0, L);
    cp_async_commit();
    int j0 = next_key_tile(0, key_end, L, mask_row, key_ok);
    if (j0 < key_end) {
        cp_async_tile<D>(sKV, K, ks, j0, L);
        cp_async_tile<D>(sKV + MMA_TILE * LD, V, ks, j0, L);
    }
    cp_async_commit();
    cp_async_wait<1>();  // Q is in
    __syncthreads();
    uint32_t qa[NK][4];  // the warp's 16 rows of Q as A fragments, k-step kk = columns 16kk..16kk+15
#pragma unroll
    for (int kk = 0; kk < NK; kk++)
        ldmatrix_x4(qa[kk], sQ + (16 * warp + lane % 8 + 8 * ((lane / 8) % 2)) * LD + 16 * kk + 8 * (lane / 16));
    __syncthreads();  // every warp has its Q fragments before buffer 1 is refilled

    float o[ND][4];  // O rows gid, gid + 8 of the warp; n-tile n = columns 8n..8n+7
#pragma unroll
    for (int n = 0; n < ND; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    // Per row r (0: gid, 1: gid + 8): running max of the scaled scores in
    // log2 units (the same in the 4 threads of a quad) and this thread's
    // part of the sum of exp2(score - max) (summed over the quad at the end).
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

    int buf = 0;
    while (j0 < key_end) {  // uniform over the block
        // Prefetch the next visible tile into the other buffer (read by the
        // previous iteration, which ended with a barrier).
        int jn = next_key_tile(j0 + MMA_TILE, key_end, L, mask_row, key_ok + (buf ^ 1) * MMA_TILE);
        if (jn < key_end) {
            bf16 *next = sKV + (size_t)(buf ^ 1) * 2 * MMA_TILE * LD;
            cp_async_tile<D>(next, K, ks, jn, L);
            cp_async_tile<D>(next + MMA_TILE * LD, V, ks, jn, L);
        }
        cp_async_commit();
        cp_async_wait<1>();  // tile j0 is in
        __syncthreads();

        const bf16 *sK = sKV + (size_t)buf * 2 * MMA_TILE * LD, *sV = sK + MMA_TILE * LD;
        const int *ok = key_ok + buf * MMA_TILE;
        // Under causal the warp's rows see no key of a tile past its last row.
        if (!causal || j0 <= row_first + 15) {
            // S (16 x 64) = Q K^T: n-tile n = keys 8n..8n+7.
            float s[8][4];
#pragma unroll
            for (int n = 0; n < 8; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < NK; kk++) {
#pragma unroll
                for (int np = 0; np < 4; np++) {  // keys 16np..16np+15 (B_OF_TRANSPOSE of K)
                    uint32_t bk[4];
                    ldmatrix_x4(bk, sK + (16 * np + lane % 8 + 8 * (lane / 16)) * LD + 16 * kk + 8 * ((lane / 8) % 2));
                    mma_bf16(s[2 * np], qa[kk], bk[0], bk[1]);
                    mma_bf16(s[2 * np + 1], qa[kk], bk[2], bk[3]);
                }
            }
            // Scale into log2 units; mask keys that do not exist, are masked,
            // or (causal) lie after the row. Tiles that need none skip this.
            int need_mask = mask_row != NULL || j0 + MMA_TILE > L || (causal && j0 + MMA_TILE - 1 > row_first);
#pragma unroll
            for (int n = 0; n < 8; n++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    float x = s[n][e] * scale_log2;
                    if (need_mask) {
                        int c = 8 * n + 2 * tig + e % 2, row = row_first + gid + 8 * (e / 2);
                        if (!ok[c] || (causal && j0 + c > row)) x = -INFINITY;
                    }
                    s[n][e] = x;
                }
            }
            // Online softmax on the registers.
            float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int n = 0; n < 8; n++) {
                tile_max[0] = fmaxf(tile_max[0], fmaxf(s[n][0], s[n][1]));
                tile_max[1] = fmaxf(tile_max[1], fmaxf(s[n][2], s[n][3]));
            }
            float m_use[2];
#pragma unroll
            for (int r = 0; r < 2; r++) {
                tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
                tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
                float m_new = fmaxf(m[r], tile_max[r]);
                // Nothing visible yet (m_new = -inf): subtract 0 instead, so
                // that p = exp2(-inf) = 0 and alpha = 0 (O and l are 0 anyway)
                // rather than NaN from -inf - -inf.
                m_use[r] = m_new == -INFINITY ? 0.0f : m_new;
                float alpha = exp2f(m[r] - m_use[r]);
                m[r] = m_new;
                l[r] *= alpha;
#pragma unroll
                for (int n = 0; n < ND; n++) {
                    o[n][2 * r] *= alpha;
                    o[n][2 * r + 1] *= alpha;
                }
            }
#pragma unroll
            for (int n = 0; n < 8; n++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    s[n][e] = exp2f(s[n][e] - m_use[e / 2]);  // now P
                    l[e / 2] += s[n][e];
                }
            }
            // O += P V: k-step kk = keys 16kk..16kk+15, P's A fragment from
            // the C fragments of keys 16kk..+7 and 16kk+8..+15.
#pragma unroll
            for (int kk = 0; kk < 4; kk++) {
                uint32_t pa[4];
                a_from_c(pa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
                for (int np = 0; np < NK; np++) {  // columns 16np..16np+15 of V (B_OF_TILE)
                    uint32_t bv[4];
                    ldmatrix_x4_trans(bv, sV + (16 * kk + lane % 8 + 8 * ((lane / 8) % 2)) * LD + 16 * np + 8 * (lane / 16));
                    mma_bf16(o[2 * np], pa, bv[0], bv[1]);
                    mma_bf16(o[2 * np + 1], pa, bv[2], bv[3]);
                }
            }
        }
        __syncthreads();  // every warp done with this buffer before the next iteration refills it
        j0 = jn;
        buf ^= 1;
    }

    // out = O / l (0 for a row that saw no key), lse = m ln 2 + log l (+inf then).
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        int row = row_first + gid + 8 * r;
        if (row >= L) continue;
        float inv = m[r] == -INFINITY ? 0.0f : 1.0f / l[r];
        uint16_t *out_row = out + ((size_t)b * L + row) * qs + (size_t)h * D;
#pragma unroll
        for (int n = 0; n < ND; n++)
            *(uint32_t *)(out_row + 8 * n + 2 * tig) = pack_bf16(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
        if (tig == 0) lse[((size_t)b * Hq + h) * L + row] = m[r] == -INFINITY ? INFINITY : m[r] * LN2 + logf(l[r]);
    }
}

// ------------------------------------------------------------ backward

// Loads work item `it` of a backward block (query head h_first + it /
// n_qtiles, query tile i_first + 64 (it % n_qtiles)) into buffer `buf`: Q and
// dO tiles by cp.async (the caller commits), lse (in log2 units; +inf for a
// row past L or one that saw no key) and delta by plain stores.
template <int D>
static __device__ __forceinline__ void backward_load(bf16 *sQ, bf16 *sdO, float *s_lse2, float *s_delta, int it,
                                                     int n_qtiles, int h_first, int i_first, int b, int L, int Hq,
                                                     const uint16_t *q, const uint16_t *dout, const float *lse,
                                                     const float *delta) {
    int h = h_first + it / n_qtiles, i0 = i_first + (it % n_qtiles) * MMA_TILE;
    size_t qs = (size_t)Hq * D, head_at = (size_t)b * L * qs + (size_t)h * D;
    cp_async_tile<D>(sQ, q + head_at, qs, i0, L);
    cp_async_tile<D>(sdO, dout + head_at, qs, i0, L);
    if (threadIdx.x < MMA_TILE) {
        int i = i0 + threadIdx.x;
        size_t at = ((size_t)b * Hq + h) * L + i;
        s_lse2[threadIdx.x] = i < L ? lse[at] * LOG2E : INFINITY;  // lse +inf stays +inf
        s_delta[threadIdx.x] = i < L ? delta[at] : 0.0f;
    }
}

// Grid: x = (b, g, part) with part < Hq / Hkv / heads_per_block, y = key
// tile. The block handles query heads g * group + part * heads_per_block ..
// + heads_per_block - 1. dk_acc == NULL: the block has the whole group, and
// writes dk, dv (bf16) itself; else it adds into dk_acc, dv_acc (fp32).
template <int D>
__global__ void __launch_bounds__(MMA_THREADS)
    mma_backward_kernel(float *dq_acc, float *dk_acc, float *dv_acc, uint16_t *dk, uint16_t *dv,
                        const uint16_t *dout, const float *lse, const float *delta, const uint16_t *q,
                        const uint16_t *k, const uint16_t *v, const int32_t *key_mask, int L, int Hq, int Hkv,
                        int heads_per_block, int causal, float scale) {
    const int LD = D + 8, NK = D / 16, ND = D / 8;
    typedef MmaLayout<D> Lay;
    extern __shared__ __align__(128) unsigned char smem[];
    bf16 *sK = (bf16 *)smem, *sV = sK + MMA_TILE * LD;
    bf16 *sQbuf = sV + MMA_TILE * LD, *sdObuf = sQbuf + 2 * MMA_TILE * LD;  // [2][64][LD] each
    bf16 *sdsT = (bf16 *)(smem + 6 * Lay::TILE_BYTES);                     // [64 keys][MMA_LD_DS]
    float *s_lse2 = (float *)(smem + 6 * Lay::TILE_BYTES + Lay::DS_BYTES);  // [2][64]
    float *s_delta = s_lse2 + 2 * MMA_TILE;                                 // [2][64]
    int *key_ok = (int *)(s_delta + 2 * MMA_TILE);                          // [64]

    int group = Hq / Hkv, parts = group / heads_per_block;
    int part = blockIdx.x % parts, g = blockIdx.x / parts % Hkv, b = blockIdx.x / parts / Hkv;
    int h_first = g * group + part * heads_per_block;
    int j0 = blockIdx.y * MMA_TILE;  // key tile 0 (the most query tiles under causal) starts first
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gid = lane / 4, tig = lane % 4;
    size_t qs = (size_t)Hq * D, ks = (size_t)Hkv * D;
    const uint16_t *K = k + (size_t)b * L * ks + (size_t)g * D, *V = v + (size_t)b * L * ks + (size_t)g * D;
    float scale_log2 = scale * LOG2E;

    int ok = 0;
    if (threadIdx.x < MMA_TILE) {
        int j = j0 + threadIdx.x;
        ok = j < L && (key_mask == NULL || key_mask[(size_t)b * L + j] != 0);
        key_ok[threadIdx.x] = ok;
    }
    if (!__syncthreads_or(ok)) {  // no visible key: dK = dV = 0, nothing for dQ
        if (dk_acc == NULL) {     // this block owns these rows of dk, dv (the accumulators are zeroed)
            for (int idx = threadIdx.x; idx < MMA_TILE * D; idx += MMA_THREADS) {
                int j = j0 + idx / D, d = idx % D;
                if (j >= L) break;  // idx only grows: every later j is past L too
                size_t at = ((size_t)b * L + j) * ks + (size_t)g * D + d;
                dk[at] = 0;
                dv[at] = 0;
            }
        }
        return;
    }

    int i_first = causal ? j0 : 0;  // under causal no query before j0 sees these keys
    int n_qtiles = (L - i_first + MMA_TILE - 1) / MMA_TILE, n_iter = heads_per_block * n_qtiles;
    cp_async_tile<D>(sK, K, ks, j0, L);
    cp_async_tile<D>(sV, V, ks, j0, L);
    backward_load<D>(sQbuf, sdObuf, s_lse2, s_delta, 0, n_qtiles, h_first, i_first, b, L, Hq, q, dout, lse, delta);
    cp_async_commit();

    float dk_r[ND][4], dv_r[ND][4];  // the warp's 16 keys (rows gid, gid + 8) x D
#pragma unroll
    for (int n = 0; n < ND; n++) {
        dk_r[n][0] = dk_r[n][1] = dk_r[n][2] = dk_r[n][3] = 0.0f;
        dv_r[n][0] = dv_r[n][1] = dv_r[n][2] = dv_r[n][3] = 0.0f;
    }
    const int key_row = 16 * warp;  // the warp's first key in the tile

    for (int it = 0; it < n_iter; it++) {
        int buf = it & 1;
        // Prefetch the next item into the other buffer: its last readers (the
        // previous iteration) passed the barrier before that iteration's dQ.
        if (it + 1 < n_iter)
            backward_load<D>(sQbuf + (buf ^ 1) * MMA_TILE * LD, sdObuf + (buf ^ 1) * MMA_TILE * LD,
                             s_lse2 + (buf ^ 1) * MMA_TILE, s_delta + (buf ^ 1) * MMA_TILE, it + 1, n_qtiles, h_first,
                             i_first, b, L, Hq, q, dout, lse, delta);
        cp_async_commit();
        cp_async_wait<1>();  // item `it` (and K, V) is in
        __syncthreads();

        int h = h_first + it / n_qtiles, i0 = i_first + (it % n_qtiles) * MMA_TILE;
        const bf16 *sQ = sQbuf + buf * MMA_TILE * LD, *sdO = sdObuf + buf * MMA_TILE * LD;
        const float *row_lse2 = s_lse2 + buf * MMA_TILE, *row_delta = s_delta + buf * MMA_TILE;

        // S^T (16 keys x 64 queries) = K Q^T and dP^T = V dO^T; n-tile n =
        // queries 8n..8n+7. A: the warp's K, V rows (A_ROWS); B: Q, dO rows
        // (B_OF_TRANSPOSE).
        float s[8][4], dp[8][4];
#pragma unroll
        for (int n = 0; n < 8; n++) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
            dp[n][0] = dp[n][1] = dp[n][2] = dp[n][3] = 0.0f;
        }
#pragma unroll
        for (int kk = 0; kk < NK; kk++) {
            uint32_t ak[4], av[4];
            int a_at = (key_row + lane % 8 + 8 * ((lane / 8) % 2)) * LD + 16 * kk + 8 * (lane / 16);
            ldmatrix_x4(ak, sK + a_at);
            ldmatrix_x4(av, sV + a_at);
#pragma unroll
            for (int np = 0; np < 4; np++) {
                int b_at = (16 * np + lane % 8 + 8 * (lane / 16)) * LD + 16 * kk + 8 * ((lane / 8) % 2);
                uint32_t bq[4], bo[4];
                ldmatrix_x4(bq, sQ + b_at);
                ldmatrix_x4(bo, sdO + b_at);
                mma_bf16(s[2 * np], ak, bq[0], bq[1]);
                mma_bf16(s[2 * np + 1], ak, bq[2], bq[3]);
                mma_bf16(dp[2 * np], av, bo[0], bo[1]);
                mma_bf16(dp[2 * np + 1], av, bo[2], bo[3]);
            }
        }
        // P^T = exp2(S^T scale log2e - lse log2e) where the key is visible
        // from the query, else 0; dS^T = P^T (dP^T - delta) scale. Both go
        // straight to bf16 A fragments for k-step kk = queries 16kk..16kk+15
        // (n-tiles 2kk, 2kk+1), which frees the fp32 registers.
        uint32_t pa[4][4], dsa[4][4];
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
#pragma unroll
            for (int half = 0; half < 2; half++) {
                int n = 2 * kk + half;
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int key = key_row + gid + 8 * (e / 2), c = 8 * n + 2 * tig + e % 2;  // c: query in the tile
                    float row_l2 = row_lse2[c];
                    int visible = row_l2 != INFINITY && key_ok[key] && (!causal || j0 + key <= i0 + c);
                    float p = visible ? exp2f(s[n][e] * scale_log2 - row_l2) : 0.0f;
                    s[n][e] = p;
                    dp[n][e] = p * (dp[n][e] - row_delta[c]) * scale;
                }
            }
            a_from_c(pa[kk], s[2 * kk], s[2 * kk + 1]);
            a_from_c(dsa[kk], dp[2 * kk], dp[2 * kk + 1]);
            // dS^T (bf16) to shared memory for dQ, which needs every warp's
            // keys: a0 = (key gid, queries 16kk + 2tig, +1), a1 = key gid + 8,
            // a2, a3 the same at queries + 8.
            bf16 *ds_row = sdsT + (key_row + gid) * MMA_LD_DS + 16 * kk + 2 * tig;
            *(uint32_t *)(ds_row) = dsa[kk][0];
            *(uint32_t *)(ds_row + 8 * MMA_LD_DS) = dsa[kk][1];
            *(uint32_t *)(ds_row + 8) = dsa[kk][2];
            *(uint32_t *)(ds_row + 8 * MMA_LD_DS + 8) = dsa[kk][3];
        }
        // dV += P^T dO, dK += dS^T Q over k-steps kk; B: dO, Q rows (B_OF_TILE).
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
#pragma unroll
            for (int np = 0; np < NK; np++) {
                int b_at = (16 * kk + lane % 8 + 8 * ((lane / 8) % 2)) * LD + 16 * np + 8 * (lane / 16);
                uint32_t bo[4], bq[4];
                ldmatrix_x4_trans(bo, sdO + b_at);
                ldmatrix_x4_trans(bq, sQ + b_at);
                mma_bf16(dv_r[2 * np], pa[kk], bo[0], bo[1]);
                mma_bf16(dv_r[2 * np + 1], pa[kk], bo[2], bo[3]);
                mma_bf16(dk_r[2 * np], dsa[kk], bq[0], bq[1]);
                mma_bf16(dk_r[2 * np + 1], dsa[kk], bq[2], bq[3]);
            }
        }
        __syncthreads();  // dS^T complete; every read of this buffer's Q, dO, lse, delta done

        // dQ rows 16w..16w+15 of the tile (warp w) = dS K over the 64 keys:
        // A = dS (A_OF_TRANSPOSE of dS^T), k-step kk = keys 16kk..16kk+15;
        // B = K rows (B_OF_TILE).
        uint32_t ds_a[4][4];
#pragma unroll
        for (int kk = 0; kk < 4; kk++)
            ldmatrix_x4_trans(ds_a[kk],
                              sdsT + (16 * kk + lane % 8 + 8 * (lane / 16)) * MMA_LD_DS + 16 * warp + 8 * ((lane / 8) % 2));
        float *dQ = dq_acc + (size_t)b * L * qs + (size_t)h * D;
#pragma unroll
        for (int np = 0; np < NK; np++) {  // columns 16np..16np+15
            float acc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
            for (int kk = 0; kk < 4; kk++) {
                uint32_t bk[4];
                ldmatrix_x4_trans(bk, sK + (16 * kk + lane % 8 + 8 * ((lane / 8) % 2)) * LD + 16 * np + 8 * (lane / 16));
                mma_bf16(acc[0], ds_a[kk], bk[0], bk[1]);
                mma_bf16(acc[1], ds_a[kk], bk[2], bk[3]);
            }
#pragma unroll
            for (int r = 0; r < 2; r++) {
                int row = i0 + 16 * warp + gid + 8 * r;
                if (row >= L) continue;
                float *dst = dQ + (size_t)row * qs + 16 * np + 2 * tig;
                atomic_add_pair(dst, acc[0][2 * r], acc[0][2 * r + 1]);
                atomic_add_pair(dst + 8, acc[1][2 * r], acc[1][2 * r + 1]);
            }
        }
        // The next iteration's barrier (after its prefetch) separates these
        // reads of dS^T from its writes.
    }

    // The warp's dK, dV rows out.
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int j = j0 + key_row + gid + 8 * r;
        if (j >= L) continue;
        size_t at = ((size_t)b * L + j) * ks + (size_t)g * D + 2 * tig;
#pragma unroll
        for (int n = 0; n < ND; n++) {
            if (dk_acc == NULL) {
                *(uint32_t *)(dk + at + 8 * n) = pack_bf16(dk_r[n][2 * r], dk_r[n][2 * r + 1]);
                *(uint32_t *)(dv + at + 8 * n) = pack_bf16(dv_r[n][2 * r], dv_r[n][2 * r + 1]);
            } else {
                atomic_add_pair(dk_acc + at + 8 * n, dk_r[n][2 * r], dk_r[n][2 * r + 1]);
                atomic_add_pair(dv_acc + at + 8 * n, dv_r[n][2 * r], dv_r[n][2 * r + 1]);
            }
        }
    }
}

// dst[i] = bf16(src[i]) for the fp32 accumulators.
__global__ void mma_bf16_from_f32_kernel(uint16_t *dst, const float *src, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        dst[i] = __bfloat16_as_ushort(__float2bfloat16(src[i]));
    }
}

static void bf16_from_f32(cudaStream_t s, uint16_t *dst, const float *src, size_t n) {
    size_t blocks = (n + 255) / 256;
    if (blocks > 65536) blocks = 65536;
    if (blocks == 0) return;
    mma_bf16_from_f32_kernel<<<(unsigned int)blocks, 256, 0, s>>>(dst, src, n);
    check_launch("mma_bf16_from_f32_kernel");
}

// ------------------------------------------------------------ host side

// Allows `bytes` of dynamic shared memory, and asks for the largest
// shared-memory carveout (a hint) so that 2-3 such blocks fit per SM.
template <typename Kernel> static void set_smem(Kernel kernel, size_t bytes, const char *name, int D) {
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared);
    if (e != cudaSuccess)
        fprintf(stderr, "cuda_attention: %s<%d> cannot have %zu bytes of shared memory: %s\n", name, D, bytes,
                cudaGetErrorString(e));
}

template <int D>
static void mma_forward(cudaStream_t s, uint16_t *out, float *lse, const uint16_t *q, const uint16_t *k,
                        const uint16_t *v, const int32_t *key_mask, int B, int L, int Hq, int Hkv, int causal,
                        float scale) {
    size_t bytes = MmaLayout<D>::FORWARD_BYTES;
    set_smem(mma_forward_kernel<D>, bytes, "mma_forward_kernel", D);
    dim3 grid((unsigned int)(B * Hq), (unsigned int)((L + MMA_TILE - 1) / MMA_TILE));
    mma_forward_kernel<D><<<grid, MMA_THREADS, bytes, s>>>(out, lse, q, k, v, key_mask, L, Hq, Hkv, causal, scale);
    check_launch("mma_forward_kernel");
}

// How many blocks share a KV head's group of query heads (a divisor of the
// group size). 1 keeps dK, dV in one block's registers from start to end
// (no atomics, no fp32 pass); more buys parallelism when there are few
// (b, KV head, key tile) blocks: the smallest divisor giving at least 4
// blocks per SM. VLFT_CUDA_ATTENTION_SPLIT=n (a divisor of the group) forces n.
static int backward_split(int B, int L, int Hq, int Hkv) {
    int group = Hq / Hkv;
    const char *force = getenv("VLFT_CUDA_ATTENTION_SPLIT");
    if (force != NULL) {
        int n = atoi(force);
        if (n >= 1 && n <= group && group % n == 0) return n;
    }
    int dev = 0, sms = 132;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) !=
                                                  cudaSuccess)
        sms = 132;
    long blocks = (long)B * Hkv * ((L + MMA_TILE - 1) / MMA_TILE);
    int split = 1;
    while (split < group && blocks * split < 4L * sms) {
        split++;
        while (group % split != 0) split++;
    }
    return split;
}

template <int D>
static void mma_backward(cudaStream_t s, uint16_t *dq, uint16_t *dk, uint16_t *dv, const uint16_t *dout,
                         const float *lse, const float *delta, float *dq_acc, float *dk_acc, float *dv_acc,
                         const uint16_t *q, const uint16_t *k, const uint16_t *v, const int32_t *key_mask, int B,
                         int L, int Hq, int Hkv, int causal, float scale) {
    size_t n_q = (size_t)B * L * Hq * D, n_kv = (size_t)B * L * Hkv * D;
    int split = backward_split(B, L, Hq, Hkv), heads_per_block = Hq / Hkv / split;
    cudaMemsetAsync(dq_acc, 0, sizeof(float) * n_q, s);
    if (split > 1) {
        cudaMemsetAsync(dk_acc, 0, sizeof(float) * n_kv, s);
        cudaMemsetAsync(dv_acc, 0, sizeof(float) * n_kv, s);
    }
    size_t bytes = MmaLayout<D>::BACKWARD_BYTES;
    set_smem(mma_backward_kernel<D>, bytes, "mma_backward_kernel", D);
    dim3 grid((unsigned int)(B * Hkv * split), (unsigned int)((L + MMA_TILE - 1) / MMA_TILE));
    mma_backward_kernel<D><<<grid, MMA_THREADS, bytes, s>>>(dq_acc, split > 1 ? dk_acc : NULL,
                                                            split > 1 ? dv_acc : NULL, dk, dv, dout, lse, delta, q, k,
                                                            v, key_mask, L, Hq, Hkv, heads_per_block, causal, scale);
    check_launch("mma_backward_kernel");
    bf16_from_f32(s, dq, dq_acc, n_q);
    if (split > 1) {
        bf16_from_f32(s, dk, dk_acc, n_kv);
        bf16_from_f32(s, dv, dv_acc, n_kv);
    }
}

int mma_attention_supported(int D) { return D >= 16 && D <= 128 && D % 16 == 0; }

static int misaligned(const void *p, uintptr_t bytes) { return ((uintptr_t)p % bytes) != 0; }

int mma_attention_forward(cudaStream_t s, uint16_t *out, float *lse, const uint16_t *q, const uint16_t *k,
                          const uint16_t *v, const int32_t *key_mask, int B, int L, int Hq, int Hkv, int D, int causal,
                          float scale) {
    if (!mma_attention_supported(D) || misaligned(out, 4)) return 0;
    switch (D) {
    case 16: mma_forward<16>(s, out, lse, q, k, v, key_mask, B, L, Hq, Hkv, causal, scale); return 1;
    case 32: mma_forward<32>(s, out, lse, q, k, v, key_mask, B, L, Hq, Hkv, causal, scale); return 1;
    case 48: mma_forward<48>(s, out, lse, q, k, v, key_mask, B, L, Hq, Hkv, causal, scale); return 1;
    case 64: mma_forward<64>(s, out, lse, q, k, v, key_mask, B, L, Hq, Hkv, causal, scale); return 1;
    case 80: mma_forward<80>(s, out, lse, q, k, v, key_mask, B, L, Hq, Hkv, causal, scale); return 1;
    case 96: mma_forward<96>(s, out, lse, q, k, v, key_mask, B, L, Hq, Hkv, causal, scale); return 1;
    case 112: mma_forward<112>(s, out, lse, q, k, v, key_mask, B, L, Hq, Hkv, causal, scale); return 1;
    case 128: mma_forward<128>(s, out, lse, q, k, v, key_mask, B, L, Hq, Hkv, causal, scale); return 1;
    default: return 0;
    }
}

int mma_attention_backward(cudaStream_t s, uint16_t *dq, uint16_t *dk, uint16_t *dv, const uint16_t *dout,
                           const float *lse, const float *delta, float *dq_acc, float *dk_acc, float *dv_acc,
                           const uint16_t *q, const uint16_t *k, const uint16_t *v, const int32_t *key_mask, int B,
                           int L, int Hq, int Hkv, int D, int causal, float scale) {
    if (!mma_attention_supported(D) || misaligned(dq, 4) || misaligned(dk, 4) || misaligned(dv, 4) ||
        misaligned(dout, 16) || misaligned(dq_acc, 8) || misaligned(dk_acc, 8) || misaligned(dv_acc, 8))
        return 0;
    switch (D) {
    case 16:
        mma_backward<16>(s, dq, dk, dv, dout, lse, delta, dq_acc, dk_acc, dv_acc, q, k, v, key_mask, B, L, Hq, Hkv,
                          causal, scale);
        return 1;
    case 32:
        mma_backward<32>(s, dq, dk, dv, dout, lse, delta, dq_acc, dk_acc, dv_acc, q, k, v, key_mask, B, L, Hq, Hkv,
                          causal, scale);
        return 1;
    case 48:
        mma_backward<48>(s, dq, dk, dv, dout, lse, delta, dq_acc, dk_acc, dv_acc, q, k, v, key_mask, B, L, Hq, Hkv,
                          causal, scale);
        return 1;
    case 64:
        mma_backward<64>(s, dq, dk, dv, dout, lse, delta, dq_acc, dk_acc, dv_acc, q, k, v, key_mask, B, L, Hq, Hkv,
                          causal, scale);
        return 1;
    case 80:
        mma_backward<80>(s, dq, dk, dv, dout, lse, delta, dq_acc, dk_acc, dv_acc, q, k, v, key_mask, B, L, Hq, Hkv,
                          causal, scale);
        return 1;
    case 96:
        mma_backward<96>(s, dq, dk, dv, dout, lse, delta, dq_acc, dk_acc, dv_acc, q, k, v, key_mask, B, L, Hq, Hkv,
                          causal, scale);
        return 1;
    case 112:
        mma_backward<112>(s, dq, dk, dv, dout, lse, delta, dq_acc, dk_acc, dv_acc, q, k, v, key_mask, B, L, Hq, Hkv,
                          causal, scale);
        return 1;
    case 128:
        mma_backward<128>(s, dq, dk, dv, dout, lse, delta, dq_acc, dk_acc, dv_acc, q, k, v, key_mask, B, L, Hq, Hkv,
                          causal, scale);
        return 1;
    default: return 0;
    }
}
