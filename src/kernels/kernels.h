// kernels.h - the backend seam: every numeric operation the model runs.
//
// src/model never touches tensor elements itself; it calls these functions on
// buffers obtained from kernel_alloc. Today they run on the CPU (OpenMP over
// the cores, OpenBLAS sgemm for matrix products); a CUDA or bf16 backend
// replaces the implementations behind this header without changing callers.
//
// Conventions: fp32, row-major, contiguous. A "row" is one token. Shapes are
// written [rows, cols]. Every *_backward ACCUMULATES (+=) into weight
// gradients (they sum over micro-batches) and, unless said otherwise,
// OVERWRITES input gradients. A NULL gradient pointer means "not needed" and
// skips that work.
#ifndef VLFT_KERNELS_H
#define VLFT_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define KERNEL_IGNORE_INDEX (-100)

// Loops over fewer elements than this run on one thread: waking the other
// threads costs more than the work (and much more on a busy machine).
#define KERNEL_PARALLEL_MIN ((size_t)1 << 17)

// --- memory and setup ---------------------------------------------------

// Sets the thread count used by the kernels (OpenMP and BLAS). 0 = the
// OpenMP default (OMP_NUM_THREADS or all cores).
void kernel_init(int threads);
// Zeroed buffer of n floats; NULL when out of memory.
float *kernel_alloc(size_t n);
void kernel_free(float *p);
void kernel_zero(float *p, size_t n);
void kernel_copy(float *dst, const float *src, size_t n);
// y += x (n elements).
void kernel_add(float *y, const float *x, size_t n);
// y *= a.
void kernel_scale(float *y, float a, size_t n);

// --- matrix products ----------------------------------------------------

// C[M,N] = alpha * op(A) op(B) + beta * C, op = transpose when trans_* is set;
// lda/ldb/ldc are row strides.
void gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
          int ldb, float beta, float *C, int ldc);

// Linear layer as torch.nn.Linear: y[N,Out] = x[N,In] w[Out,In]^T + b[Out] (b may be NULL).
void linear_forward(float *y, const float *x, const float *w, const float *b, int N, int In, int Out);
// dx[N,In] (+= when accumulate_dx) dy w; dw[Out,In] += dy^T x; db[Out] += sum_rows dy.
void linear_backward(float *dx, int accumulate_dx, float *dw, float *db, const float *dy, const float *x,
                     const float *w, int N, int In, int Out);

// LoRA update added onto a Linear's output, as PEFT computes it:
//   y[N,Out] += scale * (drop(x) A^T) B^T,  A [r,In], B [Out,r].
// drop(x) = x * keep_mask / (1 - p) when keep_mask is given (dropout), else x.
// u[N,r] receives drop(x) A^T for the backward pass; dx_scratch [N,In] holds
// drop(x) when keep_mask != NULL (may be NULL otherwise).
void lora_forward(float *y, float *u, float *dropped, const float *x, const uint8_t *keep_mask, float keep_scale,
                  const float *A, const float *B, float scale, int N, int In, int Out, int r);
// dA [r,In] += ..., dB [Out,r] += ..., dx [N,In] += (dropout-masked) gradient
// through the adapter (dx may be NULL); du is scratch [N,r].
void lora_backward(float *dx, float *dA, float *dB, float *du, const float *dy, const float *x, const float *dropped,
                   const uint8_t *keep_mask, float keep_scale, const float *u, const float *A, const float *B,
                   float scale, int N, int In, int Out, int r);

// --- bf16 matrix products (gemm_bf16.c) ----------------------------------
//
// Products whose inputs are bf16 and whose accumulation and output are fp32,
// as torch.autocast(dtype=bfloat16) runs a Linear: every input element is a
// bf16 value, either stored as bf16 or given in fp32 and rounded to the
// nearest bf16 (ties to even, as a tensor.to(torch.bfloat16) cast) when read.
// Two implementations, chosen by kernel_init: oneDNN's matmul (bf16 inputs,
// f32 output, primitives cached by shape) where oneDNN's effective ISA has
// native bf16 (AVX512-BF16 or AMX); elsewhere a fallback that converts the
// inputs to fp32 in blocks and multiplies them with OpenBLAS sgemm (same
// numbers up to summation order). VLFT_BF16_GEMM=onednn|fallback forces one.

// One input of a bf16 product: exactly one of the two pointers is set.
typedef struct {
    const float *f32;      // fp32 values, rounded to bf16 as they are read
    const uint16_t *bf16;  // bf16 values
} Bf16Input;

typedef enum { BF16_GEMM_FALLBACK, BF16_GEMM_ONEDNN } Bf16GemmImpl;

// The implementation gemm_bf16 uses now, and its name ("fallback", "onednn").
Bf16GemmImpl gemm_bf16_impl(void);
const char *gemm_bf16_impl_name(Bf16GemmImpl impl);
// Forces an implementation (tests compare the two); 0, or -1 (unchanged)
// when oneDNN cannot start a CPU engine.
int gemm_bf16_set_impl(Bf16GemmImpl impl);

// C[M,N] = alpha * op(A) op(B) + beta * C, as gemm() with bf16 inputs.
// Not reentrant: call it from one thread at a time (it threads itself).
void gemm_bf16(int trans_a, int trans_b, int M, int N, int K, float alpha, Bf16Input A, int lda, Bf16Input B,
               int ldb, float beta, float *C, int ldc);

// linear_forward / linear_backward with bf16 products: x, dy and w are read as
// bf16 (w stored bf16, or an fp32 master rounded on the fly); y, dx, dw, db
// are fp32 (db summed in fp32 from the unrounded dy).
void linear_forward_bf16(float *y, const float *x, Bf16Input w, const float *b, int N, int In, int Out);
void linear_backward_bf16(float *dx, int accumulate_dx, float *dw, float *db, const float *dy, const float *x,
                          Bf16Input w, int N, int In, int Out);

// bf16 storage: n zeroed elements; NULL when out of memory.
uint16_t *kernel_alloc_bf16(size_t n);
void kernel_free_bf16(uint16_t *p);
// dst[i] = src[i] rounded to the nearest bf16, ties to even (NaN stays NaN).
void bf16_from_f32(uint16_t *dst, const float *src, size_t n);
void f32_from_bf16(float *dst, const uint16_t *src, size_t n);

// out[N,C] = table[ids[i]] for a bf16 table (as embedding_forward).
void embedding_forward_bf16(float *out, const uint16_t *table, const int32_t *ids, const uint8_t *skip, int N, int C);

// The machine's GEMM peak as oneDNN reaches it: one [M,K] x [K,N] matmul
// (bf16 inputs and f32 output when bf16, else f32 throughout) timed over
// repeats after a warm-up, on the kernel threads. *gflops = best of the
// repeats; impl receives oneDNN's implementation name. -1 (err_msg filled)
// when oneDNN is missing or refuses the shape.
int gemm_peak_onednn(int M, int N, int K, int bf16, int repeats, double *gflops, char *impl, size_t impl_size,
                     char *err_msg, size_t err_size);
// oneDNN's effective CPU ISA name ("avx2", "avx512_core_amx", ...).
const char *gemm_onednn_isa_name(void);

// --- normalisation ------------------------------------------------------

// LayerNorm over the last dim C: y = (x - mean) * rstd * w + b; saves mean and
// rstd [N] for the backward.
void layernorm_forward(float *y, float *mean, float *rstd, const float *x, const float *w, const float *b, int N,
                       int C, float eps);
void layernorm_backward(float *dx, float *dw, float *db, const float *dy, const float *x, const float *mean,
                        const float *rstd, const float *w, int N, int C);

// RMSNorm (LLaMA): y = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps) saved [N].
void rmsnorm_forward(float *y, float *rstd, const float *x, const float *w, int N, int C, float eps);
void rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const float *rstd, const float *w, int N,
                      int C);

// --- positions and attention --------------------------------------------

// Rotary embedding in place on x [B*L, H, D], rotate_half layout (dims i and
// i + D/2 form a pair), position of row (b, t) = t, inv_freq_i = theta^(-2i/D).
void rope_forward(float *x, int B, int L, int H, int D, float theta);
// The backward of a rotation is the inverse rotation (in place on dx).
void rope_backward(float *dx, int B, int L, int H, int D, float theta);

// Scaled dot-product attention, batched, with grouped KV heads:
//   q [B*L, Hq*D], k, v [B*L, Hkv*D], out [B*L, Hq*D].
// Query head h reads KV head h / (Hq / Hkv). causal: key j <= query i only.
// key_mask [B*L] (may be NULL): keys with 0 are never attended to.
// lse [B, Hq, L] receives each row's log-sum-exp so the backward can rebuild
// the probabilities without storing the L x L matrix.
void attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, const int32_t *key_mask,
                       int B, int L, int Hq, int Hkv, int D, int causal, float scale);
// dq, dk, dv overwritten (same shapes as q, k, v).
void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                        const float *q, const float *k, const float *v, const int32_t *key_mask, int B, int L, int Hq,
                        int Hkv, int D, int causal, float scale);

// Cached decoding (generation). rope_forward_at rotates x [N, H, D] whose
// row i sits at position pos0 + i. attention_cached_forward: n new queries
// q [n, Hq*D] at positions pos0..pos0+n-1 against a cache k, v [pos0 + n,
// Hkv*D] (rows 0..pos0-1 from earlier calls, the last n just written),
// causal; out [n, Hq*D].
void rope_forward_at(float *x, int N, int H, int D, float theta, int pos0);
void attention_cached_forward(float *out, const float *q, const float *k, const float *v, int n, int pos0, int Hq,
                              int Hkv, int D, float scale);

// --- activations --------------------------------------------------------

typedef enum { ACT_GELU, ACT_QUICK_GELU, ACT_SILU, ACT_GELU_TANH, ACT_RELU } Activation;

// Parses a transformers hidden_act name ("gelu", "quick_gelu", "silu",
// "gelu_pytorch_tanh", "relu"); -1 when unknown.
int activation_from_name(const char *name, Activation *out);
void activation_forward(float *y, const float *x, size_t n, Activation act);
// dx = dy * act'(x) (dx may alias dy).
void activation_backward(float *dx, const float *dy, const float *x, size_t n, Activation act);

// LLaMA MLP gate: h[N,F] = silu(gate) * up.
void swiglu_forward(float *h, const float *gate, const float *up, size_t n);
void swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate, const float *up, size_t n);

// --- embeddings and row moves ------------------------------------------

// out[N,C] = table[ids[i]] (rows with skip[i] != 0 are left untouched; skip may be NULL).
void embedding_forward(float *out, const float *table, const int32_t *ids, const uint8_t *skip, int N, int C);
// dtable[ids[i]] += dout[i] for rows not skipped.
void embedding_backward(float *dtable, const float *dout, const int32_t *ids, const uint8_t *skip, int N, int C);
// dst[index[i]] = src[i] for i < n (rows of C).
void rows_scatter(float *dst, const int32_t *index, const float *src, int n, int C);
// dst[index[i]] += src[i] for i < n (rows of C; the index holds no repeats).
void rows_scatter_add(float *dst, const int32_t *index, const float *src, int n, int C);
// dst[i] = src[index[i]].
void rows_gather(float *dst, const float *src, const int32_t *index, int n, int C);

// Vision patch embedding, step 1: pixels [n, channels, S, S] -> patches
// [n * G * G, channels * p * p] (channel, row, col order, as a Conv2d weight
// flattens), G = S / p, patches in row-major grid order.
void patches_from_pixels(float *patches, const float *pixels, int n, int channels, int S, int p);
// Vision embeddings: out [n, 1 + P, C] = [class; patch_embeds[n, P, C]] + pos [1 + P, C].
void vision_embed_forward(float *out, const float *patch_embeds, const float *class_embedding, const float *pos, int n,
                          int P, int C);
// dpatch (overwritten, may be NULL), dclass and dpos accumulated (may be NULL).
void vision_embed_backward(float *dpatch, float *dclass, float *dpos, const float *dout, int n, int P, int C);
// dst [n, P, C] = src [n, 1 + P, C] minus the class row ("default" strategy); backward is the reverse.
void drop_first_row(float *dst, const float *src, int n, int P, int C);
void drop_first_row_backward(float *dsrc, const float *ddst, int n, int P, int C);

// --- loss ----------------------------------------------------------------

// Cross-entropy of logits [N, V] against targets [N] (KERNEL_IGNORE_INDEX
// skipped). Returns the sum of the per-row losses; lse [N] saved.
double cross_entropy_forward(float *lse, const float *logits, const int32_t *targets, int N, int V);
// In place: logits becomes dlogits = row_scale * (softmax - onehot) for
// counted rows, 0 for ignored ones.
void cross_entropy_backward(float *logits, const float *lse, const int32_t *targets, int N, int V, float row_scale);

#endif
