// trainer.c - the training loop; see trainer.h for what it owns and why.
#include "trainer.h"

#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../base/fs.h"
#include "data_order.h"
#include "trainer_internal.h"

// Set by the SIGINT handler, read by the loop. A signal handler cannot be
// given a context pointer, so this one flag has to live at file scope.
static volatile sig_atomic_t interrupt_requested;

static void on_sigint(int signo) {
    (void)signo;
    interrupt_requested = 1;
    signal(SIGINT, SIG_DFL);  // a second Ctrl-C stops at once (every file write is atomic)
}

// ---------------------------------------------------------------- options

int trainer_options_from_recipe(TrainerOptions *opt, const Recipe *r, Error *err) {
    memset(opt, 0, sizeof *opt);
    opt->output_dir = r->output_dir;
    opt->overwrite_output_dir = r->overwrite_output_dir;
    opt->resume_from_checkpoint = r->resume_from_checkpoint;
    opt->batch_size = r->per_device_train_batch_size;
    opt->eval_batch_size = r->per_device_eval_batch_size;
    opt->grad_accum = r->gradient_accumulation_steps;
    opt->learning_rate = r->learning_rate;
    opt->num_train_epochs = r->num_train_epochs;
    opt->max_steps = r->max_steps;
    if (schedule_kind_from_name(r->lr_scheduler_type, &opt->schedule, err) != 0) return -1;
    opt->warmup_ratio = r->warmup_ratio;
    opt->warmup_steps = r->warmup_steps;
    opt->adam_beta1 = r->adam_beta1;
    opt->adam_beta2 = r->adam_beta2;
    opt->adam_epsilon = r->adam_epsilon;
    opt->weight_decay = r->weight_decay;
    opt->max_grad_norm = r->max_grad_norm;
    opt->seed = r->seed;
    opt->logging_steps = r->logging_steps;
    opt->save_steps = r->save_steps;
    opt->save_total_limit = r->save_total_limit;
    opt->eval_strategy = EVAL_NO;
    if (r->eval_strategy && strcmp(r->eval_strategy, "steps") == 0) opt->eval_strategy = EVAL_STEPS;
    if (r->eval_strategy && strcmp(r->eval_strategy, "epoch") == 0) opt->eval_strategy = EVAL_EPOCH;
    opt->eval_steps = r->eval_steps;
    opt->plot_loss = r->plot_loss;
    opt->progress = 1;
    if (opt->output_dir == NULL) return error_set(err, "output_dir is required");
    return 0;
}

int trainer_split_ids(int n, double val_size, int seed, int **train_ids, int *n_train, int **eval_ids, int *n_eval,
                      Error *err) {
    *train_ids = *eval_ids = NULL;
    *n_train = *n_eval = 0;
    if (n < 1) return error_set(err, "dataset is empty");
    int n_test = 0;
    if (val_size > 0) n_test = val_size < 1 ? (int)ceil(val_size * n) : (int)val_size;
    if (seed < 0) return error_set(err, "seed must not be negative (got %d)", seed);
    if (n_test >= n)
        return error_set(err, "val_size %g leaves no training samples out of %d", val_size, n);
    int *perm = malloc((size_t)n * sizeof *perm);
    int *train = malloc((size_t)(n - n_test) * sizeof *train);
    int *test = malloc((size_t)(n_test > 0 ? n_test : 1) * sizeof *test);
    if (!perm || !train || !test) {
        free(perm);
        free(train);
        free(test);
        return error_set(err, "out of memory splitting %d samples", n);
    }
    // datasets' train_test_split: numpy.random.default_rng(seed).permutation(n),
    // test = the first n_test, train = the rest
    if (n_test > 0) split_permutation_numpy(perm, n, (uint64_t)seed);
    else
        for (int i = 0; i < n; i++) perm[i] = i;
    memcpy(test, perm, (size_t)n_test * sizeof *test);
    memcpy(train, perm + n_test, (size_t)(n - n_test) * sizeof *train);
    free(perm);
    *train_ids = train;
    *n_train = n - n_test;
    *eval_ids = test;
    *n_eval = n_test;
    return 0;
}

// ---------------------------------------------------------------- data order

// The permutation of epoch e, as transformers' sampler draws it:
// torch.randperm(n) from a generator seeded with seed + e. Any epoch's order
// can be rebuilt on resume without replaying the earlier ones.
static void epoch_order(int *order, int n, int seed, int epoch) {
    torch_randperm(order, n, (uint64_t)((int64_t)seed + epoch));
}

// ---------------------------------------------------------------- progress

static void progress_update(Trainer *t, double loss, double lr, int final) {
    if (!t->opt->progress || t->rank != 0) return;
    double elapsed = train_now_seconds() - t->start_time;
    int done = t->now.global_step - t->start_step;
    double samples = (double)done * t->plan.batch_size * t->plan.grad_accum;
    double eta = done > 0 ? elapsed / done * (t->plan.max_steps - t->now.global_step) : 0;
    char eta_text[64];
    format_timedelta(eta, eta_text, sizeof eta_text);
    if (t->tty) {
        char bar[21];
        int filled = (int)(20.0 * t->now.global_step / t->plan.max_steps);
        for (int i = 0; i < 20; i++) bar[i] = i < filled ? '#' : '.';
        bar[20] = '\0';
        // \033[K clears what a longer previous line left behind
        fprintf(stderr, "\r[%s] %d/%d loss %.4f lr %.3e %.2f samples/s ETA %s\033[K", bar, t->now.global_step,
                t->plan.max_steps, loss, lr, elapsed > 0 ? samples / elapsed : 0.0, eta_text);
        if (final) fputc('\n', stderr);
        fflush(stderr);
    } else if (t->now.global_step % t->opt->logging_steps == 0 || final) {
        fprintf(stderr, "step %d/%d loss %.4f lr %.3e epoch %.2f %.2f samples/s ETA %s\n", t->now.global_step,
                t->plan.max_steps, loss, lr, t->now.epoch_progress, elapsed > 0 ? samples / elapsed : 0.0, eta_text);
    }
}

// Between updates on a terminal: which micro-batch of the accumulation is
// done, so a slow step (a 6B model on CPU) visibly progresses.
static void progress_micro(Trainer *t, int done_in_accumulation) {
    if (!t->opt->progress || !t->tty || t->rank != 0) return;
    fprintf(stderr, "\r%d/%d: micro-batch %d/%d done\033[K", t->now.global_step + 1, t->plan.max_steps,
            done_in_accumulation, t->plan.grad_accum);
    fflush(stderr);
}

// ---------------------------------------------------------------- eval

static int evaluate(Trainer *t, Error *err) {
    TrainModel *m = t->model;
    int bs = t->opt->eval_batch_size > 0 ? t->opt->eval_batch_size : 1;
    double start = train_now_seconds(), weighted = 0;
    int n_batches = 0;
    for (int at = 0; at < t->n_eval; at += bs) {
        int n = t->n_eval - at < bs ? t->n_eval - at : bs;
        double loss;
        if (m->eval_loss(m->ctx, t->eval_ids + at, n, &loss, err) != 0) return -1;
        weighted += loss * n;  // transformers repeats each batch's loss per sample
        n_batches++;
    }
    double runtime = train_now_seconds() - start;
    if (runtime <= 0) runtime = 1e-9;
    LogEntry e = {.kind = LOG_EVAL, .step = t->now.global_step, .epoch = t->now.epoch_progress};
    e.eval_loss = weighted / t->n_eval;
    e.eval_runtime = train_round_to(runtime, 4);
    e.eval_samples_ps = train_round_to(t->n_eval / runtime, 3);
    e.eval_steps_ps = train_round_to(n_batches / runtime, 3);
    if (train_log_push(t, &e, err) != 0) return -1;
    if (t->opt->progress) fprintf(stderr, "%seval_loss %.4f at step %d\n", t->tty ? "\n" : "", e.eval_loss, e.step);
    return 0;
}

// Evaluation runs on rank 0; under ZeRO-3 every rank first gathers the
// full parameters for it. Collective.
static int evaluate_on_rank_0(Trainer *t, Error *err) {
    if (zero_gather_all(&t->zero, err) != 0) return -1;
    int rc = t->rank == 0 ? evaluate(t, err) : 0;
    zero_release_all(&t->zero);
    return rc;
}

// ---------------------------------------------------------------- the loop

// Saves t->boundary as checkpoint-N. Every rank calls it: for ZeRO stages
// >= 1 the optimizer shards (stage 3: and the values) are first gathered
// into one full state on rank 0 (the checkpoint is then the same whatever
// the number of ranks), and rank 0 alone writes. A failure on rank 0 comes back as -1 there; cmd_train then
// ends every rank.
static int save_checkpoint_all_ranks(Trainer *t, int training_stopped, Error *err) {
    const TrainerOptions *o = t->opt;
    int rc = zero_gather_all(&t->zero, err);  // ZeRO-3: the full values, for the weights
    if (rc == 0 && t->zero.stage >= 1) {
        if (t->rank == 0 && adamw_init(&t->adamw, t->model->params, t->model->n_params, o->adam_beta1, o->adam_beta2,
                                       o->adam_epsilon, o->weight_decay, err) != 0)
            rc = -1;
        else
            rc = zero_gather_state(&t->zero, t->rank == 0 ? &t->adamw : NULL, err);
    }
    if (rc == 0 && t->model->device_sync) rc = t->model->device_sync(t->model->ctx, 1, &t->adamw, err);
    if (rc == 0 && t->rank == 0) rc = checkpoint_save(t, training_stopped, err);
    if (t->zero.stage >= 1) adamw_free(&t->adamw);
    zero_release_all(&t->zero);
    t->last_saved_step = t->boundary.global_step;
    return rc;
}

static int one_update(Trainer *t, double update_loss, Error *err, int *stop) {
    const TrainerOptions *o = t->opt;
    TrainModel *m = t->model;
    Position *now = &t->now;
    double grad_norm = 0;
    double lr = o->learning_rate * schedule_lambda(t->plan.kind, now->global_step, t->plan.warmup_steps, t->plan.max_steps);
    if (m->device_update) {
        t->adamw.step++;
        AdamWScalars s = adamw_scalars(o->adam_beta1, o->adam_beta2, o->adam_epsilon, o->weight_decay, t->adamw.step, lr);
        if (m->device_update(m->ctx, &s, o->max_grad_norm, &grad_norm, err) != 0) return -1;
    } else if (zero_step(&t->zero, &t->adamw, o->max_grad_norm, lr, &grad_norm, err) != 0) {
        return -1;
    }
    m->zero_grad(m->ctx);
    now->global_step++;
    // transformers logs the scheduler's learning rate after its step: the next update's
    double next_lr = o->learning_rate * schedule_lambda(t->plan.kind, now->global_step, t->plan.warmup_steps, t->plan.max_steps);
    if (o->on_update) {
        TrainUpdate u = {.step = now->global_step, .loss = update_loss, .lr = lr, .grad_norm = grad_norm,
                         .epoch = now->epoch_progress};
        o->on_update(o->user, &u);
    }
    if (m->rng) memcpy(now->rng_state, m->rng->state, sizeof now->rng_state);
    *stop = now->global_step >= t->plan.max_steps;
    if (now->global_step % o->logging_steps == 0) {
        LogEntry e = {.kind = LOG_TRAIN, .step = now->global_step, .epoch = now->epoch_progress};
        e.loss = train_round_to(now->loss_since_log / (now->global_step - now->last_logged_step), 4);
        e.grad_norm = grad_norm;
        e.has_grad_norm = o->max_grad_norm > 0;
        e.learning_rate = next_lr;
        now->loss_since_log = 0;
        now->last_logged_step = now->global_step;
        if (train_log_push(t, &e, err) != 0 || (t->rank == 0 && train_log_line(t, &e, err) != 0)) return -1;
    }
    int eval_every = o->eval_steps > 0 ? o->eval_steps : o->logging_steps;
    if (o->eval_strategy == EVAL_STEPS && t->n_eval > 0 && m->eval_loss && now->global_step % eval_every == 0) {
        if (evaluate_on_rank_0(t, err) != 0 || (t->rank == 0 && train_log_line(t, &t->log[t->n_log - 1], err) != 0))
            return -1;
    }
    t->boundary = *now;
    progress_update(t, update_loss, next_lr, *stop);
    if (now->global_step % o->save_steps == 0 || *stop) return save_checkpoint_all_ranks(t, *stop, err);
    return 0;
}

// Whether micro-batch b is this rank's last before the update that ends
// its accumulation (ZeRO stages 0-2 reduce the gradients in that one): the
// update after micro-batch e, unless this epoch never reaches e (a tail the
// next epoch's first update takes over, see schedule.h).
static int last_before_update(const Trainer *t, int b, int batches_run) {
    int e = (b / t->plan.grad_accum + 1) * t->plan.grad_accum - 1;
    if (e > t->plan.batches_per_epoch - 1) e = t->plan.batches_per_epoch - 1;
    return e < batches_run && b + t->world > e;
}

// Hands the model the micro-batches [first, batches_run) of this epoch's order.
static int plan_epoch(Trainer *t, int first, int batches_run, Error *err) {
    int batch_size = t->plan.batch_size, n_batches = batches_run - first;
    if (n_batches <= 0) return 0;
    int *ids = malloc(sizeof(int) * (size_t)n_batches * (size_t)batch_size);
    int *sizes = malloc(sizeof(int) * (size_t)n_batches);
    if (ids == NULL || sizes == NULL) {
        free(ids);
        free(sizes);
        return error_set(err, "out of memory planning an epoch");
    }
    int count = 0, planned = 0;
    for (int b = first; b < batches_run; b++) {
        if (b % t->world != t->rank) continue;  // another rank's micro-batch
        int begin = b * batch_size;
        int n = t->n_train - begin < batch_size ? t->n_train - begin : batch_size;
        sizes[planned++] = n;
        for (int i = 0; i < n; i++) ids[count++] = t->train_ids[t->order[begin + i]];
    }
    int rc = planned > 0 ? t->model->plan_epoch(t->model->ctx, ids, sizes, planned, err) : 0;
    free(ids);
    free(sizes);
    return rc;
}

static int train_loop(Trainer *t, int *interrupted, Error *err) {
    const TrainerOptions *o = t->opt;
    TrainModel *m = t->model;
    const TrainPlan *plan = &t->plan;
    int stop = t->now.global_step >= plan->max_steps;
    double update_loss = 0;
    int batches_run = schedule_micro_batches_run(plan);
    for (int epoch = t->now.epoch; epoch < plan->num_epochs && !stop; epoch++) {
        epoch_order(t->order, t->n_train, o->seed, epoch);
        int first = epoch == t->now.epoch ? t->now.micro : 0;
        t->now.epoch = epoch;
        if (m->plan_epoch && plan_epoch(t, first, batches_run, err) != 0) return -1;
        for (int b = first; b < batches_run && !stop; b++) {
            t->rounds_of[b % t->world]++;
            if (b % t->world == t->rank) {  // this rank's micro-batch (all of them with one rank)
                int begin = b * plan->batch_size;
                int n = t->n_train - begin < plan->batch_size ? t->n_train - begin : plan->batch_size;
                for (int i = 0; i < n; i++) t->batch_ids[i] = t->train_ids[t->order[begin + i]];
                double loss;
                // plan->grad_accum counts the micro-batches of all ranks, so
                // the sum over ranks of these gradients is DDP's mean
                if (zero_round_begin(&t->zero, last_before_update(t, b, batches_run), err) != 0 ||
                    m->forward_backward(m->ctx, t->batch_ids, n, 1.0f / (float)plan->grad_accum, &loss, err) != 0 ||
                    zero_round_end(&t->zero, err) != 0)
                    return -1;
                double step_loss = loss / plan->grad_accum;
                if (isnan(step_loss) || isinf(step_loss))  // transformers' logging_nan_inf_filter
                    step_loss = t->now.loss_since_log / (1 + t->now.global_step - t->now.last_logged_step);
                t->now.loss_since_log += step_loss;
                t->now.total_loss += step_loss;
                update_loss += step_loss;
            }
            int sync = (b + 1) % plan->grad_accum == 0 || b + 1 == plan->batches_per_epoch;
            if (sync) {
                // a rank that ran fewer micro-batches of this update takes its
                // part in the others' collectives with empty ones
                int most = 0;
                for (int r = 0; r < t->world; r++) most = t->rounds_of[r] > most ? t->rounds_of[r] : most;
                if (zero_catch_up(&t->zero, most, err) != 0) return -1;
                memset(t->rounds_of, 0, sizeof(int) * (size_t)t->world);
            }
            int stop_now = interrupt_requested;
            if (sync && t->world > 1) {
                // the update's loss is the sum of every rank's part; Ctrl-C
                // (or a signal reaching one rank) stops all at the same update
                double shared[2] = {update_loss, interrupt_requested ? 1.0 : 0.0};
                if (comm_allreduce_sum_f64(t->comm, shared, 2, err) != 0) return -1;
                t->now.loss_since_log += shared[0] - update_loss;
                t->now.total_loss += shared[0] - update_loss;
                update_loss = shared[0];
                stop_now = shared[1] > 0;
            } else if (t->world > 1) {
                stop_now = 0;  // ranks agree on stopping only at an update
            }
            if (sync) {
                t->now.micro = b + 1;
                t->now.epoch_progress = epoch + (double)(b + 1) / plan->batches_per_epoch;
                if (t->now.micro >= batches_run) {  // the next micro-batch starts a new epoch
                    t->now.epoch = epoch + 1;
                    t->now.micro = 0;
                }
                if (one_update(t, update_loss, err, &stop) != 0) return -1;
                update_loss = 0;
            } else {
                progress_micro(t, b % plan->grad_accum + 1);
            }
            if (stop_now) {
                *interrupted = 1;
                return 0;
            }
        }
        if (!stop && o->eval_strategy == EVAL_EPOCH && t->n_eval > 0 && m->eval_loss) {
            // (the position stays at the last update: micro-batches run after it
            // may still be waiting for the next epoch's first update)
            if (evaluate_on_rank_0(t, err) != 0 || (t->rank == 0 && train_log_line(t, &t->log[t->n_log - 1], err) != 0))
                return -1;
        }
    }
    return 0;
}

static void trainer_free(Trainer *t) {
    if (t->model->set_layer_hooks) t->model->set_layer_hooks(t->model->ctx, NULL);
    adamw_free(&t->adamw);
    zero_free(&t->zero);
    free(t->rounds_of);
    free(t->log);
    for (int i = 0; i < t->n_jsonl; i++) free(t->jsonl[i]);
    free(t->jsonl);
    free(t->order);
    free(t->batch_ids);
}

static int finish(Trainer *t, double train_start, Error *err) {
    const TrainerOptions *o = t->opt;
    if (t->rank != 0) return 0;  // rank 0 writes the outputs
    double runtime = train_now_seconds() - train_start;
    if (runtime <= 0) runtime = 1e-9;
    LogEntry final = {.kind = LOG_FINAL, .step = t->now.global_step, .epoch = t->now.epoch_progress};
    final.train_loss = t->now.total_loss / (t->now.global_step > 0 ? t->now.global_step : 0.001);
    final.train_runtime = train_round_to(runtime, 4);
    final.train_samples_ps = train_round_to(t->plan.num_train_samples / runtime, 3);
    final.train_steps_ps = train_round_to(t->plan.max_steps / runtime, 3);
    if (train_log_push(t, &final, err) != 0 || train_log_line(t, &final, err) != 0) return -1;
    if (t->model->save_weights(t->model->ctx, o->output_dir, err) != 0) return -1;
    Metric train[5] = {{"epoch", final.epoch},
                       {"train_loss", final.train_loss},
                       {"train_runtime", final.train_runtime},
                       {"train_samples_per_second", final.train_samples_ps},
                       {"train_steps_per_second", final.train_steps_ps}};
    Metric all[10];
    memcpy(all, train, sizeof train);
    if (train_write_metrics(o->output_dir, "train_results.json", train, 5, err) != 0) return -1;
    if (train_write_metrics(o->output_dir, "all_results.json", all, 5, err) != 0) return -1;
    t->boundary = t->now;
    if (train_write_state(t, o->output_dir, 1, err) != 0) return -1;
    if (o->plot_loss) {
        if (train_plot_metric(t, LOG_TRAIN, "loss", err) != 0) return -1;
        if (train_plot_metric(t, LOG_EVAL, "eval_loss", err) != 0) return -1;
    }
    if (t->n_eval > 0 && t->model->eval_loss) {
        if (evaluate(t, err) != 0) return -1;
        const LogEntry *e = &t->log[t->n_log - 1];
        Metric eval[5] = {{"epoch", e->epoch},
                          {"eval_loss", e->eval_loss},
                          {"eval_runtime", e->eval_runtime},
                          {"eval_samples_per_second", e->eval_samples_ps},
                          {"eval_steps_per_second", e->eval_steps_ps}};
        memcpy(all + 5, eval + 1, 4 * sizeof *eval);  // "epoch" once
        if (train_write_metrics(o->output_dir, "eval_results.json", eval, 5, err) != 0) return -1;
        if (train_write_metrics(o->output_dir, "all_results.json", all, 9, err) != 0) return -1;
    }
    return 0;
}

// This process's peak resident memory (VmHWM) in bytes; 0 where /proc does not say.
static double peak_resident_bytes(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL) return 0;
    char line[256];
    double kb = 0;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0) kb = atof(line + 6);
    fclose(f);
    return kb * 1024;
}

// After the run: each rank's peak resident memory and the largest peak of
// ZeRO's transient buffers (gathered layers, buckets), on rank 0's
// progress. (Rank 0's resident peak includes assembling checkpoints and
// the final weights.) Collective.
static int report_peak_memory(Trainer *t, Error *err) {
    double *peaks = calloc(2 * (size_t)t->world, sizeof(double));
    if (peaks == NULL) return error_set(err, "out of memory");
    ZeroMemory mem;
    zero_memory(&t->zero, &mem);
    peaks[2 * t->rank] = peak_resident_bytes();
    peaks[2 * t->rank + 1] = (double)mem.transient_peak;
    int rc = t->world > 1 ? comm_allreduce_sum_f64(t->comm, peaks, 2 * (size_t)t->world, err) : 0;
    if (rc == 0 && t->opt->progress && t->rank == 0) {
        double transient = 0;
        fprintf(stderr, "peak memory per rank: resident (VmHWM)");
        for (int r = 0; r < t->world; r++) {
            fprintf(stderr, "%s%.0f", r ? ", " : " ", peaks[2 * r]);
            transient = peaks[2 * r + 1] > transient ? peaks[2 * r + 1] : transient;
        }
        fprintf(stderr, " bytes; ZeRO's transient buffers (gathered layers, gradient buckets) at most %.0f bytes\n",
                transient);
    }
    free(peaks);
    return rc;
}

int trainer_run(const TrainerOptions *opt, TrainModel *model, const int *train_ids, int n_train, const int *eval_ids,
                int n_eval, Error *err) {
    char resume_dir[4096];
    if (trainer_check_output_dir(opt, resume_dir, sizeof resume_dir, err) != 0) return -1;
    if (opt->logging_steps < 1 || opt->save_steps < 1)
        return error_set(err, "%s: logging_steps and save_steps must be at least 1", opt->output_dir);
    Trainer t;
    memset(&t, 0, sizeof t);
    t.opt = opt;
    t.model = model;
    t.train_ids = train_ids;
    t.n_train = n_train;
    t.eval_ids = eval_ids;
    t.n_eval = eval_ids ? n_eval : 0;
    t.tty = isatty(STDERR_FILENO);
    t.comm = opt->comm;
    t.rank = t.comm ? comm_rank(t.comm) : 0;
    t.world = t.comm ? comm_size(t.comm) : 1;
    // every rank has read output_dir before rank 0 starts writing into it
    if (t.comm && comm_barrier(t.comm, err) != 0) return -1;
    // one update takes grad_accum micro-batches on each of the world ranks:
    // planned as one process accumulating grad_accum * world
    if (schedule_plan(&t.plan, n_train, opt->batch_size, opt->grad_accum * t.world, opt->num_train_epochs, opt->max_steps,
                      opt->warmup_ratio, opt->warmup_steps, opt->schedule, opt->output_dir, err) != 0)
        return -1;
    for (int i = 0; i < n_train; i++)
        if (train_ids[i] < 0) return error_set(err, "%s: negative sample id %d", opt->output_dir, train_ids[i]);
    t.order = malloc((size_t)n_train * sizeof *t.order);
    t.batch_ids = malloc((size_t)opt->batch_size * sizeof *t.batch_ids);
    t.rounds_of = calloc((size_t)t.world, sizeof *t.rounds_of);
    if (!t.order || !t.batch_ids || !t.rounds_of ||
        adamw_init(&t.adamw, model->params, model->n_params, opt->adam_beta1, opt->adam_beta2, opt->adam_epsilon,
                   opt->weight_decay, err) != 0) {
        trainer_free(&t);
        return error_set(err, "%s: out of memory for the trainer", opt->output_dir);
    }
    int rc = 0;
    if (t.rank == 0) {
        if (make_dirs(opt->output_dir, err) != 0) rc = -1;
        if (rc == 0 && resume_dir[0] == '\0' && opt->overwrite_output_dir)
            rc = checkpoint_clear_previous_run(opt->output_dir, err);
        if (rc == 0) checkpoint_remove_stale_temps(opt->output_dir);
    }
    if (rc == 0 && model->device_update && (t.world > 1 || opt->zero_stage > 0))
        rc = error_set(err, "device cuda: several processes or ZeRO on GPUs are not supported yet (run one process, "
                            "or device: cpu)");
    if (rc == 0 && resume_dir[0] != '\0') {
        rc = checkpoint_load(&t, resume_dir, err);
        if (rc == 0 && model->device_sync) rc = model->device_sync(model->ctx, 0, &t.adamw, err);
        if (rc != 0) error_prefix(err, "resuming");
        else if (opt->progress && t.rank == 0) fprintf(stderr, "resuming from %s (step %d of %d)\n", resume_dir, t.now.global_step, t.plan.max_steps);
    } else if (model->rng) {
        memcpy(t.now.rng_state, model->rng->state, sizeof t.now.rng_state);
        t.boundary = t.now;
    }
    if (rc == 0 && t.world > 1) {
        // every rank starts from rank 0's values (LoRA initialisation included)
        for (int i = 0; i < model->n_params && rc == 0; i++)
            rc = comm_broadcast(t.comm, model->params[i].value, model->params[i].numel * sizeof(float), 0, err);
    }
    if (rc == 0)
        rc = zero_init(&t.zero, t.comm, opt->zero_stage, model->params, model->n_params, &t.adamw, model->layers,
                       model->storage.alloc ? &model->storage : NULL, err);
    // stages >= 1: the full moments were only needed to hand this rank its shard
    if (rc == 0 && t.zero.stage >= 1) adamw_free(&t.adamw);
    // (after zero_init: ZeRO-3 has released the model's gradients, whose pages stay untouched)
    model->zero_grad(model->ctx);
    if (rc != 0) {
        trainer_free(&t);
        return -1;
    }
    if (model->set_layer_hooks) {  // ZeRO works around every layer from now on
        LayerHooks hooks = zero_hooks(&t.zero);
        model->set_layer_hooks(model->ctx, &hooks);
    }
    if (opt->progress && t.rank == 0) {
        // what data parallelism divides and what it does not (docs/distributed.md)
        ZeroMemory mem;
        zero_memory(&t.zero, &mem);
        fprintf(stderr, "memory per rank (%d rank%s, ZeRO stage %d): optimizer moments %zu bytes, fp32 trainable values "
                        "%zu bytes, grads %zu bytes, total %zu bytes (%s)\n",
                t.world, t.world == 1 ? "" : "s", t.zero.stage, mem.moments, mem.values, mem.grads,
                mem.moments + mem.values + mem.grads,
                t.zero.stage == 3 ? "this rank's parts; a layer's full values and grads only while it runs"
                                  : "full values and grads on every rank");
    }
    if (opt->progress && t.rank == 0)
        fprintf(stderr, "training: %d samples, %d micro-batches of %d per epoch, accumulation %d%s, %d steps (%d warmup), %d epoch%s\n",
                n_train, t.plan.batches_per_epoch, opt->batch_size, opt->grad_accum, t.world > 1 ? " on every rank" : "",
                t.plan.max_steps,
                t.plan.warmup_steps, t.plan.num_epochs, t.plan.num_epochs == 1 ? "" : "s");
    struct sigaction action, previous;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_sigint;
    sigemptyset(&action.sa_mask);
    interrupt_requested = 0;
    sigaction(SIGINT, &action, &previous);
    t.start_time = train_now_seconds();
    t.start_step = t.now.global_step;
    int interrupted = 0;
    rc = train_loop(&t, &interrupted, err);
    if (rc == 0 && interrupted) {
        // the state of the last completed update, unless that is saved already
        if (t.last_saved_step != t.boundary.global_step || t.boundary.global_step == 0)
            rc = save_checkpoint_all_ranks(&t, 0, err);
        if (rc == 0) {
            if (t.rank == 0) {
                if (t.tty && opt->progress) fputc('\n', stderr);
                fprintf(stderr, "interrupted: saved %s/checkpoint-%d; set resume_from_checkpoint: true to continue\n",
                        opt->output_dir, t.boundary.global_step);
            }
            rc = TRAIN_INTERRUPTED;
        }
    } else if (rc == 0) {
        rc = zero_gather_all(&t.zero, err);  // ZeRO-3: rank 0 saves (and evaluates) the full values
        if (rc == 0) rc = finish(&t, t.start_time, err);
        if (rc == 0) rc = report_peak_memory(&t, err);
    }
    sigaction(SIGINT, &previous, NULL);
    trainer_free(&t);
    return rc;
}
