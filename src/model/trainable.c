// Which tensors train, as LLaMA-Factory (d8a5571) decides it: model/adapter.py
// (_setup_full_tuning, _setup_freeze_tuning, _setup_lora_tuning),
// model_utils/visual.py (get_forbidden_modules, patch_target_modules) and
// model_utils/misc.py (find_all_linear_modules). All matching is by substring
// of the classic module / parameter names, as theirs is.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llava_internal.h"

// A growing set of names (a Yi-VL-6B adapter lists hundreds of module paths).
typedef struct {
    int count, capacity;
    char (*items)[160];
} NameList;

static int name_list_add(NameList *list, const char *name) {
    for (int i = 0; i < list->count; i++)
        if (strcmp(list->items[i], name) == 0) return 0;
    if (list->count == list->capacity) {
        int capacity = list->capacity ? 2 * list->capacity : 16;
        void *grown = realloc(list->items, sizeof list->items[0] * (size_t)capacity);
        if (grown == NULL) return -1;
        list->items = grown;
        list->capacity = capacity;
    }
    snprintf(list->items[list->count++], sizeof list->items[0], "%s", name);
    return 0;
}

static void name_list_free(NameList *list) {
    free(list->items);
    memset(list, 0, sizeof *list);
}

// "a, b,c" -> {"a", "b", "c"} (items stripped, as split_arg does).
static int split_names(const char *text, NameList *list) {
    name_list_free(list);
    const char *p = text;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        while (len && (*p == ' ' || *p == '\t')) p++, len--;
        while (len && (p[len - 1] == ' ' || p[len - 1] == '\t')) len--;
        char item[160];
        if (len >= sizeof item) return -1;
        memcpy(item, p, len);
        item[len] = '\0';
        if (len && name_list_add(list, item) != 0) return -1;
        if (!end) break;
        p = end + 1;
    }
    return 0;
}

static int contains_any(const char *name, const NameList *list) {
    for (int i = 0; i < list->count; i++)
        if (strstr(name, list->items[i])) return 1;
    return 0;
}

static void forbidden_modules(const LlavaOptions *o, NameList *out) {
    name_list_free(out);
    if (o->freeze_vision_tower) name_list_add(out, "vision_tower");
    if (o->freeze_multi_modal_projector) name_list_add(out, "multi_modal_projector");
    if (o->freeze_language_model) name_list_add(out, "language_model");
}

// Module path of a parameter: its name without the last component.
static void module_of(const char *param, char *out, size_t size) {
    snprintf(out, size, "%s", param);
    char *dot = strrchr(out, '.');
    if (dot) *dot = '\0';
}

// A Linear module: a 2-D ".weight" that is not an embedding table.
static int is_linear_weight(const LayoutEntry *e) {
    size_t n = strlen(e->name);
    return e->ndim == 2 && n > 7 && strcmp(e->name + n - 7, ".weight") == 0 && !strstr(e->name, "embed_tokens") &&
           !strstr(e->name, "position_embedding");
}

static int select_full(LlavaModel *m, const NameList *forbidden) {
    for (int i = 0; i < m->n_weights; i++) m->weights[i].trainable = !contains_any(m->weights[i].entry->name, forbidden);
    return 0;
}

static int select_freeze_lists(LlavaModel *m, const NameList *forbidden, NameList *modules, NameList *hidden,
                               NameList *patterns, Error *err) {
    int layers = m->config.text.num_hidden_layers, n = m->options.freeze_trainable_layers;
    int first = n > 0 ? (layers - n > 0 ? layers - n : 0) : 0;
    int last = n > 0 ? layers : (-n < layers ? -n : layers);
    if (split_names(m->options.freeze_trainable_modules, modules) != 0)
        return error_set(err, "freeze_trainable_modules: too many or too long names");
    // Module names that follow a layer index (".0." or ".1."), as LLaMA-Factory lists them.
    for (int i = 0; i < m->n_weights; i++) {
        const char *name = m->weights[i].entry->name, *hit = NULL, *p = name;
        const char *marker = strstr(name, ".0.") ? ".0." : (strstr(name, ".1.") ? ".1." : NULL);
        if (!marker) continue;
        while ((p = strstr(p, marker)) != NULL) hit = p++;
        char word[160];
        snprintf(word, sizeof word, "%s", hit + 3);
        char *dot = strchr(word, '.');
        if (dot) *dot = '\0';
        name_list_add(hidden, word);
    }
    for (int i = 0; i < modules->count; i++) {
        const char *module = modules->items[i];
        int all = strcmp(module, "all") == 0, known = all;
        for (int j = 0; j < hidden->count && !known; j++) known = strcmp(hidden->items[j], module) == 0;
        if (!known) return error_set(err, "freeze_trainable_modules: module '%s' is not found in the model", module);
        for (int idx = first; idx < last; idx++) {
            char pattern[160];
            snprintf(pattern, sizeof pattern, ".%d.%.140s", idx, all ? "" : module);
            if (name_list_add(patterns, pattern) != 0) return error_set(err, "freeze_trainable_layers: too many layers");
        }
    }
    for (int i = 0; i < m->n_weights; i++) {
        const char *name = m->weights[i].entry->name;
        m->weights[i].trainable = contains_any(name, patterns) && !contains_any(name, forbidden);
    }
    return 0;
}

static int select_freeze(LlavaModel *m, const NameList *forbidden, Error *err) {
    NameList modules = {0}, hidden = {0}, patterns = {0};
    int rc = select_freeze_lists(m, forbidden, &modules, &hidden, &patterns, err);
    name_list_free(&modules);
    name_list_free(&hidden);
    name_list_free(&patterns);
    return rc;
}

static int add_lora(LlavaModel *m, const char *module, int in, int out, Rng *rng, Error *err) {
    const LlavaOptions *o = &m->options;
    LoraAdapter *a = &m->loras[m->n_loras++];
    memset(a, 0, sizeof *a);
    snprintf(a->module, sizeof a->module, "%s", module);
    a->in = in;
    a->out = out;
    a->rank = o->lora_rank;
    a->scale = (float)(o->lora_alpha / o->lora_rank);
    a->dropout = (float)o->lora_dropout;
    a->A = kernel_alloc((size_t)a->rank * in);
    a->B = kernel_alloc((size_t)out * a->rank);
    a->dA = kernel_alloc((size_t)a->rank * in);
    a->dB = kernel_alloc((size_t)out * a->rank);
    if (!a->A || !a->B || !a->dA || !a->dB) return error_set(err, "out of memory creating LoRA for %s", module);
    // PEFT: A ~ kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)); B = 0.
    float bound = 1.0f / sqrtf((float)in);
    for (size_t i = 0; i < (size_t)a->rank * in; i++) a->A[i] = (float)((2.0 * rng_uniform(rng) - 1.0) * bound);
    snprintf(a->name_A, sizeof a->name_A, "base_model.model.%s.lora_A.weight", module);
    snprintf(a->name_B, sizeof a->name_B, "base_model.model.%s.lora_B.weight", module);
    return 0;
}

// The lists are the caller's, so that every exit frees them.
static int select_lora_lists(LlavaModel *m, const NameList *forbidden, NameList *targets, NameList *excluded,
                             NameList *extra, Error *err) {
    const LlavaOptions *o = &m->options;
    if (o->lora_rank <= 0) return error_set(err, "lora_rank must be positive, got %d", o->lora_rank);
    if (split_names(o->lora_target, targets) != 0) return error_set(err, "lora_target: out of memory or a name too long");
    if (targets->count == 1 && strcmp(targets->items[0], "all") == 0) {
        // find_all_linear_modules: leaf names of every Linear outside lm_head,
        // the projector, and the vision tower when it is frozen.
        name_list_add(excluded, "lm_head");
        name_list_add(excluded, "multi_modal_projector");
        if (o->freeze_vision_tower) name_list_add(excluded, "vision_tower");
        targets->count = 0;
        for (int i = 0; i < m->layout.count; i++) {
            const LayoutEntry *e = &m->layout.entries[i];
            if (!is_linear_weight(e) || contains_any(e->name, excluded)) continue;
            char module[160];
            module_of(e->name, module, sizeof module);
            name_list_add(targets, strrchr(module, '.') ? strrchr(module, '.') + 1 : module);
        }
    }
    // patch_target_modules: every module whose path contains a target and no
    // forbidden group. Modules are all dotted prefixes of parameter paths.
    Rng rng;
    rng_seed(&rng, o->seed);
    m->loras = calloc((size_t)m->layout.count, sizeof(LoraAdapter));
    if (m->loras == NULL) return error_set(err, "out of memory");
    char last_checked[160] = "";
    for (int i = 0; i < m->layout.count; i++) {
        const LayoutEntry *e = &m->layout.entries[i];
        char module[160];
        module_of(e->name, module, sizeof module);
        // Check each prefix module once (entries of one module are adjacent).
        if (strcmp(module, last_checked) == 0) continue;
        snprintf(last_checked, sizeof last_checked, "%s", module);
        char prefix[160];
        snprintf(prefix, sizeof prefix, "%s", module);
        for (;;) {
            if (contains_any(prefix, targets) && !contains_any(prefix, forbidden)) {
                int linear = strcmp(prefix, module) == 0 && is_linear_weight(e);
                if (!linear) {
                    // Container modules repeat for every child; only complain once per name.
                    return error_set(err,
                                     "lora_target: module '%s' matches but is not a Linear layer (vlft puts LoRA on "
                                     "Linear layers only)",
                                     prefix);
                }
                if (add_lora(m, module, (int)e->shape[1], (int)e->shape[0], &rng, err) != 0) return -1;
            }
            char *dot = strrchr(prefix, '.');
            if (!dot) break;
            *dot = '\0';
        }
    }
    if (m->n_loras == 0) return error_set(err, "lora_target: no module of the model matches '%s'", o->lora_target);
    // additional_target (PEFT modules_to_save): modules whose path ends with a name train in full.
    if (split_names(o->additional_target, extra) != 0) return error_set(err, "additional_target: a name too long");
    for (int i = 0; i < m->n_weights; i++) {
        char module[160];
        module_of(m->weights[i].entry->name, module, sizeof module);
        size_t ml = strlen(module);
        for (int j = 0; j < extra->count; j++) {
            size_t tl = strlen(extra->items[j]);
            if (ml >= tl && strcmp(module + ml - tl, extra->items[j]) == 0) m->weights[i].trainable = 1;
        }
    }
    return 0;
}

static int select_lora(LlavaModel *m, const NameList *forbidden, Error *err) {
    NameList targets = {0}, excluded = {0}, extra = {0};
    int rc = select_lora_lists(m, forbidden, &targets, &excluded, &extra, err);
    name_list_free(&targets);
    name_list_free(&excluded);
    name_list_free(&extra);
    return rc;
}

// Vision layers past the selected feature layer and post_layernorm never run:
// in PyTorch their gradient stays None and the optimizer skips them, so here
// they are simply not trainable (a LoRA adapter on them is saved untouched).
static int used_by_forward(const LlavaModel *m, const char *name) {
    if (!m->config.has_vision) return 1;
    if (strstr(name, "vision_tower.vision_model.post_layernorm")) return 0;
    const char *marker = "vision_tower.vision_model.encoder.layers.";
    const char *p = strstr(name, marker);
    if (p == NULL) return 1;
    return atoi(p + strlen(marker)) < model_config_vision_layers_needed(&m->config);
}

int llava_select_trainable(LlavaModel *m, Error *err) {
    NameList forbidden = {0};
    forbidden_modules(&m->options, &forbidden);
    for (int i = 0; i < m->n_weights; i++) m->weights[i].trainable = 0;
    int rc;
    switch (m->options.finetuning_type) {
    case FINETUNE_NONE: rc = 0; break;
    case FINETUNE_FULL: rc = select_full(m, &forbidden); break;
    case FINETUNE_FREEZE: rc = select_freeze(m, &forbidden, err); break;
    case FINETUNE_LORA: rc = select_lora(m, &forbidden, err); break;
    default: rc = error_set(err, "unknown finetuning type");
    }
    for (int i = 0; i < m->n_weights; i++)
        if (!used_by_forward(m, m->weights[i].entry->name)) m->weights[i].trainable = 0;
    for (int i = 0; i < m->n_loras; i++) m->loras[i].unused = !used_by_forward(m, m->loras[i].module);
    name_list_free(&forbidden);
    return rc;
}

void llava_options_defaults(LlavaOptions *o) {
    memset(o, 0, sizeof *o);
    o->finetuning_type = FINETUNE_LORA;
    o->freeze_vision_tower = 1;
    o->freeze_multi_modal_projector = 1;
    o->freeze_language_model = 0;
    o->freeze_trainable_layers = 2;
    snprintf(o->freeze_trainable_modules, sizeof o->freeze_trainable_modules, "all");
    o->lora_rank = 8;
    o->lora_alpha = 16;
    o->lora_dropout = 0.0;
    snprintf(o->lora_target, sizeof o->lora_target, "all");
    o->seed = 42;
    o->gradient_checkpointing = 1;
    snprintf(o->device, sizeof o->device, "cpu");
}

int llava_options_from_recipe(const Recipe *r, LlavaOptions *o, Error *err) {
    llava_options_defaults(o);
    const char *type = r->finetuning_type ? r->finetuning_type : "lora";
    if (strcmp(type, "lora") == 0) o->finetuning_type = FINETUNE_LORA;
    else if (strcmp(type, "full") == 0) o->finetuning_type = FINETUNE_FULL;
    else if (strcmp(type, "freeze") == 0) o->finetuning_type = FINETUNE_FREEZE;
    else return error_set(err, "finetuning_type must be lora, full or freeze, got '%s'", type);
    o->freeze_vision_tower = r->freeze_vision_tower;
    o->freeze_multi_modal_projector = r->freeze_multi_modal_projector;
    if (r->train_mm_proj_only) {
        // Older LLaMA-Factory key: train the projector alone.
        o->freeze_language_model = 1;
        o->freeze_multi_modal_projector = 0;
        o->freeze_vision_tower = 1;
    }
    o->freeze_trainable_layers = r->freeze_trainable_layers;
    snprintf(o->freeze_trainable_modules, sizeof o->freeze_trainable_modules, "%s",
             r->freeze_trainable_modules ? r->freeze_trainable_modules : "all");
    o->lora_rank = r->lora_rank;
    o->lora_alpha = recipe_lora_alpha(r);
    o->lora_dropout = r->lora_dropout;
    if (snprintf(o->lora_target, sizeof o->lora_target, "%s", r->lora_target ? r->lora_target : "all") >=
        (int)sizeof o->lora_target)
        return error_set(err, "lora_target is too long");
    snprintf(o->additional_target, sizeof o->additional_target, "%s", r->additional_target ? r->additional_target : "");
    o->seed = (uint64_t)r->seed;
    o->threads = r->threads;
    o->gradient_checkpointing = !r->disable_gradient_checkpointing;
    o->bf16 = r->bf16;
    snprintf(o->device, sizeof o->device, "%s", r->device ? r->device : "auto");
    return 0;
}
