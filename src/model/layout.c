#include "layout.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void add(Layout *l, ParamGroup group, ParamInit init, int ndim, const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static void add(Layout *l, ParamGroup group, ParamInit init, int ndim, const int64_t *shape, const char *fmt, ...) {
    LayoutEntry *e = &l->entries[l->count++];
    memset(e, 0, sizeof *e);
    va_list args;
    va_start(args, fmt);
    vsnprintf(e->name, sizeof e->name, fmt, args);
    va_end(args);
    e->ndim = ndim;
    for (int d = 0; d < ndim; d++) e->shape[d] = shape[d];
    e->group = group;
    e->init = init;
}

#define SHAPE(...) (const int64_t[]){__VA_ARGS__}

// A Linear: weight [out, in] and, when bias, bias [out].
static void add_linear(Layout *l, ParamGroup g, int64_t out, int64_t in, int bias, const char *prefix) {
    add(l, g, INIT_NORMAL, 2, SHAPE(out, in), "%s.weight", prefix);
    if (bias) add(l, g, INIT_ZERO, 1, SHAPE(out), "%s.bias", prefix);
}

static void add_layer_norm(Layout *l, ParamGroup g, int64_t n, const char *prefix) {
    add(l, g, INIT_ONE, 1, SHAPE(n), "%s.weight", prefix);
    add(l, g, INIT_ZERO, 1, SHAPE(n), "%s.bias", prefix);
}

int layout_build(Layout *l, const ModelConfig *c, ProjectorKind projector, Error *err) {
    const VisionConfig *v = &c->vision;
    const TextConfig *t = &c->text;
    int capacity = 16 + 16 * v->num_hidden_layers + 16 * t->num_hidden_layers;
    l->count = 0;
    l->entries = malloc(sizeof(LayoutEntry) * (size_t)capacity);
    if (l->entries == NULL) return error_set(err, "out of memory building the tensor layout");
    char p[160];
    const char *lm = c->has_vision ? "language_model." : "";
    if (c->has_vision) {
        int64_t h = v->hidden_size, grid = v->image_size / v->patch_size;
        ParamGroup g = PARAM_VISION;
        add(l, g, INIT_NORMAL, 1, SHAPE(h), "vision_tower.vision_model.embeddings.class_embedding");
        add(l, g, INIT_NORMAL, 4, SHAPE(h, v->num_channels, v->patch_size, v->patch_size),
            "vision_tower.vision_model.embeddings.patch_embedding.weight");
        add(l, g, INIT_NORMAL, 2, SHAPE(grid * grid + 1, h), "vision_tower.vision_model.embeddings.position_embedding.weight");
        add_layer_norm(l, g, h, "vision_tower.vision_model.pre_layrnorm");
        for (int i = 0; i < v->num_hidden_layers; i++) {
            static const char *const projections[] = {"k_proj", "v_proj", "q_proj", "out_proj"};
            for (int j = 0; j < 4; j++) {
                snprintf(p, sizeof p, "vision_tower.vision_model.encoder.layers.%d.self_attn.%s", i, projections[j]);
                add_linear(l, g, h, h, 1, p);
            }
            snprintf(p, sizeof p, "vision_tower.vision_model.encoder.layers.%d.layer_norm1", i);
            add_layer_norm(l, g, h, p);
            snprintf(p, sizeof p, "vision_tower.vision_model.encoder.layers.%d.mlp.fc1", i);
            add_linear(l, g, v->intermediate_size, h, 1, p);
            snprintf(p, sizeof p, "vision_tower.vision_model.encoder.layers.%d.mlp.fc2", i);
            add_linear(l, g, h, v->intermediate_size, 1, p);
            snprintf(p, sizeof p, "vision_tower.vision_model.encoder.layers.%d.layer_norm2", i);
            add_layer_norm(l, g, h, p);
        }
        add_layer_norm(l, g, h, "vision_tower.vision_model.post_layernorm");
        int bias = c->multimodal_projector_bias;
        int64_t d = t->hidden_size;
        if (projector == PROJECTOR_YIVL) {
            add_linear(l, PARAM_PROJECTOR, d, h, bias, "multi_modal_projector.linear_1");
            add_layer_norm(l, PARAM_PROJECTOR, d, "multi_modal_projector.linear_2");
            add_linear(l, PARAM_PROJECTOR, d, d, bias, "multi_modal_projector.linear_3");
            add_layer_norm(l, PARAM_PROJECTOR, d, "multi_modal_projector.linear_4");
        } else {
            add_linear(l, PARAM_PROJECTOR, d, h, bias, "multi_modal_projector.linear_1");
            add_linear(l, PARAM_PROJECTOR, d, d, bias, "multi_modal_projector.linear_2");
        }
    }
    ParamGroup g = PARAM_LANGUAGE;
    int64_t d = t->hidden_size, q = (int64_t)t->num_attention_heads * t->head_dim,
            kv = (int64_t)t->num_key_value_heads * t->head_dim;
    add(l, g, INIT_NORMAL, 2, SHAPE(t->vocab_size, d), "%smodel.embed_tokens.weight", lm);
    for (int i = 0; i < t->num_hidden_layers; i++) {
        snprintf(p, sizeof p, "%smodel.layers.%d.self_attn.q_proj", lm, i);
        add_linear(l, g, q, d, t->attention_bias, p);
        snprintf(p, sizeof p, "%smodel.layers.%d.self_attn.k_proj", lm, i);
        add_linear(l, g, kv, d, t->attention_bias, p);
        snprintf(p, sizeof p, "%smodel.layers.%d.self_attn.v_proj", lm, i);
        add_linear(l, g, kv, d, t->attention_bias, p);
        snprintf(p, sizeof p, "%smodel.layers.%d.self_attn.o_proj", lm, i);
        add_linear(l, g, d, q, t->attention_bias, p);
        snprintf(p, sizeof p, "%smodel.layers.%d.mlp.gate_proj", lm, i);
        add_linear(l, g, t->intermediate_size, d, t->mlp_bias, p);
        snprintf(p, sizeof p, "%smodel.layers.%d.mlp.up_proj", lm, i);
        add_linear(l, g, t->intermediate_size, d, t->mlp_bias, p);
        snprintf(p, sizeof p, "%smodel.layers.%d.mlp.down_proj", lm, i);
        add_linear(l, g, d, t->intermediate_size, t->mlp_bias, p);
        add(l, g, INIT_ONE, 1, SHAPE(d), "%smodel.layers.%d.input_layernorm.weight", lm, i);
        add(l, g, INIT_ONE, 1, SHAPE(d), "%smodel.layers.%d.post_attention_layernorm.weight", lm, i);
    }
    add(l, g, INIT_ONE, 1, SHAPE(d), "%smodel.norm.weight", lm);
    if (!t->tie_word_embeddings) add(l, g, INIT_HEAD, 2, SHAPE(t->vocab_size, d), "%slm_head.weight", lm);
    return 0;
}

void layout_free(Layout *l) {
    free(l->entries);
    l->entries = NULL;
    l->count = 0;
}

const LayoutEntry *layout_find(const Layout *l, const char *name) {
    for (int i = 0; i < l->count; i++)
        if (strcmp(l->entries[i].name, name) == 0) return &l->entries[i];
    return NULL;
}

static int starts_with(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

int layout_canonical_name(const char *name, char *out, size_t size) {
    int n;
    if (starts_with(name, "model.language_model."))
        n = snprintf(out, size, "language_model.model.%s", name + strlen("model.language_model."));
    else if (starts_with(name, "model.vision_tower."))
        n = snprintf(out, size, "vision_tower.%s", name + strlen("model.vision_tower."));
    else if (starts_with(name, "model.multi_modal_projector."))
        n = snprintf(out, size, "multi_modal_projector.%s", name + strlen("model.multi_modal_projector."));
    else if (strcmp(name, "lm_head.weight") == 0)
        n = snprintf(out, size, "language_model.lm_head.weight");
    else
        n = snprintf(out, size, "%s", name);
    return (n < 0 || (size_t)n >= size) ? -1 : 0;
}

ProjectorKind layout_detect_projector(const Safetensors *weights) {
    const char *const names[] = {"multi_modal_projector.linear_4.weight", "model.multi_modal_projector.linear_4.weight"};
    for (int i = 0; i < 2; i++)
        if (safetensors_get(weights, names[i])) return PROJECTOR_YIVL;
    const char *const llava[] = {"multi_modal_projector.linear_1.weight", "model.multi_modal_projector.linear_1.weight"};
    for (int i = 0; i < 2; i++)
        if (safetensors_get(weights, llava[i])) return PROJECTOR_LLAVA;
    return PROJECTOR_NONE;
}

// Newer transformers spell names differently; try both.
static int modern_name(const char *classic, char *out, size_t size) {
    int n;
    if (starts_with(classic, "language_model.model."))
        n = snprintf(out, size, "model.language_model.%s", classic + strlen("language_model.model."));
    else if (starts_with(classic, "vision_tower."))
        n = snprintf(out, size, "model.vision_tower.%s", classic + strlen("vision_tower."));
    else if (starts_with(classic, "multi_modal_projector."))
        n = snprintf(out, size, "model.multi_modal_projector.%s", classic + strlen("multi_modal_projector."));
    else if (strcmp(classic, "language_model.lm_head.weight") == 0)
        n = snprintf(out, size, "lm_head.weight");
    else
        return -1;
    return (n < 0 || (size_t)n >= size) ? -1 : 0;
}

const TensorInfo *layout_lookup(const Safetensors *weights, const char *classic_name) {
    const TensorInfo *t = safetensors_get(weights, classic_name);
    char other[256];
    if (t == NULL && modern_name(classic_name, other, sizeof other) == 0) t = safetensors_get(weights, other);
    return t;
}

int layout_check(const Layout *layout, const Safetensors *weights, Error *err) {
    const char *where = weights->n_files ? weights->files[0].path : "weights";
    for (int i = 0; i < layout->count; i++) {
        const LayoutEntry *e = &layout->entries[i];
        const TensorInfo *t = layout_lookup(weights, e->name);
        if (t == NULL) return error_set(err, "%s: missing tensor '%s'", where, e->name);
        int same = t->ndim == e->ndim;
        for (int d = 0; same && d < e->ndim; d++) same = t->shape[d] == e->shape[d];
        if (!same) {
            char want[96] = "", got[96] = "";
            for (int d = 0; d < e->ndim; d++)
                snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", d ? "," : "", (long long)e->shape[d]);
            for (int d = 0; d < t->ndim; d++)
                snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? "," : "", (long long)t->shape[d]);
            return error_set(err, "%s: tensor '%s' has shape [%s], config.json implies [%s]", safetensors_file_of(weights, t),
                             t->name, got, want);
        }
        if (t->dtype != DTYPE_F32 && t->dtype != DTYPE_BF16 && t->dtype != DTYPE_F16)
            return error_set(err, "%s: tensor '%s' is %s (F32, BF16 or F16 expected)", safetensors_file_of(weights, t),
                             t->name, dtype_name(t->dtype));
    }
    for (int i = 0; i < weights->n_tensors; i++) {
        char classic[256];
        const TensorInfo *t = &weights->tensors[i];
        // Buffers older transformers versions saved alongside the weights.
        if (strstr(t->name, "position_ids") || strstr(t->name, "rotary_emb.inv_freq")) continue;
        if (layout_canonical_name(t->name, classic, sizeof classic) != 0 || layout_find(layout, classic) == NULL) {
            if (layout_find(layout, t->name) == NULL)
                return error_set(err, "%s: unexpected tensor '%s' (not part of this model's config)",
                                 safetensors_file_of(weights, t), t->name);
        }
    }
    return 0;
}
