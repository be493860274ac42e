#include "recipe.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#include "../base/fs.h"

typedef enum { KEY_STRING, KEY_INT, KEY_FLOAT, KEY_BOOL, KEY_STRING_OR_BOOL } KeyType;

typedef struct {
    const char *name;
    KeyType type;
    size_t offset;
} RecipeKey;

#define KEY(field, type) {#field, type, offsetof(Recipe, field)}

static const RecipeKey recipe_keys[] = {
    KEY(model_name_or_path, KEY_STRING),
    KEY(adapter_name_or_path, KEY_STRING),
    KEY(use_fast_tokenizer, KEY_BOOL),
    KEY(image_max_pixels, KEY_INT),
    KEY(image_min_pixels, KEY_INT),
    KEY(stage, KEY_STRING),
    KEY(do_train, KEY_BOOL),
    KEY(do_eval, KEY_BOOL),
    KEY(finetuning_type, KEY_STRING),
    KEY(lora_rank, KEY_INT),
    KEY(lora_alpha, KEY_INT),
    KEY(lora_dropout, KEY_FLOAT),
    KEY(lora_target, KEY_STRING),
    KEY(additional_target, KEY_STRING),
    KEY(freeze_vision_tower, KEY_BOOL),
    KEY(freeze_multi_modal_projector, KEY_BOOL),
    KEY(train_mm_proj_only, KEY_BOOL),
    KEY(freeze_trainable_layers, KEY_INT),
    KEY(freeze_trainable_modules, KEY_STRING),
    KEY(disable_gradient_checkpointing, KEY_BOOL),
    KEY(dataset, KEY_STRING),
    KEY(eval_dataset, KEY_STRING),
    KEY(dataset_dir, KEY_STRING),
    {"template", KEY_STRING, offsetof(Recipe, template_name)},
    KEY(cutoff_len, KEY_INT),
    KEY(max_samples, KEY_INT),
    KEY(val_size, KEY_FLOAT),
    KEY(train_on_prompt, KEY_BOOL),
    KEY(mask_history, KEY_BOOL),
    KEY(allow_paths_outside_dataset_dir, KEY_BOOL),
    KEY(dataloader_num_workers, KEY_INT),
    KEY(output_dir, KEY_STRING),
    KEY(logging_steps, KEY_INT),
    KEY(save_steps, KEY_INT),
    KEY(save_total_limit, KEY_INT),
    KEY(plot_loss, KEY_BOOL),
    KEY(overwrite_output_dir, KEY_BOOL),
    KEY(save_only_model, KEY_BOOL),
    KEY(report_to, KEY_STRING),
    KEY(per_device_train_batch_size, KEY_INT),
    KEY(per_device_eval_batch_size, KEY_INT),
    KEY(gradient_accumulation_steps, KEY_INT),
    KEY(learning_rate, KEY_FLOAT),
    KEY(num_train_epochs, KEY_FLOAT),
    KEY(max_steps, KEY_INT),
    KEY(lr_scheduler_type, KEY_STRING),
    KEY(warmup_ratio, KEY_FLOAT),
    KEY(warmup_steps, KEY_INT),
    KEY(bf16, KEY_BOOL),
    KEY(adam_beta1, KEY_FLOAT),
    KEY(adam_beta2, KEY_FLOAT),
    KEY(adam_epsilon, KEY_FLOAT),
    KEY(weight_decay, KEY_FLOAT),
    KEY(max_grad_norm, KEY_FLOAT),
    KEY(seed, KEY_INT),
    KEY(resume_from_checkpoint, KEY_STRING_OR_BOOL),
    {"resume", KEY_STRING_OR_BOOL, offsetof(Recipe, resume_from_checkpoint)},
    KEY(eval_strategy, KEY_STRING),
    {"evaluation_strategy", KEY_STRING, offsetof(Recipe, eval_strategy)},
    KEY(eval_steps, KEY_INT),
    KEY(device, KEY_STRING),
    KEY(threads, KEY_INT),
    KEY(deepspeed, KEY_STRING),
    KEY(zero_stage, KEY_INT),
    KEY(export_dir, KEY_STRING),
    KEY(export_size, KEY_INT),
    KEY(export_legacy_format, KEY_BOOL),
    KEY(export_quantization_bit, KEY_INT),
};

// Keys LLaMA-Factory or transformers accept that change nothing in vlft.
static const char *const ignored_keys[] = {
    "trust_remote_code", "overwrite_cache", "preprocessing_num_workers", "ddp_timeout", "flash_attn",
    "save_safetensors", "logging_dir", "logging_strategy", "save_strategy", "tokenized_path", "cache_dir",
    "use_unsloth", "enable_liger_kernel", "optim", "dataloader_pin_memory", "dataloader_persistent_workers",
    "ddp_find_unused_parameters", "run_name", "push_to_hub", "hub_model_id", "fp16_full_eval", "bf16_full_eval",
    "tf32", "torch_compile", "include_num_input_tokens_seen", "load_best_model_at_end", "metric_for_best_model",
    "greater_is_better", "remove_unused_columns", "print_param_status", "upcast_layernorm", "upcast_lmhead_output",
    "packing", "neat_packing", "streaming", "buffer_size", "mix_strategy", "interleave_probs", "shift_attn",
    "rope_scaling", "low_cpu_mem_usage", "infer_backend", "vllm_maxlen", "moe_aux_loss_coef", "gradient_checkpointing",
    "freeze_language_model", "ignore_pad_token_for_loss", "predict_with_generate", "do_predict", "log_level",
    "disable_tqdm", "dataloader_drop_last", "export_device", "export_hub_model_id", "infer_dtype", NULL,
};

static const RecipeKey *find_key(const char *name) {
    for (size_t i = 0; i < sizeof recipe_keys / sizeof recipe_keys[0]; i++)
        if (strcmp(recipe_keys[i].name, name) == 0) return &recipe_keys[i];
    return NULL;
}

static int is_ignored_key(const char *name) {
    for (int i = 0; ignored_keys[i]; i++)
        if (strcmp(ignored_keys[i], name) == 0) return 1;
    return 0;
}

static void set_string(char **slot, const char *value) {
    free(*slot);
    *slot = value ? strdup(value) : NULL;
}

void recipe_defaults(Recipe *r) {
    memset(r, 0, sizeof *r);
    r->use_fast_tokenizer = 1;
    r->image_max_pixels = 768 * 768;
    r->image_min_pixels = 32 * 32;
    set_string(&r->stage, "sft");
    r->do_train = 1;
    set_string(&r->finetuning_type, "lora");
    r->lora_rank = 8;
    set_string(&r->lora_target, "all");
    r->freeze_vision_tower = 1;
    r->freeze_multi_modal_projector = 1;
    r->freeze_trainable_layers = 2;
    set_string(&r->freeze_trainable_modules, "all");
    set_string(&r->dataset_dir, "data");
    r->cutoff_len = 2048;
    r->logging_steps = 500;
    r->save_steps = 500;
    set_string(&r->report_to, "none");
    r->per_device_train_batch_size = 8;
    r->per_device_eval_batch_size = 8;
    r->gradient_accumulation_steps = 1;
    r->learning_rate = 5e-5;
    r->num_train_epochs = 3.0;
    r->max_steps = -1;
    set_string(&r->lr_scheduler_type, "linear");
    r->adam_beta1 = 0.9;
    r->adam_beta2 = 0.999;
    r->adam_epsilon = 1e-8;
    r->max_grad_norm = 1.0;
    r->seed = 42;
    set_string(&r->eval_strategy, "no");
    set_string(&r->device, "auto");
    r->zero_stage = -1;
    r->export_size = 5;
}

void recipe_free(Recipe *r) {
    for (size_t i = 0; i < sizeof recipe_keys / sizeof recipe_keys[0]; i++) {
        const RecipeKey *k = &recipe_keys[i];
        if (k->type == KEY_STRING || k->type == KEY_STRING_OR_BOOL) {
            char **slot = (char **)((char *)r + k->offset);
            free(*slot);
            *slot = NULL;
        }
    }
}

// YAML 1.1 booleans, as PyYAML reads them.
static int parse_bool(const char *s, int *out) {
    static const char *const truths[] = {"true", "yes", "on", NULL}, *const falsities[] = {"false", "no", "off", NULL};
    for (int i = 0; truths[i]; i++)
        if (strcasecmp(s, truths[i]) == 0) { *out = 1; return 0; }
    for (int i = 0; falsities[i]; i++)
        if (strcasecmp(s, falsities[i]) == 0) { *out = 0; return 0; }
    return -1;
}

static int parse_int(const char *s, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (s[0] == '\0' || *end != '\0' || errno != 0 || v < -2147483647L || v > 2147483647L) {
        // transformers accepts 3.0 for an int field only when it is whole
        char *fend;
        double d = strtod(s, &fend);
        if (s[0] == '\0' || *fend != '\0' || !isfinite(d) || floor(d) != d || fabs(d) > 2147483647.0) return -1;
        v = (long)d;
    }
    *out = (int)v;
    return 0;
}

static int parse_float(const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (s[0] == '\0' || *end != '\0' || errno == ERANGE || !isfinite(v)) return -1;
    *out = v;
    return 0;
}

static const char *type_name(KeyType type) {
    switch (type) {
    case KEY_INT: return "an integer";
    case KEY_FLOAT: return "a number";
    case KEY_BOOL: return "true or false";
    case KEY_STRING_OR_BOOL: return "a path or true/false";
    default: return "a string";
    }
}

static int is_null_scalar(const yaml_event_t *e) {
    const char *v = (const char *)e->data.scalar.value;
    if (e->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return 0;
    return v[0] == '\0' || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 || strcmp(v, "Null") == 0 ||
           strcmp(v, "NULL") == 0;
}

// Stores one scalar value into the field of key k.
static int store_value(Recipe *r, const RecipeKey *k, const yaml_event_t *e, const char *path, int line, Error *err) {
    void *slot = (char *)r + k->offset;
    const char *value = (const char *)e->data.scalar.value;
    if (is_null_scalar(e)) {
        // null resets optional strings; numbers and booleans keep their default
        if (k->type == KEY_STRING || k->type == KEY_STRING_OR_BOOL) set_string(slot, NULL);
        return 0;
    }
    int ok = 0;
    switch (k->type) {
    case KEY_STRING: set_string(slot, value); break;
    case KEY_INT: ok = parse_int(value, slot); break;
    case KEY_FLOAT: ok = parse_float(value, slot); break;
    case KEY_BOOL: ok = parse_bool(value, slot); break;
    case KEY_STRING_OR_BOOL: {
        int b;
        if (e->data.scalar.style == YAML_PLAIN_SCALAR_STYLE && parse_bool(value, &b) == 0) set_string(slot, b ? "true" : NULL);
        else set_string(slot, value);
        break;
    }
    }
    if (ok != 0) return error_set(err, "%s:%d: %s: expected %s, got '%s'", path, line, k->name, type_name(k->type), value);
    return 0;
}

// Consumes the rest of a list or mapping whose start event was just read
// (the value of an ignored key).
static int skip_collection(yaml_parser_t *parser, const char *path, int line, Error *err) {
    int depth = 1;
    while (depth > 0) {
        yaml_event_t inner;
        if (!yaml_parser_parse(parser, &inner)) return error_set(err, "%s:%d: invalid YAML", path, line);
        if (inner.type == YAML_SEQUENCE_START_EVENT || inner.type == YAML_MAPPING_START_EVENT) depth++;
        if (inner.type == YAML_SEQUENCE_END_EVENT || inner.type == YAML_MAPPING_END_EVENT) depth--;
        int ended = inner.type == YAML_STREAM_END_EVENT;
        yaml_event_delete(&inner);
        if (ended) return error_set(err, "%s:%d: invalid YAML", path, line);
    }
    return 0;
}

int recipe_parse(Recipe *r, const char *text, size_t length, const char *path, FILE *warn_out, Error *err) {
    recipe_defaults(r);
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) return error_set(err, "%s: cannot initialise the YAML parser", path);
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, length);
    // States: 0 before the top mapping, 1 expecting a key, 2 expecting a value.
    int state = 0, rc = 0, done = 0, seen_mapping = 0;
    char key[256] = "";
    int key_line = 0;
    const RecipeKey *current = NULL;
    int skip_value = 0;
    while (!done && rc == 0) {
        yaml_event_t e;
        if (!yaml_parser_parse(&parser, &e)) {
            // Where a construct began (an unclosed quote, say) helps more than where it broke.
            size_t error_line = (parser.context ? parser.context_mark.line : parser.problem_mark.line) + 1;
            rc = error_set(err, "%s:%zu: invalid YAML: %s%s%s", path, error_line, parser.context ? parser.context : "",
                           parser.context ? ": " : "", parser.problem ? parser.problem : "syntax error");
            break;
        }
        int line = (int)e.start_mark.line + 1;
        switch (e.type) {
        case YAML_STREAM_END_EVENT: done = 1; break;
        case YAML_STREAM_START_EVENT:
        case YAML_DOCUMENT_START_EVENT:
        case YAML_DOCUMENT_END_EVENT: break;
        case YAML_MAPPING_START_EVENT:
            if (state == 0 && !seen_mapping) {
                state = 1;
                seen_mapping = 1;
            } else if (state == 2 && skip_value) {
                rc = skip_collection(&parser, path, line, err);
                state = 1;
            } else if (state == 2) {
                rc = error_set(err, "%s:%d: %s: expected %s, got a mapping", path, line, key,
                               current ? type_name(current->type) : "a value");
            } else {
                rc = error_set(err, "%s:%d: expected one flat mapping of keys", path, line);
            }
            break;
        case YAML_MAPPING_END_EVENT: state = 3; break;
        case YAML_SEQUENCE_START_EVENT:
            if (state != 2) { rc = error_set(err, "%s:%d: expected a mapping of keys", path, line); break; }
            if (skip_value) {
                rc = skip_collection(&parser, path, line, err);
                state = 1;
                break;
            }
            if (current->type != KEY_STRING) {
                rc = error_set(err, "%s:%d: %s: expected %s, got a list", path, line, key, type_name(current->type));
                break;
            }
            {
                // A list of strings for a comma-list key ("dataset: [a, b]").
                char joined[4096] = "";
                for (;;) {
                    yaml_event_t item;
                    if (!yaml_parser_parse(&parser, &item)) { rc = error_set(err, "%s:%d: invalid YAML", path, line); break; }
                    if (item.type == YAML_SEQUENCE_END_EVENT) { yaml_event_delete(&item); break; }
                    if (item.type != YAML_SCALAR_EVENT) {
                        yaml_event_delete(&item);
                        rc = error_set(err, "%s:%d: %s: expected a list of strings", path, line, key);
                        break;
                    }
                    size_t used = strlen(joined);
                    if ((size_t)snprintf(joined + used, sizeof joined - used, "%s%s", used ? "," : "",
                                         (const char *)item.data.scalar.value) >= sizeof joined - used)
                        rc = error_set(err, "%s:%d: %s: list too long", path, line, key);
                    yaml_event_delete(&item);
                    if (rc) break;
                }
                if (rc == 0) set_string((char **)((char *)r + current->offset), joined);
            }
            state = 1;
            break;
        case YAML_SCALAR_EVENT:
            if (state == 1) {
                snprintf(key, sizeof key, "%s", (const char *)e.data.scalar.value);
                key_line = line;
                current = find_key(key);
                skip_value = 0;
                if (current == NULL) {
                    if (!is_ignored_key(key)) {
                        rc = error_set(err, "%s:%d: unknown key '%s'", path, line, key);
                        break;
                    }
                    skip_value = 1;
                    if (warn_out) fprintf(warn_out, "warning: %s:%d: '%s' does not apply to vlft; ignored\n", path, line, key);
                }
                state = 2;
            } else if (state == 2) {
                if (!skip_value) rc = store_value(r, current, &e, path, key_line, err);
                state = 1;
            } else {
                rc = error_set(err, "%s:%d: expected a mapping of keys, got a bare value", path, line);
            }
            break;
        case YAML_ALIAS_EVENT:
            rc = error_set(err, "%s:%d: YAML aliases are not supported", path, line);
            break;
        default: break;
        }
        yaml_event_delete(&e);
    }
    yaml_parser_delete(&parser);
    if (rc == 0 && !seen_mapping) rc = error_set(err, "%s: empty recipe (expected a mapping of keys)", path);
    if (rc != 0) recipe_free(r);
    return rc;
}

int recipe_load(Recipe *r, const char *path, FILE *warn_out, Error *err) {
    char *text;
    size_t size;
    if (read_file(path, 1u << 20, &text, &size, err) != 0) {
        // as after a parse error: every field safe to read, nothing to free
        recipe_defaults(r);
        recipe_free(r);
        return -1;
    }
    int rc = recipe_parse(r, text, size, path, warn_out, err);
    free(text);
    return rc;
}

// LLaMA-Factory's default alpha is twice the rank; an absurd rank (refused by
// recipe_validate) must still not overflow here, since --print-config prints it.
int recipe_lora_alpha(const Recipe *r) {
    if (r->lora_alpha > 0) return r->lora_alpha;
    return r->lora_rank > INT_MAX / 2 ? INT_MAX : 2 * r->lora_rank;
}

static int one_of(const char *value, const char *const *choices) {
    for (int i = 0; choices[i]; i++)
        if (value && strcmp(value, choices[i]) == 0) return 1;
    return 0;
}

int recipe_validate(const Recipe *r, const char *path, Error *err) {
    static const char *const stages[] = {"sft", NULL};
    static const char *const types[] = {"lora", "full", "freeze", NULL};
    static const char *const schedulers[] = {"linear", "cosine", "constant", "constant_with_warmup", NULL};
    static const char *const strategies[] = {"no", "steps", "epoch", NULL};
    static const char *const devices[] = {"auto", "cpu", "cuda", NULL};
    if (r->model_name_or_path == NULL) return error_set(err, "%s: model_name_or_path is required", path);
    if (!one_of(r->stage, stages)) return error_set(err, "%s: stage '%s' is not supported (sft)", path, r->stage ? r->stage : "");
    if (!one_of(r->finetuning_type, types))
        return error_set(err, "%s: finetuning_type '%s' is not one of lora, full, freeze", path, r->finetuning_type ? r->finetuning_type : "");
    if (!one_of(r->lr_scheduler_type, schedulers))
        return error_set(err, "%s: lr_scheduler_type '%s' is not one of linear, cosine, constant, constant_with_warmup", path,
                         r->lr_scheduler_type ? r->lr_scheduler_type : "");
    if (!one_of(r->eval_strategy, strategies))
        return error_set(err, "%s: eval_strategy '%s' is not one of no, steps, epoch", path, r->eval_strategy ? r->eval_strategy : "");
    if (!one_of(r->device, devices)) return error_set(err, "%s: device '%s' is not one of auto, cpu, cuda", path, r->device ? r->device : "");
    if (r->do_train && r->dataset == NULL) return error_set(err, "%s: dataset is required for training", path);
    if (r->do_train && r->template_name == NULL) return error_set(err, "%s: template is required", path);
    if (r->do_train && r->output_dir == NULL) return error_set(err, "%s: output_dir is required", path);
    if (r->cutoff_len < 1) return error_set(err, "%s: cutoff_len must be at least 1 (got %d)", path, r->cutoff_len);
    if (!(r->learning_rate >= 0)) return error_set(err, "%s: learning_rate must not be negative (got %g)", path, r->learning_rate);
    if (r->lora_rank < 1) return error_set(err, "%s: lora_rank must be at least 1 (got %d)", path, r->lora_rank);
    if (r->lora_rank > 65536) return error_set(err, "%s: lora_rank %d is larger than any layer (at most 65536)", path, r->lora_rank);
    if (r->lora_alpha < 0) return error_set(err, "%s: lora_alpha must be positive (got %d)", path, r->lora_alpha);
    if (!(r->lora_dropout >= 0 && r->lora_dropout < 1)) return error_set(err, "%s: lora_dropout must be in [0, 1)", path);
    if (r->per_device_train_batch_size < 1) return error_set(err, "%s: per_device_train_batch_size must be at least 1", path);
    if (r->per_device_eval_batch_size < 1) return error_set(err, "%s: per_device_eval_batch_size must be at least 1", path);
    if (r->gradient_accumulation_steps < 1) return error_set(err, "%s: gradient_accumulation_steps must be at least 1", path);
    if (!(r->num_train_epochs > 0) && r->max_steps <= 0) return error_set(err, "%s: num_train_epochs must be positive", path);
    if (!(r->warmup_ratio >= 0 && r->warmup_ratio <= 1)) return error_set(err, "%s: warmup_ratio must be in [0, 1]", path);
    if (r->warmup_steps < 0) return error_set(err, "%s: warmup_steps must not be negative", path);
    if (!(r->val_size >= 0)) return error_set(err, "%s: val_size must not be negative", path);
    if (r->max_samples < 0) return error_set(err, "%s: max_samples must not be negative", path);
    if (r->logging_steps < 1 || r->save_steps < 1) return error_set(err, "%s: logging_steps and save_steps must be at least 1", path);
    if (!(r->adam_beta1 >= 0 && r->adam_beta1 < 1 && r->adam_beta2 >= 0 && r->adam_beta2 < 1))
        return error_set(err, "%s: adam_beta1 and adam_beta2 must be in [0, 1)", path);
    if (!(r->adam_epsilon > 0)) return error_set(err, "%s: adam_epsilon must be positive", path);
    if (!(r->weight_decay >= 0)) return error_set(err, "%s: weight_decay must not be negative", path);
    if (!(r->max_grad_norm >= 0)) return error_set(err, "%s: max_grad_norm must not be negative", path);
    if (r->zero_stage < -1 || r->zero_stage > 3) return error_set(err, "%s: zero_stage must be 0, 1, 2 or 3", path);
    if (r->threads < 0) return error_set(err, "%s: threads must not be negative", path);
    return 0;
}

void recipe_print(const Recipe *r, FILE *out) {
    for (size_t i = 0; i < sizeof recipe_keys / sizeof recipe_keys[0]; i++) {
        const RecipeKey *k = &recipe_keys[i];
        if (strcmp(k->name, "resume") == 0 || strcmp(k->name, "evaluation_strategy") == 0) continue;  // aliases
        const void *slot = (const char *)r + k->offset;
        fprintf(out, "%s: ", k->name);
        switch (k->type) {
        case KEY_STRING:
        case KEY_STRING_OR_BOOL: {
            const char *s = *(char *const *)slot;
            fprintf(out, "%s\n", s ? s : "null");
            break;
        }
        case KEY_INT:
            if (strcmp(k->name, "lora_alpha") == 0) fprintf(out, "%d\n", recipe_lora_alpha(r));
            else fprintf(out, "%d\n", *(const int *)slot);
            break;
        case KEY_FLOAT: fprintf(out, "%.10g\n", *(const double *)slot); break;
        case KEY_BOOL: fprintf(out, "%s\n", *(const int *)slot ? "true" : "false"); break;
        }
    }
}
