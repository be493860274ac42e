// CUDA LayerNorm and RMSNorm, forward and backward, as src/kernels/cpu/norm.c.
//
// Row kernels: one block of CK_NORM_THREADS per row; each thread walks the
// row with stride blockDim (coalesced), row statistics are fp32 partial sums
// combined by warp shuffles (the CPU sums in double; over C <= 8192 values
// the fp32 tree sum differs by a few ulps). x stays in L1/L2 between the
// passes over a row (16 KB for C = 4096).
//
// Weight gradients (dw, db): a column reduction over the N rows, done as in
// cuda_elementwise.cu's bias backward: block (32, 8) sums a chunk of 64 rows
// for 32 columns, then one atomicAdd per column and chunk.
#include "cuda_kernel_util.cuh"

#define CK_NORM_THREADS 256
#define CK_NORM_CHUNK_ROWS 64

// Rows per chunk so that the chunk count fits gridDim.y (65535).
static int norm_rows_per_chunk(int N) {
    int rows = CK_NORM_CHUNK_ROWS;
    while ((N + rows - 1) / rows > 65535) rows *= 2;
    return rows;
}

// ------------------------------------------------------------ LayerNorm

__global__ void k_layernorm_forward(void *y, int y_bf16, float *mean, float *rstd, const float *x, const float *w,
                                    const float *b, int C, float eps) {
    __shared__ float scratch[32];
    size_t row = blockIdx.x;
    const float *xr = x + row * C;
    float s = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) s += xr[c];
    float m = ck_block_sum(s, scratch) / (float)C;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float d = xr[c] - m;
        ss += d * d;
    }
    float var = ck_block_sum(ss, scratch) / (float)C;
    float rs = (float)(1.0 / sqrt((double)var + (double)eps));
    if (threadIdx.x == 0) {
        mean[row] = m;
        rstd[row] = rs;
    }
    size_t base = row * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        ck_store(y, y_bf16, base + c, ((xr[c] - m) * rs) * w[c] + (b ? b[c] : 0.0f));
}

extern "C" void cuda_layernorm_forward(cudaStream_t s, void *y, int y_bf16, float *mean, float *rstd, const float *x,
                                       const float *w, const float *b, int N, int C, float eps) {
    if (N <= 0 || C <= 0) return;
    k_layernorm_forward<<<(unsigned)N, CK_NORM_THREADS, 0, s>>>(y, y_bf16, mean, rstd, x, w, b, C, eps);
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w.
__global__ void k_layernorm_backward_dx(float *dx, int accumulate, const float *dy, const float *x, const float *mean,
                                        const float *rstd, const float *w, int C) {
    __shared__ float scratch[32];
    size_t row = blockIdx.x;
    const float *xr = x + row * C, *dyr = dy + row * C;
    float m = mean[row], rs = rstd[row];
    float sg = 0.0f, sgx = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float xhat = (xr[c] - m) * rs;
        float g = dyr[c] * w[c];
        sg += g;
        sgx += g * xhat;
    }
    float mg = ck_block_sum(sg, scratch) / (float)C;
    float mgx = ck_block_sum(sgx, scratch) / (float)C;
    float *dxr = dx + row * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float xhat = (xr[c] - m) * rs;
        float d = rs * (dyr[c] * w[c] - mg - xhat * mgx);
        dxr[c] = accumulate ? dxr[c] + d : d;
    }
}

// dw[c] += sum_n dy * xhat, db[c] += sum_n dy (either may be NULL).
__global__ void k_layernorm_backward_dwdb(float *dw, float *db, const float *dy, const float *x, const float *mean,
                                          const float *rstd, int N, int C, int rows_per_chunk) {
    __shared__ float part_w[8][33], part_b[8][33];
    int col = blockIdx.x * 32 + threadIdx.x;
    int row0 = blockIdx.y * rows_per_chunk;
    int row_end = min(N, row0 + rows_per_chunk);
    float sw = 0.0f, sb = 0.0f;
    if (col < C)
        for (int r = row0 + threadIdx.y; r < row_end; r += 8) {
            size_t i = (size_t)r * C + col;
            float d = dy[i];
            sw += d * ((x[i] - mean[r]) * rstd[r]);
            sb += d;
        }
    part_w[threadIdx.y][threadIdx.x] = sw;
    part_b[threadIdx.y][threadIdx.x] = sb;
    __syncthreads();
    if (threadIdx.y == 0 && col < C) {
        float tw = 0.0f, tb = 0.0f;
        for (int k = 0; k < 8; k++) {
            tw += part_w[k][threadIdx.x];
            tb += part_b[k][threadIdx.x];
        }
        if (dw) atomicAdd(&dw[col], tw);
        if (db) atomicAdd(&db[col], tb);
    }
}

extern "C" void cuda_layernorm_backward(cudaStream_t s, float *dx, int accumulate, float *dw, float *db,
                                        const float *dy, const float *x, const float *mean, const float *rstd,
                                        const float *w, int N, int C) {
    if (N <= 0 || C <= 0) return;
    if (dx) k_layernorm_backward_dx<<<(unsigned)N, CK_NORM_THREADS, 0, s>>>(dx, accumulate, dy, x, mean, rstd, w, C);
    if (dw || db) {
        int rows = norm_rows_per_chunk(N);
        dim3 grid((unsigned)((C + 31) / 32), (unsigned)((N + rows - 1) / rows));
        k_layernorm_backward_dwdb<<<grid, dim3(32, 8), 0, s>>>(dw, db, dy, x, mean, rstd, N, C, rows);
    }
}

// ------------------------------------------------------------ RMSNorm

__global__ void k_rmsnorm_forward(void *y, int y_bf16, float *rstd, const float *x, const float *w, int C, float eps) {
    __shared__ float scratch[32];
    size_t row = blockIdx.x;
    const float *xr = x + row * C;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) ss += xr[c] * xr[c];
    float total = ck_block_sum(ss, scratch);
    float rs = (float)(1.0 / sqrt((double)total / C + (double)eps));
    if (threadIdx.x == 0) rstd[row] = rs;
    size_t base = row * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) ck_store(y, y_bf16, base + c, w[c] * (xr[c] * rs));
}

extern "C" void cuda_rmsnorm_forward(cudaStream_t s, void *y, int y_bf16, float *rstd, const float *x, const float *w,
                                     int N, int C, float eps) {
    if (N <= 0 || C <= 0) return;
    k_rmsnorm_forward<<<(unsigned)N, CK_NORM_THREADS, 0, s>>>(y, y_bf16, rstd, x, w, C, eps);
}

// dx = r * (g - x * r^2 * mean(g * x)), g = dy * w.
__global__ void k_rmsnorm_backward_dx(float *dx, int accumulate, const float *dy, const float *x, const float *rstd,
                                      const float *w, int C) {
    __shared__ float scratch[32];
    size_t row = blockIdx.x;
    const float *xr = x + row * C, *dyr = dy + row * C;
    float sgx = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) sgx += dyr[c] * w[c] * xr[c];
    float r = rstd[row];
    float k = ck_block_sum(sgx, scratch) / (float)C * r * r;
    float *dxr = dx + row * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float d = r * (dyr[c] * w[c] - xr[c] * k);
        dxr[c] = accumulate ? dxr[c] + d : d;
    }
}

// dw[c] += sum_n dy * x * rstd.
__global__ void k_rmsnorm_backward_dw(float *dw, const float *dy, const float *x, const float *rstd, int N, int C,
                                      int rows_per_chunk) {
    __shared__ float part[8][33];
    int col = blockIdx.x * 32 + threadIdx.x;
    int row0 = blockIdx.y * rows_per_chunk;
    int row_end = min(N, row0 + rows_per_chunk);
    float sw = 0.0f;
    if (col < C)
        for (int r = row0 + threadIdx.y; r < row_end; r += 8) {
            size_t i = (size_t)r * C + col;
            sw += dy[i] * x[i] * rstd[r];
        }
    part[threadIdx.y][threadIdx.x] = sw;
    __syncthreads();
    if (threadIdx.y == 0 && col < C) {
        float tw = 0.0f;
        for (int k = 0; k < 8; k++) tw += part[k][threadIdx.x];
        atomicAdd(&dw[col], tw);
    }
}

extern "C" void cuda_rmsnorm_backward(cudaStream_t s, float *dx, int accumulate, float *dw, const float *dy,
                                      const float *x, const float *rstd, const float *w, int N, int C) {
    if (N <= 0 || C <= 0) return;
    if (dx) k_rmsnorm_backward_dx<<<(unsigned)N, CK_NORM_THREADS, 0, s>>>(dx, accumulate, dy, x, rstd, w, C);
    if (dw) {
        int rows = norm_rows_per_chunk(N);
        dim3 grid((unsigned)((C + 31) / 32), (unsigned)((N + rows - 1) / rows));
        k_rmsnorm_backward_dw<<<grid, dim3(32, 8), 0, s>>>(dw, dy, x, rstd, N, C, rows);
    }
}
