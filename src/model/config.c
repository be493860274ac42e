#include "config.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/fs.h"

// Reads an optional integer key; wrong type is an error naming the key.
static int get_int(const cJSON *object, const char *key, int *out, const char *path, const char *section, Error *err) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, key);
    if (item == NULL || cJSON_IsNull(item)) return 0;
    double v = item->valuedouble;
    if (!cJSON_IsNumber(item) || floor(v) != v || fabs(v) > 2147483647.0)
        return error_set(err, "%s: %s%s: expected an integer", path, section, key);
    *out = (int)v;
    return 0;
}

static int get_float(const cJSON *object, const char *key, double *out, const char *path, const char *section, Error *err) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, key);
    if (item == NULL || cJSON_IsNull(item)) return 0;
    if (!cJSON_IsNumber(item)) return error_set(err, "%s: %s%s: expected a number", path, section, key);
    *out = item->valuedouble;
    return 0;
}

static int get_bool(const cJSON *object, const char *key, int *out, const char *path, const char *section, Error *err) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, key);
    if (item == NULL || cJSON_IsNull(item)) return 0;
    if (!cJSON_IsBool(item)) return error_set(err, "%s: %s%s: expected true or false", path, section, key);
    *out = cJSON_IsTrue(item);
    return 0;
}

static int get_string(const cJSON *object, const char *key, char *out, size_t size, const char *path, const char *section,
                      Error *err) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, key);
    if (item == NULL || cJSON_IsNull(item)) return 0;
    if (!cJSON_IsString(item) || strlen(item->valuestring) >= size)
        return error_set(err, "%s: %s%s: expected a short string", path, section, key);
    strcpy(out, item->valuestring);
    return 0;
}

// transformers' CLIPVisionConfig defaults; LlavaConfig uses other ones when
// vision_config is absent altogether (see below).
static void vision_defaults(VisionConfig *v) {
    *v = (VisionConfig){.hidden_size = 768, .intermediate_size = 3072, .num_hidden_layers = 12,
                        .num_attention_heads = 12, .num_channels = 3, .image_size = 224, .patch_size = 32,
                        .projection_dim = 512, .layer_norm_eps = 1e-5};
    strcpy(v->hidden_act, "quick_gelu");
}

static void text_defaults(TextConfig *t) {
    *t = (TextConfig){.vocab_size = 32000, .hidden_size = 4096, .intermediate_size = 11008, .num_hidden_layers = 32,
                      .num_attention_heads = 32, .num_key_value_heads = 0, .head_dim = 0,
                      .max_position_embeddings = 2048, .rms_norm_eps = 1e-6, .rope_theta = 10000.0,
                      .bos_token_id = 1, .eos_token_id = 2, .pad_token_id = -1};
    strcpy(t->hidden_act, "silu");
}

static int parse_vision(VisionConfig *v, const cJSON *o, const char *path, Error *err) {
    const char *s = "vision_config.";
    if (get_int(o, "hidden_size", &v->hidden_size, path, s, err) || get_int(o, "intermediate_size", &v->intermediate_size, path, s, err) ||
        get_int(o, "num_hidden_layers", &v->num_hidden_layers, path, s, err) ||
        get_int(o, "num_attention_heads", &v->num_attention_heads, path, s, err) ||
        get_int(o, "num_channels", &v->num_channels, path, s, err) || get_int(o, "image_size", &v->image_size, path, s, err) ||
        get_int(o, "patch_size", &v->patch_size, path, s, err) || get_int(o, "projection_dim", &v->projection_dim, path, s, err) ||
        get_float(o, "layer_norm_eps", &v->layer_norm_eps, path, s, err) ||
        get_string(o, "hidden_act", v->hidden_act, sizeof v->hidden_act, path, s, err))
        return -1;
    return 0;
}

static int parse_text(TextConfig *t, const cJSON *o, const char *path, const char *s, Error *err) {
    if (get_int(o, "vocab_size", &t->vocab_size, path, s, err) || get_int(o, "hidden_size", &t->hidden_size, path, s, err) ||
        get_int(o, "intermediate_size", &t->intermediate_size, path, s, err) ||
        get_int(o, "num_hidden_layers", &t->num_hidden_layers, path, s, err) ||
        get_int(o, "num_attention_heads", &t->num_attention_heads, path, s, err) ||
        get_int(o, "num_key_value_heads", &t->num_key_value_heads, path, s, err) ||
        get_int(o, "head_dim", &t->head_dim, path, s, err) ||
        get_int(o, "max_position_embeddings", &t->max_position_embeddings, path, s, err) ||
        get_float(o, "rms_norm_eps", &t->rms_norm_eps, path, s, err) || get_float(o, "rope_theta", &t->rope_theta, path, s, err) ||
        get_bool(o, "tie_word_embeddings", &t->tie_word_embeddings, path, s, err) ||
        get_bool(o, "attention_bias", &t->attention_bias, path, s, err) ||
        get_bool(o, "mlp_bias", &t->mlp_bias, path, s, err) ||
        get_string(o, "hidden_act", t->hidden_act, sizeof t->hidden_act, path, s, err) ||
        get_int(o, "bos_token_id", &t->bos_token_id, path, s, err) || get_int(o, "eos_token_id", &t->eos_token_id, path, s, err) ||
        get_int(o, "pad_token_id", &t->pad_token_id, path, s, err))
        return -1;
    const cJSON *scaling = cJSON_GetObjectItemCaseSensitive(o, "rope_scaling");
    if (scaling && !cJSON_IsNull(scaling))
        return error_set(err, "%s: %srope_scaling is not supported (only plain RoPE)", path, s);
    return 0;
}

static int check_positive(const char *path, const char *key, int value, Error *err) {
    if (value <= 0) return error_set(err, "%s: %s must be positive (got %d)", path, key, value);
    return 0;
}

static int validate(ModelConfig *c, const char *path, Error *err) {
    TextConfig *t = &c->text;
    if (t->num_key_value_heads == 0) t->num_key_value_heads = t->num_attention_heads;
    if (check_positive(path, "vocab_size", t->vocab_size, err) || check_positive(path, "hidden_size", t->hidden_size, err) ||
        check_positive(path, "intermediate_size", t->intermediate_size, err) ||
        check_positive(path, "num_hidden_layers", t->num_hidden_layers, err) ||
        check_positive(path, "num_attention_heads", t->num_attention_heads, err) ||
        check_positive(path, "num_key_value_heads", t->num_key_value_heads, err))
        return -1;
    if (t->head_dim == 0) {
        if (t->hidden_size % t->num_attention_heads != 0)
            return error_set(err, "%s: hidden_size %d is not divisible by num_attention_heads %d", path, t->hidden_size,
                             t->num_attention_heads);
        t->head_dim = t->hidden_size / t->num_attention_heads;
    }
    if (t->head_dim % 2 != 0) return error_set(err, "%s: head_dim %d must be even for RoPE", path, t->head_dim);
    if (t->num_attention_heads % t->num_key_value_heads != 0)
        return error_set(err, "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", path,
                         t->num_attention_heads, t->num_key_value_heads);
    if (strcmp(t->hidden_act, "silu") != 0)
        return error_set(err, "%s: text hidden_act '%s' is not supported (silu only)", path, t->hidden_act);
    if (!(t->rms_norm_eps > 0) || !(t->rope_theta > 0)) return error_set(err, "%s: rms_norm_eps and rope_theta must be positive", path);
    if (!c->has_vision) return 0;
    VisionConfig *v = &c->vision;
    if (check_positive(path, "vision_config.hidden_size", v->hidden_size, err) ||
        check_positive(path, "vision_config.intermediate_size", v->intermediate_size, err) ||
        check_positive(path, "vision_config.num_hidden_layers", v->num_hidden_layers, err) ||
        check_positive(path, "vision_config.num_attention_heads", v->num_attention_heads, err) ||
        check_positive(path, "vision_config.image_size", v->image_size, err) ||
        check_positive(path, "vision_config.patch_size", v->patch_size, err) ||
        check_positive(path, "vision_config.num_channels", v->num_channels, err))
        return -1;
    if (v->hidden_size % v->num_attention_heads != 0)
        return error_set(err, "%s: vision_config.hidden_size %d is not divisible by num_attention_heads %d", path,
                         v->hidden_size, v->num_attention_heads);
    if (v->image_size % v->patch_size != 0)
        return error_set(err, "%s: vision_config.image_size %d is not a multiple of patch_size %d", path, v->image_size,
                         v->patch_size);
    if (strcmp(v->hidden_act, "quick_gelu") != 0 && strcmp(v->hidden_act, "gelu") != 0)
        return error_set(err, "%s: vision_config.hidden_act '%s' is not supported (quick_gelu, gelu)", path, v->hidden_act);
    if (strcmp(c->projector_hidden_act, "gelu") != 0)
        return error_set(err, "%s: projector_hidden_act '%s' is not supported (gelu)", path, c->projector_hidden_act);
    if (strcmp(c->vision_feature_select_strategy, "default") != 0 && strcmp(c->vision_feature_select_strategy, "full") != 0)
        return error_set(err, "%s: vision_feature_select_strategy '%s' is not one of default, full", path,
                         c->vision_feature_select_strategy);
    int layer = c->vision_feature_layer;
    if (layer < -(v->num_hidden_layers + 1) || layer > v->num_hidden_layers)
        return error_set(err, "%s: vision_feature_layer %d is outside the %d layers", path, layer, v->num_hidden_layers);
    int grid = v->image_size / v->patch_size;
    int tokens = grid * grid + (strcmp(c->vision_feature_select_strategy, "full") == 0 ? 1 : 0);
    if (c->image_seq_length <= 0) c->image_seq_length = tokens;
    if (c->image_seq_length != tokens)
        return error_set(err, "%s: image_seq_length %d disagrees with the vision tower's %d features per image", path,
                         c->image_seq_length, tokens);
    // The image token may lie past the embedding table (LLaVA-1.5's default
    // 32000 with vocab 32000): its embeddings are replaced, never looked up.
    if (c->image_token_index < 0) return error_set(err, "%s: image_token_index %d is negative", path, c->image_token_index);
    return 0;
}

int model_config_parse(ModelConfig *c, const char *json_text, const char *path, Error *err) {
    memset(c, 0, sizeof *c);
    cJSON *root = cJSON_Parse(json_text);
    if (root == NULL || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return error_set(err, "%s: not a JSON object", path);
    }
    strcpy(c->torch_dtype, "float32");
    int rc = get_string(root, "model_type", c->model_type, sizeof c->model_type, path, "", err);
    if (rc == 0) rc = get_string(root, "torch_dtype", c->torch_dtype, sizeof c->torch_dtype, path, "", err);
    if (rc == 0 && c->model_type[0] == '\0') rc = error_set(err, "%s: missing model_type", path);
    text_defaults(&c->text);
    if (rc == 0 && strcmp(c->model_type, "llama") == 0) {
        rc = parse_text(&c->text, root, path, "", err);
    } else if (rc == 0 && strcmp(c->model_type, "llava") == 0) {
        c->has_vision = 1;
        strcpy(c->projector_hidden_act, "gelu");
        strcpy(c->vision_feature_select_strategy, "default");
        c->vision_feature_layer = -2;
        c->image_token_index = 32000;
        c->image_seq_length = 0;  // derived from the tower unless given
        c->multimodal_projector_bias = 1;
        const cJSON *vision = cJSON_GetObjectItemCaseSensitive(root, "vision_config");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(root, "text_config");
        vision_defaults(&c->vision);
        if (vision == NULL || cJSON_IsNull(vision)) {
            // LlavaConfig's own choice when vision_config is absent.
            c->vision = (VisionConfig){.hidden_size = 1024, .intermediate_size = 4096, .num_hidden_layers = 24,
                                       .num_attention_heads = 16, .num_channels = 3, .image_size = 336,
                                       .patch_size = 14, .projection_dim = 768, .layer_norm_eps = 1e-5};
            strcpy(c->vision.hidden_act, "quick_gelu");
        } else if (!cJSON_IsObject(vision)) {
            rc = error_set(err, "%s: vision_config: expected an object", path);
        } else {
            rc = parse_vision(&c->vision, vision, path, err);
        }
        if (rc == 0 && text && !cJSON_IsNull(text)) {
            if (!cJSON_IsObject(text)) rc = error_set(err, "%s: text_config: expected an object", path);
            else rc = parse_text(&c->text, text, path, "text_config.", err);
        }
        const cJSON *feature_layer = cJSON_GetObjectItemCaseSensitive(root, "vision_feature_layer");
        if (rc == 0 && cJSON_IsArray(feature_layer))
            rc = error_set(err, "%s: vision_feature_layer as a list is not supported", path);
        if (rc == 0)
            rc = get_string(root, "projector_hidden_act", c->projector_hidden_act, sizeof c->projector_hidden_act, path, "", err) ||
                 get_int(root, "vision_feature_layer", &c->vision_feature_layer, path, "", err) ||
                 get_string(root, "vision_feature_select_strategy", c->vision_feature_select_strategy,
                            sizeof c->vision_feature_select_strategy, path, "", err) ||
                 get_int(root, "image_token_index", &c->image_token_index, path, "", err) ||
                 get_int(root, "image_token_id", &c->image_token_index, path, "", err) ||
                 get_int(root, "image_seq_length", &c->image_seq_length, path, "", err) ||
                 get_bool(root, "multimodal_projector_bias", &c->multimodal_projector_bias, path, "", err) ||
                 get_bool(root, "is_yi_vl_derived_model", &c->is_yi_vl_derived_model, path, "", err) ||
                 get_bool(root, "tie_word_embeddings", &c->text.tie_word_embeddings, path, "", err) ||
                 get_int(root, "pad_token_id", &c->text.pad_token_id, path, "", err);
        if (rc != 0) rc = -1;
    } else if (rc == 0) {
        rc = error_set(err, "%s: model_type '%s' is not supported (llava, llama)", path, c->model_type);
    }
    cJSON_Delete(root);
    if (rc == 0) rc = validate(c, path, err);
    return rc;
}

int model_config_load(ModelConfig *config, const char *model_dir, Error *err) {
    char path[4096];
    if (path_join(path, sizeof path, model_dir, "config.json", err) != 0) return -1;
    char *text;
    if (read_file(path, 16u << 20, &text, NULL, err) != 0) return -1;
    int rc = model_config_parse(config, text, path, err);
    free(text);
    return rc;
}

int model_config_vision_layers_needed(const ModelConfig *c) {
    int layers = c->vision.num_hidden_layers;
    int index = c->vision_feature_layer < 0 ? layers + 1 + c->vision_feature_layer : c->vision_feature_layer;
    return index;  // hidden_states[index] is the output of layer index-1 (0 = embeddings)
}

static cJSON *text_to_json(const TextConfig *t, const char *torch_dtype) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model_type", "llama");
    cJSON_AddStringToObject(o, "hidden_act", t->hidden_act);
    cJSON_AddNumberToObject(o, "vocab_size", t->vocab_size);
    cJSON_AddNumberToObject(o, "hidden_size", t->hidden_size);
    cJSON_AddNumberToObject(o, "intermediate_size", t->intermediate_size);
    cJSON_AddNumberToObject(o, "num_hidden_layers", t->num_hidden_layers);
    cJSON_AddNumberToObject(o, "num_attention_heads", t->num_attention_heads);
    cJSON_AddNumberToObject(o, "num_key_value_heads", t->num_key_value_heads);
    cJSON_AddNumberToObject(o, "head_dim", t->head_dim);
    cJSON_AddNumberToObject(o, "max_position_embeddings", t->max_position_embeddings);
    cJSON_AddNumberToObject(o, "rms_norm_eps", t->rms_norm_eps);
    cJSON_AddNumberToObject(o, "rope_theta", t->rope_theta);
    cJSON_AddBoolToObject(o, "tie_word_embeddings", t->tie_word_embeddings);
    cJSON_AddBoolToObject(o, "attention_bias", t->attention_bias);
    cJSON_AddBoolToObject(o, "mlp_bias", t->mlp_bias);
    cJSON_AddNumberToObject(o, "bos_token_id", t->bos_token_id);
    cJSON_AddNumberToObject(o, "eos_token_id", t->eos_token_id);
    if (t->pad_token_id >= 0) cJSON_AddNumberToObject(o, "pad_token_id", t->pad_token_id);
    cJSON_AddStringToObject(o, "torch_dtype", torch_dtype);
    return o;
}

char *model_config_to_json(const ModelConfig *c) {
    cJSON *root;
    if (!c->has_vision) {
        root = text_to_json(&c->text, c->torch_dtype);
        cJSON_AddItemToObject(root, "architectures", cJSON_CreateStringArray((const char *[]){"LlamaForCausalLM"}, 1));
    } else {
        root = cJSON_CreateObject();
        cJSON_AddItemToObject(root, "architectures",
                              cJSON_CreateStringArray((const char *[]){"LlavaForConditionalGeneration"}, 1));
        cJSON_AddStringToObject(root, "model_type", "llava");
        cJSON_AddNumberToObject(root, "image_token_index", c->image_token_index);
        cJSON_AddNumberToObject(root, "image_seq_length", c->image_seq_length);
        cJSON_AddStringToObject(root, "projector_hidden_act", c->projector_hidden_act);
        cJSON_AddBoolToObject(root, "multimodal_projector_bias", c->multimodal_projector_bias);
        cJSON_AddNumberToObject(root, "vision_feature_layer", c->vision_feature_layer);
        cJSON_AddStringToObject(root, "vision_feature_select_strategy", c->vision_feature_select_strategy);
        if (c->is_yi_vl_derived_model) cJSON_AddBoolToObject(root, "is_yi_vl_derived_model", 1);
        cJSON_AddBoolToObject(root, "tie_word_embeddings", c->text.tie_word_embeddings);
        if (c->text.pad_token_id >= 0) cJSON_AddNumberToObject(root, "pad_token_id", c->text.pad_token_id);
        cJSON_AddItemToObject(root, "text_config", text_to_json(&c->text, c->torch_dtype));
        cJSON *v = cJSON_CreateObject();
        const VisionConfig *vc = &c->vision;
        cJSON_AddStringToObject(v, "model_type", "clip_vision_model");
        cJSON_AddStringToObject(v, "hidden_act", vc->hidden_act);
        cJSON_AddNumberToObject(v, "hidden_size", vc->hidden_size);
        cJSON_AddNumberToObject(v, "intermediate_size", vc->intermediate_size);
        cJSON_AddNumberToObject(v, "num_hidden_layers", vc->num_hidden_layers);
        cJSON_AddNumberToObject(v, "num_attention_heads", vc->num_attention_heads);
        cJSON_AddNumberToObject(v, "num_channels", vc->num_channels);
        cJSON_AddNumberToObject(v, "image_size", vc->image_size);
        cJSON_AddNumberToObject(v, "patch_size", vc->patch_size);
        cJSON_AddNumberToObject(v, "projection_dim", vc->projection_dim);
        cJSON_AddNumberToObject(v, "layer_norm_eps", vc->layer_norm_eps);
        cJSON_AddItemToObject(root, "vision_config", v);
        cJSON_AddStringToObject(root, "torch_dtype", c->torch_dtype);
    }
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    return text;
}
