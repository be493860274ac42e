// The CUDA context: one device, one stream, one cuBLAS handle with its
// workspace, and the count of device memory taken through it.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>

#include "cuda.h"

// cuBLAS's own workspace for the products (its default is smaller; Hopper
// kernels ask for up to 32 MiB).
#define CUDA_CUBLAS_WORKSPACE ((size_t)32 << 20)

struct CudaContext {
    int device;
    cudaStream_t stream;
    cublasHandle_t cublas;
    void *cublas_workspace;
    char name[640];
    size_t live, peak;
    // What cuda_malloc handed out, so cuda_free keeps the count (a few
    // hundred blocks: the weights and one arena).
    void **block_ptr;
    size_t *block_bytes;
    int n_blocks, cap_blocks;
};

int cuda_available(void) {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

int cuda_open(int device, CudaContext **out, Error *err) {
    *out = NULL;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) return error_set(err, "cuda: no usable GPU (%s)", cudaGetErrorString(e));
    if (n == 0) return error_set(err, "cuda: no GPU found");
    if (device < 0 || device >= n) return error_set(err, "cuda: device %d asked for, %d present", device, n);
    if ((e = cudaSetDevice(device)) != cudaSuccess)
        return error_set(err, "cuda: cannot use device %d (%s)", device, cudaGetErrorString(e));
    CudaContext *c = calloc(1, sizeof *c);
    if (!c) return error_set(err, "out of memory");
    c->device = device;
    if ((e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        free(c);
        return error_set(err, "cuda: cannot create a stream (%s)", cudaGetErrorString(e));
    }
    if (cublasCreate(&c->cublas) != CUBLAS_STATUS_SUCCESS) {
        cudaStreamDestroy(c->stream);
        free(c);
        return error_set(err, "cuda: cannot start cuBLAS");
    }
    cublasSetStream(c->cublas, c->stream);
    if (cudaMalloc(&c->cublas_workspace, CUDA_CUBLAS_WORKSPACE) == cudaSuccess)
        cublasSetWorkspace(c->cublas, c->cublas_workspace, CUDA_CUBLAS_WORKSPACE);
    else
        c->cublas_workspace = NULL;
    struct cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, device) == cudaSuccess)
        snprintf(c->name, sizeof c->name, "%s, %d SMs, %.1f GiB", prop.name, prop.multiProcessorCount,
                 (double)prop.totalGlobalMem / (1 << 30));
    else
        snprintf(c->name, sizeof c->name, "CUDA device %d", device);
    *out = c;
    return 0;
}

void cuda_close(CudaContext *c) {
    if (!c) return;
    cudaStreamSynchronize(c->stream);
    cublasDestroy(c->cublas);
    cudaFree(c->cublas_workspace);
    cudaStreamDestroy(c->stream);
    for (int i = 0; i < c->n_blocks; i++) cudaFree(c->block_ptr[i]);
    free(c->block_ptr);
    free(c->block_bytes);
    free(c);
}

cudaStream_t cuda_stream(const CudaContext *c) { return c->stream; }
const char *cuda_device_name(const CudaContext *c) { return c->name; }
size_t cuda_peak_bytes(const CudaContext *c) { return c->peak; }
size_t cuda_live_bytes(const CudaContext *c) { return c->live; }

// The cuBLAS handle for gemm.c (not part of the public header).
cublasHandle_t cuda_cublas_handle(CudaContext *c);
cublasHandle_t cuda_cublas_handle(CudaContext *c) { return c->cublas; }

void *cuda_malloc(CudaContext *c, size_t bytes, const char *what, Error *err) {
    if (c->n_blocks == c->cap_blocks) {
        int cap = c->cap_blocks ? 2 * c->cap_blocks : 256;
        void **p = realloc(c->block_ptr, sizeof(void *) * (size_t)cap);
        if (p) c->block_ptr = p;
        size_t *b = realloc(c->block_bytes, sizeof(size_t) * (size_t)cap);
        if (b) c->block_bytes = b;
        if (!p || !b) {
            error_set(err, "out of memory");
            return NULL;
        }
        c->cap_blocks = cap;
    }
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        cudaGetLastError();  // clear the error so later launches are not blamed for it
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        error_set(err, "cuda: out of GPU memory allocating %s (%.2f GiB; %.2f GiB free of %.2f; %.2f GiB held by vlft)",
                  what, (double)bytes / (1 << 30), (double)free_b / (1 << 30), (double)total_b / (1 << 30),
                  (double)c->live / (1 << 30));
        return NULL;
    }
    c->block_ptr[c->n_blocks] = p;
    c->block_bytes[c->n_blocks++] = bytes;
    c->live += bytes;
    if (c->live > c->peak) c->peak = c->live;
    return p;
}

void cuda_free(CudaContext *c, void *p) {
    if (!p || !c) return;
    for (int i = c->n_blocks - 1; i >= 0; i--)
        if (c->block_ptr[i] == p) {
            c->live -= c->block_bytes[i];
            c->block_ptr[i] = c->block_ptr[c->n_blocks - 1];
            c->block_bytes[i] = c->block_bytes[c->n_blocks - 1];
            c->n_blocks--;
            cudaFree(p);
            return;
        }
}

static int check(cudaError_t e, const char *what, Error *err) {
    if (e == cudaSuccess) return 0;
    return error_set(err, "cuda: %s failed (%s)", what, cudaGetErrorString(e));
}

int cuda_upload(CudaContext *c, void *dst, const void *host_src, size_t bytes, Error *err) {
    if (bytes == 0) return 0;
    if (check(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, c->stream), "upload", err)) return -1;
    return check(cudaStreamSynchronize(c->stream), "upload", err);
}

int cuda_download(CudaContext *c, void *host_dst, const void *src, size_t bytes, Error *err) {
    if (bytes == 0) return 0;
    if (check(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, c->stream), "download", err)) return -1;
    return check(cudaStreamSynchronize(c->stream), "download", err);
}

void cuda_upload_async(CudaContext *c, void *dst, const void *host_src, size_t bytes) {
    if (bytes) cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, c->stream);
}

void cuda_zero(CudaContext *c, void *p, size_t bytes) {
    if (bytes) cudaMemsetAsync(p, 0, bytes, c->stream);
}

int cuda_sync(CudaContext *c, Error *err) {
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
    if (e == cudaSuccess) e = cudaGetLastError();
    return check(e, "a GPU kernel", err);
}
