// cuda_kernel_util.cuh - small device helpers shared by the .cu kernel files:
// bf16 <-> fp32 exactly as the CPU kernels convert, launch sizes for
// grid-stride loops, and block-wide sums.
#ifndef VLFT_CUDA_KERNEL_UTIL_CUH
#define VLFT_CUDA_KERNEL_UTIL_CUH

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime.h>

// cuda.h is a C header (no extern "C" of its own); cuda_runtime.h above has
// already been included in C++ mode so its guard keeps it out of this block.
extern "C" {
#include "cuda.h"
}

// Threads per block of the element-wise kernels.
#define CK_THREADS 256
// Blocks of a grid-stride launch at most: enough to fill any current GPU
// (132 SMs x 2048 threads = 1056 blocks of 256), each thread then loops.
#define CK_MAX_BLOCKS 8192

// Blocks for n elements at `per_block` elements per block, at least 1 (the
// caller never launches for n == 0), at most CK_MAX_BLOCKS.
static inline unsigned int ck_blocks(size_t n, size_t per_block) {
    size_t b = (n + per_block - 1) / per_block;
    if (b < 1) b = 1;
    if (b > CK_MAX_BLOCKS) b = CK_MAX_BLOCKS;
    return (unsigned int)b;
}

// A bf16 is the top half of an fp32.
__device__ __forceinline__ float ck_bf16_to_f32(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }

// Round to nearest bf16, ties to even; NaN stays a quiet NaN. Same bits as
// the CPU's bf16_from_f32 (src/kernels/cpu/gemm_bf16.c rounded_bits).
__device__ __forceinline__ uint16_t ck_f32_to_bf16(float x) {
    uint32_t u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u | 0x00400000u) >> 16);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// Element i of a buffer that holds fp32 (is_bf16 = 0) or bf16 values.
__device__ __forceinline__ float ck_load(const void *p, int is_bf16, size_t i) {
    return is_bf16 ? ck_bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}
__device__ __forceinline__ void ck_store(void *p, int is_bf16, size_t i, float v) {
    if (is_bf16)
        ((uint16_t *)p)[i] = ck_f32_to_bf16(v);
    else
        ((float *)p)[i] = v;
}

__device__ __forceinline__ float ck_warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}
__device__ __forceinline__ double ck_warp_sum_double(double v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}
__device__ __forceinline__ float ck_warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// Sum of v over the block, returned to every thread. blockDim.x must be a
// multiple of 32 (at most 1024); every thread of the block must call it.
// scratch: 32 floats of shared memory. The leading __syncthreads lets the
// same scratch serve consecutive calls.
__device__ __forceinline__ float ck_block_sum(float v, float *scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    v = ck_warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < n_warps ? scratch[lane] : 0.0f;
    return ck_warp_sum(v);
}
__device__ __forceinline__ double ck_block_sum_double(double v, double *scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    v = ck_warp_sum_double(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < n_warps ? scratch[lane] : 0.0;
    return ck_warp_sum_double(v);
}
__device__ __forceinline__ float ck_block_max(float v, float *scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    v = ck_warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < n_warps ? scratch[lane] : -INFINITY;
    return ck_warp_max(v);
}

#endif
