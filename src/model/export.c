#include "export.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../base/fs.h"
#include "../io/safetensors.h"
#include "adapter.h"
#include "config.h"
#include "layout.h"

// Everything a model folder carries beside its weights; copied as they are.
static const char *const side_files[] = {
    "generation_config.json", "preprocessor_config.json", "processor_config.json", "tokenizer.model",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.json", "chat_template.jinja", NULL,
};

typedef struct {
    const Safetensors *base;
    const TensorInfo *source;    // base tensor (or the adapter's replacement)
    const Safetensors *source_set;
    const Adapter *adapter;
    const LoraPair *pair;        // non-NULL: merge into this weight
} ExportTensor;

static int fill_export(void *ctx, const TensorRef *ref, void *dst, Error *err) {
    const ExportTensor *e = ctx;
    const TensorInfo *t = e->source;
    if (e->pair == NULL && t->dtype == ref->dtype) {
        memcpy(dst, t->data, t->nbytes);
        return 0;
    }
    float *values = malloc(sizeof(float) * (t->numel ? t->numel : 1));
    if (values == NULL) return error_set(err, "out of memory exporting '%s'", ref->name);
    int rc = safetensors_read_f32(e->source_set, t, values, err);
    if (rc == 0 && e->pair) rc = adapter_merge_pair(e->adapter, e->pair, values, t->shape[0], t->shape[1], err);
    if (rc == 0 && dtype_convert(dst, ref->dtype, values, DTYPE_F32, t->numel) != 0)
        rc = error_set(err, "'%s': cannot convert to %s", ref->name, dtype_name(ref->dtype));
    free(values);
    return rc;
}

static int is_floating(DType d) { return d == DTYPE_F32 || d == DTYPE_BF16 || d == DTYPE_F16; }

static const char *torch_dtype_name(DType d) {
    return d == DTYPE_BF16 ? "bfloat16" : d == DTYPE_F16 ? "float16" : "float32";
}

static int write_config(const char *model_dir, const char *out_dir, const ModelConfig *config, const ExportOptions *o,
                        Error *err) {
    ModelConfig copy = *config;
    if (!o->keep_dtype) snprintf(copy.torch_dtype, sizeof copy.torch_dtype, "%s", torch_dtype_name(o->dtype));
    (void)model_dir;
    char *json = model_config_to_json(&copy);
    char path[4096];
    int rc = path_join(path, sizeof path, out_dir, "config.json", err);
    if (rc == 0) rc = write_file_atomic(path, json, strlen(json), err);
    free(json);
    return rc;
}

int export_merged_model(const ExportOptions *o, int *merged_count, Error *err) {
    ModelConfig config;
    Safetensors base;
    Adapter adapter;
    int have_adapter = o->adapter_dir != NULL;
    if (model_config_load(&config, o->model_dir, err) != 0) return -1;
    if (safetensors_open_dir(&base, o->model_dir, "model", err) != 0) return -1;
    if (have_adapter && adapter_load(&adapter, o->adapter_dir, err) != 0) {
        safetensors_close(&base);
        return -1;
    }
    Layout layout = {0};
    ProjectorKind projector = config.has_vision ? layout_detect_projector(&base) : PROJECTOR_NONE;
    int rc = layout_build(&layout, &config, projector, err);
    if (rc == 0) rc = layout_check(&layout, &base, err);
    TensorRef *refs = NULL;
    ExportTensor *jobs = NULL;
    if (rc == 0) {
        refs = calloc((size_t)layout.count, sizeof(TensorRef));
        jobs = calloc((size_t)layout.count, sizeof(ExportTensor));
        if (refs == NULL || jobs == NULL) rc = error_set(err, "out of memory");
    }
    int merged = 0, replaced = 0;
    for (int i = 0; rc == 0 && i < layout.count; i++) {
        const LayoutEntry *e = &layout.entries[i];
        const TensorInfo *t = layout_lookup(&base, e->name);
        ExportTensor *job = &jobs[i];
        *job = (ExportTensor){.base = &base, .source = t, .source_set = &base, .adapter = have_adapter ? &adapter : NULL};
        if (have_adapter) {
            job->pair = adapter_find(&adapter, e->name);
            if (job->pair && e->ndim != 2) rc = error_set(err, "%s: LoRA on '%s', which is not a Linear weight", o->adapter_dir, e->name);
            const SavedModule *saved = adapter_find_saved(&adapter, e->name);
            if (saved) {
                int same = saved->value->ndim == e->ndim;
                for (int d = 0; same && d < e->ndim; d++) same = saved->value->shape[d] == e->shape[d];
                if (!same) rc = error_set(err, "%s: saved tensor for '%s' has the wrong shape", o->adapter_dir, e->name);
                job->source = saved->value;
                job->source_set = &adapter.weights;
                replaced++;
            }
            merged += job->pair != NULL;
        }
        refs[i] = (TensorRef){.name = e->name, .ndim = e->ndim, .fill = fill_export, .fill_ctx = job};
        memcpy(refs[i].shape, e->shape, sizeof(int64_t) * 4);
        refs[i].dtype = (o->keep_dtype || !is_floating(t->dtype)) ? t->dtype : o->dtype;
    }
    // Every adapter module must land on a weight of this base model.
    for (int k = 0; rc == 0 && have_adapter && k < adapter.n_pairs; k++) {
        char weight[230];
        snprintf(weight, sizeof weight, "%s.weight", adapter.pairs[k].module);
        if (layout_find(&layout, weight) == NULL)
            rc = error_set(err, "%s: adapter module '%s' is not in the base model %s", o->adapter_dir, adapter.pairs[k].module,
                           o->model_dir);
    }
    for (int k = 0; rc == 0 && have_adapter && k < adapter.n_saved; k++)
        if (layout_find(&layout, adapter.saved[k].tensor) == NULL)
            rc = error_set(err, "%s: saved tensor '%s' is not in the base model", o->adapter_dir, adapter.saved[k].tensor);
    (void)replaced;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", o->export_dir, (long)getpid());
    if (rc == 0) rc = remove_tree(tmp, err);
    if (rc == 0) rc = make_dirs(tmp, err);
    static const char *const metadata[] = {"format", "pt", NULL};
    if (rc == 0) rc = safetensors_write_dir(tmp, "model", refs, layout.count, o->max_shard_bytes, 0, metadata, err);
    if (rc == 0) rc = write_config(o->model_dir, tmp, &config, o, err);
    for (int i = 0; rc == 0 && side_files[i]; i++) {
        char src[4096], dst[4300];
        if (path_join(src, sizeof src, o->model_dir, side_files[i], err) != 0) { rc = -1; break; }
        if (!file_exists(src)) continue;
        snprintf(dst, sizeof dst, "%s/%s", tmp, side_files[i]);
        rc = copy_file(src, dst, err);
    }
    if (rc == 0) rc = replace_dir(tmp, o->export_dir, err);
    else remove_tree(tmp, NULL);
    if (merged_count) *merged_count = merged;
    free(refs);
    free(jobs);
    if (layout.entries) layout_free(&layout);
    if (have_adapter) adapter_free(&adapter);
    safetensors_close(&base);
    return rc;
}
