// cuda.h - the CUDA backend: a device context, device memory, bf16 matrix
// products through cuBLAS, and the kernels the LLaVA model runs on the GPU
// (src/model/llava_cuda.c). Built only with `make CUDA=1` (VLFT_CUDA).
//
// Conventions (as kernels.h, on device memory): row-major, contiguous, a row
// is one token, shapes [rows, cols]. Every pointer below is DEVICE memory
// unless named host_*. bf16 values are stored as uint16_t (the bit pattern of
// __nv_bfloat16). All work is queued on the given stream and nothing
// synchronises with the host unless said so.
//
// Precision (what "bf16 training" means here, as torch.autocast(bf16)):
//   - matrix products read bf16 inputs and accumulate in fp32;
//   - the residual stream, norm statistics, softmax / log-sum-exp, losses,
//     gradients of trainable tensors and optimizer state are fp32;
//   - other activations (norm outputs, q/k/v, attention output, MLP
//     activations, and their gradients) are bf16.
// Kernels compute in fp32 internally whatever their storage type.
//
// "accumulate" arguments: 0 overwrites the output, 1 adds into it. Weight
// gradients (dw, db, dtable) always ACCUMULATE (+=), as in kernels.h, and are
// skipped when NULL. Reductions over rows (dw, db) may use atomics: their
// result is not bit-reproducible from run to run.
#ifndef VLFT_CUDA_H
#define VLFT_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime.h>

#include "../../base/error.h"

// ------------------------------------------------------------ context

typedef struct CudaContext CudaContext;

// Opens device `device` (0 = first): a stream, a cuBLAS handle and its
// workspace. -1 with err filled when there is no usable GPU (the message says
// why: no driver, no device, CUDA error text).
int cuda_open(int device, CudaContext **out, Error *err);
void cuda_close(CudaContext *ctx);
cudaStream_t cuda_stream(const CudaContext *ctx);
// "NVIDIA H100 80GB HBM3, 132 SMs, 79.1 GiB" (static storage of the context).
const char *cuda_device_name(const CudaContext *ctx);
// 1 when a CUDA device can be opened (cheap; for tests deciding to skip).
int cuda_available(void);

// Device memory. NULL (err filled, naming what and how much) when out of memory.
void *cuda_malloc(CudaContext *ctx, size_t bytes, const char *what, Error *err);
void cuda_free(CudaContext *ctx, void *p);
// Synchronous copies (they wait for the stream first).
int cuda_upload(CudaContext *ctx, void *dst, const void *host_src, size_t bytes, Error *err);
int cuda_download(CudaContext *ctx, void *host_dst, const void *src, size_t bytes, Error *err);
// Asynchronous on the stream (host memory should be pinned to overlap).
void cuda_upload_async(CudaContext *ctx, void *dst, const void *host_src, size_t bytes);
void cuda_zero(CudaContext *ctx, void *p, size_t bytes);
// Waits for the stream; -1 with the CUDA error text if any launch failed.
int cuda_sync(CudaContext *ctx, Error *err);
// Bytes of device memory in use at the peak so far (cudaMalloc'd by this
// context) and now.
size_t cuda_peak_bytes(const CudaContext *ctx);
size_t cuda_live_bytes(const CudaContext *ctx);

// --------------------------------------------------------- products

// C[M,N] = alpha * op(A) op(B) + beta * C, row-major, op = transpose when
// trans_* is set; lda/ldb/ldc are row strides in elements. A and B are bf16;
// C is fp32 (c_bf16 = 0) or bf16 (c_bf16 = 1); fp32 accumulation.
void cuda_gemm(CudaContext *ctx, int trans_a, int trans_b, int M, int N, int K, float alpha, const uint16_t *A,
               int lda, const uint16_t *B, int ldb, float beta, void *C, int c_bf16, int ldc);

// --------------------------------------------------------- elementwise
// (cuda_elementwise.cu)

void cuda_bf16_from_f32(cudaStream_t s, uint16_t *dst, const float *src, size_t n);
void cuda_f32_from_bf16(cudaStream_t s, float *dst, const uint16_t *src, size_t n);
// y += x (fp32).
void cuda_add_f32(cudaStream_t s, float *y, const float *x, size_t n);
// y[N,Out] += b[Out] (y fp32 or bf16).
void cuda_add_bias(cudaStream_t s, void *y, int y_bf16, const float *b, int N, int Out);
// db[Out] += sum over rows of dy[N,Out] (dy fp32 or bf16).
void cuda_bias_backward(cudaStream_t s, float *db, const void *dy, int dy_bf16, int N, int Out);

// Activations (kernels.h's Activation codes: 0 gelu, 1 quick_gelu, 2 silu,
// 3 gelu_tanh, 4 relu). y = act(x); x and y are each fp32 or bf16.
void cuda_activation_forward(cudaStream_t s, void *y, int y_bf16, const void *x, int x_bf16, size_t n, int act);
// dx = dy * act'(x); dx and dy bf16, x fp32 or bf16. dx may alias dy.
void cuda_activation_backward(cudaStream_t s, uint16_t *dx, const uint16_t *dy, const void *x, int x_bf16, size_t n,
                              int act);

// LLaMA MLP: h = silu(gate) * up; backward gives dgate, dup (all bf16).
void cuda_swiglu_forward(cudaStream_t s, uint16_t *h, const uint16_t *gate, const uint16_t *up, size_t n);
void cuda_swiglu_backward(cudaStream_t s, uint16_t *dgate, uint16_t *dup, const uint16_t *dh, const uint16_t *gate,
                          const uint16_t *up, size_t n);

// Rotary embedding in place on x [B*L, H, D] (bf16), rotate_half layout as
// kernels.h's rope_forward, position of row (b, t) = t. inverse = 1 rotates
// backwards (the backward pass).
void cuda_rope(cudaStream_t s, uint16_t *x, int B, int L, int H, int D, float theta, int inverse);

// --------------------------------------------------------- norms
// (cuda_norm.cu) x is fp32 [N,C]; w, b fp32 [C]; y fp32 or bf16.

void cuda_layernorm_forward(cudaStream_t s, void *y, int y_bf16, float *mean, float *rstd, const float *x,
                            const float *w, const float *b, int N, int C, float eps);
// dx (fp32, overwritten or += by accumulate; may be NULL), dw, db (+=, may be NULL); dy fp32.
void cuda_layernorm_backward(cudaStream_t s, float *dx, int accumulate, float *dw, float *db, const float *dy,
                             const float *x, const float *mean, const float *rstd, const float *w, int N, int C);
void cuda_rmsnorm_forward(cudaStream_t s, void *y, int y_bf16, float *rstd, const float *x, const float *w, int N,
                          int C, float eps);
void cuda_rmsnorm_backward(cudaStream_t s, float *dx, int accumulate, float *dw, const float *dy, const float *x,
                           const float *rstd, const float *w, int N, int C);

// --------------------------------------------------------- rows, embeddings, vision input
// (cuda_rows.cu)

// out[N,C] (fp32) = table[ids[i]] (bf16 table); rows with skip[i] != 0 untouched (skip may be NULL).
void cuda_embedding_forward(cudaStream_t s, float *out, const uint16_t *table, const int32_t *ids,
                            const uint8_t *skip, int N, int C);
// dtable[ids[i]] += dout[i] (fp32) for rows not skipped.
void cuda_embedding_backward(cudaStream_t s, float *dtable, const float *dout, const int32_t *ids,
                             const uint8_t *skip, int N, int C);
// dst[index[i]] = src[i], i < n (fp32 rows of C).
void cuda_rows_scatter(cudaStream_t s, float *dst, const int32_t *index, const float *src, int n, int C);
// dst[i] = src[index[i]] (element size 4 for fp32 or 2 for bf16).
void cuda_rows_gather(cudaStream_t s, void *dst, const void *src, const int32_t *index, int n, int C, int elem_bytes);
// Pixels [n, ch, S, S] fp32 -> patches [n*G*G, ch*p*p] bf16 (as kernels.h's patches_from_pixels).
void cuda_patches_from_pixels(cudaStream_t s, uint16_t *patches, const float *pixels, int n, int ch, int S, int p);
// out [n, 1+P, C] = [class; patch_embeds [n, P, C]] + pos [1+P, C] (fp32).
void cuda_vision_embed_forward(cudaStream_t s, float *out, const float *patch_embeds, const float *class_embedding,
                               const float *pos, int n, int P, int C);
// dst [n, P, C] = src [n, 1+P, C] without row 0 of each image (fp32).
void cuda_drop_first_row(cudaStream_t s, float *dst, const float *src, int n, int P, int C);

// --------------------------------------------------------- loss
// (cuda_loss.cu)

// Fused softmax cross-entropy forward and backward over logits [N, V] fp32:
// loss_rows[i] = lse_i - logits[i, t_i] (0 for ignored rows) and
// dlogits [N, V] bf16 = row_scale * (softmax - onehot) (0 for ignored rows).
// targets [N] (KERNEL_IGNORE_INDEX = -100 skipped). dlogits may be NULL
// (loss only).
void cuda_cross_entropy(cudaStream_t s, float *loss_rows, uint16_t *dlogits, const float *logits,
                        const int32_t *targets, int N, int V, float row_scale);
// *out (one double) += sum x[0..n) (fp32 values, double sum).
void cuda_sum_accumulate(cudaStream_t s, double *out, const float *x, size_t n);
// *out (one double) += sum x[i]^2.
void cuda_sum_squares_accumulate(cudaStream_t s, double *out, const float *x, size_t n);

// --------------------------------------------------------- optimizer
// (cuda_adamw.cu)

// One AdamW update of n elements, exactly src/train/optimizer.h's
// adamw_update_span with the same fp32 scalars (decay_keep, beta1,
// one_minus_beta1, beta2, one_minus_beta2, step_size, bc2_sqrt, eps), the
// gradient first multiplied by *grad_coef (a device float: the clipping
// coefficient, 1 when not clipping; NULL = 1). p_bf16 (may be NULL) receives
// the updated value rounded to bf16 (the copy the products read).
typedef struct {
    float decay_keep, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, bc2_sqrt, eps;
} CudaAdamWScalars;
void cuda_adamw_update(cudaStream_t s, float *p, uint16_t *p_bf16, const float *g, float *m, float *v, size_t n,
                       int decay, CudaAdamWScalars sc, const float *grad_coef);
// Multi-tensor forms, one launch for every trainable tensor (a LoRA run has
// hundreds of small ones): tensors[] and chunks[] live on the device; each
// chunk is a slice (offset, length) of one tensor, so that one block does
// one chunk. Same element math as cuda_adamw_update.
typedef struct {
    float *p;
    uint16_t *p_bf16;  // may be NULL
    const float *g;
    float *m, *v;
    size_t n;
    int decay;
} CudaAdamWTensor;
typedef struct {
    int tensor;
    size_t offset, length;
} CudaTensorChunk;
void cuda_adamw_update_multi(cudaStream_t s, const CudaAdamWTensor *tensors, const CudaTensorChunk *chunks,
                             int n_chunks, CudaAdamWScalars sc, const float *grad_coef);
// *out (device double) += the sum of squares of every tensor's g.
void cuda_grad_sum_squares_multi(cudaStream_t s, double *out, const CudaAdamWTensor *tensors,
                                 const CudaTensorChunk *chunks, int n_chunks);
// From a device double holding the sum of squares of all gradients: *norm =
// sqrt(sum) (fp32, device) and *coef = max_norm / (norm + 1e-6) clamped to 1
// (1 when max_norm <= 0), as torch.nn.utils.clip_grad_norm_.
void cuda_clip_coef(cudaStream_t s, float *coef, float *norm, const double *sum_squares, float max_norm);
// y *= a (fp32).
void cuda_scale_f32(cudaStream_t s, float *y, float a, size_t n);

// --------------------------------------------------------- attention
// (cuda_attention.cu)

// Scaled dot-product attention, batched, grouped KV heads, as kernels.h's
// attention_forward: q [B*L, Hq*D], k, v [B*L, Hkv*D], out [B*L, Hq*D] (all
// bf16). Query head h reads KV head h / (Hq / Hkv). causal: key j <= query i.
// key_mask [B*L] (device, may be NULL): keys with 0 are never attended to.
// lse [B, Hq, L] (fp32) saved for the backward. D <= 128 and a multiple of 8.
void cuda_attention_forward(cudaStream_t s, uint16_t *out, float *lse, const uint16_t *q, const uint16_t *k,
                            const uint16_t *v, const int32_t *key_mask, int B, int L, int Hq, int Hkv, int D,
                            int causal, float scale);
// dq, dk, dv (bf16) overwritten. workspace: cuda_attention_workspace_bytes()
// bytes of device scratch (fp32 accumulators for dq/dk/dv and row sums).
size_t cuda_attention_workspace_bytes(int B, int L, int Hq, int Hkv, int D);
void cuda_attention_backward(cudaStream_t s, uint16_t *dq, uint16_t *dk, uint16_t *dv, const uint16_t *dout,
                             const uint16_t *out, const float *lse, const uint16_t *q, const uint16_t *k,
                             const uint16_t *v, const int32_t *key_mask, int B, int L, int Hq, int Hkv, int D,
                             int causal, float scale, void *workspace);
// Which implementation runs: "flash" (tensor-core tiles), "mma" (FA2 on
// mma.sync, register-resident accumulators) or "simple" (one query row per
// warp, fp32 CUDA cores; the reference). VLFT_CUDA_ATTENTION=
// flash|mma|simple forces one; default mma where D is supported (multiples of 16 up to 128).
const char *cuda_attention_impl(int D);

#endif
