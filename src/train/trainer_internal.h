// trainer_internal.h - what the parts of the trainer share: the log
// history, the run's position, the Trainer itself. Not for callers outside
// src/train (they use trainer.h).
//   trainer.c     the loop, evaluation, progress, the final outputs
//   train_log.c   log history, trainer_log.jsonl, trainer_state.json, metrics, plots
//   checkpoint.c  checkpoint-N folders: save, load, rotate; output_dir rules
#ifndef VLFT_TRAINER_INTERNAL_H
#define VLFT_TRAINER_INTERNAL_H

#include <cJSON.h>
#include <stdint.h>

#include "../dist/zero.h"
#include "optimizer.h"
#include "trainer.h"

typedef enum { LOG_TRAIN, LOG_EVAL, LOG_FINAL } LogKind;

// One entry of transformers' state.log_history.
typedef struct {
    LogKind kind;
    int step;
    double epoch;
    double loss, grad_norm, learning_rate;                             // LOG_TRAIN
    int has_grad_norm;  // transformers logs grad_norm only when it clips (max_grad_norm > 0)
    double eval_loss, eval_runtime, eval_samples_ps, eval_steps_ps;    // LOG_EVAL
    double train_loss, train_runtime, train_samples_ps, train_steps_ps;  // LOG_FINAL
} LogEntry;

// Where the run stands; a checkpoint saves the copy taken right after the
// last completed optimizer update.
typedef struct {
    int global_step;
    int epoch;             // epoch of the next micro-batch
    int micro;             // index of the next micro-batch in that epoch
    double epoch_progress;  // transformers' state.epoch
    uint64_t rng_state[4];  // model->rng, when it has one
    double total_loss;      // sum of loss / grad_accum over every micro-batch so far
    double loss_since_log;  // the same since the last logged step
    int last_logged_step;
} Position;

typedef struct {
    const TrainerOptions *opt;
    TrainModel *model;
    TrainPlan plan;
    AdamW adamw;     // full optimizer state (ZeRO stage 0); for stages >= 1 only while loading or saving
    Zero zero;
    Comm *comm;      // NULL: one process
    int rank, world;
    Position now, boundary;
    LogEntry *log;
    int n_log, cap_log;
    char **jsonl;  // lines of trainer_log.jsonl
    int n_jsonl, cap_jsonl;
    double start_time;
    int start_step;  // global step this session started at (for ETA)
    const int *train_ids, *eval_ids;
    int n_train, n_eval;
    int *order;      // the current epoch's permutation of 0..n_train-1
    int *batch_ids;
    int *rounds_of;  // [world] micro-batches each rank ran towards the next update
    int tty;
    int last_saved_step;
} Trainer;

typedef struct {
    const char *key;
    double value;
} Metric;

// --- train_log.c
double train_now_seconds(void);
// Python's round(x, digits) for the values logged here.
double train_round_to(double x, int digits);
// str(timedelta(seconds=int(s))) as LLaMA-Factory writes elapsed times.
void format_timedelta(double seconds, char *dst, size_t size);
int train_log_push(Trainer *t, const LogEntry *entry, Error *err);
// Appends LLaMA-Factory's trainer_log.jsonl line for entry and rewrites the file.
int train_log_line(Trainer *t, const LogEntry *entry, Error *err);
// transformers' TrainerState as dir/trainer_state.json.
int train_write_state(Trainer *t, const char *dir, int training_stopped, Error *err);
// A metrics file (sorted keys, indent 4) as Trainer.save_metrics writes it.
int train_write_metrics(const char *dir, const char *name, Metric *metrics, int n, Error *err);
// training_<key>.png from the log entries of that kind (none: a note, no file).
int train_plot_metric(Trainer *t, LogKind kind, const char *key, Error *err);
// Restores the log history of a checkpoint and the jsonl lines up to its step.
int train_log_load_history(Trainer *t, const char *dir, Error *err);
int train_log_load_jsonl(Trainer *t, int up_to_step, Error *err);
int train_json_int(const cJSON *obj, const char *key, long *out);
int train_json_double(const cJSON *obj, const char *key, double *out);

// --- checkpoint.c
// Saves t->boundary (the state after the last update) as checkpoint-N.
int checkpoint_save(Trainer *t, int training_stopped, Error *err);
// Loads a checkpoint folder into t and the model.
int checkpoint_load(Trainer *t, const char *dir, Error *err);
// overwrite_output_dir: removes the earlier run's checkpoints and log.
int checkpoint_clear_previous_run(const char *output_dir, Error *err);
// Removes temporary folders a killed run left behind.
void checkpoint_remove_stale_temps(const char *output_dir);

#endif
