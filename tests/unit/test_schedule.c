// Step arithmetic and learning-rate lambdas of transformers' Trainer, worked
// out by hand from transformers' formulas (see schedule.h).
#include <criterion/criterion.h>
#include <math.h>

#include "../../src/train/schedule.h"

static TrainPlan plan_of(int n, int bs, int ga, double epochs, int max_steps, double ratio, int warmup) {
    TrainPlan plan;
    Error err;
    cr_assert_eq(schedule_plan(&plan, n, bs, ga, epochs, max_steps, ratio, warmup, SCHEDULE_COSINE, "t", &err), 0, "%s",
                 err.message);
    return plan;
}

Test(schedule, steps_from_epochs_floor_updates_per_epoch) {
    // 36 samples / batch 4 = 9 micro-batches; // 2 = 4 counted updates; * 3 epochs = 12
    TrainPlan p = plan_of(36, 4, 2, 3, 0, 0.2, 0);
    cr_assert_eq(p.batches_per_epoch, 9);
    cr_assert_eq(p.updates_per_epoch, 4);
    cr_assert_eq(p.max_steps, 12);
    cr_assert_eq(p.num_epochs, 3);
    cr_assert_eq(p.warmup_steps, 3);  // ceil(0.2 * 12) = ceil(2.4)
    cr_assert_float_eq(p.num_train_samples, 108.0, 1e-12);
}

Test(schedule, short_last_batch_and_fractional_epochs) {
    // 10 samples / batch 3 = 4 batches (last holds 1); // 2 = 2; 2.5 epochs -> ceil(5) = 5 steps, 3 loops
    TrainPlan p = plan_of(10, 3, 2, 2.5, 0, 0.1, 0);
    cr_assert_eq(p.batches_per_epoch, 4);
    cr_assert_eq(p.max_steps, 5);
    cr_assert_eq(p.num_epochs, 3);
    cr_assert_eq(p.warmup_steps, 1);  // ceil(0.5)
}

Test(schedule, accumulation_larger_than_epoch_still_one_update) {
    TrainPlan p = plan_of(3, 4, 8, 3, 0, 0, 0);
    cr_assert_eq(p.batches_per_epoch, 1);
    cr_assert_eq(p.updates_per_epoch, 1);
    cr_assert_eq(p.max_steps, 3);
    cr_assert_eq(p.warmup_steps, 0);
}

Test(schedule, max_steps_overrides_epochs) {
    TrainPlan p = plan_of(36, 4, 2, 3, 10, 0.5, 0);
    cr_assert_eq(p.max_steps, 10);
    cr_assert_eq(p.num_epochs, 3);  // 10 // 4 + (10 % 4 > 0)
    cr_assert_eq(p.warmup_steps, 5);
    cr_assert_float_eq(p.num_train_samples, 80.0, 1e-12);  // max_steps * batch * accumulation
    TrainPlan q = plan_of(36, 4, 2, 3, 8, 0.5, 3);
    cr_assert_eq(q.num_epochs, 2);
    cr_assert_eq(q.warmup_steps, 3);  // warmup_steps wins over the ratio
}

Test(schedule, rejects_empty_data) {
    TrainPlan p;
    Error err;
    cr_assert_eq(schedule_plan(&p, 0, 4, 2, 3, 0, 0, 0, SCHEDULE_LINEAR, "data.json", &err), -1);
    cr_assert(strstr(err.message, "data.json") != NULL);
    ScheduleKind kind;
    cr_assert_eq(schedule_kind_from_name("polynomial", &kind, &err), -1);
    cr_assert_eq(schedule_kind_from_name("constant_with_warmup", &kind, &err), 0);
    cr_assert_eq(kind, SCHEDULE_CONSTANT_WITH_WARMUP);
}

Test(schedule, lambdas) {
    // warmup 4 of 20: k / 4 during warmup, so the first update has lr 0
    cr_assert_float_eq(schedule_lambda(SCHEDULE_COSINE, 0, 4, 20), 0.0, 1e-15);
    cr_assert_float_eq(schedule_lambda(SCHEDULE_COSINE, 3, 4, 20), 0.75, 1e-15);
    cr_assert_float_eq(schedule_lambda(SCHEDULE_COSINE, 4, 4, 20), 1.0, 1e-15);
    cr_assert_float_eq(schedule_lambda(SCHEDULE_COSINE, 12, 4, 20), 0.5, 1e-15);  // half way: cos(pi/2)
    cr_assert_float_eq(schedule_lambda(SCHEDULE_COSINE, 8, 4, 20), 0.5 * (1 + cos(M_PI * 0.25)), 1e-15);
    cr_assert_float_eq(schedule_lambda(SCHEDULE_COSINE, 20, 4, 20), 0.0, 1e-15);
    cr_assert_float_eq(schedule_lambda(SCHEDULE_LINEAR, 2, 4, 20), 0.5, 1e-15);
    cr_assert_float_eq(schedule_lambda(SCHEDULE_LINEAR, 12, 4, 20), 0.5, 1e-15);  // (20 - 12) / 16
    cr_assert_float_eq(schedule_lambda(SCHEDULE_LINEAR, 25, 4, 20), 0.0, 1e-15);  // never negative
    cr_assert_float_eq(schedule_lambda(SCHEDULE_CONSTANT, 0, 4, 20), 1.0, 1e-15);
    cr_assert_float_eq(schedule_lambda(SCHEDULE_CONSTANT_WITH_WARMUP, 1, 4, 20), 0.25, 1e-15);
    cr_assert_float_eq(schedule_lambda(SCHEDULE_CONSTANT_WITH_WARMUP, 19, 4, 20), 1.0, 1e-15);
    // no warmup, one step: max(1, total - warmup) keeps it finite
    cr_assert_float_eq(schedule_lambda(SCHEDULE_LINEAR, 0, 0, 1), 1.0, 1e-15);
    cr_assert_float_eq(schedule_lambda(SCHEDULE_COSINE, 0, 1, 1), 0.0, 1e-15);
}

Test(schedule, micro_batches_run_per_epoch_as_transformers_4_50) {
    // 37 samples, batch 4 -> 10 micro-batches; accumulation 4: chunks 4, 4, then
    // 37 % 4 = 1 -> 9 run, the 10th never
    TrainPlan p = plan_of(37, 4, 4, 1, 0, 0, 0);
    cr_assert_eq(schedule_micro_batches_run(&p), 9);
    // 36 samples, batch 4 -> 9; accumulation 2: 36 % 2 = 0 -> last chunk of 2, all 9 run
    p = plan_of(36, 4, 2, 1, 0, 0, 0);
    cr_assert_eq(schedule_micro_batches_run(&p), 9);
    // batch 1: samples = micro-batches, always all
    p = plan_of(13, 1, 4, 1, 0, 0, 0);
    cr_assert_eq(schedule_micro_batches_run(&p), 13);
    // no accumulation: all
    p = plan_of(37, 4, 1, 1, 0, 0, 0);
    cr_assert_eq(schedule_micro_batches_run(&p), 10);
    // fewer micro-batches than one accumulation: 3 samples, batch 2 -> 2; accumulation 8: 3 % 8 = 3 -> 2
    p = plan_of(3, 2, 8, 1, 0, 0, 0);
    cr_assert_eq(schedule_micro_batches_run(&p), 2);
}
