// The model's layers as data-parallel training sees them (llava.h
// "Layers"): which trainable tensors each layer reads, the hooks a pass
// calls around each, and tensors whose fp32 buffers come and go.
#include <stdlib.h>
#include <string.h>

#include "llava_internal.h"

int llava_layer_number(const LlavaModel *m, LlavaLayerGroup group, int index) {
    int V = m->vision_layers_run, T = m->config.text.num_hidden_layers;
    switch (group) {
    case LLAVA_VISION_EMBED: return 0;
    case LLAVA_VISION_LAYER: return 1 + index;
    case LLAVA_PROJECTOR: return V + 1;
    case LLAVA_TEXT_EMBED: return V + 2;
    case LLAVA_TEXT_LAYER: return V + 3 + index;
    case LLAVA_HEAD: return V + 3 + T;
    }
    return -1;
}

// The params index whose value is this buffer, or -1 (frozen / absent).
static int param_of(const LlavaModel *m, const float *value) {
    if (value == NULL) return -1;
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i].value == value) return i;
    return -1;
}

// Appends the trainable tensors of a Weight / a Linear to layer members.
typedef struct {
    const LlavaModel *m;
    int *members;
    int count;
} Collect;

static void add_weight(Collect *c, const Weight *w) {
    if (w == NULL || !w->trainable) return;
    int i = param_of(c->m, w->owned);
    if (i >= 0) c->members[c->count++] = i;
}

static void add_linear(Collect *c, const Linear *l) {
    add_weight(c, l->w);
    add_weight(c, l->b);
    if (l->lora == NULL) return;
    int a = param_of(c->m, l->lora->A), b = param_of(c->m, l->lora->B);
    if (a >= 0) c->members[c->count++] = a;
    if (b >= 0) c->members[c->count++] = b;
}

static void collect_layer(Collect *c, LlavaLayerGroup group, int index) {
    const LlavaModel *m = c->m;
    if (group == LLAVA_VISION_EMBED && m->config.has_vision) {
        const Weight *ws[5] = {m->class_embedding, m->patch_embedding, m->position_embedding, m->pre_ln_w, m->pre_ln_b};
        for (int k = 0; k < 5; k++) add_weight(c, ws[k]);
    } else if (group == LLAVA_VISION_LAYER) {
        const VisionLayer *v = &m->vision_layers[index];
        const Linear *ls[6] = {&v->q, &v->k, &v->v, &v->o, &v->fc1, &v->fc2};
        for (int k = 0; k < 6; k++) add_linear(c, ls[k]);
        const Weight *ws[4] = {v->ln1_w, v->ln1_b, v->ln2_w, v->ln2_b};
        for (int k = 0; k < 4; k++) add_weight(c, ws[k]);
    } else if (group == LLAVA_PROJECTOR && m->config.has_vision) {
        add_linear(c, &m->proj1);
        add_linear(c, &m->proj3);
        const Weight *ws[4] = {m->proj_ln2_w, m->proj_ln2_b, m->proj_ln4_w, m->proj_ln4_b};
        for (int k = 0; k < 4; k++) add_weight(c, ws[k]);
    } else if (group == LLAVA_TEXT_EMBED) {
        add_weight(c, m->embed_tokens);
    } else if (group == LLAVA_TEXT_LAYER) {
        const TextLayer *t = &m->text_layers[index];
        const Linear *ls[7] = {&t->q, &t->k, &t->v, &t->o, &t->gate, &t->up, &t->down};
        for (int k = 0; k < 7; k++) add_linear(c, ls[k]);
        add_weight(c, t->norm1);
        add_weight(c, t->norm2);
    } else if (group == LLAVA_HEAD) {
        add_weight(c, m->final_norm);
        add_linear(c, &m->lm_head);  // its weight is embed_tokens when tied
    }
}

int llava_layers_build(LlavaModel *m, Error *err) {
    int V = m->vision_layers_run, T = m->config.text.num_hidden_layers;
    int n_layers = V + 4 + T;
    LayerTable *table = &m->layer_table;
    table->n_layers = n_layers;
    table->first = malloc(sizeof(int) * (size_t)(n_layers + 1));
    // a tensor is read by at most two layers (tied embeddings)
    table->members = malloc(sizeof(int) * (size_t)(2 * m->n_params + 1));
    m->param_owners = calloc((size_t)m->n_params + 1, sizeof(ParamOwner));
    if (!table->first || !table->members || !m->param_owners) return error_set(err, "out of memory");
    Collect c = {.m = m, .members = table->members, .count = 0};
    for (int l = 0; l < n_layers; l++) {
        table->first[l] = c.count;
        LlavaLayerGroup group = l == 0 ? LLAVA_VISION_EMBED
                                : l <= V ? LLAVA_VISION_LAYER
                                : l == V + 1 ? LLAVA_PROJECTOR
                                : l == V + 2 ? LLAVA_TEXT_EMBED
                                : l < V + 3 + T ? LLAVA_TEXT_LAYER
                                             : LLAVA_HEAD;
        int index = group == LLAVA_VISION_LAYER ? l - 1 : group == LLAVA_TEXT_LAYER ? l - V - 3 : 0;
        collect_layer(&c, group, index);
    }
    table->first[n_layers] = c.count;
    for (int i = 0; i < m->n_weights; i++) {
        Weight *w = &m->weights[i];
        int p = w->trainable ? param_of(m, w->owned) : -1;
        if (p >= 0) m->param_owners[p] = (ParamOwner){.weight = w};
    }
    for (int i = 0; i < m->n_loras; i++) {
        LoraAdapter *a = &m->loras[i];
        int pa = param_of(m, a->A), pb = param_of(m, a->B);
        if (pa >= 0) m->param_owners[pa] = (ParamOwner){.lora = a, .is_b = 0};
        if (pb >= 0) m->param_owners[pb] = (ParamOwner){.lora = a, .is_b = 1};
    }
    for (int i = 0; i < m->n_params; i++)
        if (!m->param_owners[i].weight && !m->param_owners[i].lora)
            return error_set(err, "%s: no tensor of the model holds trainable '%s'", m->model_dir, m->params[i].name);
    return 0;
}

void llava_layers_free(LlavaModel *m) {
    free(m->layer_table.first);
    free(m->layer_table.members);
    free(m->param_owners);
    memset(&m->layer_table, 0, sizeof m->layer_table);
    m->param_owners = NULL;
}

const LayerTable *llava_layer_table(const LlavaModel *m) { return &m->layer_table; }

void llava_set_layer_hooks(LlavaModel *m, const LayerHooks *hooks) {
    m->has_hooks = hooks != NULL;
    if (hooks) m->hooks = *hooks;
    else memset(&m->hooks, 0, sizeof m->hooks);
}

int llava_hook(LlavaModel *m, LlavaHookPoint point, LlavaLayerGroup group, int index) {
    if (m->hook_failed) return -1;
    if (!m->has_hooks) return 0;
    int (*hook)(void *, int, Error *) = point == LLAVA_BEFORE_FORWARD    ? m->hooks.before_forward
                                        : point == LLAVA_AFTER_FORWARD   ? m->hooks.after_forward
                                        : point == LLAVA_BEFORE_BACKWARD ? m->hooks.before_backward
                                                                         : m->hooks.after_backward;
    if (hook == NULL || hook(m->hooks.user, llava_layer_number(m, group, index), &m->hook_error) == 0) return 0;
    m->hook_failed = 1;
    m->tape.failed = 1;
    return -1;
}

// ------------------------------------------------------------ storage

// Points the tensor's owner (and params[i]) at value / grad buffers.
static void set_value(LlavaModel *m, int i, float *value) {
    ParamOwner *o = &m->param_owners[i];
    if (o->weight) o->weight->owned = (float *)(o->weight->data = value);
    else if (o->is_b) o->lora->B = value;
    else o->lora->A = value;
    m->params[i].value = value;
}

static void set_grad(LlavaModel *m, int i, float *grad) {
    ParamOwner *o = &m->param_owners[i];
    if (o->weight) o->weight->grad = grad;
    else if (o->is_b) o->lora->dB = grad;
    else o->lora->dA = grad;
    m->params[i].grad = grad;
}

static int storage_alloc(void *ctx, int i, int value, int grad, Error *err) {
    LlavaModel *m = ctx;
    size_t n = m->params[i].numel;
    if (value && m->params[i].value == NULL) {
        float *v = kernel_alloc(n);
        if (v == NULL) return error_set(err, "out of memory for the values of %s (%zu)", m->params[i].name, n);
        set_value(m, i, v);
    }
    if (grad && m->params[i].grad == NULL) {
        float *g = kernel_alloc(n);  // zeroed
        if (g == NULL) return error_set(err, "out of memory for the gradient of %s (%zu)", m->params[i].name, n);
        set_grad(m, i, g);
    }
    return 0;
}

static void storage_free(void *ctx, int i, int value, int grad) {
    LlavaModel *m = ctx;
    if (value && m->params[i].value) {
        kernel_free(m->params[i].value);
        set_value(m, i, NULL);
    }
    if (grad && m->params[i].grad) {
        kernel_free(m->params[i].grad);
        set_grad(m, i, NULL);
    }
}

ParamStorage llava_param_storage(LlavaModel *m) {
    return (ParamStorage){.ctx = m, .alloc = storage_alloc, .free = storage_free};
}
