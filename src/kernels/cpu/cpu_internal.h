// cpu_internal.h - what the files of src/kernels/cpu share and nobody else
// sees: the bf16 GEMM's setup and its oneDNN implementation.
#ifndef VLFT_CPU_INTERNAL_H
#define VLFT_CPU_INTERNAL_H

#include <stdint.h>

// gemm_bf16.c: picks the implementation (VLFT_BF16_GEMM, else oneDNN where
// its ISA has native bf16). Called by kernel_init; cheap to call again.
void gemm_bf16_init(void);

// gemm_onednn.c
// 0 once oneDNN's CPU engine and stream exist (created on first use), else -1.
int onednn_start(void);
// 1 when oneDNN's effective ISA multiplies bf16 natively (AVX512-BF16, AMX).
int onednn_native_bf16(void);
// 1 when oneDNN has a bf16 matmul on this CPU at all (probed once; 2.6 has
// none below AVX512).
int onednn_bf16_matmul_available(void);
// C[M,N] = alpha op(A) op(B) + beta C, fp32 C, A and B bf16 (bf16_inputs) or
// fp32 (row strides lda, ldb), through a matmul primitive cached by shape.
// 0, or -1 when oneDNN could not create or run it (said once on stderr).
int onednn_matmul(int trans_a, int trans_b, int M, int N, int K, float alpha, const void *A, int lda, const void *B,
                  int ldb, int bf16_inputs, float beta, float *C, int ldc);

#endif
