// bf16 matrix products on the GPU through cuBLAS (tensor cores, fp32
// accumulation). Row-major C = op(A) op(B) is computed as the column-major
// product C^T = op(B)^T op(A)^T, which is what cuBLAS sees when handed the
// same row-major buffers: no copies, no transposes.
#include <stdio.h>

#include <cublas_v2.h>

#include "cuda.h"

cublasHandle_t cuda_cublas_handle(CudaContext *c);

void cuda_gemm(CudaContext *ctx, int trans_a, int trans_b, int M, int N, int K, float alpha, const uint16_t *A,
               int lda, const uint16_t *B, int ldb, float beta, void *C, int c_bf16, int ldc) {
    if (M <= 0 || N <= 0) return;
    // Column-major view: C^T [N, M] = op(B)^T [N, K] op(A)^T [K, M]. A row-major
    // [r, c] buffer with row stride ld is a column-major [c, r] one with leading
    // dimension ld, so op(B)^T is B read as stored when trans_b is 0.
    cublasOperation_t opB = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t opA = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasStatus_t st = cublasGemmEx(cuda_cublas_handle(ctx), opB, opA, N, M, K, &alpha, B, CUDA_R_16BF, ldb, A,
                                     CUDA_R_16BF, lda, &beta, C, c_bf16 ? CUDA_R_16BF : CUDA_R_32F, ldc,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS)
        fprintf(stderr, "vlft: cuBLAS product %dx%dx%d (trans %d%d) failed: %s\n", M, N, K, trans_a, trans_b,
                cublasGetStatusString(st));
}
