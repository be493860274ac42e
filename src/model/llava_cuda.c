// The LLaVA forward and backward on a CUDA GPU (device: cuda), the same
// computation as llava_forward.c with bf16 products (as the CPU's bf16 mode,
// torch.autocast(bf16)): see src/kernels/cuda/cuda.h for which values are
// bf16 and which fp32.
//
// At attach every weight goes to the GPU once: GEMM weights (Linear weights,
// embed_tokens, lm_head, the patch embedding) as bf16, the others (norms,
// biases, class and position embeddings) as fp32; a trainable tensor also
// gets its fp32 master, gradient and AdamW moments there, so a training step
// never moves weights or gradients over PCIe. The host ParamRef values are
// brought up to date only when asked (saving, tests): llava_device_pull.
//
// Activations live in two stack arenas of device memory: "kept" (what the
// backward reads, released layer by layer in reverse) and "work" (scratch,
// released as soon as its user is done). Both grow on the first step of a
// shape and are reused after: later steps call no cudaMalloc.
//
// Scope today: the vision tower runs forward only (a trainable tower is
// refused with a message), LoRA without dropout, batch rows of any length.
// Activation checkpointing per decoder layer as on the CPU.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/cuda/cuda.h"
#include "llava_internal.h"

// ------------------------------------------------------------ arenas

// A stack of device chunks; a mark is a (chunk, offset) pair.
typedef struct {
    char *base;
    size_t cap, used;
} DevChunk;

typedef struct {
    DevChunk chunks[32];
    int n_chunks, current;
    size_t live, peak;
} DevArena;

typedef struct {
    int chunk;
    size_t used, live;
} DevMark;

typedef struct {
    uint16_t *bf16;  // GEMM weights: what products read
    float *f32;      // other weights' values; a trainable tensor's fp32 master
    float *grad;     // trainable: fp32 gradient
    float *m, *v;    // trainable: AdamW moments
} DevWeight;

typedef struct {
    float *A, *B, *dA, *dB, *mA, *vA, *mB, *vB;  // fp32 masters, grads, moments
    uint16_t *A16, *B16;                         // bf16 copies the products read
} DevLora;

// VLFT_CUDA_PROFILE=1: device time of the step's parts, from event pairs
// around them, printed to stderr after each step (a part inside another,
// such as attention inside the text layers, is counted in both).
enum { PROF_VISION, PROF_TEXT_FORWARD, PROF_HEAD, PROF_TEXT_BACKWARD, PROF_ATTENTION_FORWARD, PROF_ATTENTION_BACKWARD,
       PROF_LORA, PROF_OPTIMIZER, PROF_PARTS };
static const char *const prof_names[PROF_PARTS] = {"vision+projector", "text forward", "head+loss", "text backward",
                                                   "attention fwd", "attention bwd", "lora products", "optimizer"};
enum { PROF_MAX_PAIRS = 16384 };
typedef struct {
    cudaEvent_t *start, *stop;
    int *part;
    int n, capacity;
} Profile;

struct LlavaCuda {
    Profile *prof;  // NULL unless VLFT_CUDA_PROFILE is set
    CudaContext *ctx;
    cudaStream_t s;
    DevWeight *w;  // [n_weights], same order as m->weights
    DevLora *lora; // [n_loras]
    DevArena kept, work;
    int failed;
    Error error;
    double *loss_sum;       // device: sum of per-row losses of the step
    double *grad_sq;        // device: sum of squared gradients (clipping)
    float *clip;            // device: [0] coefficient, [1] norm
    // The optimizer's tables (device): every trainable tensor and its chunks.
    CudaAdamWTensor *opt_tensors;
    CudaTensorChunk *opt_chunks;
    int n_opt_chunks;
    size_t weights_bytes;   // device bytes of weights, masters, grads and moments
};

// Chunks are at least 256 MiB and never smaller than the one before, so a
// step settles in a few of them after its first run.
static void *take(DevArena *a, DevChunk *c, size_t bytes) {
    void *p = c->base + c->used;
    c->used += bytes;
    a->live += bytes;
    if (a->live > a->peak) a->peak = a->live;
    return p;
}

// A new chunk: at least 256 MiB and 1.5x the one before, so that a first
// step settles in a few; dev_arena_settle then merges them into one.
static size_t chunk_size(const DevArena *a, size_t bytes) {
    size_t cap = (size_t)256 << 20;
    if (a->n_chunks > 0 && a->chunks[a->n_chunks - 1].cap / 2 * 3 > cap) cap = a->chunks[a->n_chunks - 1].cap / 2 * 3;
    return bytes > cap ? bytes : cap;
}

static int prof_begin(LlavaCuda *d, int part) {
    Profile *p = d->prof;
    if (!p || p->n == p->capacity) return -1;
    p->part[p->n] = part;
    cudaEventRecord(p->start[p->n], d->s);
    return p->n++;
}

static void prof_end(LlavaCuda *d, int pair) {
    if (pair >= 0) cudaEventRecord(d->prof->stop[pair], d->s);
}

// After a sync: the sums per part, then the pairs are reused.
static void prof_report(LlavaCuda *d, const char *what) {
    Profile *p = d->prof;
    if (!p || p->n == 0) return;
    double ms[PROF_PARTS] = {0};
    int calls[PROF_PARTS] = {0};
    for (int i = 0; i < p->n; i++) {
        float t = 0;
        if (cudaEventElapsedTime(&t, p->start[i], p->stop[i]) == cudaSuccess) ms[p->part[i]] += t;
        calls[p->part[i]]++;
    }
    fprintf(stderr, "cuda profile (%s):", what);
    for (int k = 0; k < PROF_PARTS; k++)
        if (calls[k]) fprintf(stderr, " %s %.2f ms (%d)%s", prof_names[k], ms[k], calls[k], k + 1 < PROF_PARTS ? ";" : "");
    fprintf(stderr, "\n");
    p->n = 0;
}

static void prof_open(LlavaCuda *d) {
    const char *env = getenv("VLFT_CUDA_PROFILE");
    if (!env || !*env || strcmp(env, "0") == 0) return;
    Profile *p = calloc(1, sizeof *p);
    if (!p) return;
    p->capacity = PROF_MAX_PAIRS;
    p->start = calloc(PROF_MAX_PAIRS, sizeof(cudaEvent_t));
    p->stop = calloc(PROF_MAX_PAIRS, sizeof(cudaEvent_t));
    p->part = calloc(PROF_MAX_PAIRS, sizeof(int));
    if (!p->start || !p->stop || !p->part) {
        free(p->start), free(p->stop), free(p->part), free(p);
        return;
    }
    for (int i = 0; i < PROF_MAX_PAIRS; i++) {
        cudaEventCreate(&p->start[i]);
        cudaEventCreate(&p->stop[i]);
    }
    d->prof = p;
}

static void prof_close(LlavaCuda *d) {
    Profile *p = d->prof;
    if (!p) return;
    for (int i = 0; i < p->capacity; i++) {
        cudaEventDestroy(p->start[i]);
        cudaEventDestroy(p->stop[i]);
    }
    free(p->start), free(p->stop), free(p->part), free(p);
    d->prof = NULL;
}

static void *dev_arena_alloc(LlavaCuda *d, DevArena *a, size_t bytes) {
    if (d->failed) return NULL;
    bytes = (bytes + 255) & ~(size_t)255;
    // Chunks after the current one are empty (dev_arena_release empties them).
    while (a->current < a->n_chunks) {
        DevChunk *c = &a->chunks[a->current];
        if (c->cap - c->used >= bytes) return take(a, c, bytes);
        if (c->used == 0) {  // empty but too small: replace it
            cuda_free(d->ctx, c->base);
            c->cap = chunk_size(a, bytes);
            c->base = cuda_malloc(d->ctx, c->cap, "activations", &d->error);
            if (!c->base) {
                c->cap = 0;
                d->failed = 1;
                return NULL;
            }
            return take(a, c, bytes);
        }
        a->current++;
    }
    if (a->n_chunks == 32) {
        d->failed = 1;
        error_set(&d->error, "cuda: activation memory split in too many pieces");
        return NULL;
    }
    DevChunk *c = &a->chunks[a->n_chunks];
    c->cap = chunk_size(a, bytes);
    c->used = 0;
    c->base = cuda_malloc(d->ctx, c->cap, "activations", &d->error);
    if (!c->base) {
        c->cap = 0;
        d->failed = 1;
        return NULL;
    }
    a->current = a->n_chunks++;
    return take(a, c, bytes);
}

static DevMark dev_arena_mark(const DevArena *a) {
    DevMark mk = {.chunk = a->current, .used = a->current < a->n_chunks ? a->chunks[a->current].used : 0,
                  .live = a->live};
    return mk;
}

static void dev_arena_release(DevArena *a, DevMark mk) {
    for (int i = mk.chunk + 1; i < a->n_chunks; i++) a->chunks[i].used = 0;
    if (mk.chunk < a->n_chunks) a->chunks[mk.chunk].used = mk.used;
    a->current = mk.chunk;
    a->live = mk.live;
}

static void dev_arena_free(LlavaCuda *d, DevArena *a) {
    for (int i = 0; i < a->n_chunks; i++) cuda_free(d->ctx, a->chunks[i].base);
    memset(a, 0, sizeof *a);
}

// After a step: when it needed several chunks, one chunk of the step's peak
// replaces them, so the next step of this shape allocates nothing and the
// memory held is what the step needs (plus alignment).
static void dev_arena_settle(LlavaCuda *d, DevArena *a) {
    if (a->n_chunks <= 1) return;
    size_t need = a->peak;
    for (int i = 0; i < a->n_chunks; i++) cuda_free(d->ctx, a->chunks[i].base);
    memset(a->chunks, 0, sizeof a->chunks);
    a->n_chunks = a->current = 0;
    a->live = 0;
    Error ignored;
    DevChunk *c = &a->chunks[0];
    c->base = cuda_malloc(d->ctx, need, "activations", &ignored);
    if (c->base) {
        c->cap = need;
        a->n_chunks = 1;
    }
}

static size_t dev_arena_capacity(const DevArena *a) {
    size_t n = 0;
    for (int i = 0; i < a->n_chunks; i++) n += a->chunks[i].cap;
    return n;
}

// Typed helpers: n elements of fp32 / bf16 in an arena.
static float *af(LlavaCuda *d, DevArena *a, size_t n) { return dev_arena_alloc(d, a, n * sizeof(float)); }
static uint16_t *ah(LlavaCuda *d, DevArena *a, size_t n) { return dev_arena_alloc(d, a, n * sizeof(uint16_t)); }

// ------------------------------------------------------------ attach

static int upload_f32_as_bf16(LlavaCuda *d, uint16_t *dst, const float *host, size_t n, Error *err) {
    // Through an fp32 staging buffer on the device, converted there.
    float *stage = cuda_malloc(d->ctx, n * sizeof(float), "a weight being converted", err);
    if (!stage) return -1;
    int rc = cuda_upload(d->ctx, stage, host, n * sizeof(float), err);
    if (rc == 0) {
        cuda_bf16_from_f32(d->s, dst, stage, n);
        rc = cuda_sync(d->ctx, err);
    }
    cuda_free(d->ctx, stage);
    return rc;
}

static int upload_bf16_as_f32(LlavaCuda *d, float *dst, const uint16_t *host, size_t n, Error *err) {
    uint16_t *stage = cuda_malloc(d->ctx, n * sizeof(uint16_t), "a weight being converted", err);
    if (!stage) return -1;
    int rc = cuda_upload(d->ctx, stage, host, n * sizeof(uint16_t), err);
    if (rc == 0) {
        cuda_f32_from_bf16(d->s, dst, stage, n);
        rc = cuda_sync(d->ctx, err);
    }
    cuda_free(d->ctx, stage);
    return rc;
}

static void *dmalloc(LlavaCuda *d, size_t bytes, const char *what, Error *err) {
    void *p = cuda_malloc(d->ctx, bytes, what, err);
    if (p) {
        d->weights_bytes += bytes;
        cuda_zero(d->ctx, p, bytes);
    }
    return p;
}

static int attach_weight(LlavaCuda *d, const Weight *w, DevWeight *dw, Error *err) {
    const char *name = w->entry->name;
    size_t n = w->numel;
    if (w->compute_bf16) {
        if (!(dw->bf16 = dmalloc(d, n * 2, name, err))) return -1;
        if (w->bf16) {
            if (cuda_upload(d->ctx, dw->bf16, w->bf16, n * 2, err) != 0) return -1;
        } else if (upload_f32_as_bf16(d, dw->bf16, w->data, n, err) != 0) return -1;
    }
    if (!w->compute_bf16 || w->trainable) {
        if (!(dw->f32 = dmalloc(d, n * 4, name, err))) return -1;
        if (w->data) {
            if (cuda_upload(d->ctx, dw->f32, w->data, n * 4, err) != 0) return -1;
        } else if (upload_bf16_as_f32(d, dw->f32, w->bf16, n, err) != 0) return -1;
    }
    if (w->trainable) {
        if (!(dw->grad = dmalloc(d, n * 4, name, err))) return -1;
        if (!(dw->m = dmalloc(d, n * 4, name, err))) return -1;
        if (!(dw->v = dmalloc(d, n * 4, name, err))) return -1;
    }
    return 0;
}

static int attach_lora(LlavaCuda *d, const LoraAdapter *l, DevLora *dl, Error *err) {
    size_t na = (size_t)l->rank * l->in, nb = (size_t)l->out * l->rank;
    float **f[] = {&dl->A, &dl->dA, &dl->mA, &dl->vA};
    float **g[] = {&dl->B, &dl->dB, &dl->mB, &dl->vB};
    for (int i = 0; i < 4; i++) {
        if (!(*f[i] = dmalloc(d, na * 4, l->name_A, err))) return -1;
        if (!(*g[i] = dmalloc(d, nb * 4, l->name_B, err))) return -1;
    }
    if (!(dl->A16 = dmalloc(d, na * 2, l->name_A, err)) || !(dl->B16 = dmalloc(d, nb * 2, l->name_B, err))) return -1;
    if (cuda_upload(d->ctx, dl->A, l->A, na * 4, err) != 0 || cuda_upload(d->ctx, dl->B, l->B, nb * 4, err) != 0)
        return -1;
    cuda_bf16_from_f32(d->s, dl->A16, dl->A, na);
    cuda_bf16_from_f32(d->s, dl->B16, dl->B, nb);
    return cuda_sync(d->ctx, err);
}

void llava_cuda_detach(LlavaModel *m) {
    LlavaCuda *d = m->cuda;
    if (!d) return;
    dev_arena_free(d, &d->kept);
    dev_arena_free(d, &d->work);
    prof_close(d);
    free(d->w);
    free(d->lora);
    cuda_close(d->ctx);  // frees every block still held
    free(d);
    m->cuda = NULL;
}

int llava_cuda_attach(LlavaModel *m, Error *err) {
    if (m->vision_trainable)
        return error_set(err, "device cuda: a trainable vision tower is not supported on the GPU yet "
                              "(keep freeze_vision_tower: true, or use device: cpu)");
    for (int i = 0; i < m->n_loras; i++)
        if (m->loras[i].dropout > 0 && !m->loras[i].unused)
            return error_set(err, "device cuda: lora_dropout > 0 is not supported on the GPU yet (set lora_dropout: 0, "
                                  "LLaMA-Factory's default, or use device: cpu)");
    LlavaCuda *d = calloc(1, sizeof *d);
    if (!d) return error_set(err, "out of memory");
    m->cuda = d;
    if (cuda_open(0, &d->ctx, err) != 0) {
        free(d);
        m->cuda = NULL;
        return -1;
    }
    d->s = cuda_stream(d->ctx);
    prof_open(d);
    d->w = calloc((size_t)m->n_weights + 1, sizeof(DevWeight));
    d->lora = calloc((size_t)m->n_loras + 1, sizeof(DevLora));
    if (!d->w || !d->lora) goto oom;
    for (int i = 0; i < m->n_weights; i++)
        if (attach_weight(d, &m->weights[i], &d->w[i], err) != 0) goto fail;
    for (int i = 0; i < m->n_loras; i++)
        if (attach_lora(d, &m->loras[i], &d->lora[i], err) != 0) goto fail;
    if (!(d->loss_sum = dmalloc(d, sizeof(double), "loss", err)) || !(d->grad_sq = dmalloc(d, sizeof(double), "norm", err)) ||
        !(d->clip = dmalloc(d, 2 * sizeof(float), "norm", err)))
        goto fail;
    // Gradients accumulate on the device: the host's buffers go (a 6B full
    // fine-tune would hold 27 GB of them), made again only if pulled.
    ParamStorage st = llava_param_storage(m);
    for (int i = 0; i < m->n_params; i++) st.free(st.ctx, i, 0, 1);
    return 0;
oom:
    error_set(err, "out of memory");
fail:
    llava_cuda_detach(m);
    return -1;
}

// ------------------------------------------------------------ products

static DevWeight *dev(LlavaModel *m, const Weight *w) { return w ? &m->cuda->w[w - m->weights] : NULL; }
static DevLora *dev_lora(LlavaModel *m, const LoraAdapter *l) { return l ? &m->cuda->lora[l - m->loras] : NULL; }

// What a Linear keeps for its backward: u = x A^T [N, r] (bf16) when it has LoRA.
typedef struct {
    uint16_t *u;
} DevLinCache;

// y [N, Out] (fp32 or bf16) = beta * y + x [N, In] W^T + b, + scale (x A^T) B^T.
// u is allocated in arena a (kept when the backward needs it).
static void lin_forward(LlavaModel *m, const Linear *l, void *y, int y_bf16, float beta, const uint16_t *x, int N,
                        DevLinCache *cache, DevArena *a) {
    LlavaCuda *d = m->cuda;
    if (d->failed) return;
    DevWeight *w = dev(m, l->w);
    cuda_gemm(d->ctx, 0, 1, N, l->out, l->in, 1.0f, x, l->in, w->bf16, l->in, beta, y, y_bf16, l->out);
    if (l->b) cuda_add_bias(d->s, y, y_bf16, dev(m, l->b)->f32, N, l->out);
    if (l->lora) {
        DevLora *dl = dev_lora(m, l->lora);
        int r = l->lora->rank;
        uint16_t *u = ah(d, a, (size_t)N * r);
        if (!u) return;
        int pr = prof_begin(d, PROF_LORA);
        cuda_gemm(d->ctx, 0, 1, N, r, l->in, 1.0f, x, l->in, dl->A16, l->in, 0.0f, u, 1, r);
        cuda_gemm(d->ctx, 0, 1, N, l->out, r, l->lora->scale, u, r, dl->B16, r, 1.0f, y, y_bf16, l->out);
        prof_end(d, pr);
        if (cache) cache->u = u;
    }
}

// dx [N, In] (fp32 or bf16; beta 0 overwrites, 1 adds; NULL = not needed)
// from dy [N, Out] (bf16); weight, bias and LoRA gradients added.
static void lin_backward(LlavaModel *m, const Linear *l, void *dx, int dx_bf16, float beta, const uint16_t *dy,
                         const uint16_t *x, int N, const DevLinCache *cache) {
    LlavaCuda *d = m->cuda;
    if (d->failed) return;
    DevWeight *w = dev(m, l->w);
    if (dx) cuda_gemm(d->ctx, 0, 0, N, l->in, l->out, 1.0f, dy, l->out, w->bf16, l->in, beta, dx, dx_bf16, l->in);
    if (w->grad) cuda_gemm(d->ctx, 1, 0, l->out, l->in, N, 1.0f, dy, l->out, x, l->in, 1.0f, w->grad, 0, l->in);
    if (l->b && dev(m, l->b)->grad) cuda_bias_backward(d->s, dev(m, l->b)->grad, dy, 1, N, l->out);
    if (l->lora) {
        DevLora *dl = dev_lora(m, l->lora);
        int r = l->lora->rank;
        float scale = l->lora->scale;
        DevMark mk = dev_arena_mark(&d->work);
        uint16_t *du = ah(d, &d->work, (size_t)N * r);
        if (!du) return;
        // du = scale * dy B [N, r]; dB += scale * dy^T u; dA += du^T x; dx += du A.
        int pr = prof_begin(d, PROF_LORA);
        cuda_gemm(d->ctx, 0, 0, N, r, l->out, scale, dy, l->out, dl->B16, r, 0.0f, du, 1, r);
        cuda_gemm(d->ctx, 1, 0, l->out, r, N, scale, dy, l->out, cache->u, r, 1.0f, dl->dB, 0, r);
        cuda_gemm(d->ctx, 1, 0, r, l->in, N, 1.0f, du, r, x, l->in, 1.0f, dl->dA, 0, l->in);
        if (dx) cuda_gemm(d->ctx, 0, 0, N, l->in, r, 1.0f, du, r, dl->A16, l->in, 1.0f, dx, dx_bf16, l->in);
        prof_end(d, pr);
        dev_arena_release(&d->work, mk);
    }
}

// ------------------------------------------------------------ vision (forward only)

// x [n*T, C] fp32 -> x_out [n*T, C] fp32: one CLIP encoder layer, nothing kept
// (scratch in work, released at the end).
static void vision_layer_forward(LlavaModel *m, const VisionLayer *l, const float *x, float *x_out, int n, int T) {
    LlavaCuda *d = m->cuda;
    const VisionConfig *vc = &m->config.vision;
    int N = n * T, C = vc->hidden_size, H = vc->num_attention_heads, D = C / H, F = vc->intermediate_size;
    float eps = (float)vc->layer_norm_eps;
    DevMark mk = dev_arena_mark(&d->work);
    float *stats = af(d, &d->work, 2 * (size_t)N), *lse = af(d, &d->work, (size_t)n * H * T);
    uint16_t *h = ah(d, &d->work, (size_t)N * C), *q = ah(d, &d->work, (size_t)N * C);
    uint16_t *k = ah(d, &d->work, (size_t)N * C), *v = ah(d, &d->work, (size_t)N * C), *att = ah(d, &d->work, (size_t)N * C);
    uint16_t *f = ah(d, &d->work, (size_t)N * F);
    if (d->failed) return;
    cuda_layernorm_forward(d->s, h, 1, stats, stats + N, x, dev(m, l->ln1_w)->f32, dev(m, l->ln1_b)->f32, N, C, eps);
    lin_forward(m, &l->q, q, 1, 0.0f, h, N, NULL, &d->work);
    lin_forward(m, &l->k, k, 1, 0.0f, h, N, NULL, &d->work);
    lin_forward(m, &l->v, v, 1, 0.0f, h, N, NULL, &d->work);
    int pa = prof_begin(d, PROF_ATTENTION_FORWARD);
    cuda_attention_forward(d->s, att, lse, q, k, v, NULL, n, T, H, H, D, 0, 1.0f / sqrtf((float)D));
    prof_end(d, pa);
    // x_out holds x_mid = x + o(att) until the MLP adds onto it.
    cudaMemcpyAsync(x_out, x, (size_t)N * C * sizeof(float), cudaMemcpyDeviceToDevice, d->s);
    lin_forward(m, &l->o, x_out, 0, 1.0f, att, N, NULL, &d->work);
    cuda_layernorm_forward(d->s, h, 1, stats, stats + N, x_out, dev(m, l->ln2_w)->f32, dev(m, l->ln2_b)->f32, N, C, eps);
    lin_forward(m, &l->fc1, f, 1, 0.0f, h, N, NULL, &d->work);
    cuda_activation_forward(d->s, f, 1, f, 1, (size_t)N * F, m->vision_act);
    lin_forward(m, &l->fc2, x_out, 0, 1.0f, f, N, NULL, &d->work);
    dev_arena_release(&d->work, mk);
}

// pixels (device fp32 [n, ch, S, S]) -> features [n * P', C] fp32 in arena a.
static float *vision_forward(LlavaModel *m, const float *pixels, int n, DevArena *a) {
    LlavaCuda *d = m->cuda;
    const VisionConfig *vc = &m->config.vision;
    int S = vc->image_size, ps = vc->patch_size, G = S / ps, P = G * G, T = P + 1, C = vc->hidden_size;
    int K = vc->num_channels * ps * ps;
    int full = strcmp(m->config.vision_feature_select_strategy, "full") == 0;
    int Pf = full ? T : P;
    float *features = af(d, a, (size_t)n * Pf * C);
    DevMark mk = dev_arena_mark(&d->work);
    uint16_t *patches = ah(d, &d->work, (size_t)n * P * K);
    float *pe = af(d, &d->work, (size_t)n * P * C), *emb = af(d, &d->work, (size_t)n * T * C);
    float *stats = af(d, &d->work, 2 * (size_t)n * T);
    float *x = af(d, &d->work, (size_t)n * T * C), *y = af(d, &d->work, (size_t)n * T * C);  // ping-pong
    if (d->failed) return NULL;
    cuda_patches_from_pixels(d->s, patches, pixels, n, vc->num_channels, S, ps);
    cuda_gemm(d->ctx, 0, 1, n * P, C, K, 1.0f, patches, K, dev(m, m->patch_embedding)->bf16, K, 0.0f, pe, 0, C);
    cuda_vision_embed_forward(d->s, emb, pe, dev(m, m->class_embedding)->f32, dev(m, m->position_embedding)->f32, n,
                              P, C);
    cuda_layernorm_forward(d->s, x, 0, stats, stats + (size_t)n * T, emb, dev(m, m->pre_ln_w)->f32,
                           dev(m, m->pre_ln_b)->f32, n * T, C, (float)vc->layer_norm_eps);
    for (int i = 0; i < m->vision_layers_run && !d->failed; i++) {
        vision_layer_forward(m, &m->vision_layers[i], x, y, n, T);
        float *swap = x;
        x = y;
        y = swap;
    }
    if (d->failed) return NULL;
    if (full) cudaMemcpyAsync(features, x, (size_t)n * T * C * sizeof(float), cudaMemcpyDeviceToDevice, d->s);
    else cuda_drop_first_row(d->s, features, x, n, P, C);
    dev_arena_release(&d->work, mk);
    return features;
}

// ------------------------------------------------------------ projector

typedef struct {
    uint16_t *in16, *g;   // bf16 inputs of the two products
    float *a1, *n2, *a3, *stats2, *stats4;
    DevLinCache c1, c3;
} DevProjector;

// features [M, Cv] fp32 -> out [M, C] fp32 (arena a holds what the backward needs).
static float *projector_forward(LlavaModel *m, DevProjector *p, const float *features, int M, DevArena *a) {
    LlavaCuda *d = m->cuda;
    int C = m->config.text.hidden_size, Cv = m->proj1.in;
    float *out = af(d, a, (size_t)M * C);
    p->in16 = ah(d, a, (size_t)M * Cv), p->a1 = af(d, a, (size_t)M * C), p->g = ah(d, a, (size_t)M * C);
    int yi = m->projector == PROJECTOR_YIVL;
    if (yi) {
        p->n2 = af(d, a, (size_t)M * C), p->a3 = af(d, a, (size_t)M * C);
        p->stats2 = af(d, a, 2 * (size_t)M), p->stats4 = af(d, a, 2 * (size_t)M);
    }
    if (d->failed) return NULL;
    cuda_bf16_from_f32(d->s, p->in16, features, (size_t)M * Cv);
    lin_forward(m, &m->proj1, p->a1, 0, 0.0f, p->in16, M, &p->c1, a);
    if (yi) {
        // linear_1 -> LayerNorm -> act -> linear_3 -> LayerNorm (eps 1e-5)
        cuda_layernorm_forward(d->s, p->n2, 0, p->stats2, p->stats2 + M, p->a1, dev(m, m->proj_ln2_w)->f32,
                               dev(m, m->proj_ln2_b)->f32, M, C, 1e-5f);
        cuda_activation_forward(d->s, p->g, 1, p->n2, 0, (size_t)M * C, m->projector_act);
        lin_forward(m, &m->proj3, p->a3, 0, 0.0f, p->g, M, &p->c3, a);
        cuda_layernorm_forward(d->s, out, 0, p->stats4, p->stats4 + M, p->a3, dev(m, m->proj_ln4_w)->f32,
                               dev(m, m->proj_ln4_b)->f32, M, C, 1e-5f);
    } else {
        cuda_activation_forward(d->s, p->g, 1, p->a1, 0, (size_t)M * C, m->projector_act);
        lin_forward(m, &m->proj3, out, 0, 0.0f, p->g, M, &p->c3, a);
    }
    return out;
}

// dout [M, C] fp32 -> projector gradients (the tower is frozen: no input gradient).
static void projector_backward(LlavaModel *m, const DevProjector *p, const float *dout, int M) {
    LlavaCuda *d = m->cuda;
    int C = m->config.text.hidden_size;
    DevMark mk = dev_arena_mark(&d->work);
    float *d1 = af(d, &d->work, (size_t)M * C);
    uint16_t *b1 = ah(d, &d->work, (size_t)M * C), *b2 = ah(d, &d->work, (size_t)M * C);
    if (d->failed) return;
    if (m->projector == PROJECTOR_YIVL) {
        DevWeight *w4 = dev(m, m->proj_ln4_w), *b4 = dev(m, m->proj_ln4_b);
        cuda_layernorm_backward(d->s, d1, 0, w4->grad, b4->grad, dout, p->a3, p->stats4, p->stats4 + M, w4->f32, M, C);
        cuda_bf16_from_f32(d->s, b1, d1, (size_t)M * C);
        lin_backward(m, &m->proj3, b2, 1, 0.0f, b1, p->g, M, &p->c3);
        cuda_activation_backward(d->s, b2, b2, p->n2, 0, (size_t)M * C, m->projector_act);
        cuda_f32_from_bf16(d->s, d1, b2, (size_t)M * C);
        DevWeight *w2 = dev(m, m->proj_ln2_w), *bb2 = dev(m, m->proj_ln2_b);
        // d1 now holds dn2; LayerNorm 2's backward writes da1 over the same buffer? No: use a fresh one.
        float *da1 = af(d, &d->work, (size_t)M * C);
        if (d->failed) return;
        cuda_layernorm_backward(d->s, da1, 0, w2->grad, bb2->grad, d1, p->a1, p->stats2, p->stats2 + M, w2->f32, M, C);
        cuda_bf16_from_f32(d->s, b1, da1, (size_t)M * C);
    } else {
        cuda_bf16_from_f32(d->s, b1, dout, (size_t)M * C);
        lin_backward(m, &m->proj3, b2, 1, 0.0f, b1, p->g, M, &p->c3);
        cuda_activation_backward(d->s, b1, b2, p->a1, 0, (size_t)M * C, m->projector_act);
    }
    lin_backward(m, &m->proj1, NULL, 0, 0.0f, b1, p->in16, M, &p->c1);
    dev_arena_release(&d->work, mk);
}

// ------------------------------------------------------------ text layers

typedef struct {
    float *x_in, *rstd1, *lse, *x_mid, *rstd2;
    uint16_t *h1, *q, *k, *v, *att, *h2, *gate, *up, *act;
    DevLinCache cq, ck, cv, co, cg, cu, cd;
} DevTextActs;

// x_in [N, C] fp32 -> x_out [N, C] fp32 (written to x_out). Activations in arena a.
static void text_layer_forward(LlavaModel *m, const TextLayer *l, DevTextActs *t, const float *x_in, float *x_out,
                               const int32_t *mask, int B, int L, DevArena *a) {
    LlavaCuda *d = m->cuda;
    const TextConfig *tc = &m->config.text;
    int N = B * L, C = tc->hidden_size, Hq = tc->num_attention_heads, Hkv = tc->num_key_value_heads, D = tc->head_dim;
    int F = tc->intermediate_size;
    float eps = (float)tc->rms_norm_eps;
    t->x_in = (float *)x_in;
    t->rstd1 = af(d, a, N), t->rstd2 = af(d, a, N), t->lse = af(d, a, (size_t)B * Hq * L);
    t->x_mid = af(d, a, (size_t)N * C);
    t->h1 = ah(d, a, (size_t)N * C), t->h2 = ah(d, a, (size_t)N * C);
    t->q = ah(d, a, (size_t)N * Hq * D), t->k = ah(d, a, (size_t)N * Hkv * D), t->v = ah(d, a, (size_t)N * Hkv * D);
    t->att = ah(d, a, (size_t)N * Hq * D);
    t->gate = ah(d, a, (size_t)N * F), t->up = ah(d, a, (size_t)N * F), t->act = ah(d, a, (size_t)N * F);
    if (d->failed) return;
    cuda_rmsnorm_forward(d->s, t->h1, 1, t->rstd1, x_in, dev(m, l->norm1)->f32, N, C, eps);
    lin_forward(m, &l->q, t->q, 1, 0.0f, t->h1, N, &t->cq, a);
    lin_forward(m, &l->k, t->k, 1, 0.0f, t->h1, N, &t->ck, a);
    lin_forward(m, &l->v, t->v, 1, 0.0f, t->h1, N, &t->cv, a);
    cuda_rope(d->s, t->q, B, L, Hq, D, (float)tc->rope_theta, 0);
    cuda_rope(d->s, t->k, B, L, Hkv, D, (float)tc->rope_theta, 0);
    int pa = prof_begin(d, PROF_ATTENTION_FORWARD);
    cuda_attention_forward(d->s, t->att, t->lse, t->q, t->k, t->v, mask, B, L, Hq, Hkv, D, 1, 1.0f / sqrtf((float)D));
    prof_end(d, pa);
    cudaMemcpyAsync(t->x_mid, x_in, (size_t)N * C * sizeof(float), cudaMemcpyDeviceToDevice, d->s);
    lin_forward(m, &l->o, t->x_mid, 0, 1.0f, t->att, N, &t->co, a);
    cuda_rmsnorm_forward(d->s, t->h2, 1, t->rstd2, t->x_mid, dev(m, l->norm2)->f32, N, C, eps);
    lin_forward(m, &l->gate, t->gate, 1, 0.0f, t->h2, N, &t->cg, a);
    lin_forward(m, &l->up, t->up, 1, 0.0f, t->h2, N, &t->cu, a);
    cuda_swiglu_forward(d->s, t->act, t->gate, t->up, (size_t)N * F);
    cudaMemcpyAsync(x_out, t->x_mid, (size_t)N * C * sizeof(float), cudaMemcpyDeviceToDevice, d->s);
    lin_forward(m, &l->down, x_out, 0, 1.0f, t->act, N, &t->cd, a);
}

// dx_out [N, C] fp32 -> dx_in [N, C] fp32 (NULL when not needed); scratch in work.
static void text_layer_backward(LlavaModel *m, const TextLayer *l, const DevTextActs *t, float *dx_in,
                                const float *dx_out, const int32_t *mask, int B, int L) {
    LlavaCuda *d = m->cuda;
    const TextConfig *tc = &m->config.text;
    int N = B * L, C = tc->hidden_size, Hq = tc->num_attention_heads, Hkv = tc->num_key_value_heads, D = tc->head_dim;
    int F = tc->intermediate_size;
    DevMark mk = dev_arena_mark(&d->work);
    uint16_t *dy16 = ah(d, &d->work, (size_t)N * C);
    uint16_t *dact = ah(d, &d->work, (size_t)N * F), *dgate = ah(d, &d->work, (size_t)N * F), *dup = ah(d, &d->work, (size_t)N * F);
    float *dh = af(d, &d->work, (size_t)N * C), *dmid = af(d, &d->work, (size_t)N * C);
    uint16_t *datt = ah(d, &d->work, (size_t)N * Hq * D), *dq = ah(d, &d->work, (size_t)N * Hq * D);
    uint16_t *dk = ah(d, &d->work, (size_t)N * Hkv * D), *dv = ah(d, &d->work, (size_t)N * Hkv * D);
    void *ws = dev_arena_alloc(d, &d->work, cuda_attention_workspace_bytes(B, L, Hq, Hkv, D) + 256);
    if (d->failed) return;
    DevWeight *n1 = dev(m, l->norm1), *n2 = dev(m, l->norm2);
    // MLP
    cuda_bf16_from_f32(d->s, dy16, dx_out, (size_t)N * C);
    lin_backward(m, &l->down, dact, 1, 0.0f, dy16, t->act, N, &t->cd);
    cuda_swiglu_backward(d->s, dgate, dup, dact, t->gate, t->up, (size_t)N * F);
    lin_backward(m, &l->gate, dh, 0, 0.0f, dgate, t->h2, N, &t->cg);
    lin_backward(m, &l->up, dh, 0, 1.0f, dup, t->h2, N, &t->cu);
    cudaMemcpyAsync(dmid, dx_out, (size_t)N * C * sizeof(float), cudaMemcpyDeviceToDevice, d->s);
    cuda_rmsnorm_backward(d->s, dmid, 1, n2->grad, dh, t->x_mid, t->rstd2, n2->f32, N, C);
    // attention
    cuda_bf16_from_f32(d->s, dy16, dmid, (size_t)N * C);
    lin_backward(m, &l->o, datt, 1, 0.0f, dy16, t->att, N, &t->co);
    int pa = prof_begin(d, PROF_ATTENTION_BACKWARD);
    cuda_attention_backward(d->s, dq, dk, dv, datt, t->att, t->lse, t->q, t->k, t->v, mask, B, L, Hq, Hkv, D, 1,
                            1.0f / sqrtf((float)D), ws);
    prof_end(d, pa);
    cuda_rope(d->s, dq, B, L, Hq, D, (float)tc->rope_theta, 1);
    cuda_rope(d->s, dk, B, L, Hkv, D, (float)tc->rope_theta, 1);
    int need_dh1 = dx_in || n1->grad;
    float *dh1 = need_dh1 ? dh : NULL;
    lin_backward(m, &l->q, dh1, 0, 0.0f, dq, t->h1, N, &t->cq);
    lin_backward(m, &l->k, dh1, 0, 1.0f, dk, t->h1, N, &t->ck);
    lin_backward(m, &l->v, dh1, 0, 1.0f, dv, t->h1, N, &t->cv);
    if (need_dh1) {
        if (dx_in) cudaMemcpyAsync(dx_in, dmid, (size_t)N * C * sizeof(float), cudaMemcpyDeviceToDevice, d->s);
        cuda_rmsnorm_backward(d->s, dx_in, 1, n1->grad, dh, t->x_in, t->rstd1, n1->f32, N, C);
    }
    dev_arena_release(&d->work, mk);
}

// ------------------------------------------------------------ the step

typedef enum { CUDA_RUN_TRAIN, CUDA_RUN_LOSS, CUDA_RUN_LOGITS } CudaRunMode;


// The shared step (llava_forward.c's run() on the GPU). Host-side index
// lists are built here and uploaded once.
int llava_cuda_run(LlavaModel *m, const LlavaBatch *b, int mode, float grad_scale, int image_rows, double *loss_out,
                   int *count_out, float *logits_out, Error *err) {
    LlavaCuda *d = m->cuda;
    const ModelConfig *c = &m->config;
    const TextConfig *tc = &c->text;
    int B = b->batch_size, L = b->seq_len, N = B * L, C = tc->hidden_size, V = tc->vocab_size;
    int train = mode == CUDA_RUN_TRAIN;
    int checkpoint = train && m->options.gradient_checkpointing;
    d->failed = 0;
    dev_arena_release(&d->kept, (DevMark){0});
    dev_arena_release(&d->work, (DevMark){0});
    d->kept.peak = d->work.peak = 0;

    // Host bookkeeping: image positions, shifted targets, rows that predict a label.
    int32_t *host_i32 = malloc(sizeof(int32_t) * ((size_t)4 * N + 4));
    uint8_t *is_image = calloc((size_t)N + 1, 1);
    if (!host_i32 || !is_image) {
        free(host_i32);
        free(is_image);
        return error_set(err, "out of memory");
    }
    int32_t *image_index = host_i32, *targets = host_i32 + N, *row_index = host_i32 + 2 * N, *row_targets = host_i32 + 3 * N;
    llava_batch_positions(m, b, image_index, is_image, targets);
    int count = 0;
    for (int i = 0; i < N; i++)
        if (targets[i] != KERNEL_IGNORE_INDEX) {
            row_index[count] = i;
            row_targets[count++] = targets[i];
        }
    int rows = logits_out ? N : count;
    const int32_t *head_targets = logits_out ? targets : row_targets;

    DevArena *K = &d->kept, *W = &d->work;
    DevTextActs *ta = NULL;
    int32_t *d_ids = dev_arena_alloc(d, K, sizeof(int32_t) * (size_t)N);
    int32_t *d_mask = b->attention_mask ? dev_arena_alloc(d, K, sizeof(int32_t) * (size_t)N) : NULL;
    int32_t *d_image_index = dev_arena_alloc(d, K, sizeof(int32_t) * (size_t)(image_rows + 1));
    int32_t *d_row_index = dev_arena_alloc(d, K, sizeof(int32_t) * (size_t)(count + 1));
    int32_t *d_targets = dev_arena_alloc(d, K, sizeof(int32_t) * (size_t)(rows + 1));
    uint8_t *d_is_image = dev_arena_alloc(d, K, (size_t)N + 1);
    if (d->failed) goto fail;
    cuda_upload_async(d->ctx, d_ids, b->input_ids, sizeof(int32_t) * (size_t)N);
    if (d_mask) cuda_upload_async(d->ctx, d_mask, b->attention_mask, sizeof(int32_t) * (size_t)N);
    cuda_upload_async(d->ctx, d_image_index, image_index, sizeof(int32_t) * (size_t)image_rows);
    cuda_upload_async(d->ctx, d_row_index, row_index, sizeof(int32_t) * (size_t)count);
    cuda_upload_async(d->ctx, d_targets, head_targets, sizeof(int32_t) * (size_t)rows);
    cuda_upload_async(d->ctx, d_is_image, is_image, (size_t)N);
    cuda_zero(d->ctx, d->loss_sum, sizeof(double));

    // ---- vision tower and projector
    int projector_keep = train && m->projector_trainable;
    DevProjector proj = {0};
    float *features = NULL;
    if (b->n_images > 0) {
        const VisionConfig *vc = &c->vision;
        size_t npix = (size_t)b->n_images * vc->num_channels * vc->image_size * vc->image_size;
        float *pixels = af(d, W, npix);
        if (d->failed) goto fail;
        cuda_upload_async(d->ctx, pixels, b->pixel_values, npix * sizeof(float));
        // Features and the projector's kept values go below the text's (kept
        // arena when the projector trains, else work, released after the scatter).
        DevArena *pa = projector_keep ? K : W;
        int pv = prof_begin(d, PROF_VISION);
        float *vf = vision_forward(m, pixels, b->n_images, pa);
        if (!vf) goto fail;
        features = projector_forward(m, &proj, vf, image_rows, pa);
        prof_end(d, pv);
        if (!features) goto fail;
    }
    float *x = af(d, K, (size_t)N * C);
    if (d->failed) goto fail;
    cuda_embedding_forward(d->s, x, dev(m, m->embed_tokens)->bf16, d_ids, d_is_image, N, C);
    if (image_rows) cuda_rows_scatter(d->s, x, d_image_index, features, image_rows, C);
    dev_arena_release(W, (DevMark){0});  // pixels and tower scratch (and a frozen projector's values) go

    ta = calloc((size_t)tc->num_hidden_layers + 1, sizeof(DevTextActs));
    if (!ta) {
        error_set(&d->error, "out of memory");
        d->failed = 1;
        goto fail;
    }
    // Each layer's output is allocated before its activations, so that
    // releasing a layer (backward, newest first) also drops its output,
    // which only the next layer (already done) read.
    float *h = x;
    int ptf = prof_begin(d, PROF_TEXT_FORWARD);
    for (int i = 0; i < tc->num_hidden_layers && !d->failed; i++) {
        float *next = af(d, K, (size_t)N * C);
        if (!next) break;
        if (!train || checkpoint) {
            // Activations on scratch: inference drops them, checkpointing
            // recomputes them from the kept input in the backward.
            DevMark w0 = dev_arena_mark(W);
            text_layer_forward(m, &m->text_layers[i], &ta[i], h, next, d_mask, B, L, W);
            dev_arena_release(W, w0);
            ta[i].x_in = h;
        } else {
            text_layer_forward(m, &m->text_layers[i], &ta[i], h, next, d_mask, B, L, K);
        }
        h = next;
    }
    prof_end(d, ptf);
    if (d->failed) goto fail;
    // ---- head
    int ph = prof_begin(d, PROF_HEAD);
    uint16_t *xf = ah(d, W, (size_t)N * C);
    float *rstdf = af(d, K, N);
    uint16_t *head_in = logits_out ? xf : ah(d, W, (size_t)(rows + 1) * C);
    float *logits = af(d, W, (size_t)(rows + 1) * V), *loss_rows = af(d, W, (size_t)rows + 1);
    uint16_t *dlogits = train ? ah(d, W, (size_t)(rows + 1) * V) : NULL;
    if (d->failed) goto fail;
    cuda_rmsnorm_forward(d->s, xf, 1, rstdf, h, dev(m, m->final_norm)->f32, N, C, (float)tc->rms_norm_eps);
    if (!logits_out && rows > 0) cuda_rows_gather(d->s, head_in, xf, d_row_index, rows, C, 2);
    DevLinCache head_cache = {0};
    if (rows > 0) {
        lin_forward(m, &m->lm_head, logits, 0, 0.0f, head_in, rows, &head_cache, W);
        cuda_cross_entropy(d->s, loss_rows, dlogits, logits, d_targets, rows, V,
                           count ? grad_scale / (float)count : 0.0f);
        cuda_sum_accumulate(d->s, d->loss_sum, loss_rows, (size_t)rows);
    }
    prof_end(d, ph);
    if (logits_out && cuda_download(d->ctx, logits_out, logits, sizeof(float) * (size_t)N * V, err) != 0) goto fail_quiet;
    double total = 0;
    if (cuda_download(d->ctx, &total, d->loss_sum, sizeof(double), err) != 0) goto fail_quiet;
    if (loss_out) *loss_out = count ? total / count : 0.0;
    if (count_out) *count_out = count;
    if (train && count > 0) {
        // ---- backward. The head's buffers (work) go once dh is made; dh and
        // dprev then sit at the bottom of work, under each layer's scratch.
        float *dhead = af(d, W, (size_t)rows * C), *dxf = af(d, W, (size_t)N * C);
        if (d->failed) goto fail;
        lin_backward(m, &m->lm_head, dhead, 0, 0.0f, dlogits, head_in, rows, &head_cache);
        cuda_zero(d->ctx, dxf, sizeof(float) * (size_t)N * C);
        cuda_rows_scatter(d->s, dxf, d_row_index, dhead, rows, C);
        float *dh = af(d, K, (size_t)N * C);  // above every layer: freed with the step
        if (d->failed) goto fail;
        DevWeight *fn = dev(m, m->final_norm);
        cuda_rmsnorm_backward(d->s, dh, 0, fn->grad, dxf, h, rstdf, fn->f32, N, C);
        dev_arena_release(W, (DevMark){0});
        float *dprev = af(d, W, (size_t)N * C);
        float *dcur = af(d, W, (size_t)N * C);
        if (d->failed) goto fail;
        cudaMemcpyAsync(dcur, dh, sizeof(float) * (size_t)N * C, cudaMemcpyDeviceToDevice, d->s);
        dh = dcur;
        int need_input_grad = m->embed_trainable || (image_rows && projector_keep);
        int ptb = prof_begin(d, PROF_TEXT_BACKWARD);
        for (int i = tc->num_hidden_layers - 1; i >= 0 && !d->failed; i--) {
            int need = i > 0 || need_input_grad;
            if (checkpoint) {
                DevMark k0 = dev_arena_mark(K);
                float *scratch_out = af(d, K, (size_t)N * C);
                text_layer_forward(m, &m->text_layers[i], &ta[i], ta[i].x_in, scratch_out, d_mask, B, L, K);
                text_layer_backward(m, &m->text_layers[i], &ta[i], need ? dprev : NULL, dh, d_mask, B, L);
                dev_arena_release(K, k0);
            } else {
                text_layer_backward(m, &m->text_layers[i], &ta[i], need ? dprev : NULL, dh, d_mask, B, L);
                // (layer i's kept values stay until the step ends: dh above
                // them pins the kept stack; the work arena holds the scratch)
            }
            float *swap = dh;
            dh = dprev;
            dprev = swap;
        }
        prof_end(d, ptb);
        // dh: gradient of the merged embeddings.
        DevWeight *et = dev(m, m->embed_tokens);
        if (et->grad) cuda_embedding_backward(d->s, et->grad, dh, d_ids, d_is_image, N, C);
        if (image_rows && projector_keep) {
            float *dfeat = af(d, W, (size_t)image_rows * C);
            if (d->failed) goto fail;
            cuda_rows_gather(d->s, dfeat, dh, d_image_index, image_rows, C, 4);
            projector_backward(m, &proj, dfeat, image_rows);
        }
    }
    if (cuda_sync(d->ctx, err) != 0) goto fail_quiet;
    if (d->failed) goto fail;
    free(ta);
    m->stats.activations_peak = d->kept.peak + d->work.peak;
    prof_report(d, train ? "train step" : "forward");
    dev_arena_settle(d, &d->kept);
    dev_arena_settle(d, &d->work);
    m->stats.activations_arena = dev_arena_capacity(&d->kept) + dev_arena_capacity(&d->work);
    free(host_i32);
    free(is_image);
    return 0;
fail:
    if (d->failed) error_set(err, "%s", d->error.message);
    else error_set(err, "cuda: the step failed");
fail_quiet:
    free(ta);
    free(host_i32);
    free(is_image);
    return -1;
}

// ------------------------------------------------------------ optimizer and state

void llava_cuda_zero_grad(LlavaModel *m) {
    LlavaCuda *d = m->cuda;
    for (int i = 0; i < m->n_weights; i++)
        if (d->w[i].grad) cuda_zero(d->ctx, d->w[i].grad, m->weights[i].numel * sizeof(float));
    for (int i = 0; i < m->n_loras; i++) {
        const LoraAdapter *l = &m->loras[i];
        cuda_zero(d->ctx, d->lora[i].dA, (size_t)l->rank * l->in * sizeof(float));
        cuda_zero(d->ctx, d->lora[i].dB, (size_t)l->out * l->rank * sizeof(float));
    }
}

// The device buffers of trainable tensor i (llava_params order).
typedef struct {
    float *value, *grad, *m, *v;
    uint16_t *bf16;  // copy the products read (NULL when the value itself is read)
} DevParam;

static DevParam dev_param(LlavaModel *m, int i) {
    const ParamOwner *o = &m->param_owners[i];
    DevParam p = {0};
    if (o->weight) {
        DevWeight *w = dev(m, o->weight);
        p = (DevParam){w->f32, w->grad, w->m, w->v, w->bf16};
    } else {
        DevLora *l = dev_lora(m, o->lora);
        if (o->is_b) p = (DevParam){l->B, l->dB, l->mB, l->vB, l->B16};
        else p = (DevParam){l->A, l->dA, l->mA, l->vA, l->A16};
    }
    return p;
}

// Elements per chunk of the optimizer's multi-tensor launches: one block
// (256 threads) does 64 Ki elements; a 6B full fine-tune is ~10^5 chunks.
#define OPT_CHUNK ((size_t)1 << 16)

// The device tables of every trainable tensor, cut into chunks (once).
static int build_optimizer_tables(LlavaModel *m, Error *err) {
    LlavaCuda *d = m->cuda;
    int n_chunks = 0;
    for (int i = 0; i < m->n_params; i++) n_chunks += (int)((m->params[i].numel + OPT_CHUNK - 1) / OPT_CHUNK);
    CudaAdamWTensor *tensors = calloc((size_t)m->n_params + 1, sizeof *tensors);
    CudaTensorChunk *chunks = calloc((size_t)n_chunks + 1, sizeof *chunks);
    int rc = -1;
    if (!tensors || !chunks) {
        error_set(err, "out of memory");
        goto done;
    }
    for (int i = 0, k = 0; i < m->n_params; i++) {
        DevParam p = dev_param(m, i);
        size_t n = m->params[i].numel;
        tensors[i] = (CudaAdamWTensor){.p = p.value, .p_bf16 = p.bf16, .g = p.grad, .m = p.m, .v = p.v, .n = n,
                                       .decay = m->params[i].decay};
        for (size_t off = 0; off < n; off += OPT_CHUNK)
            chunks[k++] = (CudaTensorChunk){.tensor = i, .offset = off, .length = n - off < OPT_CHUNK ? n - off : OPT_CHUNK};
    }
    d->opt_tensors = dmalloc(d, sizeof *tensors * ((size_t)m->n_params + 1), "optimizer table", err);
    d->opt_chunks = dmalloc(d, sizeof *chunks * ((size_t)n_chunks + 1), "optimizer table", err);
    if (!d->opt_tensors || !d->opt_chunks) goto done;
    if (cuda_upload(d->ctx, d->opt_tensors, tensors, sizeof *tensors * (size_t)m->n_params, err) != 0 ||
        cuda_upload(d->ctx, d->opt_chunks, chunks, sizeof *chunks * (size_t)n_chunks, err) != 0)
        goto done;
    d->n_opt_chunks = n_chunks;
    rc = 0;
done:
    free(tensors);
    free(chunks);
    return rc;
}

int llava_cuda_optimizer_step(LlavaModel *m, const AdamWScalars *sc, double max_norm, double *grad_norm, Error *err) {
    LlavaCuda *d = m->cuda;
    if (!d->opt_chunks && build_optimizer_tables(m, err) != 0) return -1;
    int po = prof_begin(d, PROF_OPTIMIZER);
    cuda_zero(d->ctx, d->grad_sq, sizeof(double));
    cuda_grad_sum_squares_multi(d->s, d->grad_sq, d->opt_tensors, d->opt_chunks, d->n_opt_chunks);
    cuda_clip_coef(d->s, d->clip, d->clip + 1, d->grad_sq, (float)max_norm);
    CudaAdamWScalars s = {sc->decay_keep, sc->beta1, sc->one_minus_beta1, sc->beta2, sc->one_minus_beta2,
                          sc->step_size, sc->bc2_sqrt, sc->eps};
    cuda_adamw_update_multi(d->s, d->opt_tensors, d->opt_chunks, d->n_opt_chunks, s, max_norm > 0 ? d->clip : NULL);
    prof_end(d, po);
    float norm = 0;
    if (cuda_download(d->ctx, &norm, d->clip + 1, sizeof(float), err) != 0) return -1;
    prof_report(d, "optimizer");
    if (grad_norm) *grad_norm = norm;
    return cuda_sync(d->ctx, err);
}

// Host <-> device copies of the trainable state: what = 1 values, 2 grads,
// 4 moments (into / from the host AdamW arrays exp_avg, exp_avg_sq).
int llava_cuda_pull(LlavaModel *m, int what, float **exp_avg, float **exp_avg_sq, Error *err) {
    LlavaCuda *d = m->cuda;
    ParamStorage st = llava_param_storage(m);
    for (int i = 0; i < m->n_params; i++) {
        if ((what & 2) && m->params[i].grad == NULL && st.alloc(st.ctx, i, 0, 1, err) != 0) return -1;
        DevParam p = dev_param(m, i);
        size_t bytes = m->params[i].numel * sizeof(float);
        if ((what & 1) && m->params[i].value && cuda_download(d->ctx, m->params[i].value, p.value, bytes, err) != 0) return -1;
        if ((what & 2) && m->params[i].grad && cuda_download(d->ctx, m->params[i].grad, p.grad, bytes, err) != 0) return -1;
        if ((what & 4) && exp_avg && (cuda_download(d->ctx, exp_avg[i], p.m, bytes, err) != 0 ||
                                      cuda_download(d->ctx, exp_avg_sq[i], p.v, bytes, err) != 0))
            return -1;
    }
    return 0;
}

int llava_cuda_push(LlavaModel *m, int what, float *const *exp_avg, float *const *exp_avg_sq, Error *err) {
    LlavaCuda *d = m->cuda;
    for (int i = 0; i < m->n_params; i++) {
        DevParam p = dev_param(m, i);
        size_t n = m->params[i].numel, bytes = n * sizeof(float);
        if ((what & 1) && m->params[i].value) {
            if (cuda_upload(d->ctx, p.value, m->params[i].value, bytes, err) != 0) return -1;
            if (p.bf16) cuda_bf16_from_f32(d->s, p.bf16, p.value, n);
        }
        if ((what & 2) && m->params[i].grad && cuda_upload(d->ctx, p.grad, m->params[i].grad, bytes, err) != 0) return -1;
        if ((what & 4) && exp_avg && (cuda_upload(d->ctx, p.m, exp_avg[i], bytes, err) != 0 ||
                                      cuda_upload(d->ctx, p.v, exp_avg_sq[i], bytes, err) != 0))
            return -1;
    }
    return cuda_sync(d->ctx, err);
}

const char *llava_cuda_device_name(const LlavaModel *m) { return cuda_device_name(m->cuda->ctx); }

void llava_cuda_memory(const LlavaModel *m, size_t *weights, size_t *peak) {
    *weights = m->cuda->weights_bytes;
    *peak = cuda_peak_bytes(m->cuda->ctx);
}
