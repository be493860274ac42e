// CUDA AdamW update and gradient-clipping coefficient, as
// src/train/optimizer.c's adamw_update_span and clip_grad_norm.
//
// The update must give the CPU's bits: the CPU build compiles it without
// fused multiply-adds (ISO C mode, no -mfma), so every operation here is an
// explicitly rounded intrinsic (__fmul_rn, __fadd_rn, __fdiv_rn,
// __fsqrt_rn) that nvcc never contracts into an FMA, in the CPU's order.
#include "cuda_kernel_util.cuh"

// Element j of one tensor (coef: the clipping coefficient, has_coef = 0: none).
__device__ __forceinline__ void adamw_element(float *p, uint16_t *p_bf16, const float *g, float *m, float *v, size_t j,
                                              float decay_keep, const CudaAdamWScalars &sc, int has_coef, float coef) {
    float grad = has_coef ? __fmul_rn(g[j], coef) : g[j];  // as clip_grad_norm's g *= c before the step
    float decayed = __fmul_rn(p[j], decay_keep);
    float m_new = __fadd_rn(__fmul_rn(m[j], sc.beta1), __fmul_rn(grad, sc.one_minus_beta1));
    float v_new = __fadd_rn(__fmul_rn(v[j], sc.beta2), __fmul_rn(__fmul_rn(sc.one_minus_beta2, grad), grad));
    m[j] = m_new;
    v[j] = v_new;
    float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v_new), sc.bc2_sqrt), sc.eps);
    float p_new = __fadd_rn(decayed, __fmul_rn(-sc.step_size, __fdiv_rn(m_new, denom)));
    p[j] = p_new;
    if (p_bf16) p_bf16[j] = ck_f32_to_bf16(p_new);
}

__global__ void k_adamw_update(float *p, uint16_t *p_bf16, const float *g, float *m, float *v, size_t n,
                               float decay_keep, CudaAdamWScalars sc, const float *grad_coef) {
    float coef = grad_coef ? *grad_coef : 1.0f;
    for (size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x; j < n; j += (size_t)gridDim.x * blockDim.x)
        adamw_element(p, p_bf16, g, m, v, j, decay_keep, sc, grad_coef != NULL, coef);
}

// Multi-tensor: one block per chunk of the table, each chunk a slice of one tensor.
__global__ void k_adamw_update_multi(const CudaAdamWTensor *tensors, const CudaTensorChunk *chunks, CudaAdamWScalars sc,
                                     const float *grad_coef) {
    CudaTensorChunk c = chunks[blockIdx.x];
    const CudaAdamWTensor t = tensors[c.tensor];
    float coef = grad_coef ? *grad_coef : 1.0f;
    float decay_keep = t.decay ? sc.decay_keep : 1.0f;
    size_t end = c.offset + c.length;
    for (size_t j = c.offset + threadIdx.x; j < end; j += blockDim.x)
        adamw_element(t.p, t.p_bf16, t.g, t.m, t.v, j, decay_keep, sc, grad_coef != NULL, coef);
}

extern "C" void cuda_adamw_update_multi(cudaStream_t s, const CudaAdamWTensor *tensors, const CudaTensorChunk *chunks,
                                        int n_chunks, CudaAdamWScalars sc, const float *grad_coef) {
    // (gridDim.x may reach 2^31 - 1: the chunk table is never that long)
    if (n_chunks > 0) k_adamw_update_multi<<<(unsigned)n_chunks, CK_THREADS, 0, s>>>(tensors, chunks, sc, grad_coef);
}

// *out += sum over every chunk of g^2 (double), one atomicAdd per block.
__global__ void k_grad_sum_squares_multi(double *out, const CudaAdamWTensor *tensors, const CudaTensorChunk *chunks) {
    __shared__ double scratch[32];
    CudaTensorChunk c = chunks[blockIdx.x];
    const float *g = tensors[c.tensor].g;
    double s = 0.0;
    size_t end = c.offset + c.length;
    for (size_t j = c.offset + threadIdx.x; j < end; j += blockDim.x) {
        double x = g[j];
        s += x * x;
    }
    s = ck_block_sum_double(s, scratch);
    if (threadIdx.x == 0) atomicAdd(out, s);
}

extern "C" void cuda_grad_sum_squares_multi(cudaStream_t s, double *out, const CudaAdamWTensor *tensors,
                                            const CudaTensorChunk *chunks, int n_chunks) {
    if (n_chunks > 0) k_grad_sum_squares_multi<<<(unsigned)n_chunks, CK_THREADS, 0, s>>>(out, tensors, chunks);
}

extern "C" void cuda_adamw_update(cudaStream_t s, float *p, uint16_t *p_bf16, const float *g, float *m, float *v,
                                  size_t n, int decay, CudaAdamWScalars sc, const float *grad_coef) {
    if (n == 0) return;
    float decay_keep = decay ? sc.decay_keep : 1.0f;  // 1 for tensors without weight decay
    k_adamw_update<<<ck_blocks(n, CK_THREADS), CK_THREADS, 0, s>>>(p, p_bf16, g, m, v, n, decay_keep, sc, grad_coef);
}

// norm = sqrt(sum of squares); coef = max_norm / (norm + 1e-6) in double as
// clip_grad_norm computes it, rounded to fp32 and clamped to 1 (1 when
// max_norm <= 0: no clipping). One thread: it is a scalar.
__global__ void k_clip_coef(float *coef, float *norm, const double *sum_squares, float max_norm) {
    double nrm = sqrt(*sum_squares);
    *norm = (float)nrm;
    float c = 1.0f;
    if (max_norm > 0.0f) {
        double q = (double)max_norm / (nrm + 1e-6);
        if (q < 1.0) c = (float)q;
    }
    *coef = c;
}

extern "C" void cuda_clip_coef(cudaStream_t s, float *coef, float *norm, const double *sum_squares, float max_norm) {
    k_clip_coef<<<1, 1, 0, s>>>(coef, norm, sum_squares, max_norm);
}
