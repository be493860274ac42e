#include "schedule.h"

#include <math.h>
#include <string.h>

int schedule_kind_from_name(const char *name, ScheduleKind *kind, Error *err) {
    static const struct {
        const char *name;
        ScheduleKind kind;
    } table[] = {
        {"linear", SCHEDULE_LINEAR},
        {"cosine", SCHEDULE_COSINE},
        {"constant", SCHEDULE_CONSTANT},
        {"constant_with_warmup", SCHEDULE_CONSTANT_WITH_WARMUP},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (name && strcmp(name, table[i].name) == 0) {
            *kind = table[i].kind;
            return 0;
        }
    return error_set(err, "lr_scheduler_type '%s' is not one of linear, cosine, constant, constant_with_warmup",
                     name ? name : "");
}

int schedule_plan(TrainPlan *plan, int n_samples, int batch_size, int grad_accum, double num_train_epochs,
                  int max_steps, double warmup_ratio, int warmup_steps, ScheduleKind kind, const char *where,
                  Error *err) {
    memset(plan, 0, sizeof *plan);
    if (n_samples < 1) return error_set(err, "%s: no training samples", where);
    if (batch_size < 1 || grad_accum < 1) return error_set(err, "%s: batch size and gradient accumulation must be at least 1", where);
    if (max_steps <= 0 && !(num_train_epochs > 0)) return error_set(err, "%s: num_train_epochs must be positive", where);
    plan->n_samples = n_samples;
    plan->batch_size = batch_size;
    plan->grad_accum = grad_accum;
    plan->kind = kind;
    plan->batches_per_epoch = (n_samples + batch_size - 1) / batch_size;
    plan->updates_per_epoch = plan->batches_per_epoch / grad_accum;
    if (plan->updates_per_epoch < 1) plan->updates_per_epoch = 1;
    if (max_steps > 0) {
        plan->max_steps = max_steps;
        plan->num_epochs = max_steps / plan->updates_per_epoch + (max_steps % plan->updates_per_epoch > 0);
        plan->num_train_samples = (double)max_steps * batch_size * grad_accum;
    } else {
        double steps = ceil(num_train_epochs * plan->updates_per_epoch);
        if (steps > 1e9) return error_set(err, "%s: num_train_epochs %g gives too many steps", where, num_train_epochs);
        plan->max_steps = (int)steps;
        plan->num_epochs = (int)ceil(num_train_epochs);
        plan->num_train_samples = (double)n_samples * num_train_epochs;
    }
    if (plan->max_steps < 1) plan->max_steps = 1;
    plan->warmup_steps = warmup_steps > 0 ? warmup_steps : (int)ceil(warmup_ratio * plan->max_steps);
    return 0;
}

int schedule_micro_batches_run(const TrainPlan *plan) {
    int ga = plan->grad_accum, batches = plan->batches_per_epoch;
    if (ga == 1) return batches;
    int last_chunk = plan->n_samples % ga;
    if (last_chunk == 0) last_chunk = ga;
    int run = (batches / ga) * ga + last_chunk;
    return run < batches ? run : batches;
}

double schedule_lambda(ScheduleKind kind, int step, int warmup_steps, int total_steps) {
    if (kind == SCHEDULE_CONSTANT) return 1.0;
    if (step < warmup_steps) return (double)step / (double)(warmup_steps > 1 ? warmup_steps : 1);
    double after = (double)(total_steps - warmup_steps > 1 ? total_steps - warmup_steps : 1);
    switch (kind) {
    case SCHEDULE_LINEAR: {
        double v = (double)(total_steps - step) / after;
        return v > 0 ? v : 0;
    }
    case SCHEDULE_COSINE: {
        // num_cycles 0.5: half a cosine from 1 down to 0 over the steps after warmup
        double progress = (double)(step - warmup_steps) / after;
        double v = 0.5 * (1.0 + cos(M_PI * 0.5 * 2.0 * progress));
        return v > 0 ? v : 0;
    }
    default: return 1.0;
    }
}
