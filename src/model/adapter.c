#include "adapter.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/fs.h"
#include "layout.h"

static const char *const PEFT_PREFIX = "base_model.model.";

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

// Strips "<suffix>" or "<suffix>.<adapter>" + ".weight" from a PEFT key
// after the prefix; returns 1 and the module path when it matches.
static int lora_module(const char *key, const char *which, char *module, size_t size) {
    const char *p = strstr(key, which);  // ".lora_A" / ".lora_B"
    if (p == NULL || !ends_with(key, ".weight")) return 0;
    const char *rest = p + strlen(which);
    // what follows is ".weight" or ".<adapter>.weight"
    if (strcmp(rest, ".weight") != 0) {
        if (rest[0] != '.') return 0;
        const char *dot = strchr(rest + 1, '.');
        if (dot == NULL || strcmp(dot, ".weight") != 0) return 0;
    }
    size_t n = (size_t)(p - key);
    if (n + 1 > size) return 0;
    memcpy(module, key, n);
    module[n] = '\0';
    return 1;
}

// A JSON list of names (or one string) as "a,b,c".
static int join_names(const cJSON *item, char *out, size_t size) {
    out[0] = '\0';
    if (cJSON_IsString(item)) return snprintf(out, size, "%s", item->valuestring) < (int)size ? 0 : -1;
    if (!cJSON_IsArray(item)) return -1;
    size_t used = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, item) {
        if (!cJSON_IsString(e)) return -1;
        int n = snprintf(out + used, size - used, "%s%s", used ? "," : "", e->valuestring);
        if (n < 0 || (size_t)n >= size - used) return -1;
        used += (size_t)n;
    }
    return 0;
}

int adapter_config_load(AdapterConfig *c, const char *dir, Error *err) {
    memset(c, 0, sizeof *c);
    char path[4096];
    if (path_join(path, sizeof path, dir, "adapter_config.json", err) != 0) return -1;
    char *text;
    if (read_file(path, 1u << 20, &text, NULL, err) != 0) return -1;
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return error_set(err, "%s: not a JSON object", path);
    }
    int rc = 0;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(root, "peft_type");
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(root, "r");
    const cJSON *alpha = cJSON_GetObjectItemCaseSensitive(root, "lora_alpha");
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(root, "lora_dropout");
    const cJSON *rslora = cJSON_GetObjectItemCaseSensitive(root, "use_rslora");
    const cJSON *fan = cJSON_GetObjectItemCaseSensitive(root, "fan_in_fan_out");
    const cJSON *dora = cJSON_GetObjectItemCaseSensitive(root, "use_dora");
    const cJSON *base = cJSON_GetObjectItemCaseSensitive(root, "base_model_name_or_path");
    const cJSON *targets = cJSON_GetObjectItemCaseSensitive(root, "target_modules");
    const cJSON *extra = cJSON_GetObjectItemCaseSensitive(root, "modules_to_save");
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "LORA") != 0)
        rc = error_set(err, "%s: peft_type must be \"LORA\"", path);
    else if (!cJSON_IsNumber(r) || r->valuedouble < 1 || r->valuedouble != floor(r->valuedouble) || r->valuedouble > 65536)
        rc = error_set(err, "%s: r must be a positive integer", path);
    else if (!cJSON_IsNumber(alpha) || !(alpha->valuedouble > 0))
        rc = error_set(err, "%s: lora_alpha must be a positive number", path);
    else if (cJSON_IsTrue(fan))
        rc = error_set(err, "%s: fan_in_fan_out adapters are not supported", path);
    else if (cJSON_IsTrue(dora))
        rc = error_set(err, "%s: DoRA adapters (use_dora) are not supported", path);
    else if (targets != NULL && !cJSON_IsNull(targets) && join_names(targets, c->target_modules, sizeof c->target_modules) != 0)
        rc = error_set(err, "%s: target_modules must be a list of module names", path);
    else if (extra != NULL && !cJSON_IsNull(extra) && join_names(extra, c->modules_to_save, sizeof c->modules_to_save) != 0)
        rc = error_set(err, "%s: modules_to_save must be null or a list of names", path);
    if (rc == 0) {
        c->rank = (int)r->valuedouble;
        c->alpha = alpha->valuedouble;
        c->dropout = cJSON_IsNumber(dropout) ? dropout->valuedouble : 0.0;
        c->use_rslora = cJSON_IsTrue(rslora);
        if (cJSON_IsString(base)) snprintf(c->base_model, sizeof c->base_model, "%s", base->valuestring);
    }
    cJSON_Delete(root);
    return rc;
}

static int read_config(Adapter *a, const char *dir, Error *err) {
    AdapterConfig c;
    if (adapter_config_load(&c, dir, err) != 0) return -1;
    a->rank = c.rank;
    a->alpha = c.alpha;
    a->dropout = c.dropout;
    a->scale = c.use_rslora ? c.alpha / sqrt((double)c.rank) : c.alpha / c.rank;
    snprintf(a->base_model, sizeof a->base_model, "%s", c.base_model);
    return 0;
}

static int compare_pairs(const void *x, const void *y) {
    return strcmp(((const LoraPair *)x)->module, ((const LoraPair *)y)->module);
}

int adapter_load(Adapter *a, const char *dir, Error *err) {
    memset(a, 0, sizeof *a);
    if (read_config(a, dir, err) != 0) return -1;
    if (safetensors_open_dir(&a->weights, dir, "adapter_model", err) != 0) return -1;
    const Safetensors *w = &a->weights;
    a->pairs = calloc((size_t)w->n_tensors + 1, sizeof(LoraPair));
    a->saved = calloc((size_t)w->n_tensors + 1, sizeof(SavedModule));
    if (a->pairs == NULL || a->saved == NULL) {
        adapter_free(a);
        return error_set(err, "%s: out of memory", dir);
    }
    const char *file = w->files[0].path;
    int rc = 0;
    for (int i = 0; i < w->n_tensors && rc == 0; i++) {
        const TensorInfo *t = &w->tensors[i];
        if (strncmp(t->name, PEFT_PREFIX, strlen(PEFT_PREFIX)) != 0) {
            rc = error_set(err, "%s: tensor '%s' does not start with %s", file, t->name, PEFT_PREFIX);
            break;
        }
        const char *key = t->name + strlen(PEFT_PREFIX);
        char module[200], classic[220];
        int is_a = lora_module(key, ".lora_A", module, sizeof module);
        int is_b = !is_a && lora_module(key, ".lora_B", module, sizeof module);
        if (is_a || is_b) {
            // map the module path through the weight name
            char weight[230];
            snprintf(weight, sizeof weight, "%s.weight", module);
            if (layout_canonical_name(weight, classic, sizeof classic) != 0) {
                rc = error_set(err, "%s: tensor name too long: %s", file, t->name);
                break;
            }
            size_t classic_len = strlen(classic), suffix_len = strlen(".weight");
            // a module name that does not fit LoraPair.module would be cut
            // and could collide with another: refuse it
            if (classic_len < suffix_len || strcmp(classic + classic_len - suffix_len, ".weight") != 0 ||
                classic_len - suffix_len >= sizeof a->pairs[0].module) {
                rc = error_set(err, "%s: tensor name too long or malformed: %s", file, t->name);
                break;
            }
            classic[classic_len - suffix_len] = '\0';
            LoraPair *pair = NULL;
            for (int k = 0; k < a->n_pairs; k++)
                if (strcmp(a->pairs[k].module, classic) == 0) pair = &a->pairs[k];
            if (pair == NULL) {
                pair = &a->pairs[a->n_pairs++];
                memcpy(pair->module, classic, classic_len - suffix_len + 1);
            }
            if (t->ndim != 2) {
                rc = error_set(err, "%s: '%s' must be 2-D", file, t->name);
                break;
            }
            if (is_a) pair->a = t;
            else pair->b = t;
            continue;
        }
        // a full tensor (modules_to_save): drop "modules_to_save." and an adapter name
        char name[220];
        snprintf(name, sizeof name, "%s", key);
        char *m = strstr(name, ".modules_to_save.");
        if (m) {
            const char *tail = m + strlen(".modules_to_save.");
            const char *param = strchr(tail, '.') && strncmp(tail, "default.", 8) == 0 ? tail + 8 : tail;
            memmove(m + 1, param, strlen(param) + 1);
        }
        SavedModule *s = &a->saved[a->n_saved++];
        if (layout_canonical_name(name, s->tensor, sizeof s->tensor) != 0) rc = error_set(err, "%s: name too long", file);
        s->value = t;
    }
    if (rc == 0) qsort(a->pairs, (size_t)a->n_pairs, sizeof(LoraPair), compare_pairs);
    for (int k = 0; k < a->n_pairs && rc == 0; k++) {
        const LoraPair *p = &a->pairs[k];
        if (p->a == NULL || p->b == NULL)
            rc = error_set(err, "%s: module '%s' has lora_%s but no lora_%s", file, p->module, p->a ? "A" : "B",
                           p->a ? "B" : "A");
        else if (p->a->shape[0] != a->rank || p->b->shape[1] != a->rank)
            rc = error_set(err, "%s: module '%s': lora_A [%lld, %lld] / lora_B [%lld, %lld] disagree with r = %d", file,
                           p->module, (long long)p->a->shape[0], (long long)p->a->shape[1], (long long)p->b->shape[0],
                           (long long)p->b->shape[1], a->rank);
    }
    if (rc == 0 && a->n_pairs == 0 && a->n_saved == 0) rc = error_set(err, "%s: the adapter holds no tensors", file);
    if (rc != 0) adapter_free(a);
    return rc;
}

void adapter_free(Adapter *a) {
    safetensors_close(&a->weights);
    free(a->pairs);
    free(a->saved);
    memset(a, 0, sizeof *a);
}

const LoraPair *adapter_find(const Adapter *a, const char *weight_name) {
    size_t n = strlen(weight_name);
    if (n < 8 || strcmp(weight_name + n - 7, ".weight") != 0) return NULL;
    char module[200];
    if (n - 7 >= sizeof module) return NULL;
    memcpy(module, weight_name, n - 7);
    module[n - 7] = '\0';
    LoraPair key;
    snprintf(key.module, sizeof key.module, "%s", module);
    return bsearch(&key, a->pairs, (size_t)a->n_pairs, sizeof(LoraPair), compare_pairs);
}

const SavedModule *adapter_find_saved(const Adapter *a, const char *tensor_name) {
    for (int i = 0; i < a->n_saved; i++)
        if (strcmp(a->saved[i].tensor, tensor_name) == 0) return &a->saved[i];
    return NULL;
}

int adapter_merge_pair(const Adapter *a, const LoraPair *pair, float *weight, int64_t out_features, int64_t in_features,
                       Error *err) {
    int64_t r = a->rank;
    if (pair->a->shape[1] != in_features || pair->b->shape[0] != out_features)
        return error_set(err, "%s: module '%s': adapter shapes [%lld, %lld] x [%lld, %lld] do not fit the base weight [%lld, %lld]",
                         safetensors_file_of(&a->weights, pair->a), pair->module, (long long)pair->b->shape[0],
                         (long long)r, (long long)r, (long long)pair->a->shape[1], (long long)out_features,
                         (long long)in_features);
    float *A = malloc(sizeof(float) * (size_t)(r * in_features));
    float *B = malloc(sizeof(float) * (size_t)(out_features * r));
    int rc = 0;
    if (A == NULL || B == NULL) rc = error_set(err, "out of memory merging '%s'", pair->module);
    if (rc == 0) rc = safetensors_read_f32(&a->weights, pair->a, A, err);
    if (rc == 0) rc = safetensors_read_f32(&a->weights, pair->b, B, err);
    if (rc == 0) {
        float scale = (float)a->scale;
        #pragma omp parallel for schedule(static)
        for (int64_t o = 0; o < out_features; o++) {
            float *row = weight + o * in_features;
            for (int64_t k = 0; k < r; k++) {
                float bk = scale * B[o * r + k];
                const float *a_row = A + k * in_features;
                for (int64_t i = 0; i < in_features; i++) row[i] += bk * a_row[i];
            }
        }
    }
    free(A);
    free(B);
    return rc;
}
