// trainer.h - the supervised fine-tuning loop of `vlft train`, written
// against an abstract model so any model that can compute a loss and its
// gradients can be trained by it.
//
// What the trainer owns (as transformers' Trainer + LLaMA-Factory do it):
//   data order      the training ids shuffled per epoch exactly as
//                   transformers' sampler does (torch.randperm seeded with
//                   seed + epoch, see data_order.h), cut into micro-batches
//                   of batch_size (the last may be short);
//   accumulation    each micro-batch's gradient is scaled by 1/grad_accum
//                   (also in a short final accumulation: LLaMA-Factory's fix
//                   7203365); the epoch is cut into accumulations exactly as
//                   transformers 4.50 does, quirk included (schedule.h);
//   clipping, schedule, AdamW (see optimizer.h / schedule.h);
//   logging         every logging_steps: trainer_log.jsonl line, log_history
//                   entry, progress line; eval every eval_steps (eval_strategy
//                   steps) or each epoch (epoch) and once at the end;
//   checkpoints     output_dir/checkpoint-N every save_steps and at the last
//                   step, save_total_limit honoured; resume continues to the
//                   bit-identical result of an uninterrupted run;
//   Ctrl-C          SIGINT finishes nothing half-way: the state of the last
//                   completed update is saved as a checkpoint and the run
//                   returns TRAIN_INTERRUPTED;
//   outputs         final weights (save_weights into output_dir),
//                   train_results.json, all_results.json, trainer_state.json,
//                   training_loss.png (+ training_eval_loss.png) when
//                   plot_loss, eval_results.json after the final eval.
//
// How the caller (cmd_train) uses it:
//   TrainerOptions opt;  trainer_options_from_recipe(&opt, &recipe, &err);
//   char resume[4096];   trainer_check_output_dir(&opt, resume, sizeof resume, &err)
//                        -> call BEFORE loading the model so a clobbering
//                           recipe fails at once; resume[0] != 0 means resume;
//   build TrainModel m (below) and the train / eval id lists
//   (trainer_split_ids splits as datasets' train_test_split(val_size, seed);
//   a dataset module that already splits that way can hand its lists over);
//   int rc = trainer_run(&opt, &m, train_ids, n_train, eval_ids, n_eval, &err);
//   rc: TRAIN_DONE, TRAIN_INTERRUPTED (checkpoint saved), or -1 (err set).
//
// Plugging in the LLaVA model (src/model/llava.h) and the SFT dataset, e.g.:
//   params            (ParamRef *)llava_params(model, &n_params)
//   forward_backward  build the right-padded LlavaBatch of the sample ids
//                     (pad id, labels -100 on padding / prompt), then
//                     llava_forward_backward(model, &batch, grad_scale, loss, err)
//   eval_loss         the same batch, llava_forward_loss(...) (the trainer
//                     weights each batch's loss by its sample count, as
//                     transformers' evaluation_loop does)
//   zero_grad         llava_zero_grad
//   save_weights      lora: llava_save_adapter(model, dir, model_name_or_path)
//                     full/freeze: llava_save_full(model, dir, max_shard_bytes)
//   load_weights      NULL is fine (checkpoints carry trainable.safetensors)
//   rng               the Rng the model draws LoRA dropout masks from, so a
//                     resumed run with lora_dropout > 0 is still exact
// and print "vlft train: <err>" / exit 1 on -1, exit 130 on TRAIN_INTERRUPTED.
//
// Files: trainer.c (loop, eval, progress, final outputs), train_log.c
// (log history, trainer_log.jsonl, trainer_state.json, metrics, plots),
// checkpoint.c (checkpoint-N, resume, output_dir rules), trainer_internal.h.
#ifndef VLFT_TRAINER_H
#define VLFT_TRAINER_H

#include <stdio.h>

#include "../base/error.h"
#include "../base/rng.h"
#include "optimizer.h"
#include "params.h"
#include "recipe.h"
#include "schedule.h"

// The model seen by the trainer. Every function returns 0 or -1 with err set.
typedef struct {
    void *ctx;
    // Trainable tensors (fp32 values and grads owned by the model). Only
    // these are updated and kept in the optimizer state.
    ParamRef *params;
    int n_params;
    // Randomness the model draws during training (LoRA dropout), or NULL.
    // The trainer saves and restores its state with every checkpoint so a
    // resumed run draws the same numbers.
    Rng *rng;
    // Builds the right-padded batch of these samples, runs forward and
    // backward, ADDS grad_scale * d(loss)/d(param) into every params[i].grad,
    // and returns the batch's loss (mean over its non-ignored label tokens,
    // NOT multiplied by grad_scale) in *loss.
    int (*forward_backward)(void *ctx, const int *sample_ids, int n, float grad_scale, double *loss, Error *err);
    // Loss of a batch without gradients (same definition). NULL: no eval.
    int (*eval_loss)(void *ctx, const int *sample_ids, int n, double *loss, Error *err);
    // Sets every params[i].grad to 0.
    void (*zero_grad)(void *ctx);
    // Writes what the run produced into dir (LoRA: adapter_model.safetensors
    // + adapter_config.json; full: shards + index + config/tokenizer copies).
    // Called for every checkpoint (into a temporary folder) and at the end.
    int (*save_weights)(void *ctx, const char *dir, Error *err);
    // Loads the trainable values back from a folder save_weights wrote.
    // Optional (NULL): checkpoints also hold the fp32 values of params in
    // trainable.safetensors, which is what resume restores; this is only
    // the fallback for a checkpoint without that file.
    int (*load_weights)(void *ctx, const char *dir, Error *err);
    // Optional (may be NULL): told, at the start of each epoch (or of the
    // rest of one, after a resume), the micro-batches forward_backward will
    // be called with, in order: batch k holds batch_sizes[k] ids starting
    // at ids[sum of the sizes before k]. Lets the model prefetch images.
    int (*plan_epoch)(void *ctx, const int *ids, const int *batch_sizes, int n_batches, Error *err);
    // Optional, for data-parallel training (src/dist/zero.h): the model's
    // layers, hooks it calls around each (the trainer installs ZeRO's),
    // and release / re-creation of the params' buffers. Without them
    // gradients are reduced after the whole backward and ZeRO stage 3 is
    // refused.
    const LayerTable *layers;
    void (*set_layer_hooks)(void *ctx, const LayerHooks *hooks);
    ParamStorage storage;
    // Optional, for a model whose trainable state lives on a GPU: the update
    // runs there (clipping to max_norm first when > 0; *grad_norm = the norm
    // before clipping) with the scalars of adamw_scalars(), and device_sync
    // copies the values (params[].value) and AdamW moments (opt, may be
    // NULL) to the host (to_host = 1: before saving) or back (after a resume).
    int (*device_update)(void *ctx, const AdamWScalars *scalars, double max_norm, double *grad_norm, Error *err);
    int (*device_sync)(void *ctx, int to_host, AdamW *opt, Error *err);
} TrainModel;

enum { EVAL_NO = 0, EVAL_STEPS = 1, EVAL_EPOCH = 2 };
enum { TRAIN_DONE = 0, TRAIN_INTERRUPTED = 1 };

// One optimizer update, for callers that want to watch (tests, benches).
typedef struct {
    int step;          // 1-based global step just completed
    double loss;       // sum over its micro-batches of loss / grad_accum
    double lr;         // learning rate this update used
    double grad_norm;  // global norm before clipping
    double epoch;      // epoch progress after it (as transformers logs)
} TrainUpdate;

typedef struct {
    const char *output_dir;
    int overwrite_output_dir;
    const char *resume_from_checkpoint;  // NULL / "false", "true" (= latest in output_dir), or a folder
    int batch_size;                      // per_device_train_batch_size
    int eval_batch_size;                 // per_device_eval_batch_size
    int grad_accum;
    double learning_rate;
    double num_train_epochs;
    int max_steps;                       // > 0 overrides epochs
    ScheduleKind schedule;
    double warmup_ratio;
    int warmup_steps;
    double adam_beta1, adam_beta2, adam_epsilon, weight_decay, max_grad_norm;
    int seed;
    int logging_steps, save_steps, save_total_limit;  // save_total_limit 0 = keep all
    int eval_strategy;                   // EVAL_NO / EVAL_STEPS / EVAL_EPOCH
    int eval_steps;                      // 0 = logging_steps
    int plot_loss;
    int progress;                        // 1: progress on stderr (a bar on a tty, lines otherwise)
    // Data parallel (src/dist): the communicator of the ranks started by
    // mpirun, or NULL for one process. With N ranks an update consumes
    // grad_accum * N micro-batches of the epoch's order, rank r running the
    // ones whose index is r modulo N (accelerate's sharding), so the run
    // equals one process with grad_accum * N. Only rank 0 writes files and
    // prints progress.
    struct Comm *comm;
    int zero_stage;                      // 0..3 (see src/dist/zero.h)
    // optional observer of every update
    void (*on_update)(void *user, const TrainUpdate *update);
    void *user;
} TrainerOptions;

// Fills the options from a validated recipe (output_dir etc. point into it).
int trainer_options_from_recipe(TrainerOptions *opt, const Recipe *recipe, Error *err);

// LLaMA-Factory's rules for output_dir, checked before any work:
// resume_from_checkpoint: a folder -> that checkpoint; true -> the latest
// complete checkpoint-N in output_dir (error when none). Otherwise a
// non-empty output_dir is refused unless overwrite_output_dir, except that
// one holding a complete checkpoint is resumed from its latest (as
// LLaMA-Factory does). resume_dir gets the checkpoint folder or "".
int trainer_check_output_dir(const TrainerOptions *opt, char *resume_dir, size_t size, Error *err);

// Splits ids 0..n-1 into train and eval as LLaMA-Factory's val_size does
// (< 1: fraction, rounded up; > 1: count) through datasets'
// train_test_split(seed): the same ids in the same order. Arrays are malloc'd.
int trainer_split_ids(int n, double val_size, int seed, int **train_ids, int *n_train, int **eval_ids, int *n_eval,
                      Error *err);

// Runs the whole training. Returns TRAIN_DONE, TRAIN_INTERRUPTED or -1.
int trainer_run(const TrainerOptions *opt, TrainModel *model, const int *train_ids, int n_train, const int *eval_ids,
                int n_eval, Error *err);

// The latest complete checkpoint-N folder in output_dir into dst; 0 when
// found, -1 when there is none.
int trainer_latest_checkpoint(const char *output_dir, char *dst, size_t size);

#endif
