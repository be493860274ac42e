// Saving: the full model in the source checkpoint's names and dtypes, or a
// PEFT LoRA adapter; and loading such an adapter back.
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/fs.h"
#include "adapter.h"
#include "llava_internal.h"

// Converts a trained fp32 master to the checkpoint's dtype on the way out.
static int fill_converted(void *ctx, const TensorRef *t, void *dst, Error *err) {
    const Weight *w = ctx;
    if (dtype_convert(dst, t->dtype, w->owned, DTYPE_F32, w->numel) != 0)
        return error_set(err, "cannot convert '%s' to %s", t->name, dtype_name(t->dtype));
    return 0;
}

static const char *const side_files[] = {
    "config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json",
    "tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "chat_template.json", "chat_template.jinja", NULL};

int llava_save_full(const LlavaModel *m, const char *out_dir, size_t max_shard_bytes, Error *err) {
    if (make_dirs(out_dir, err) != 0) return -1;
    TensorRef *refs = calloc((size_t)m->n_weights, sizeof(TensorRef));
    if (refs == NULL) return error_set(err, "out of memory");
    for (int i = 0; i < m->n_weights; i++) {
        const Weight *w = &m->weights[i];
        TensorRef *r = &refs[i];
        r->name = w->source->name;
        r->dtype = w->source->dtype;
        r->ndim = w->source->ndim;
        for (int d = 0; d < r->ndim; d++) r->shape[d] = w->source->shape[d];
        if (!w->trainable) r->data = w->source->data;  // unchanged, byte for byte
        else if (w->source->dtype == DTYPE_F32) r->data = w->owned;
        else {
            r->fill = fill_converted;
            r->fill_ctx = (void *)w;
        }
    }
    const char *const metadata[] = {"format", "pt", NULL};
    int rc = safetensors_write_dir(out_dir, "model", refs, m->n_weights, max_shard_bytes, 1, metadata, err);
    free(refs);
    if (rc != 0) return -1;
    for (int i = 0; side_files[i]; i++) {
        char src[4096], dst[4096];
        if (path_join(src, sizeof src, m->model_dir, side_files[i], err) != 0 ||
            path_join(dst, sizeof dst, out_dir, side_files[i], err) != 0)
            return -1;
        if (file_exists(src) && strcmp(src, dst) != 0 && copy_file(src, dst, err) != 0) return -1;
    }
    return 0;
}

static char *adapter_config_json(const LlavaModel *m, const char *base_model_path) {
    const LlavaOptions *o = &m->options;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddItemToObject(root, "alpha_pattern", cJSON_CreateObject());
    cJSON_AddNullToObject(root, "auto_mapping");
    cJSON_AddStringToObject(root, "base_model_name_or_path", base_model_path ? base_model_path : m->model_dir);
    cJSON_AddStringToObject(root, "bias", "none");
    cJSON_AddBoolToObject(root, "fan_in_fan_out", 0);
    cJSON_AddBoolToObject(root, "inference_mode", 1);
    cJSON_AddBoolToObject(root, "init_lora_weights", 1);
    cJSON_AddNullToObject(root, "layer_replication");
    cJSON_AddNullToObject(root, "layers_pattern");
    cJSON_AddNullToObject(root, "layers_to_transform");
    cJSON_AddItemToObject(root, "loftq_config", cJSON_CreateObject());
    cJSON_AddNumberToObject(root, "lora_alpha", o->lora_alpha);
    cJSON_AddBoolToObject(root, "lora_bias", 0);
    cJSON_AddNumberToObject(root, "lora_dropout", o->lora_dropout);
    cJSON_AddNullToObject(root, "megatron_config");
    cJSON_AddStringToObject(root, "megatron_core", "megatron.core");
    if (o->additional_target[0]) {
        cJSON *list = cJSON_AddArrayToObject(root, "modules_to_save");
        char copy[512];
        snprintf(copy, sizeof copy, "%s", o->additional_target);
        for (char *tok = strtok(copy, ","); tok; tok = strtok(NULL, ",")) {
            while (*tok == ' ') tok++;
            char *end = tok + strlen(tok);
            while (end > tok && end[-1] == ' ') *--end = '\0';
            if (*tok) cJSON_AddItemToArray(list, cJSON_CreateString(tok));
        }
    } else
        cJSON_AddNullToObject(root, "modules_to_save");
    cJSON_AddStringToObject(root, "peft_type", "LORA");
    cJSON_AddNumberToObject(root, "r", o->lora_rank);
    cJSON_AddItemToObject(root, "rank_pattern", cJSON_CreateObject());
    cJSON_AddNullToObject(root, "revision");
    // Full module paths, as LLaMA-Factory's patch_target_modules hands them to PEFT.
    cJSON *targets = cJSON_AddArrayToObject(root, "target_modules");
    for (int i = 0; i < m->n_loras; i++) cJSON_AddItemToArray(targets, cJSON_CreateString(m->loras[i].module));
    cJSON_AddStringToObject(root, "task_type", "CAUSAL_LM");
    cJSON_AddBoolToObject(root, "use_dora", 0);
    cJSON_AddBoolToObject(root, "use_rslora", 0);
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    return text;
}

// The adapter's tensors: every LoRA A/B (unused ones too, as PEFT saves them)
// and, in LoRA runs, the fully trained additional_target weights.
static int adapter_tensors(const LlavaModel *m, TensorRef **out) {
    int n = 0;
    TensorRef *refs = calloc((size_t)(2 * m->n_loras + m->n_weights + 1), sizeof(TensorRef));
    if (refs == NULL) return -1;
    for (int i = 0; i < m->n_loras; i++) {
        const LoraAdapter *a = &m->loras[i];
        refs[n++] = (TensorRef){.name = a->name_A, .dtype = DTYPE_F32, .ndim = 2, .shape = {a->rank, a->in}, .data = a->A};
        refs[n++] = (TensorRef){.name = a->name_B, .dtype = DTYPE_F32, .ndim = 2, .shape = {a->out, a->rank}, .data = a->B};
    }
    for (int i = 0; i < m->n_params; i++) {
        const ParamRef *p = &m->params[i];
        if (strstr(p->name, ".lora_A.weight") || strstr(p->name, ".lora_B.weight")) continue;
        refs[n] = (TensorRef){.name = p->name, .dtype = DTYPE_F32, .ndim = p->ndim, .data = p->value};
        for (int d = 0; d < p->ndim; d++) refs[n].shape[d] = p->shape[d];
        n++;
    }
    *out = refs;
    return n;
}

int llava_save_adapter(const LlavaModel *m, const char *out_dir, const char *base_model_path, Error *err) {
    if (m->n_loras == 0) return error_set(err, "%s: the model has no LoRA adapter to save", out_dir);
    if (make_dirs(out_dir, err) != 0) return -1;
    TensorRef *refs;
    int n = adapter_tensors(m, &refs);
    if (n < 0) return error_set(err, "out of memory");
    char path[4096];
    const char *const metadata[] = {"format", "pt", NULL};
    int rc = path_join(path, sizeof path, out_dir, "adapter_model.safetensors", err);
    if (rc == 0) rc = safetensors_write(path, refs, n, metadata, err);
    free(refs);
    if (rc != 0) return -1;
    char *json = adapter_config_json(m, base_model_path);
    if (json == NULL) return error_set(err, "out of memory");
    rc = path_join(path, sizeof path, out_dir, "adapter_config.json", err);
    if (rc == 0) rc = write_file_atomic(path, json, strlen(json), err);
    free(json);
    return rc;
}

int llava_load_adapter(LlavaModel *m, const char *adapter_dir, Error *err) {
    char path[4096];
    if (path_join(path, sizeof path, adapter_dir, "adapter_model.safetensors", err) != 0) return -1;
    TensorRef *refs;
    int n = adapter_tensors(m, &refs);
    if (n < 0) return error_set(err, "out of memory");
    Safetensors st;
    memset(&st, 0, sizeof st);
    if (safetensors_open_file(&st, path, err) != 0) {
        free(refs);
        return -1;
    }
    int rc = 0;
    for (int i = 0; i < st.n_tensors && rc == 0; i++) {
        const TensorInfo *t = &st.tensors[i];
        const TensorRef *r = NULL;
        for (int j = 0; j < n && !r; j++)
            if (strcmp(refs[j].name, t->name) == 0) r = &refs[j];
        if (r == NULL) {
            rc = error_set(err, "%s: tensor '%s' has no place in this model (LoRA rank/target options differ?)", path,
                           t->name);
            break;
        }
        int same = t->ndim == r->ndim;
        for (int d = 0; same && d < r->ndim; d++) same = t->shape[d] == r->shape[d];
        if (!same) rc = error_set(err, "%s: tensor '%s' has a shape other than the model's", path, t->name);
        else rc = safetensors_read_f32(&st, t, (float *)r->data, err);
    }
    for (int j = 0; j < n && rc == 0; j++)
        if (safetensors_get(&st, refs[j].name) == NULL) rc = error_set(err, "%s: missing tensor '%s'", path, refs[j].name);
    safetensors_close(&st);
    free(refs);
    // On a GPU the loaded values go to the device copies too.
    if (rc == 0) rc = llava_device_push(m, LLAVA_SYNC_VALUES, NULL, err);
    return rc;
}

// Joins a JSON string array (or a single string) into "a,b,c".
int llava_options_from_adapter_config(const char *adapter_dir, LlavaOptions *o, Error *err) {
    AdapterConfig c;
    if (adapter_config_load(&c, adapter_dir, err) != 0) return -1;
    // The model scales LoRA by alpha / r; an rsLoRA adapter would be wrong.
    if (c.use_rslora)
        return error_set(err, "%s/adapter_config.json: use_rslora adapters can be merged (vlft export) but not loaded for training or chat",
                         adapter_dir);
    if (c.target_modules[0] == '\0')
        return error_set(err, "%s/adapter_config.json: target_modules must be a list of module names", adapter_dir);
    if (strlen(c.target_modules) >= sizeof o->lora_target || strlen(c.modules_to_save) >= sizeof o->additional_target)
        return error_set(err, "%s/adapter_config.json: target_modules / modules_to_save too long", adapter_dir);
    o->finetuning_type = FINETUNE_LORA;
    o->lora_rank = c.rank;
    o->lora_alpha = c.alpha;
    o->lora_dropout = c.dropout;
    strcpy(o->lora_target, c.target_modules);
    strcpy(o->additional_target, c.modules_to_save);
    return 0;
}
