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

// The multiplier of the base learning rate at update `step` (0-based).
double schedule_lambda(ScheduleKind kind, int step, int warmup_steps, int total_steps);

#endif
