// CUDA element-wise kernels: bf16 <-> fp32 conversions, adds and scales,
// bias add and its backward, activations, the SwiGLU gate and rotary
// embeddings. Same formulas as src/kernels/cpu/elementwise.c and
// src/kernels/cpu/attention.c (rope_apply); all math in fp32, bf16 only as
// storage (rounded to nearest even when stored).
#include "cuda_kernel_util.cuh"

// ------------------------------------------------------------ conversions
//
// The pure bandwidth kernels read 16 bytes per thread where the pointers
// allow it (cudaMalloc'd buffers always do; a sub-buffer may not), then a
// scalar pass over the tail or the whole buffer.

static int aligned(const void *p, size_t bytes) { return ((uintptr_t)p % bytes) == 0; }

__global__ void k_bf16_from_f32(uint16_t *dst, const float *src, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = ck_f32_to_bf16(src[i]);
}

// n4 groups of 4 elements.
__global__ void k_bf16_from_f32_vec4(ushort4 *dst, const float4 *src, size_t n4) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x) {
        float4 v = src[i];
        ushort4 o;
        o.x = ck_f32_to_bf16(v.x);
        o.y = ck_f32_to_bf16(v.y);
        o.z = ck_f32_to_bf16(v.z);
        o.w = ck_f32_to_bf16(v.w);
        dst[i] = o;
    }
}

extern "C" void cuda_bf16_from_f32(cudaStream_t s, uint16_t *dst, const float *src, size_t n) {
    if (n == 0) return;
    size_t done = 0;
    if (aligned(dst, 8) && aligned(src, 16) && n >= 4) {
        size_t n4 = n / 4;
        k_bf16_from_f32_vec4<<<ck_blocks(n4, CK_THREADS), CK_THREADS, 0, s>>>((ushort4 *)dst, (const float4 *)src, n4);
        done = n4 * 4;
    }
    if (done < n) k_bf16_from_f32<<<ck_blocks(n - done, CK_THREADS), CK_THREADS, 0, s>>>(dst + done, src + done, n - done);
}

__global__ void k_f32_from_bf16(float *dst, const uint16_t *src, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = ck_bf16_to_f32(src[i]);
}

__global__ void k_f32_from_bf16_vec4(float4 *dst, const ushort4 *src, size_t n4) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x) {
        ushort4 v = src[i];
        dst[i] = make_float4(ck_bf16_to_f32(v.x), ck_bf16_to_f32(v.y), ck_bf16_to_f32(v.z), ck_bf16_to_f32(v.w));
    }
}

extern "C" void cuda_f32_from_bf16(cudaStream_t s, float *dst, const uint16_t *src, size_t n) {
    if (n == 0) return;
    size_t done = 0;
    if (aligned(dst, 16) && aligned(src, 8) && n >= 4) {
        size_t n4 = n / 4;
        k_f32_from_bf16_vec4<<<ck_blocks(n4, CK_THREADS), CK_THREADS, 0, s>>>((float4 *)dst, (const ushort4 *)src, n4);
        done = n4 * 4;
    }
    if (done < n) k_f32_from_bf16<<<ck_blocks(n - done, CK_THREADS), CK_THREADS, 0, s>>>(dst + done, src + done, n - done);
}

// ------------------------------------------------------------ add, scale

__global__ void k_add_f32(float *y, const float *x, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] += x[i];
}

__global__ void k_add_f32_vec4(float4 *y, const float4 *x, size_t n4) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x) {
        float4 a = y[i], b = x[i];
        a.x += b.x;
        a.y += b.y;
        a.z += b.z;
        a.w += b.w;
        y[i] = a;
    }
}

extern "C" void cuda_add_f32(cudaStream_t s, float *y, const float *x, size_t n) {
    if (n == 0) return;
    size_t done = 0;
    if (aligned(y, 16) && aligned(x, 16) && n >= 4) {
        size_t n4 = n / 4;
        k_add_f32_vec4<<<ck_blocks(n4, CK_THREADS), CK_THREADS, 0, s>>>((float4 *)y, (const float4 *)x, n4);
        done = n4 * 4;
    }
    if (done < n) k_add_f32<<<ck_blocks(n - done, CK_THREADS), CK_THREADS, 0, s>>>(y + done, x + done, n - done);
}

__global__ void k_scale_f32(float *y, float a, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] *= a;
}

__global__ void k_scale_f32_vec4(float4 *y, float a, size_t n4) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x) {
        float4 v = y[i];
        v.x *= a;
        v.y *= a;
        v.z *= a;
        v.w *= a;
        y[i] = v;
    }
}

extern "C" void cuda_scale_f32(cudaStream_t s, float *y, float a, size_t n) {
    if (n == 0) return;
    size_t done = 0;
    if (aligned(y, 16) && n >= 4) {
        size_t n4 = n / 4;
        k_scale_f32_vec4<<<ck_blocks(n4, CK_THREADS), CK_THREADS, 0, s>>>((float4 *)y, a, n4);
        done = n4 * 4;
    }
    if (done < n) k_scale_f32<<<ck_blocks(n - done, CK_THREADS), CK_THREADS, 0, s>>>(y + done, a, n - done);
}

// ------------------------------------------------------------ bias

// y [N, Out] += b [Out].
__global__ void k_add_bias(void *y, int y_bf16, const float *b, size_t n, int Out) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        ck_store(y, y_bf16, i, ck_load(y, y_bf16, i) + b[i % (size_t)Out]);
}

extern "C" void cuda_add_bias(cudaStream_t s, void *y, int y_bf16, const float *b, int N, int Out) {
    if (N <= 0 || Out <= 0) return;
    size_t n = (size_t)N * Out;
    k_add_bias<<<ck_blocks(n, CK_THREADS), CK_THREADS, 0, s>>>(y, y_bf16, b, n, Out);
}

// Column sums of dy [N, Out]: block (32, 8) covers 32 columns of one chunk
// of rows; each thread sums every 8th row of the chunk in its column (a warp
// reads 32 consecutive values of one row: coalesced), the 8 partial sums
// meet in shared memory and one atomicAdd per column and chunk adds them to
// db. N = 2048, Out = 4096: 128 x 32 blocks, 131072 atomics.
#define CK_COLSUM_ROWS 64

__global__ void k_bias_backward(float *db, const void *dy, int dy_bf16, int N, int Out, int rows_per_chunk) {
    __shared__ float partial[8][33];
    int col = blockIdx.x * 32 + threadIdx.x;
    int row0 = blockIdx.y * rows_per_chunk;
    int row_end = min(N, row0 + rows_per_chunk);
    float sum = 0.0f;
    if (col < Out)
        for (int r = row0 + threadIdx.y; r < row_end; r += 8) sum += ck_load(dy, dy_bf16, (size_t)r * Out + col);
    partial[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && col < Out) {
        float total = 0.0f;
        for (int k = 0; k < 8; k++) total += partial[k][threadIdx.x];
        atomicAdd(&db[col], total);
    }
}

// Rows per chunk so that the chunk count fits gridDim.y (65535).
static int colsum_rows_per_chunk(int N) {
    int rows = CK_COLSUM_ROWS;
    while ((N + rows - 1) / rows > 65535) rows *= 2;
    return rows;
}

extern "C" void cuda_bias_backward(cudaStream_t s, float *db, const void *dy, int dy_bf16, int N, int Out) {
    if (N <= 0 || Out <= 0 || db == NULL) return;
    int rows = colsum_rows_per_chunk(N);
    dim3 grid((unsigned)((Out + 31) / 32), (unsigned)((N + rows - 1) / rows));
    k_bias_backward<<<grid, dim3(32, 8), 0, s>>>(db, dy, dy_bf16, N, Out, rows);
}

// ------------------------------------------------------------ activations

__device__ __forceinline__ float ck_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// Codes as kernels.h's Activation: 0 gelu, 1 quick_gelu, 2 silu, 3 gelu_tanh, 4 relu.
__device__ __forceinline__ float act_value(float x, int act) {
    switch (act) {
    case 0: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752440f));
    case 1: return x * ck_sigmoid(1.702f * x);
    case 2: return x * ck_sigmoid(x);
    case 3: {
        float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
        return 0.5f * x * (1.0f + tanhf(u));
    }
    case 4: return x > 0.0f ? x : 0.0f;
    }
    return x;
}

__device__ __forceinline__ float act_derivative(float x, int act) {
    switch (act) {
    case 0: {
        float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752440f));
        float pdf = expf(-0.5f * x * x) * 0.3989422804014327f;
        return cdf + x * pdf;
    }
    case 1: {
        float sg = ck_sigmoid(1.702f * x);
        return sg + 1.702f * x * sg * (1.0f - sg);
    }
    case 2: {
        float sg = ck_sigmoid(x);
        return sg * (1.0f + x * (1.0f - sg));
    }
    case 3: {
        float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
        float t = tanhf(u);
        float du = 0.7978845608028654f * (1.0f + 3.0f * 0.044715f * x * x);
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
    }
    case 4: return x > 0.0f ? 1.0f : 0.0f;
    }
    return 1.0f;
}

__global__ void k_activation_forward(void *y, int y_bf16, const void *x, int x_bf16, size_t n, int act) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        ck_store(y, y_bf16, i, act_value(ck_load(x, x_bf16, i), act));
}

extern "C" void cuda_activation_forward(cudaStream_t s, void *y, int y_bf16, const void *x, int x_bf16, size_t n,
                                        int act) {
    if (n == 0) return;
    k_activation_forward<<<ck_blocks(n, CK_THREADS), CK_THREADS, 0, s>>>(y, y_bf16, x, x_bf16, n, act);
}

// dx may alias dy: each thread reads dy[i] before writing dx[i] (no restrict).
__global__ void k_activation_backward(uint16_t *dx, const uint16_t *dy, const void *x, int x_bf16, size_t n, int act) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float g = ck_bf16_to_f32(dy[i]);
        dx[i] = ck_f32_to_bf16(g * act_derivative(ck_load(x, x_bf16, i), act));
    }
}

extern "C" void cuda_activation_backward(cudaStream_t s, uint16_t *dx, const uint16_t *dy, const void *x, int x_bf16,
                                         size_t n, int act) {
    if (n == 0) return;
    k_activation_backward<<<ck_blocks(n, CK_THREADS), CK_THREADS, 0, s>>>(dx, dy, x, x_bf16, n, act);
}

// ------------------------------------------------------------ SwiGLU

__global__ void k_swiglu_forward(uint16_t *h, const uint16_t *gate, const uint16_t *up, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float g = ck_bf16_to_f32(gate[i]);
        h[i] = ck_f32_to_bf16(g * ck_sigmoid(g) * ck_bf16_to_f32(up[i]));
    }
}

extern "C" void cuda_swiglu_forward(cudaStream_t s, uint16_t *h, const uint16_t *gate, const uint16_t *up, size_t n) {
    if (n == 0) return;
    k_swiglu_forward<<<ck_blocks(n, CK_THREADS), CK_THREADS, 0, s>>>(h, gate, up, n);
}

__global__ void k_swiglu_backward(uint16_t *dgate, uint16_t *dup, const uint16_t *dh, const uint16_t *gate,
                                  const uint16_t *up, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float g = ck_bf16_to_f32(gate[i]), u = ck_bf16_to_f32(up[i]), d = ck_bf16_to_f32(dh[i]);
        float sg = ck_sigmoid(g);
        float silu = g * sg;
        // both read before either is written, so dgate/dup may alias dh
        float dg = d * u * sg * (1.0f + g * (1.0f - sg));
        dup[i] = ck_f32_to_bf16(d * silu);
        dgate[i] = ck_f32_to_bf16(dg);
    }
}

extern "C" void cuda_swiglu_backward(cudaStream_t s, uint16_t *dgate, uint16_t *dup, const uint16_t *dh,
                                     const uint16_t *gate, const uint16_t *up, size_t n) {
    if (n == 0) return;
    k_swiglu_backward<<<ck_blocks(n, CK_THREADS), CK_THREADS, 0, s>>>(dgate, dup, dh, gate, up, n);
}

// ------------------------------------------------------------ rotary embedding
//
// One block per row (b, t) of x [B*L, H, D]: the block first computes the
// row's cos/sin for the D/2 frequencies into shared memory exactly as the
// CPU does (inv_freq in double rounded to fp32, angle = (float)t * inv_freq
// in fp32, cos/sin in double rounded to fp32), then rotates every (head, i)
// pair: (a, b) = (x[i], x[i + D/2]) -> (a c - b s, b c + a s), s negated for
// the inverse.

__global__ void k_rope(uint16_t *x, int L, int H, int D, float theta, float sign) {
    extern __shared__ float cos_sin[];  // [D/2] cos then [D/2] sin
    int half = D / 2;
    size_t row = blockIdx.x;
    int t = (int)(row % (size_t)L);
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float inv_freq = (float)(1.0 / pow((double)theta, (double)(2 * i) / D));
        float angle = (float)t * inv_freq;
        cos_sin[i] = (float)cos((double)angle);
        cos_sin[half + i] = sign * (float)sin((double)angle);
    }
    __syncthreads();
    uint16_t *xr = x + row * (size_t)H * D;
    for (int k = threadIdx.x; k < H * half; k += blockDim.x) {
        int h = k / half, i = k % half;
        uint16_t *xh = xr + (size_t)h * D;
        float a = ck_bf16_to_f32(xh[i]), b = ck_bf16_to_f32(xh[i + half]);
        float c = cos_sin[i], sn = cos_sin[half + i];
        xh[i] = ck_f32_to_bf16(a * c - b * sn);
        xh[i + half] = ck_f32_to_bf16(b * c + a * sn);
    }
}

extern "C" void cuda_rope(cudaStream_t s, uint16_t *x, int B, int L, int H, int D, float theta, int inverse) {
    if (B <= 0 || L <= 0 || H <= 0 || D < 2) return;
    size_t rows = (size_t)B * L;
    size_t shared = sizeof(float) * (size_t)D;  // D/2 cos + D/2 sin
    k_rope<<<(unsigned)rows, 128, shared, s>>>(x, L, H, D, theta, inverse ? -1.0f : 1.0f);
}
