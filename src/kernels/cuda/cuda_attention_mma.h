// cuda_attention_mma.h - the "mma" attention implementation (cuda_attention_mma.cu),
// called by the dispatcher in cuda_attention.cu. Internal to the CUDA backend
// (C++, included by .cu files only); the public API is cuda.h.
#ifndef VLFT_CUDA_ATTENTION_MMA_H
#define VLFT_CUDA_ATTENTION_MMA_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime.h>

// Whether mma has tiles for head size D (a multiple of 16 up to 128).
int mma_attention_supported(int D);

// Forward with the semantics of cuda_attention_forward. Returns 0 (and runs
// nothing) when D is not supported or out is not 4-byte aligned; the caller
// then runs another implementation.
int mma_attention_forward(cudaStream_t s, uint16_t *out, float *lse, const uint16_t *q, const uint16_t *k,
                          const uint16_t *v, const int32_t *key_mask, int B, int L, int Hq, int Hkv, int D, int causal,
                          float scale);

// Backward with the semantics of cuda_attention_backward, given delta [B, Hq, L]
// = rowsum(dO * O) already computed, and fp32 workspace accumulators dq_acc
// [B*L, Hq*D], dk_acc, dv_acc [B*L, Hkv*D] (any contents: cleared here).
// Returns 0 (and runs nothing) when D is not supported or a pointer is not
// aligned as the kernels need (dq, dk, dv 4 bytes, dout 16, accumulators 8).
int mma_attention_backward(cudaStream_t s, uint16_t *dq, uint16_t *dk, uint16_t *dv, const uint16_t *dout,
                           const float *lse, const float *delta, float *dq_acc, float *dk_acc, float *dv_acc,
                           const uint16_t *q, const uint16_t *k, const uint16_t *v, const int32_t *key_mask, int B,
                           int L, int Hq, int Hkv, int D, int causal, float scale);

#endif
