// llava.h - the LLaVA model (CLIP vision tower, projector, LLaMA language
// model) as the trainer drives it: load, forward/backward on a batch, the
// trainable parameters, save.
//
// Which tensors train follows LLaMA-Factory (d8a5571) exactly:
//   full:   every weight except the forbidden groups (vision_tower when
//           freeze_vision_tower, multi_modal_projector when
//           freeze_multi_modal_projector, language_model when
//           freeze_language_model / train_mm_proj_only);
//   freeze: weights whose name holds ".<layer>.<module>" for the last (or
//           first, when negative) freeze_trainable_layers layers, minus the
//           forbidden groups;
//   lora:   frozen base; LoRA A/B on every Linear whose module path contains
//           a lora_target name (or, for "all", the leaf names of every Linear
//           outside lm_head, the projector and a frozen vision tower), minus
//           the forbidden groups; additional_target modules train in full.
//   none:   inference only.
#ifndef VLFT_LLAVA_H
#define VLFT_LLAVA_H

#include <stddef.h>
#include <stdint.h>

#include "../base/error.h"
#include "../base/rng.h"
#include "../train/optimizer.h"
#include "../train/params.h"
#include "../train/recipe.h"
#include "config.h"

typedef enum { FINETUNE_NONE, FINETUNE_FULL, FINETUNE_FREEZE, FINETUNE_LORA } FinetuneType;

typedef struct {
    FinetuneType finetuning_type;
    int freeze_vision_tower;           // LLaMA-Factory default 1
    int freeze_multi_modal_projector;  // default 1
    int freeze_language_model;         // default 0
    // freeze
    int freeze_trainable_layers;           // default 2
    char freeze_trainable_modules[512];    // default "all"
    // lora
    int lora_rank;                         // default 8
    double lora_alpha;                     // default 2 * rank
    double lora_dropout;                   // default 0
    char lora_target[16384];               // "all" or comma-separated names (or full module paths)
    char additional_target[512];           // comma-separated, "" = none
    uint64_t seed;                         // LoRA A init and dropout masks
    int threads;                           // 0 = OMP default
    // Activation checkpointing per decoder layer (LLaMA and, when it trains,
    // CLIP): keep each layer's input, recompute its forward before its
    // backward. Default 1, as LLaMA-Factory (disable_gradient_checkpointing: false).
    int gradient_checkpointing;
    int bf16;                              // bf16 products (recipe bf16: true), see llava_load.c
    // Where the passes run: "cpu", "cuda" (the first GPU; needs a vlft built
    // with `make CUDA=1`), or "auto" (cuda when built with it and a GPU is
    // there, else cpu). On cuda the products are bf16 whatever `bf16` says.
    char device[8];
} LlavaOptions;

// LLaMA-Factory's defaults (finetuning_type lora, rank 8, target all, ...).
void llava_options_defaults(LlavaOptions *o);
// Maps a recipe's method keys onto options, as LLaMA-Factory's
// FinetuningArguments do (lora_alpha 0 -> 2 * rank; train_mm_proj_only ->
// projector trainable, language model and vision tower frozen).
int llava_options_from_recipe(const Recipe *r, LlavaOptions *o, Error *err);

// Reads DIR/adapter_config.json (PEFT) into the LoRA fields of o (r,
// lora_alpha, lora_dropout, target_modules, modules_to_save) and sets
// finetuning_type lora, so that llava_load + llava_load_adapter rebuild the
// adapter exactly (resume, chat). Other fields are left as they are.
int llava_options_from_adapter_config(const char *adapter_dir, LlavaOptions *o, Error *err);

typedef struct LlavaModel LlavaModel;

// One micro-batch. input_ids hold image_token_index image_seq_length times
// per image (already expanded); labels are the unshifted HF labels (-100 =
// ignore); pixel_values [n_images, 3, S, S] in the order their tokens appear.
typedef struct {
    int batch_size;  // B
    int seq_len;     // L
    const int32_t *input_ids;       // [B*L]
    const int32_t *labels;          // [B*L]
    const int32_t *attention_mask;  // [B*L], 1 = real token (right padding)
    int n_images;
    const float *pixel_values;      // [n_images*3*S*S]
} LlavaBatch;

// Memory accounting of the last step (bytes).
typedef struct {
    size_t activations_peak;          // activations kept for backward + live scratch (+ a recomputed layer), peak
    size_t activations_kept_vision;   // activations of the vision tower kept for backward (at the forward's end)
    size_t activations_kept_total;    // all activations kept for backward (at the forward's end)
    size_t activations_arena;         // the one block activations live in, planned for the largest step so far
    int activations_arena_grows;      // times that block was planned (grown) so far
    size_t weights_owned;             // copies the model allocated: fp32 masters and converted frozen
                                      // weights (bf16 for the GEMM weights in bf16 mode, else fp32)
    size_t weights_mapped;            // frozen weights used in place from the mmap (F32, or BF16 in bf16 mode)
    size_t grads;                     // gradient buffers
} LlavaMemoryStats;

int llava_load(const char *model_dir, const LlavaOptions *options, LlavaModel **out, Error *err);
void llava_free(LlavaModel *model);
const ModelConfig *llava_config(const LlavaModel *model);

// Trainable tensors (LoRA A/B and fully trained weights); valid until llava_free.
// Names: the checkpoint's own tensor names for full/freeze training (classic
// "language_model.model..." or newer "model.language_model..." as the folder
// has them); PEFT's "base_model.model.<module>.lora_A.weight" / ".lora_B.weight"
// for LoRA and "base_model.model.<classic name>" for additional_target weights.
// value is the fp32 master the forward reads, so optimizer updates take effect
// at the next step. Tensors the forward never reaches (vision layers past
// vision_feature_layer) are never listed.
const ParamRef *llava_params(const LlavaModel *model, int *count);
void llava_zero_grad(LlavaModel *model);

// Forward + backward: *loss = mean cross-entropy over the batch's non-ignored
// shifted labels; gradients of grad_scale * loss are ADDED to the grads.
// A batch without any counted label gives loss 0 and adds nothing (PyTorch
// would give NaN). Threads: the count given to llava_load (options.threads).
int llava_forward_backward(LlavaModel *model, const LlavaBatch *batch, float grad_scale, double *loss, Error *err);
// Loss only (no gradients, no activations kept). *n_tokens = labels counted.
int llava_forward_loss(LlavaModel *model, const LlavaBatch *batch, double *loss, int *n_tokens, Error *err);
// logits [B*L*vocab] (caller's buffer), no gradients.
int llava_logits(LlavaModel *model, const LlavaBatch *batch, float *logits, Error *err);

void llava_memory_stats(const LlavaModel *model, LlavaMemoryStats *stats);

// Every tensor (trained ones updated, frozen ones byte for byte) in the
// source checkpoint's names and dtypes, plus config.json and the other
// non-weight files of the source folder. max_shard_bytes 0 = one file.
int llava_save_full(const LlavaModel *model, const char *out_dir, size_t max_shard_bytes, Error *err);
// adapter_model.safetensors + adapter_config.json as PEFT writes them.
int llava_save_adapter(const LlavaModel *model, const char *out_dir, const char *base_model_path, Error *err);
// Loads adapter_model.safetensors values into the LoRA A/B (and
// additional_target weights) of a model loaded with matching LoRA options.
int llava_load_adapter(LlavaModel *model, const char *adapter_dir, Error *err);

// The generator LoRA dropout masks are drawn from (checkpoints save its state).
Rng *llava_dropout_rng(LlavaModel *model);

// ---- Device (options.device = cuda): weights, trainable tensors, their
// gradients and AdamW moments live on the GPU; the host ParamRef values and
// grads are NOT kept current there, so callers that read or write them go
// through llava_device_pull / llava_device_push.
// 1 when the passes run on a GPU.
int llava_on_device(const LlavaModel *model);
// "cpu", or the GPU's name and memory.
const char *llava_device_name(const LlavaModel *model);
// One AdamW update on the device (clipping to max_norm first when > 0), the
// scalars from adamw_scalars(); *grad_norm = the norm before clipping.
int llava_device_optimizer_step(LlavaModel *model, const AdamWScalars *scalars, double max_norm, double *grad_norm,
                                Error *err);
// what: LLAVA_SYNC_VALUES | LLAVA_SYNC_GRADS | LLAVA_SYNC_MOMENTS (into /
// from opt's exp_avg / exp_avg_sq, per llava_params index; opt may be NULL
// without MOMENTS). pull: device -> host; push: host -> device.
enum { LLAVA_SYNC_VALUES = 1, LLAVA_SYNC_GRADS = 2, LLAVA_SYNC_MOMENTS = 4 };
int llava_device_pull(LlavaModel *model, int what, AdamW *opt, Error *err);
int llava_device_push(LlavaModel *model, int what, const AdamW *opt, Error *err);
// GPU bytes: weights + trainable state, and the peak of everything held.
void llava_device_memory(const LlavaModel *model, size_t *weights, size_t *peak);

// ---- Layers: what ZeRO-3 gathers parameters by and gradient reductions
// overlap the backward with (src/train/params.h, src/dist/zero.h).
// Layers in forward order, with V vision layers run and T text layers:
//   0                   vision embeddings (patch, class, position, pre-LayerNorm)
//   1 .. V              vision layers
//   V + 1               projector
//   V + 2               token embeddings
//   V + 3 .. V + 2 + T  text layers
//   V + 3 + T           head: final norm and lm_head (the token embeddings
//                       again when tied)
// Each lists the trainable tensors (llava_params indices) it reads.
typedef enum {
    LLAVA_VISION_EMBED,
    LLAVA_VISION_LAYER,
    LLAVA_PROJECTOR,
    LLAVA_TEXT_EMBED,
    LLAVA_TEXT_LAYER,
    LLAVA_HEAD,
} LlavaLayerGroup;
int llava_layer_number(const LlavaModel *model, LlavaLayerGroup group, int index);
const LayerTable *llava_layer_table(const LlavaModel *model);
// Installs the hooks every pass calls around each layer (NULL removes them).
void llava_set_layer_hooks(LlavaModel *model, const LayerHooks *hooks);
// Lets the caller release and re-create the trainable tensors' fp32 values
// and gradients (llava_params' value / grad become NULL while released).
// Everything that reads them (a pass outside the hooks, saving, eval) needs
// them resident.
ParamStorage llava_param_storage(LlavaModel *model);

#endif
