// CUDA loss and reductions: fused softmax cross-entropy (loss per row and
// bf16 dlogits in one kernel) as src/kernels/cpu/loss.c, and the double sums
// (plain and of squares) used for the loss total and the gradient norm.
#include "cuda_kernel_util.cuh"

#define CK_IGNORE_INDEX (-100)  // kernels.h's KERNEL_IGNORE_INDEX
#define CK_CE_THREADS 512

// One block per row of logits [N, V]: pass 1 the row max, pass 2 the sum of
// exp(x - max) (fp32 per thread, then a block tree sum), lse = max +
// log(sum) in fp32; pass 3 (when dlogits is wanted) writes
// row_scale * exp(x - lse), minus row_scale at the target, rounded to bf16.
// A row of V = 64000 is 256 KB: passes 2 and 3 mostly read it from L2.
// A target outside [0, V) other than the ignore index (a caller bug; the CPU
// would read out of bounds) gives a NaN loss and no one-hot term.
__global__ void k_cross_entropy(float *loss_rows, uint16_t *dlogits, const float *logits, const int32_t *targets,
                                int V, float row_scale) {
    __shared__ float scratch[32];
    size_t row = blockIdx.x;
    int target = targets[row];
    uint16_t *drow = dlogits ? dlogits + row * V : NULL;
    if (target == CK_IGNORE_INDEX) {  // the same for the whole block: no thread is left waiting at a barrier
        if (threadIdx.x == 0) loss_rows[row] = 0.0f;
        if (drow)
            for (int c = threadIdx.x; c < V; c += blockDim.x) drow[c] = 0;
        return;
    }
    const float *xr = logits + row * V;
    float m = -INFINITY;
    for (int c = threadIdx.x; c < V; c += blockDim.x) m = fmaxf(m, xr[c]);
    m = ck_block_max(m, scratch);
    float sum = 0.0f;
    for (int c = threadIdx.x; c < V; c += blockDim.x) sum += expf(xr[c] - m);
    sum = ck_block_sum(sum, scratch);
    float lse = m + logf(sum);
    int valid = target >= 0 && target < V;
    if (threadIdx.x == 0) loss_rows[row] = valid ? lse - xr[target] : __int_as_float(0x7fc00000);
    if (drow)
        for (int c = threadIdx.x; c < V; c += blockDim.x) {
            float d = row_scale * expf(xr[c] - lse);
            if (c == target) d -= row_scale;
            drow[c] = ck_f32_to_bf16(d);
        }
}

extern "C" void cuda_cross_entropy(cudaStream_t s, float *loss_rows, uint16_t *dlogits, const float *logits,
                                   const int32_t *targets, int N, int V, float row_scale) {
    if (N <= 0 || V <= 0) return;
    k_cross_entropy<<<(unsigned)N, CK_CE_THREADS, 0, s>>>(loss_rows, dlogits, logits, targets, V, row_scale);
}

// *out += sum of x (squares = 0) or of x^2 (squares = 1), each value widened
// to double first (as the CPU's sum_of_squares); a block sum then one
// atomicAdd(double) per block.
__global__ void k_sum_accumulate(double *out, const float *x, size_t n, int squares) {
    __shared__ double scratch[32];
    double s = 0.0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        double v = x[i];
        s += squares ? v * v : v;
    }
    s = ck_block_sum_double(s, scratch);
    if (threadIdx.x == 0) atomicAdd(out, s);
}

// Each thread sums at least 8 elements before the block sum.
#define CK_SUM_PER_BLOCK ((size_t)CK_THREADS * 8)

extern "C" void cuda_sum_accumulate(cudaStream_t s, double *out, const float *x, size_t n) {
    if (n == 0) return;
    k_sum_accumulate<<<ck_blocks(n, CK_SUM_PER_BLOCK), CK_THREADS, 0, s>>>(out, x, n, 0);
}

extern "C" void cuda_sum_squares_accumulate(cudaStream_t s, double *out, const float *x, size_t n) {
    if (n == 0) return;
    k_sum_accumulate<<<ck_blocks(n, CK_SUM_PER_BLOCK), CK_THREADS, 0, s>>>(out, x, n, 1);
}
