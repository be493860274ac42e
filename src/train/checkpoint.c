// checkpoint.c - checkpoint-N folders (weights, fp32 trainable values,
// optimizer state, trainer state, position) written into a temporary folder
// and renamed into place; loading them back; rotation; output_dir rules.
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../base/fs.h"
#include "../io/safetensors.h"
#include "json_out.h"
#include "trainer_internal.h"


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
    // vlft's own half-written checkpoints (left by a kill) are swept by the
    // next run, so they do not make the folder the user's
    while ((entry = readdir(d)) != NULL)
        if (strcmp(entry->d_name, ".") != 0 && strcmp(entry->d_name, "..") != 0 &&
            strncmp(entry->d_name, ".tmp-checkpoint-", 16) != 0) {
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
int checkpoint_save(Trainer *t, int training_stopped, Error *err) {
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
    if (train_write_state(t, temp_dir, training_stopped, err) != 0) goto fail;
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

int checkpoint_load(Trainer *t, const char *dir, Error *err) {
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
        if (train_json_int(root, keys[i], &v[i]) != 0) {
            cJSON_Delete(root);
            return error_set(err, "%s: missing %s", path, keys[i]);
        }
    p.global_step = (int)v[0];
    p.epoch = (int)v[1];
    p.micro = (int)v[2];
    p.last_logged_step = (int)v[3];
    const cJSON *rng = cJSON_GetObjectItemCaseSensitive(root, "rng_state");
    int bad = train_json_double(root, "epoch_progress", &p.epoch_progress) != 0 ||
              train_json_double(root, "total_loss", &p.total_loss) != 0 ||
              train_json_double(root, "loss_since_log", &p.loss_since_log) != 0 || cJSON_GetArraySize(rng) != 4;
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
    if (train_log_load_history(t, dir, err) != 0) return -1;
    if (train_log_load_jsonl(t, p.global_step, err) != 0) return -1;
    if (t->model->rng) memcpy(t->model->rng->state, p.rng_state, sizeof p.rng_state);
    t->now = t->boundary = p;
    t->last_saved_step = p.global_step;
    return 0;
}

// Clears what a previous run left that would mix with this one.
int checkpoint_clear_previous_run(const char *out, Error *err) {
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
void checkpoint_remove_stale_temps(const char *out) {
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
