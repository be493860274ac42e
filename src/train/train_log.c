// train_log.c - the run's records: log history, trainer_log.jsonl,
// trainer_state.json, metrics files and loss plots, in the formats
// LLaMA-Factory and transformers write them.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../base/fs.h"
#include "json_out.h"
#include "plot.h"
#include "trainer_internal.h"

double train_now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Python's round(x, digits) for the values logged here.
double train_round_to(double x, int digits) {
    double scale = pow(10.0, digits);
    return nearbyint(x * scale) / scale;
}

// str(timedelta(seconds=int(s))) as LLaMA-Factory writes elapsed times.
void format_timedelta(double seconds, char *dst, size_t size) {
    long s = seconds > 0 ? (long)seconds : 0;
    long days = s / 86400;
    s %= 86400;
    if (days > 0)
        snprintf(dst, size, "%ld day%s, %ld:%02ld:%02ld", days, days == 1 ? "" : "s", s / 3600, (s / 60) % 60, s % 60);
    else snprintf(dst, size, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
}


int train_log_push(Trainer *t, const LogEntry *entry, Error *err) {
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
int train_log_line(Trainer *t, const LogEntry *entry, Error *err) {
    double elapsed = train_now_seconds() - t->start_time;
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
    json_double(&j, t->plan.max_steps ? train_round_to(100.0 * entry->step / t->plan.max_steps, 2) : 100.0);
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
int train_write_state(Trainer *t, const char *dir, int training_stopped, Error *err) {
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

int train_json_int(const cJSON *obj, const char *key, long *out) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsNumber(item)) return -1;
    *out = (long)item->valuedouble;
    return 0;
}

int train_json_double(const cJSON *obj, const char *key, double *out) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsNumber(item)) return -1;
    *out = item->valuedouble;
    return 0;
}

// The log history saved in a checkpoint's trainer_state.json.
int train_log_load_history(Trainer *t, const char *dir, Error *err) {
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
        train_json_int(item, "step", &step);
        e.step = (int)step;
        train_json_double(item, "epoch", &e.epoch);
        if (train_json_double(item, "loss", &e.loss) == 0) {
            e.kind = LOG_TRAIN;
            e.has_grad_norm = train_json_double(item, "grad_norm", &e.grad_norm) == 0;
            train_json_double(item, "learning_rate", &e.learning_rate);
        } else if (train_json_double(item, "eval_loss", &e.eval_loss) == 0) {
            e.kind = LOG_EVAL;
            train_json_double(item, "eval_runtime", &e.eval_runtime);
            train_json_double(item, "eval_samples_per_second", &e.eval_samples_ps);
            train_json_double(item, "eval_steps_per_second", &e.eval_steps_ps);
        } else continue;
        if (train_log_push(t, &e, err) != 0) {
            cJSON_Delete(root);
            return -1;
        }
    }
    cJSON_Delete(root);
    return 0;
}

// trainer_log.jsonl lines up to the checkpoint's step (later ones belong to
// the run that was stopped and will be written again).
int train_log_load_jsonl(Trainer *t, int up_to_step, Error *err) {
    char path[4200];
    if (path_join(path, sizeof path, t->opt->output_dir, "trainer_log.jsonl", err) != 0) return -1;
    if (!file_exists(path)) return 0;
    char *text;
    if (read_file(path, (size_t)1 << 30, &text, NULL, err) != 0) return -1;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cJSON *obj = cJSON_Parse(line);
        long step = -1;
        int keep = obj && train_json_int(obj, "current_steps", &step) == 0 && step <= up_to_step &&
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



static int metric_cmp(const void *a, const void *b) { return strcmp(((const Metric *)a)->key, ((const Metric *)b)->key); }

int train_write_metrics(const char *dir, const char *name, Metric *metrics, int n, Error *err) {
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

int train_plot_metric(Trainer *t, LogKind kind, const char *key, Error *err) {
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
