// dataset.c - from conversations to (input_ids, labels), and the split.
#include "dataset.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dataset_source.h"
#include "mm_plugin.h"
#include "../train/trainer.h"
#include "str_buf.h"
#include "template.h"


void dataset_options_from_recipe(DatasetOptions *o, const Recipe *r, const ModelConfig *config) {
    memset(o, 0, sizeof *o);
    o->dataset = r->dataset;
    o->eval_dataset = r->eval_dataset;
    o->dataset_dir = r->dataset_dir ? r->dataset_dir : "data";
    o->template_name = r->template_name;
    o->cutoff_len = r->cutoff_len;
    o->max_samples = r->max_samples;
    o->val_size = r->val_size;
    o->train_on_prompt = r->train_on_prompt;
    o->mask_history = r->mask_history;
    o->allow_paths_outside_dataset_dir = r->allow_paths_outside_dataset_dir;
    o->seed = r->seed;
    o->image_token_index = config ? config->image_token_index : -1;
    o->image_seq_length = config ? config->image_seq_length : 0;
}

static void sample_free(Sample *s) {
    free(s->input_ids);
    free(s->labels);
    for (int i = 0; i < s->n_images; i++) free(s->image_paths[i]);
    free(s->image_paths);
}

void dataset_free(Dataset *d) {
    for (int i = 0; i < d->train.n_samples; i++) sample_free(&d->train.samples[i]);
    for (int i = 0; i < d->eval.n_samples; i++) sample_free(&d->eval.samples[i]);
    free(d->train.samples);
    free(d->eval.samples);
    memset(d, 0, sizeof *d);
}

// processor_utils.infer_seqlen
static void infer_seqlen(int source_len, int target_len, int cutoff_len, int *new_source, int *new_target) {
    int max_target_len;
    if (target_len * 2 < cutoff_len) max_target_len = cutoff_len;
    else if (source_len * 2 < cutoff_len) max_target_len = cutoff_len - source_len;
    else max_target_len = (int)(cutoff_len * ((double)target_len / (double)(source_len + target_len)));
    *new_target = target_len < max_target_len ? target_len : max_target_len;
    int max_source_len = cutoff_len - *new_target > 0 ? cutoff_len - *new_target : 0;
    *new_source = source_len < max_source_len ? source_len : max_source_len;
}

static void prepend(IntVec *v, const int *xs, int n) {
    v->length += n;
    if (v->length > v->capacity) {
        v->capacity = v->length * 2;
        v->data = xrealloc(v->data, (size_t)v->capacity * sizeof(int));
    }
    memmove(v->data + n, v->data, (size_t)(v->length - n) * sizeof(int));
    memcpy(v->data, xs, (size_t)n * sizeof(int));
}

// SupervisedDatasetProcessor._encode_data_example.
static int encode_example(const Conversation *c, const ChatTemplate *tpl, Tokenizer *tok, const DatasetOptions *o,
                          Sample *out, Error *err) {
    int n_messages = c->n_prompt + c->n_response;
    Message *messages = xcalloc((size_t)n_messages, sizeof *messages);
    int n_placeholders = 0;
    for (int i = 0; i < n_messages; i++) {
        messages[i].role = c->messages[i].role;
        n_placeholders += mm_count_images(c->messages[i].content);
        messages[i].content = tpl->llava_plugin ? mm_expand_images(c->messages[i].content, o->image_seq_length)
                                                : xstrndup(c->messages[i].content, strlen(c->messages[i].content));
    }
    int rc = 0;
    if (c->n_images > 0 && !tpl->llava_plugin)
        rc = error_set(err, "dataset '%s' sample %d: has images but template '%s' takes none", c->dataset_name, c->row,
                       tpl->name);
    else if (tpl->llava_plugin && n_placeholders != c->n_images)
        rc = error_set(err, "dataset '%s' sample %d: %d <image> tokens in the messages but %d images", c->dataset_name,
                       c->row, n_placeholders, c->n_images);
    else if (tpl->llava_plugin && c->n_images > 0 && o->image_seq_length < 1)
        rc = error_set(err, "dataset '%s' sample %d: the model config gives no image_seq_length", c->dataset_name, c->row);
    if (rc) {
        for (int i = 0; i < n_messages; i++) free(messages[i].content);
        free(messages);
        return -1;
    }
    IntVec *encoded = xcalloc((size_t)n_messages, sizeof *encoded);
    template_encode_messages(tpl, tok, messages, n_messages, c->system, encoded);
    IntVec input = {0}, labels = {0};
    int eos = tokenizer_eos_id(tok);
    int total_length = tpl->efficient_eos ? 1 : 0;
    int n_pairs = n_messages / 2;
    for (int turn = 0; turn < n_pairs; turn++) {
        if (total_length >= o->cutoff_len) break;
        int pair = o->mask_history ? n_pairs - 1 - turn : turn;  // mask_history: last turns first
        IntVec *source = &encoded[2 * pair], *target = &encoded[2 * pair + 1];
        int source_len, target_len;
        infer_seqlen(source->length, target->length, o->cutoff_len - total_length, &source_len, &target_len);
        total_length += source_len + target_len;
        IntVec turn_ids = {0}, turn_labels = {0};
        int_vec_append(&turn_ids, source->data, source_len);
        int_vec_append(&turn_ids, target->data, target_len);
        for (int i = 0; i < source_len; i++) {
            int label = IGNORE_INDEX;
            if (o->train_on_prompt) label = source->data[i];
            else if (tpl->efficient_eos && i == 0) label = eos;
            int_vec_push(&turn_labels, label);
        }
        for (int i = 0; i < target_len; i++)
            int_vec_push(&turn_labels, o->mask_history && turn != 0 ? IGNORE_INDEX : target->data[i]);
        if (o->mask_history) {
            prepend(&input, turn_ids.data, turn_ids.length);
            prepend(&labels, turn_labels.data, turn_labels.length);
        } else {
            int_vec_append(&input, turn_ids.data, turn_ids.length);
            int_vec_append(&labels, turn_labels.data, turn_labels.length);
        }
        int_vec_free(&turn_ids);
        int_vec_free(&turn_labels);
    }
    if (tpl->efficient_eos) {
        int_vec_push(&input, eos);
        int_vec_push(&labels, eos);
    }
    for (int i = 0; i < n_messages; i++) {
        int_vec_free(&encoded[i]);
        free(messages[i].content);
    }
    free(encoded);
    free(messages);
    // The model swaps each image's features into exactly image_seq_length
    // image tokens; a sample whose cutoff_len cut through them (or a
    // tokenizer that does not encode <image> as the image token) would fail
    // there, so say it here.
    int n_image_tokens = 0;
    for (int i = 0; i < input.length; i++) n_image_tokens += input.data[i] == o->image_token_index;
    if (tpl->llava_plugin && n_image_tokens != c->n_images * o->image_seq_length) {
        int_vec_free(&input);
        int_vec_free(&labels);
        return error_set(err,
                         "dataset '%s' sample %d: %d image tokens (id %d) after encoding, expected %d x %d; "
                         "cutoff_len %d cuts through them or the tokenizer does not encode <image> as id %d",
                         c->dataset_name, c->row, n_image_tokens, o->image_token_index, c->n_images,
                         o->image_seq_length, o->cutoff_len, o->image_token_index);
    }
    out->input_ids = input.data ? input.data : xmalloc(sizeof(int));
    out->labels = labels.data ? labels.data : xmalloc(sizeof(int));
    out->length = input.length;
    out->n_images = c->n_images;
    out->image_paths = xcalloc((size_t)c->n_images + 1, sizeof(char *));
    for (int i = 0; i < c->n_images; i++) out->image_paths[i] = xstrndup(c->images[i], strlen(c->images[i]));
    return 0;
}

// dataset_dir's resolved path when paths must stay inside it; NULL when
// they may go anywhere or the folder does not resolve (then nothing
// resolves inside it either, and the missing files are reported).
static char *confining_root(const DatasetOptions *o) {
    if (o->allow_paths_outside_dataset_dir) return NULL;
    char *root = realpath(o->dataset_dir, NULL);
    return root ? root : strdup("/nonexistent-dataset-dir/");
}

static int check_images(const Conversation *c, const char *root, Error *err) {
    for (int i = 0; i < c->n_images; i++) {
        if (root && access(c->images[i], F_OK) == 0 && !dataset_path_inside(c->images[i], root))
            return error_set(err,
                             "dataset '%s' sample %d: image %d '%s' lies outside dataset_dir %s (absolute path, '..' "
                             "or a symlink); set allow_paths_outside_dataset_dir: true to allow it",
                             c->dataset_name, c->row, i, c->images[i], root);
        FILE *f = fopen(c->images[i], "rb");
        if (!f || fgetc(f) == EOF) {
            if (f) fclose(f);
            return error_set(err, "dataset '%s' sample %d: image %d '%s' is missing, unreadable or empty",
                             c->dataset_name, c->row, i, c->images[i]);
        }
        fclose(f);
    }
    return 0;
}

// Splits "a, b" into trimmed names.
static char **split_names(const char *list, int *n) {
    char **names = NULL;
    *n = 0;
    const char *p = list;
    while (*p) {
        const char *end = strchr(p, ',');
        if (!end) end = p + strlen(p);
        const char *a = p, *b = end;
        while (a < b && (*a == ' ' || *a == '\t')) a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t')) b--;
        if (b > a) {
            names = xrealloc(names, (size_t)(*n + 1) * sizeof(char *));
            names[(*n)++] = xstrndup(a, (size_t)(b - a));
        }
        p = *end ? end + 1 : end;
    }
    return names;
}

// Hugging Face datasets' train_test_split(test_size=val_size, seed=seed),
// through the trainer's implementation of it (numpy's default_rng
// permutation): eval = the first n_eval of the permutation, train = the rest.
static int split(Dataset *d, Sample *all, int n, const DatasetOptions *o, Error *err) {
    if (o->val_size <= 1e-6) {
        d->train.samples = all;
        d->train.n_samples = n;
        return 0;
    }
    if (o->val_size == 1.0)  // LLaMA-Factory passes 1.0 on as a fraction, which datasets refuses
        return error_set(err, "val_size 1 is neither a fraction below 1 nor a sample count above 1");
    int *train_ids, *eval_ids, n_train, n_eval;
    if (trainer_split_ids(n, o->val_size, o->seed, &train_ids, &n_train, &eval_ids, &n_eval, err)) return -1;
    d->eval.samples = xcalloc((size_t)n_eval + 1, sizeof(Sample));
    d->train.samples = xcalloc((size_t)n_train + 1, sizeof(Sample));
    for (int i = 0; i < n_eval; i++) d->eval.samples[d->eval.n_samples++] = all[eval_ids[i]];
    for (int i = 0; i < n_train; i++) d->train.samples[d->train.n_samples++] = all[train_ids[i]];
    free(train_ids);
    free(eval_ids);
    free(all);
    return 0;
}

// Reads, converts, filters and encodes the datasets named in list.
static int load_samples(const char *list, const DatasetOptions *o, const ChatTemplate *tpl, Tokenizer *tok,
                        Sample **out, int *n_out, int *n_rows_out, int *n_dropped_out, Error *err) {
    int n_names;
    char **names = split_names(list, &n_names);
    DatasetAttr *attrs = xcalloc((size_t)n_names + 1, sizeof *attrs);
    Conversation *rows = NULL;
    int n_rows = 0, rc = 0, n_dropped = 0;
    char *root = confining_root(o);
    for (int i = 0; i < n_names && rc == 0; i++) {
        rc = dataset_attr_load(&attrs[i], o->dataset_dir, names[i], err);
        if (rc == 0) rc = dataset_read_rows(&attrs[i], o->dataset_dir, root, o->max_samples, &rows, &n_rows, err);
    }
    Sample *samples = xcalloc((size_t)n_rows + 1, sizeof *samples);
    int n_samples = 0;
    for (int i = 0; i < n_rows && rc == 0; i++) {
        const Conversation *c = &rows[i];
        if (c->n_prompt % 2 != 1 || c->n_response != 1) {
            n_dropped++;
            continue;
        }
        rc = check_images(c, root, err);
        if (rc == 0) rc = encode_example(c, tpl, tok, o, &samples[n_samples], err);
        if (rc == 0) n_samples++;
    }
    if (rc == 0 && n_samples == 0) rc = error_set(err, "dataset '%s': no valid samples", list);
    for (int i = 0; i < n_rows; i++) conversation_free(&rows[i]);
    free(rows);
    for (int i = 0; i < n_names; i++) {
        dataset_attr_free(&attrs[i]);
        free(names[i]);
    }
    free(attrs);
    free(names);
    free(root);
    if (rc) {
        for (int i = 0; i < n_samples; i++) sample_free(&samples[i]);
        free(samples);
        return -1;
    }
    *out = samples;
    *n_out = n_samples;
    *n_rows_out += n_rows;
    *n_dropped_out += n_dropped;
    return 0;
}

int dataset_load(Dataset *d, const DatasetOptions *o, Tokenizer *tok, FILE *log, Error *err) {
    memset(d, 0, sizeof *d);
    if (!o->dataset || !o->dataset[0]) return error_set(err, "no dataset given (key 'dataset')");
    const char *template_name = o->template_name ? o->template_name : "empty";
    const ChatTemplate *tpl = template_find(template_name);
    if (!tpl) return error_set(err, "template '%s' does not exist (vlft has %s)", template_name, template_names());
    if (o->train_on_prompt && tpl->efficient_eos)
        return error_set(err, "template '%s' does not support train_on_prompt", template_name);
    if (o->cutoff_len < 1) return error_set(err, "cutoff_len must be at least 1");
    int has_eval_dataset = o->eval_dataset && o->eval_dataset[0];
    if (has_eval_dataset && o->val_size > 1e-6) return error_set(err, "val_size cannot be set together with eval_dataset");
    if (template_fix_tokenizer(tpl, tok, err)) return -1;
    Sample *samples;
    int n_samples;
    if (load_samples(o->dataset, o, tpl, tok, &samples, &n_samples, &d->n_rows, &d->n_dropped, err)) return -1;
    if (has_eval_dataset &&
        load_samples(o->eval_dataset, o, tpl, tok, &d->eval.samples, &d->eval.n_samples, &d->n_rows, &d->n_dropped, err)) {
        for (int i = 0; i < n_samples; i++) sample_free(&samples[i]);
        free(samples);
        return -1;
    }
    if (d->n_dropped > 0 && log)
        fprintf(log, "vlft: warning: dropped %d of %d samples as malformed (role order, odd turn count or no answer)\n",
                d->n_dropped, d->n_rows);
    if (split(d, samples, n_samples, o, err)) {
        for (int i = 0; i < n_samples; i++) sample_free(&samples[i]);
        free(samples);
        dataset_free(d);
        return -1;
    }
    return 0;
}
