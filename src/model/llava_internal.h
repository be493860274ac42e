// llava_internal.h - the structures shared by the files of src/model that
// implement llava.h. Not for use outside src/model.
#ifndef VLFT_LLAVA_INTERNAL_H
#define VLFT_LLAVA_INTERNAL_H

#include "../base/arena.h"
#include "../base/rng.h"
#include "../io/safetensors.h"
#include "../kernels/kernels.h"
#include "layout.h"
#include "llava.h"

// One tensor of the checkpoint.
typedef struct {
    const LayoutEntry *entry;  // classic name, shape, group
    const TensorInfo *source;  // in the mmap'd checkpoint
    size_t numel;
    const float *data;         // what compute reads: the mmap (zero-copy) or owned
    float *owned;              // fp32 copy (conversion, or trainable master)
    float *grad;               // NULL when frozen
    int trainable;
    // bf16 mode (options.bf16), GEMM weights only (Linear weights,
    // embed_tokens, lm_head, patch embedding): products read them as bf16.
    int compute_bf16;
    const uint16_t *bf16;      // frozen: the mmap (BF16 checkpoint) or owned_bf16, and data is NULL;
                               // trainable: NULL, the fp32 master (data) is rounded as it is read
    uint16_t *owned_bf16;      // frozen F32/F16 tensor converted once
} Weight;

typedef struct {
    char module[160];  // classic module path, e.g. language_model.model.layers.0.self_attn.q_proj
    int in, out, rank;
    float scale;       // alpha / r
    float dropout;
    float *A, *B;      // [rank, in], [out, rank]
    float *dA, *dB;
    char name_A[224], name_B[224];  // PEFT names
    int unused;        // in a vision layer past the selected feature layer: saved, never trained
} LoraAdapter;

typedef struct {
    Weight *w, *b;  // b may be NULL
    LoraAdapter *lora;
    int in, out;
} Linear;

// What a Linear keeps from its forward for the backward (LoRA parts only;
// the input itself is held by the caller).
typedef struct {
    float *u;         // [N, rank]
    float *dropped;   // [N, in] when dropout
    uint8_t *keep;    // [N, in] when dropout
} LinearCache;

// Activation bookkeeping (tape.c). Every buffer of a step comes from one
// arena (src/base/arena.h), planned on the first step of a shape and reused
// after. Buffers kept for the backward are recorded in order, so the
// activations a checkpointed layer recomputes can be released right after its
// backward (tape_mark / tape_release_to); everything else goes at tape_clear.
// Scratch buffers are released by their user as soon as they are done.
typedef struct {
    float *ptr;
    size_t bytes;
    int vision;
} TapeRecord;

typedef struct {
    Arena arena;
    TapeRecord *records;  // kept buffers, oldest first
    int count, capacity;
    size_t kept, kept_vision, live_scratch, peak;  // bytes asked for (the arena adds alignment)
    int failed;  // an allocation failed
} Tape;

// n floats kept for the backward (vision: counts as vision-tower memory).
float *tape_keep(Tape *t, size_t n, int vision);
// n floats of scratch, released with tape_release_scratch(t, p, n).
float *tape_scratch(Tape *t, size_t n);
void tape_release_scratch(Tape *t, float *p, size_t n);
// Bookkeeping for the whole step (index lists, per-layer records): not
// activations, not counted, gone at tape_clear.
void *tape_step_bytes(Tape *t, size_t bytes);
// Kept buffers recorded after a mark are released, newest first, by tape_release_to.
int tape_mark(const Tape *t);
void tape_release_to(Tape *t, int mark);
// Releases everything (the arena keeps its block, regrown to the step's high-water mark).
void tape_clear(Tape *t);
void tape_free(Tape *t);

typedef struct {
    Linear q, k, v, o;
    Weight *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    Linear fc1, fc2;
} VisionLayer;

typedef struct {
    Linear q, k, v, o, gate, up, down;
    Weight *norm1, *norm2;
} TextLayer;

// Where trainable tensor i (llava_params) lives: a Weight's master and
// gradient, or a LoRA adapter's A / B and dA / dB (llava_layers.c).
typedef struct {
    Weight *weight;
    LoraAdapter *lora;
    int is_b;
} ParamOwner;

typedef enum { LLAVA_BEFORE_FORWARD, LLAVA_AFTER_FORWARD, LLAVA_BEFORE_BACKWARD, LLAVA_AFTER_BACKWARD } LlavaHookPoint;

typedef struct LlavaCuda LlavaCuda;  // llava_cuda.c (make CUDA=1)

struct LlavaModel {
    LlavaCuda *cuda;  // non-NULL: the passes run on the GPU
    ModelConfig config;
    LlavaOptions options;
    char model_dir[4096];
    Safetensors weights_file;
    Layout layout;
    ProjectorKind projector;
    Weight *weights;  // layout order
    int n_weights;
    LoraAdapter *loras;
    int n_loras;
    ParamRef *params;
    int n_params;
    char **param_names;  // owned storage of ParamRef names
    // vision
    Weight *class_embedding, *patch_embedding, *position_embedding, *pre_ln_w, *pre_ln_b;
    VisionLayer *vision_layers;
    int vision_layers_run;
    Activation vision_act;
    // projector
    Linear proj1, proj3;             // linear_1, linear_3 (Yi-VL) / linear_2 (LLaVA) in proj3
    Weight *proj_ln2_w, *proj_ln2_b, *proj_ln4_w, *proj_ln4_b;  // Yi-VL LayerNorms
    Activation projector_act;
    // language
    Weight *embed_tokens, *final_norm;
    Linear lm_head;
    TextLayer *text_layers;
    int vision_trainable, projector_trainable, embed_trainable;
    Rng dropout_rng;
    Tape tape;
    LlavaMemoryStats stats;
    // llava_layers.c: the layers' tensors, where each tensor lives, the hooks
    LayerTable layer_table;
    ParamOwner *param_owners;
    LayerHooks hooks;
    int has_hooks, hook_failed;
    Error hook_error;  // what the failing hook said
};

// weight_ops.c: the products and gathers of one weight, in fp32 or (when
// compute_bf16) through the bf16 kernels. b is the bias values (may be NULL);
// the backward adds into w->grad when the weight trains.
void weight_linear_forward(const Weight *w, const float *b, float *y, const float *x, int N, int In, int Out);
void weight_linear_backward(const Weight *w, float *dx, int accumulate_dx, float *db, const float *dy, const float *x,
                            int N, int In, int Out);
void weight_embedding_forward(const Weight *table, float *out, const int32_t *ids, const uint8_t *skip, int N, int C);

// trainable.c: marks weights trainable and creates the LoRA adapters.
int llava_select_trainable(LlavaModel *m, Error *err);
// linear.c
void linear_module_forward(const Linear *l, float *y, const float *x, int N, LinearCache *cache, Tape *tape,
                           int vision, Rng *rng, int training);
void linear_module_backward(const Linear *l, float *dx, int accumulate_dx, const float *dy, const float *x, int N,
                            const LinearCache *cache, Tape *tape);
// llava_layers.c: builds the layer table and the owners (at load, after
// the params); frees them.
int llava_layers_build(LlavaModel *m, Error *err);
void llava_layers_free(LlavaModel *m);
// Calls the installed hook for (group, index) at this point of a pass. On
// failure: -1, the message in m->hook_error, m->tape.failed set so the pass
// stops; once failed, later calls do nothing and return -1.
int llava_hook(LlavaModel *m, LlavaHookPoint point, LlavaLayerGroup group, int index);
// llava_forward.c: input rows of one sequence [L, C], image features merged
// at the image tokens exactly as the training forward merges them.
int llava_embed_inputs(LlavaModel *m, const int32_t *ids, int L, int n_images, const float *pixel_values, float *x,
                       Error *err);

// llava_forward.c: where a batch's image tokens are (image_index [image
// rows], is_image [B*L] 0/1) and the shifted targets (targets [B*L]:
// position t predicts labels[t + 1], -100 where nothing is predicted).
void llava_batch_positions(const LlavaModel *m, const LlavaBatch *b, int32_t *image_index, uint8_t *is_image,
                           int32_t *targets);

// llava_cuda.c (built with CUDA=1 only): the GPU copy of the model and its step.
int llava_cuda_attach(LlavaModel *m, Error *err);
void llava_cuda_detach(LlavaModel *m);
// mode: 0 train, 1 loss, 2 logits (as run() in llava_forward.c).
int llava_cuda_run(LlavaModel *m, const LlavaBatch *b, int mode, float grad_scale, int image_rows, double *loss_out,
                   int *count_out, float *logits_out, Error *err);
void llava_cuda_zero_grad(LlavaModel *m);
int llava_cuda_optimizer_step(LlavaModel *m, const AdamWScalars *sc, double max_norm, double *grad_norm, Error *err);
int llava_cuda_pull(LlavaModel *m, int what, float **exp_avg, float **exp_avg_sq, Error *err);
int llava_cuda_push(LlavaModel *m, int what, float *const *exp_avg, float *const *exp_avg_sq, Error *err);
const char *llava_cuda_device_name(const LlavaModel *m);
void llava_cuda_memory(const LlavaModel *m, size_t *weights, size_t *peak);

#endif
