// trainer.c - the training loop; see trainer.h for what it owns and why.
#include "trainer.h"

#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../base/fs.h"
#include "../io/safetensors.h"
#include "data_order.h"
#include "json_out.h"
#include "optimizer.h"
#include "plot.h"

// Set by the SIGINT handler, read by the loop. A signal handler cannot be
// given a context pointer, so this one flag has to live at file scope.
static volatile sig_atomic_t interrupt_requested;

static void on_sigint(int signo) {
    (void)signo;
    interrupt_requested = 1;
    signal(SIGINT, SIG_DFL);  // a second Ctrl-C stops at once (every file write is atomic)
}

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
    AdamW adamw;
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
    int order_epoch;
    int *batch_ids;
    int tty;
    int last_saved_step;
} Trainer;

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Python's round(x, digits) for the values logged here.
static double round_to(double x, int digits) {
    double scale = pow(10.0, digits);
    return nearbyint(x * scale) / scale;
}

// str(timedelta(seconds=int(s))) as LLaMA-Factory writes elapsed times.
static void format_timedelta(double seconds, char *dst, size_t size) {
    long s = seconds > 0 ? (long)seconds : 0;
    long days = s / 86400;
    s %= 86400;
    if (days > 0)
        snprintf(dst, size, "%ld day%s, %ld:%02ld:%02ld", days, days == 1 ? "" : "s", s / 3600, (s / 60) % 60, s % 60);
    else snprintf(dst, size, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
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

// ---------------------------------------------------------------- folders

static int delete_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int delete_tree(const char *path) {
    if (!dir_exists(path) && !file_exists(path)) return 0;
    return nftw(path, delete_entry, 16, FTW_DEPTH | FTW_PHYS);
}

// Deletes a checkpoint folder so that no reader ever sees half of it: it is
// first renamed to a temporary name (which a later run sweeps away should
// this one be killed while deleting), then removed.
static int discard_checkpoint(const char *output_dir, const char *path) {
    static const char *const prefix = ".tmp-checkpoint-discard";
    char doomed[4300];
    snprintf(doomed, sizeof doomed, "%s/%s.%ld", output_dir, prefix, (long)getpid());
    delete_tree(doomed);
    if (rename(path, doomed) != 0) return -1;
    return delete_tree(doomed);
}

// Step number of a "checkpoint-N" name, or -1.
static long checkpoint_step(const char *name) {
    const char *prefix = "checkpoint-";
    size_t n = strlen(prefix);
    if (strncmp(name, prefix, n) != 0 || name[n] == '\0') return -1;
    char *end;
    long step = strtol(name + n, &end, 10);
    return (*end == '\0' && step >= 0) ? step : -1;
}

static int is_complete_checkpoint(const char *dir) {
    char path[4400];
    snprintf(path, sizeof path, "%s/vlft_state.json", dir);
    return file_exists(path);
}

// Sorted step numbers of the complete checkpoints in dir (malloc'd).
static int list_checkpoints(const char *dir, long **steps_out) {
    *steps_out = NULL;
    DIR *d = opendir(dir);
    if (d == NULL) return 0;
    long *steps = NULL;
    int n = 0, cap = 0;
    struct dirent *entry;
    while ((entry = readdir(d)) != NULL) {
        long step = checkpoint_step(entry->d_name);
        if (step < 0) continue;
        char path[4200];
        snprintf(path, sizeof path, "%s/%s", dir, entry->d_name);
        if (!is_complete_checkpoint(path)) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            long *grown = realloc(steps, (size_t)cap * sizeof *steps);
            if (grown == NULL) break;
            steps = grown;
        }
        steps[n++] = step;
    }
    closedir(d);
    for (int i = 1; i < n; i++)  // insertion sort: a handful of entries
        for (int j = i; j > 0 && steps[j - 1] > steps[j]; j--) {
            long t = steps[j];
            steps[j] = steps[j - 1];
            steps[j - 1] = t;
        }
    *steps_out = steps;
    return n;
}

int trainer_latest_checkpoint(const char *output_dir, char *dst, size_t size) {
    long *steps;
    int n = list_checkpoints(output_dir, &steps);
    int rc = -1;
    if (n > 0) {
        snprintf(dst, size, "%s/checkpoint-%ld", output_dir, steps[n - 1]);
        rc = 0;
    }
    free(steps);
    return rc;
}

static int dir_is_empty(const char *dir) {
    DIR *d = opendir(dir);
    if (d == NULL) return 1;
    struct dirent *entry;
    int empty = 1;
    while ((entry = readdir(d)) != NULL)
        if (strcmp(entry->d_name, ".") != 0 && strcmp(entry->d_name, "..") != 0) {
            empty = 0;
            break;
        }
    closedir(d);
    return empty;
}

static int is_false(const char *s) { return s == NULL || strcmp(s, "false") == 0 || strcmp(s, "") == 0; }

int trainer_check_output_dir(const TrainerOptions *opt, char *resume_dir, size_t size, Error *err) {
    resume_dir[0] = '\0';
    const char *out = opt->output_dir;
    if (out == NULL || out[0] == '\0') return error_set(err, "output_dir is required");
    if (file_exists(out)) return error_set(err, "%s: output_dir is a file, not a folder", out);
    const char *resume = opt->resume_from_checkpoint;
    if (!is_false(resume)) {
        if (strcmp(resume, "true") == 0) {
            if (trainer_latest_checkpoint(out, resume_dir, size) != 0)
                return error_set(err, "%s: resume_from_checkpoint is true but the folder holds no complete checkpoint-N", out);
            return 0;
        }
        if (!dir_exists(resume)) return error_set(err, "%s: resume_from_checkpoint folder does not exist", resume);
        if (!is_complete_checkpoint(resume))
            return error_set(err, "%s: not a complete vlft checkpoint (no vlft_state.json)", resume);
        if (snprintf(resume_dir, size, "%s", resume) >= (int)size) return error_set(err, "%s: path too long", resume);
        return 0;
    }
    if (!dir_exists(out) || dir_is_empty(out) || opt->overwrite_output_dir) return 0;
    // LLaMA-Factory resumes on its own from the last checkpoint of a
    // non-empty output_dir, and refuses one without a checkpoint
    if (trainer_latest_checkpoint(out, resume_dir, size) == 0) return 0;
    return error_set(err, "%s: output_dir exists and is not empty; set overwrite_output_dir: true, resume_from_checkpoint, "
                          "or choose another folder",
                     out);
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

// ---------------------------------------------------------------- logs

static int push_log(Trainer *t, const LogEntry *entry, Error *err) {
    if (t->n_log == t->cap_log) {
        int cap = t->cap_log ? t->cap_log * 2 : 64;
        LogEntry *grown = realloc(t->log, (size_t)cap * sizeof *grown);
        if (grown == NULL) return error_set(err, "out of memory for the log history");
        t->log = grown;
        t->cap_log = cap;
    }
    t->log[t->n_log++] = *entry;
    return 0;
}

static int push_jsonl(Trainer *t, char *line, Error *err) {
    if (line == NULL) return error_set(err, "out of memory for the trainer log");
    if (t->n_jsonl == t->cap_jsonl) {
        int cap = t->cap_jsonl ? t->cap_jsonl * 2 : 64;
        char **grown = realloc(t->jsonl, (size_t)cap * sizeof *grown);
        if (grown == NULL) {
            free(line);
            return error_set(err, "out of memory for the trainer log");
        }
        t->jsonl = grown;
        t->cap_jsonl = cap;
    }
    t->jsonl[t->n_jsonl++] = line;
    return 0;
}

// Rewrites trainer_log.jsonl whole (it is small) so a kill never leaves half a line.
static int write_jsonl(Trainer *t, Error *err) {
    size_t total = 0;
    for (int i = 0; i < t->n_jsonl; i++) total += strlen(t->jsonl[i]) + 1;
    char *text = malloc(total + 1);
    if (text == NULL) return error_set(err, "out of memory for the trainer log");
    size_t at = 0;
    for (int i = 0; i < t->n_jsonl; i++) {
        size_t n = strlen(t->jsonl[i]);
        memcpy(text + at, t->jsonl[i], n);
        at += n;
        text[at++] = '\n';
    }
    char path[4200];
    int rc = path_join(path, sizeof path, t->opt->output_dir, "trainer_log.jsonl", err);
    if (rc == 0) rc = write_file_atomic(path, text, at, err);
    free(text);
    return rc;
}

// LLaMA-Factory's LogCallback.on_log line for the entry just logged.
static int log_line(Trainer *t, const LogEntry *entry, Error *err) {
    double elapsed = now_seconds() - t->start_time;
    int done = entry->step - t->start_step;
    double per_step = done > 0 ? elapsed / done : 0;
    char elapsed_text[64], remaining_text[64];
    format_timedelta(elapsed, elapsed_text, sizeof elapsed_text);
    format_timedelta((t->plan.max_steps - entry->step) * per_step, remaining_text, sizeof remaining_text);
    JsonOut j;
    json_init(&j, 0);
    json_begin_object(&j);
    json_key(&j, "current_steps");
    json_int(&j, entry->step);
    json_key(&j, "total_steps");
    json_int(&j, t->plan.max_steps);
    if (entry->kind == LOG_TRAIN) {
        json_key(&j, "loss");
        json_double(&j, entry->loss);
    }
    if (entry->kind == LOG_EVAL) {
        json_key(&j, "eval_loss");
        json_double(&j, entry->eval_loss);
    }
    if (entry->kind == LOG_TRAIN) {
        json_key(&j, "lr");
        json_double(&j, entry->learning_rate);
    }
    json_key(&j, "epoch");
    json_double(&j, entry->epoch);
    json_key(&j, "percentage");
    json_double(&j, t->plan.max_steps ? round_to(100.0 * entry->step / t->plan.max_steps, 2) : 100.0);
    json_key(&j, "elapsed_time");
    json_string(&j, elapsed_text);
    json_key(&j, "remaining_time");
    json_string(&j, remaining_text);
    json_end_object(&j);
    if (j.failed) {
        json_free(&j);
        return error_set(err, "out of memory for the trainer log");
    }
    char *line = j.text;  // ownership moves to the line list
    if (push_jsonl(t, line, err) != 0) return -1;
    return write_jsonl(t, err);
}

static void write_log_entry(JsonOut *j, const LogEntry *e) {
    json_begin_object(j);  // keys sorted, as json.dumps(sort_keys=True)
    json_key(j, "epoch");
    json_double(j, e->epoch);
    if (e->kind == LOG_TRAIN) {
        if (e->has_grad_norm) {
            json_key(j, "grad_norm");
            json_double(j, e->grad_norm);
        }
        json_key(j, "learning_rate");
        json_double(j, e->learning_rate);
        json_key(j, "loss");
        json_double(j, e->loss);
        json_key(j, "step");
        json_int(j, e->step);
    } else if (e->kind == LOG_EVAL) {
        json_key(j, "eval_loss");
        json_double(j, e->eval_loss);
        json_key(j, "eval_runtime");
        json_double(j, e->eval_runtime);
        json_key(j, "eval_samples_per_second");
        json_double(j, e->eval_samples_ps);
        json_key(j, "eval_steps_per_second");
        json_double(j, e->eval_steps_ps);
        json_key(j, "step");
        json_int(j, e->step);
    } else {
        json_key(j, "step");
        json_int(j, e->step);
        json_key(j, "total_flos");
        json_double(j, 0.0);
        json_key(j, "train_loss");
        json_double(j, e->train_loss);
        json_key(j, "train_runtime");
        json_double(j, e->train_runtime);
        json_key(j, "train_samples_per_second");
        json_double(j, e->train_samples_ps);
        json_key(j, "train_steps_per_second");
        json_double(j, e->train_steps_ps);
    }
    json_end_object(j);
}

// transformers' TrainerState as trainer_state.json (indent 2, sorted keys).
static int write_trainer_state(Trainer *t, const char *dir, int training_stopped, Error *err) {
    const TrainerOptions *o = t->opt;
    JsonOut j;
    json_init(&j, 2);
    json_begin_object(&j);
    json_key(&j, "best_metric");
    json_null(&j);
    json_key(&j, "best_model_checkpoint");
    json_null(&j);
    json_key(&j, "epoch");
    json_double(&j, t->boundary.epoch_progress);
    json_key(&j, "eval_steps");  // TrainingArguments fills it from logging_steps only for eval_strategy steps
    json_int(&j, o->eval_steps > 0 ? o->eval_steps : o->eval_strategy == EVAL_STEPS ? o->logging_steps : 500);
    json_key(&j, "global_step");
    json_int(&j, t->boundary.global_step);
    json_key(&j, "is_hyper_param_search");
    json_bool(&j, 0);
    json_key(&j, "is_local_process_zero");
    json_bool(&j, 1);
    json_key(&j, "is_world_process_zero");
    json_bool(&j, 1);
    json_key(&j, "log_history");
    json_begin_array(&j);
    for (int i = 0; i < t->n_log; i++) write_log_entry(&j, &t->log[i]);
    json_end_array(&j);
    json_key(&j, "logging_steps");
    json_int(&j, o->logging_steps);
    json_key(&j, "max_steps");
    json_int(&j, t->plan.max_steps);
    json_key(&j, "num_input_tokens_seen");
    json_int(&j, 0);
    json_key(&j, "num_train_epochs");
    json_int(&j, t->plan.num_epochs);
    json_key(&j, "save_steps");
    json_int(&j, o->save_steps);
    json_key(&j, "stateful_callbacks");
    json_begin_object(&j);
    json_key(&j, "TrainerControl");
    json_begin_object(&j);
    json_key(&j, "args");
    json_begin_object(&j);
    json_key(&j, "should_epoch_stop");
    json_bool(&j, 0);
    json_key(&j, "should_evaluate");
    json_bool(&j, 0);
    json_key(&j, "should_log");
    json_bool(&j, 0);
    json_key(&j, "should_save");
    json_bool(&j, 1);
    json_key(&j, "should_training_stop");
    json_bool(&j, training_stopped);
    json_end_object(&j);
    json_key(&j, "attributes");
    json_begin_object(&j);
    json_end_object(&j);
    json_end_object(&j);
    json_end_object(&j);
    json_key(&j, "total_flos");
    json_int(&j, 0);
    json_key(&j, "train_batch_size");
    json_int(&j, o->batch_size);
    json_key(&j, "trial_name");
    json_null(&j);
    json_key(&j, "trial_params");
    json_null(&j);
    json_end_object(&j);
    if (j.failed) {
        json_free(&j);
        return error_set(err, "out of memory writing trainer_state.json");
    }
    char path[4200];
    int rc = path_join(path, sizeof path, dir, "trainer_state.json", err);
    if (rc == 0) {
        size_t n = j.length;
        j.text[n] = '\n';  // json_out keeps one spare byte for the NUL
        rc = write_file_atomic(path, j.text, n + 1, err);
    }
    json_free(&j);
    return rc;
}

// ---------------------------------------------------------------- checkpoints

static int write_position(const Trainer *t, const char *path, Error *err) {
    const Position *p = &t->boundary;
    JsonOut j;
    json_init(&j, 2);
    json_begin_object(&j);
    json_key(&j, "format");
    json_string(&j, "vlft-trainer-state");
    json_key(&j, "version");
    json_int(&j, 1);
    json_key(&j, "global_step");
    json_int(&j, p->global_step);
    json_key(&j, "epoch");
    json_int(&j, p->epoch);
    json_key(&j, "micro_batch");
    json_int(&j, p->micro);
    json_key(&j, "epoch_progress");
    json_double(&j, p->epoch_progress);
    json_key(&j, "total_loss");
    json_double(&j, p->total_loss);
    json_key(&j, "loss_since_log");
    json_double(&j, p->loss_since_log);
    json_key(&j, "last_logged_step");
    json_int(&j, p->last_logged_step);
    json_key(&j, "rng_state");
    json_begin_array(&j);
    for (int i = 0; i < 4; i++) {
        char text[32];
        snprintf(text, sizeof text, "%llu", (unsigned long long)p->rng_state[i]);
        json_string(&j, text);
    }
    json_end_array(&j);
    json_key(&j, "scheduler_last_epoch");  // LambdaLR's counter = updates done
    json_int(&j, p->global_step);
    // what the data order and step count depend on; resume checks them
    json_key(&j, "seed");
    json_int(&j, t->opt->seed);
    json_key(&j, "n_train");
    json_int(&j, t->n_train);
    json_key(&j, "batch_size");
    json_int(&j, t->plan.batch_size);
    json_key(&j, "grad_accum");
    json_int(&j, t->plan.grad_accum);
    json_key(&j, "max_steps");
    json_int(&j, t->plan.max_steps);
    json_end_object(&j);
    if (j.failed) {
        json_free(&j);
        return error_set(err, "%s: out of memory", path);
    }
    int rc = write_file_atomic(path, j.text, j.length, err);
    json_free(&j);
    return rc;
}

static void fsync_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (d) {
        fsync(dirfd(d));
        closedir(d);
    }
}

static int rotate_checkpoints(Trainer *t, Error *err) {
    if (t->opt->save_total_limit <= 0) return 0;
    long *steps;
    int n = list_checkpoints(t->opt->output_dir, &steps);
    for (int i = 0; i + t->opt->save_total_limit < n; i++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/checkpoint-%ld", t->opt->output_dir, steps[i]);
        if (discard_checkpoint(t->opt->output_dir, path) != 0) {
            free(steps);
            return error_set(err, "%s: cannot delete old checkpoint: %s", path, strerror(errno));
        }
    }
    free(steps);
    return 0;
}

// The fp32 master values of every trainable tensor: what resume restores,
// bit for bit, whatever dtype save_weights writes for the user (bf16 shards).
static int save_trainable(const TrainModel *m, const char *path, Error *err) {
    TensorRef *refs = calloc((size_t)(m->n_params > 0 ? m->n_params : 1), sizeof *refs);
    if (refs == NULL) return error_set(err, "%s: out of memory", path);
    for (int i = 0; i < m->n_params; i++) {
        refs[i].name = m->params[i].name;
        refs[i].dtype = DTYPE_F32;
        refs[i].ndim = 1;
        refs[i].shape[0] = (int64_t)m->params[i].numel;
        refs[i].data = m->params[i].value;
    }
    int rc = safetensors_write(path, refs, m->n_params, NULL, err);
    free(refs);
    return rc;
}

static int load_trainable(TrainModel *m, const char *path, Error *err) {
    Safetensors st;
    if (safetensors_open_file(&st, path, err) != 0) return -1;
    int rc = 0;
    if (st.n_tensors != m->n_params)
        rc = error_set(err, "%s: holds %d tensors, the model trains %d", path, st.n_tensors, m->n_params);
    for (int i = 0; i < m->n_params && rc == 0; i++) {
        const TensorInfo *t = safetensors_get(&st, m->params[i].name);
        if (t == NULL || t->dtype != DTYPE_F32 || t->numel != m->params[i].numel)
            rc = error_set(err, "%s: no F32 tensor %s of %zu elements", path, m->params[i].name, m->params[i].numel);
        else memcpy(m->params[i].value, t->data, t->nbytes);
    }
    safetensors_close(&st);
    return rc;
}

// Saves the state after the last completed update as checkpoint-N: written
// into a hidden temporary folder, then renamed into place.
static int save_checkpoint(Trainer *t, int training_stopped, Error *err) {
    const char *out = t->opt->output_dir;
    int step = t->boundary.global_step;
    char final_dir[4200], temp_dir[4200], path[4300];
    snprintf(final_dir, sizeof final_dir, "%s/checkpoint-%d", out, step);
    snprintf(temp_dir, sizeof temp_dir, "%s/.tmp-checkpoint-%d.%ld", out, step, (long)getpid());
    delete_tree(temp_dir);
    if (make_dirs(temp_dir, err) != 0) return -1;
    if (t->model->save_weights(t->model->ctx, temp_dir, err) != 0) goto fail;
    snprintf(path, sizeof path, "%s/trainable.safetensors", temp_dir);
    if (save_trainable(t->model, path, err) != 0) goto fail;
    snprintf(path, sizeof path, "%s/optimizer.safetensors", temp_dir);
    if (adamw_save(&t->adamw, t->model->params, t->model->n_params, path, err) != 0) goto fail;
    if (write_trainer_state(t, temp_dir, training_stopped, err) != 0) goto fail;
    snprintf(path, sizeof path, "%s/vlft_state.json", temp_dir);
    if (write_position(t, path, err) != 0) goto fail;  // last: its presence marks a complete checkpoint
    fsync_dir(temp_dir);
    if (dir_exists(final_dir) && discard_checkpoint(out, final_dir) != 0) {
        error_set(err, "%s: cannot replace the earlier checkpoint: %s", final_dir, strerror(errno));
        goto fail;
    }
    if (rename(temp_dir, final_dir) != 0) {
        error_set(err, "%s: cannot rename checkpoint into place: %s", final_dir, strerror(errno));
        goto fail;
    }
    fsync_dir(out);
    t->last_saved_step = step;
    return rotate_checkpoints(t, err);
fail:
    delete_tree(temp_dir);
    return -1;
}

static int json_get_int(const cJSON *obj, const char *key, long *out) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsNumber(item)) return -1;
    *out = (long)item->valuedouble;
    return 0;
}

static int json_get_double(const cJSON *obj, const char *key, double *out) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsNumber(item)) return -1;
    *out = item->valuedouble;
    return 0;
}

// The log history saved in a checkpoint's trainer_state.json.
static int load_log_history(Trainer *t, const char *dir, Error *err) {
    char path[4200];
    snprintf(path, sizeof path, "%s/trainer_state.json", dir);
    char *text;
    if (read_file(path, (size_t)1 << 30, &text, NULL, err) != 0) return -1;
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *history = root ? cJSON_GetObjectItemCaseSensitive(root, "log_history") : NULL;
    if (!cJSON_IsArray(history)) {
        cJSON_Delete(root);
        return error_set(err, "%s: not a trainer_state.json (no log_history)", path);
    }
    const cJSON *item;
    cJSON_ArrayForEach(item, history) {
        LogEntry e = {0};
        long step = 0;
        json_get_int(item, "step", &step);
        e.step = (int)step;
        json_get_double(item, "epoch", &e.epoch);
        if (json_get_double(item, "loss", &e.loss) == 0) {
            e.kind = LOG_TRAIN;
            e.has_grad_norm = json_get_double(item, "grad_norm", &e.grad_norm) == 0;
            json_get_double(item, "learning_rate", &e.learning_rate);
        } else if (json_get_double(item, "eval_loss", &e.eval_loss) == 0) {
            e.kind = LOG_EVAL;
            json_get_double(item, "eval_runtime", &e.eval_runtime);
            json_get_double(item, "eval_samples_per_second", &e.eval_samples_ps);
            json_get_double(item, "eval_steps_per_second", &e.eval_steps_ps);
        } else continue;
        if (push_log(t, &e, err) != 0) {
            cJSON_Delete(root);
            return -1;
        }
    }
    cJSON_Delete(root);
    return 0;
}

// trainer_log.jsonl lines up to the checkpoint's step (later ones belong to
// the run that was stopped and will be written again).
static int load_jsonl(Trainer *t, int up_to_step, Error *err) {
    char path[4200];
    if (path_join(path, sizeof path, t->opt->output_dir, "trainer_log.jsonl", err) != 0) return -1;
    if (!file_exists(path)) return 0;
    char *text;
    if (read_file(path, (size_t)1 << 30, &text, NULL, err) != 0) return -1;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cJSON *obj = cJSON_Parse(line);
        long step = -1;
        int keep = obj && json_get_int(obj, "current_steps", &step) == 0 && step <= up_to_step &&
                   (cJSON_GetObjectItemCaseSensitive(obj, "loss") || cJSON_GetObjectItemCaseSensitive(obj, "eval_loss"));
        cJSON_Delete(obj);
        if (keep && push_jsonl(t, strdup(line), err) != 0) {
            free(text);
            return -1;
        }
    }
    free(text);
    return 0;
}

static int load_checkpoint(Trainer *t, const char *dir, Error *err) {
    char path[4200];
    snprintf(path, sizeof path, "%s/vlft_state.json", dir);
    char *text;
    if (read_file(path, 1 << 20, &text, NULL, err) != 0) return -1;
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (root == NULL) return error_set(err, "%s: not valid JSON", path);
    Position p = {0};
    long v[9];
    const char *keys[9] = {"global_step", "epoch", "micro_batch", "last_logged_step", "seed",
                           "n_train", "batch_size", "grad_accum", "max_steps"};
    for (int i = 0; i < 9; i++)
        if (json_get_int(root, keys[i], &v[i]) != 0) {
            cJSON_Delete(root);
            return error_set(err, "%s: missing %s", path, keys[i]);
        }
    p.global_step = (int)v[0];
    p.epoch = (int)v[1];
    p.micro = (int)v[2];
    p.last_logged_step = (int)v[3];
    const cJSON *rng = cJSON_GetObjectItemCaseSensitive(root, "rng_state");
    int bad = json_get_double(root, "epoch_progress", &p.epoch_progress) != 0 ||
              json_get_double(root, "total_loss", &p.total_loss) != 0 ||
              json_get_double(root, "loss_since_log", &p.loss_since_log) != 0 || cJSON_GetArraySize(rng) != 4;
    for (int i = 0; i < 4 && !bad; i++) {
        const cJSON *s = cJSON_GetArrayItem(rng, i);
        if (!cJSON_IsString(s)) bad = 1;
        else p.rng_state[i] = strtoull(s->valuestring, NULL, 10);
    }
    cJSON_Delete(root);
    if (bad) return error_set(err, "%s: incomplete trainer state", path);
    if (v[4] != t->opt->seed || v[5] != t->n_train || v[6] != t->plan.batch_size || v[7] != t->plan.grad_accum ||
        v[8] != t->plan.max_steps)
        return error_set(err, "%s: checkpoint was made with another seed, dataset size, batch size, gradient "
                              "accumulation or step count (seed %ld, %ld samples, batch %ld, accumulation %ld, %ld steps)",
                         path, v[4], v[5], v[6], v[7], v[8]);
    if (p.global_step < 0 || p.global_step > t->plan.max_steps || p.epoch < 0 || p.micro < 0 ||
        p.micro > t->plan.batches_per_epoch)
        return error_set(err, "%s: trainer state out of range", path);
    snprintf(path, sizeof path, "%s/trainable.safetensors", dir);
    if (file_exists(path)) {
        if (load_trainable(t->model, path, err) != 0) return -1;
    } else if (t->model->load_weights == NULL) {
        return error_set(err, "%s: missing, and the model cannot load its weights back", path);
    } else if (t->model->load_weights(t->model->ctx, dir, err) != 0) {
        return -1;
    }
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    if (adamw_load(&t->adamw, t->model->params, t->model->n_params, path, err) != 0) return -1;
    if (t->adamw.step != p.global_step)
        return error_set(err, "%s: optimizer step %ld does not match the trainer step %d", path, t->adamw.step, p.global_step);
    if (load_log_history(t, dir, err) != 0) return -1;
    if (load_jsonl(t, p.global_step, err) != 0) return -1;
    if (t->model->rng) memcpy(t->model->rng->state, p.rng_state, sizeof p.rng_state);
    t->now = t->boundary = p;
    t->last_saved_step = p.global_step;
    return 0;
}

// ---------------------------------------------------------------- progress

static void progress_update(Trainer *t, double loss, double lr, int final) {
    if (!t->opt->progress) return;
    double elapsed = now_seconds() - t->start_time;
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
    if (!t->opt->progress || !t->tty) return;
    fprintf(stderr, "\r%d/%d: micro-batch %d/%d done\033[K", t->now.global_step + 1, t->plan.max_steps,
            done_in_accumulation, t->plan.grad_accum);
    fflush(stderr);
}

// ---------------------------------------------------------------- eval

static int evaluate(Trainer *t, Error *err) {
    TrainModel *m = t->model;
    int bs = t->opt->eval_batch_size > 0 ? t->opt->eval_batch_size : 1;
    double start = now_seconds(), weighted = 0;
    int n_batches = 0;
    for (int at = 0; at < t->n_eval; at += bs) {
        int n = t->n_eval - at < bs ? t->n_eval - at : bs;
        double loss;
        if (m->eval_loss(m->ctx, t->eval_ids + at, n, &loss, err) != 0) return -1;
        weighted += loss * n;  // transformers repeats each batch's loss per sample
        n_batches++;
    }
    double runtime = now_seconds() - start;
    if (runtime <= 0) runtime = 1e-9;
    LogEntry e = {.kind = LOG_EVAL, .step = t->now.global_step, .epoch = t->now.epoch_progress};
    e.eval_loss = weighted / t->n_eval;
    e.eval_runtime = round_to(runtime, 4);
    e.eval_samples_ps = round_to(t->n_eval / runtime, 3);
    e.eval_steps_ps = round_to(n_batches / runtime, 3);
    if (push_log(t, &e, err) != 0) return -1;
    if (t->opt->progress) fprintf(stderr, "%seval_loss %.4f at step %d\n", t->tty ? "\n" : "", e.eval_loss, e.step);
    return 0;
}

// ---------------------------------------------------------------- outputs

typedef struct {
    const char *key;
    double value;
} Metric;

static int metric_cmp(const void *a, const void *b) { return strcmp(((const Metric *)a)->key, ((const Metric *)b)->key); }

static int write_metrics(const char *dir, const char *name, Metric *metrics, int n, Error *err) {
    qsort(metrics, (size_t)n, sizeof *metrics, metric_cmp);
    JsonOut j;
    json_init(&j, 4);
    json_begin_object(&j);
    for (int i = 0; i < n; i++) {
        json_key(&j, metrics[i].key);
        json_double(&j, metrics[i].value);
    }
    json_end_object(&j);
    if (j.failed) {
        json_free(&j);
        return error_set(err, "%s: out of memory", name);
    }
    char path[4200];
    int rc = path_join(path, sizeof path, dir, name, err);
    if (rc == 0) rc = write_file_atomic(path, j.text, j.length, err);
    json_free(&j);
    return rc;
}

static int plot_key(Trainer *t, LogKind kind, const char *key, Error *err) {
    double *steps = malloc((size_t)(t->n_log + 1) * sizeof *steps);
    double *values = malloc((size_t)(t->n_log + 1) * sizeof *values);
    if (!steps || !values) {
        free(steps);
        free(values);
        return error_set(err, "out of memory plotting %s", key);
    }
    int n = 0;
    for (int i = 0; i < t->n_log; i++)
        if (t->log[i].kind == kind) {
            steps[n] = t->log[i].step;
            values[n++] = kind == LOG_TRAIN ? t->log[i].loss : t->log[i].eval_loss;
        }
    int rc = 0;
    if (n > 0) {
        char path[4200], name[64], title[4300];
        snprintf(name, sizeof name, "training_%s.png", key);
        snprintf(title, sizeof title, "training %s of %s", key, t->opt->output_dir);
        rc = path_join(path, sizeof path, t->opt->output_dir, name, err);
        if (rc == 0) rc = plot_loss_png(path, title, key, steps, values, n, err);
    } else if (t->opt->progress) {
        fprintf(stderr, "no metric %s to plot\n", key);
    }
    free(steps);
    free(values);
    return rc;
}

// ---------------------------------------------------------------- the loop

static int one_update(Trainer *t, double update_loss, Error *err, int *stop) {
    const TrainerOptions *o = t->opt;
    TrainModel *m = t->model;
    Position *now = &t->now;
    double grad_norm = clip_grad_norm(m->params, m->n_params, o->max_grad_norm);
    double lr = o->learning_rate * schedule_lambda(t->plan.kind, now->global_step, t->plan.warmup_steps, t->plan.max_steps);
    adamw_step(&t->adamw, m->params, m->n_params, lr);
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
        e.loss = round_to(now->loss_since_log / (now->global_step - now->last_logged_step), 4);
        e.grad_norm = grad_norm;
        e.has_grad_norm = o->max_grad_norm > 0;
        e.learning_rate = next_lr;
        now->loss_since_log = 0;
        now->last_logged_step = now->global_step;
        if (push_log(t, &e, err) != 0 || log_line(t, &e, err) != 0) return -1;
    }
    int eval_every = o->eval_steps > 0 ? o->eval_steps : o->logging_steps;
    if (o->eval_strategy == EVAL_STEPS && t->n_eval > 0 && m->eval_loss && now->global_step % eval_every == 0) {
        if (evaluate(t, err) != 0 || log_line(t, &t->log[t->n_log - 1], err) != 0) return -1;
    }
    t->boundary = *now;
    progress_update(t, update_loss, next_lr, *stop);
    if (now->global_step % o->save_steps == 0 || *stop) return save_checkpoint(t, *stop, err);
    return 0;
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
        for (int b = first; b < batches_run && !stop; b++) {
            int begin = b * plan->batch_size;
            int n = t->n_train - begin < plan->batch_size ? t->n_train - begin : plan->batch_size;
            for (int i = 0; i < n; i++) t->batch_ids[i] = t->train_ids[t->order[begin + i]];
            double loss;
            if (m->forward_backward(m->ctx, t->batch_ids, n, 1.0f / (float)plan->grad_accum, &loss, err) != 0) return -1;
            double step_loss = loss / plan->grad_accum;
            if (isnan(step_loss) || isinf(step_loss))  // transformers' logging_nan_inf_filter
                step_loss = t->now.loss_since_log / (1 + t->now.global_step - t->now.last_logged_step);
            t->now.loss_since_log += step_loss;
            t->now.total_loss += step_loss;
            update_loss += step_loss;
            int sync = (b + 1) % plan->grad_accum == 0 || b + 1 == plan->batches_per_epoch;
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
            if (interrupt_requested) {
                *interrupted = 1;
                return 0;
            }
        }
        if (!stop && o->eval_strategy == EVAL_EPOCH && t->n_eval > 0 && m->eval_loss) {
            // (the position stays at the last update: micro-batches run after it
            // may still be waiting for the next epoch's first update)
            if (evaluate(t, err) != 0 || log_line(t, &t->log[t->n_log - 1], err) != 0) return -1;
        }
    }
    return 0;
}

static void trainer_free(Trainer *t) {
    adamw_free(&t->adamw);
    free(t->log);
    for (int i = 0; i < t->n_jsonl; i++) free(t->jsonl[i]);
    free(t->jsonl);
    free(t->order);
    free(t->batch_ids);
}

static int finish(Trainer *t, double train_start, Error *err) {
    const TrainerOptions *o = t->opt;
    double runtime = now_seconds() - train_start;
    if (runtime <= 0) runtime = 1e-9;
    LogEntry final = {.kind = LOG_FINAL, .step = t->now.global_step, .epoch = t->now.epoch_progress};
    final.train_loss = t->now.total_loss / (t->now.global_step > 0 ? t->now.global_step : 0.001);
    final.train_runtime = round_to(runtime, 4);
    final.train_samples_ps = round_to(t->plan.num_train_samples / runtime, 3);
    final.train_steps_ps = round_to(t->plan.max_steps / runtime, 3);
    if (push_log(t, &final, err) != 0 || log_line(t, &final, err) != 0) return -1;
    if (t->model->save_weights(t->model->ctx, o->output_dir, err) != 0) return -1;
    Metric train[5] = {{"epoch", final.epoch},
                       {"train_loss", final.train_loss},
                       {"train_runtime", final.train_runtime},
                       {"train_samples_per_second", final.train_samples_ps},
                       {"train_steps_per_second", final.train_steps_ps}};
    Metric all[10];
    memcpy(all, train, sizeof train);
    if (write_metrics(o->output_dir, "train_results.json", train, 5, err) != 0) return -1;
    if (write_metrics(o->output_dir, "all_results.json", all, 5, err) != 0) return -1;
    t->boundary = t->now;
    if (write_trainer_state(t, o->output_dir, 1, err) != 0) return -1;
    if (o->plot_loss) {
        if (plot_key(t, LOG_TRAIN, "loss", err) != 0) return -1;
        if (plot_key(t, LOG_EVAL, "eval_loss", err) != 0) return -1;
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
        if (write_metrics(o->output_dir, "eval_results.json", eval, 5, err) != 0) return -1;
        if (write_metrics(o->output_dir, "all_results.json", all, 9, err) != 0) return -1;
    }
    return 0;
}

// Clears what a previous run left that would mix with this one.
static int clear_previous_run(const char *out, Error *err) {
    DIR *d = opendir(out);
    if (d == NULL) return 0;
    struct dirent *entry;
    int rc = 0;
    while ((entry = readdir(d)) != NULL) {
        if (checkpoint_step(entry->d_name) < 0 && strncmp(entry->d_name, ".tmp-checkpoint-", 16) != 0 &&
            strcmp(entry->d_name, "trainer_log.jsonl") != 0)
            continue;
        char path[4200];
        snprintf(path, sizeof path, "%s/%s", out, entry->d_name);
        if (delete_tree(path) != 0) {
            rc = error_set(err, "%s: cannot delete: %s", path, strerror(errno));
            break;
        }
    }
    closedir(d);
    return rc;
}

// Removes temporary checkpoint folders a killed run left behind.
static void remove_stale_temps(const char *out) {
    DIR *d = opendir(out);
    if (d == NULL) return;
    struct dirent *entry;
    while ((entry = readdir(d)) != NULL) {
        if (strncmp(entry->d_name, ".tmp-checkpoint-", 16) != 0) continue;
        char path[4200];
        snprintf(path, sizeof path, "%s/%s", out, entry->d_name);
        delete_tree(path);
    }
    closedir(d);
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
    if (schedule_plan(&t.plan, n_train, opt->batch_size, opt->grad_accum, opt->num_train_epochs, opt->max_steps,
                      opt->warmup_ratio, opt->warmup_steps, opt->schedule, opt->output_dir, err) != 0)
        return -1;
    for (int i = 0; i < n_train; i++)
        if (train_ids[i] < 0) return error_set(err, "%s: negative sample id %d", opt->output_dir, train_ids[i]);
    t.order = malloc((size_t)n_train * sizeof *t.order);
    t.batch_ids = malloc((size_t)opt->batch_size * sizeof *t.batch_ids);
    if (!t.order || !t.batch_ids ||
        adamw_init(&t.adamw, model->params, model->n_params, opt->adam_beta1, opt->adam_beta2, opt->adam_epsilon,
                   opt->weight_decay, err) != 0) {
        trainer_free(&t);
        return error_set(err, "%s: out of memory for the trainer", opt->output_dir);
    }
    int rc = 0;
    if (make_dirs(opt->output_dir, err) != 0) rc = -1;
    if (rc == 0 && resume_dir[0] == '\0' && opt->overwrite_output_dir) rc = clear_previous_run(opt->output_dir, err);
    if (rc == 0) remove_stale_temps(opt->output_dir);
    model->zero_grad(model->ctx);
    if (rc == 0 && resume_dir[0] != '\0') {
        rc = load_checkpoint(&t, resume_dir, err);
        if (rc != 0) error_prefix(err, "resuming");
        else if (opt->progress) fprintf(stderr, "resuming from %s (step %d of %d)\n", resume_dir, t.now.global_step, t.plan.max_steps);
    } else if (model->rng) {
        memcpy(t.now.rng_state, model->rng->state, sizeof t.now.rng_state);
        t.boundary = t.now;
    }
    if (rc != 0) {
        trainer_free(&t);
        return -1;
    }
    if (opt->progress)
        fprintf(stderr, "training: %d samples, %d micro-batches of %d per epoch, accumulation %d, %d steps (%d warmup), %d epoch%s\n",
                n_train, t.plan.batches_per_epoch, opt->batch_size, opt->grad_accum, t.plan.max_steps,
                t.plan.warmup_steps, t.plan.num_epochs, t.plan.num_epochs == 1 ? "" : "s");
    struct sigaction action, previous;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_sigint;
    sigemptyset(&action.sa_mask);
    interrupt_requested = 0;
    sigaction(SIGINT, &action, &previous);
    t.start_time = now_seconds();
    t.start_step = t.now.global_step;
    int interrupted = 0;
    rc = train_loop(&t, &interrupted, err);
    if (rc == 0 && interrupted) {
        // the state of the last completed update, unless that is saved already
        if (t.last_saved_step != t.boundary.global_step || t.boundary.global_step == 0) rc = save_checkpoint(&t, 0, err);
        if (rc == 0) {
            if (t.tty && opt->progress) fputc('\n', stderr);
            fprintf(stderr, "interrupted: saved %s/checkpoint-%d; set resume_from_checkpoint: true to continue\n",
                    opt->output_dir, t.boundary.global_step);
            rc = TRAIN_INTERRUPTED;
        }
    } else if (rc == 0) {
        rc = finish(&t, t.start_time, err);
    }
    sigaction(SIGINT, &previous, NULL);
    trainer_free(&t);
    return rc;
}
