// schedule.h - how many optimizer updates a run makes and the learning rate
// of each, as transformers' Trainer (v4.49/4.50) computes them.
//
// Step arithmetic (Trainer._inner_training_loop):
//   batches per epoch  = ceil(n_samples / batch_size)        (no drop_last)
//   updates per epoch  = max(batches_per_epoch // grad_accum, 1)
//   max_steps          = max_steps if > 0, else ceil(num_train_epochs * updates per epoch)
//   epochs looped      = ceil(num_train_epochs), or with max_steps
//                        max_steps // upe + (max_steps % upe > 0)
//   warmup steps       = warmup_steps if > 0, else ceil(warmup_ratio * max_steps)
// Inside an epoch an update happens after every grad_accum micro-batches and
// after the epoch's last micro-batch (a partial accumulation still updates);
// training stops as soon as max_steps updates are done.
//
// One quirk of transformers 4.46-4.51 (the March-2025 releases; fixed in
// 4.52 by PR #37923) is kept: the epoch is fetched in chunks of grad_accum
// micro-batches whose last chunk holds n_samples % grad_accum (or
// grad_accum when that is 0) micro-batches, not batches % grad_accum. When
// that is fewer than the micro-batches left, the epoch's trailing
// micro-batches are never run, and the ones run after the last update of
// the epoch add their gradients to the next epoch's first update.
// With batch size 1 (the Yi-VL recipes) both counts agree and nothing is
// skipped. schedule_micro_batches_run() gives how many run per epoch.
//
// Learning rate of update k (0-based) = learning_rate * schedule_lambda(k),
// the lambdas of transformers/optimization.py (LambdaLR).
#ifndef VLFT_SCHEDULE_H
#define VLFT_SCHEDULE_H

#include "../base/error.h"

typedef enum {
    SCHEDULE_LINEAR,
    SCHEDULE_COSINE,
    SCHEDULE_CONSTANT,
    SCHEDULE_CONSTANT_WITH_WARMUP,
} ScheduleKind;

typedef struct {
    int n_samples;
    int batch_size;
    int grad_accum;
    int batches_per_epoch;   // micro-batches in one epoch
    int updates_per_epoch;   // as transformers counts them (floor, at least 1)
    int max_steps;           // optimizer updates of the whole run
    int num_epochs;          // epochs the loop may enter
    int warmup_steps;
    double num_train_samples;  // samples the run "sees", for samples/s (transformers' num_train_samples)
    ScheduleKind kind;
} TrainPlan;

// "linear" | "cosine" | "constant" | "constant_with_warmup" -> kind.
int schedule_kind_from_name(const char *name, ScheduleKind *kind, Error *err);

// Fills plan from the recipe's numbers; errors on an empty dataset or
// nonsense sizes (one line, prefixed with where).
int schedule_plan(TrainPlan *plan, int n_samples, int batch_size, int grad_accum, double num_train_epochs,
                  int max_steps, double warmup_ratio, int warmup_steps, ScheduleKind kind, const char *where,
                  Error *err);

// Micro-batches an epoch actually runs (see the quirk above); updates
// happen after micro-batch b when (b + 1) % grad_accum == 0 or b + 1 ==
// batches_per_epoch.
int schedule_micro_batches_run(const TrainPlan *plan);

// The multiplier of the base learning rate at update `step` (0-based).
double schedule_lambda(ScheduleKind kind, int step, int warmup_steps, int total_steps);

#endif
