// config.h - a Hugging Face config.json as vlft needs it.
//
// Two model types: "llava" (LlavaForConditionalGeneration: vision_config,
// text_config, projector) and plain "llama" (a language model alone). Absent
// keys take transformers' defaults for LlavaConfig / CLIPVisionConfig /
// LlamaConfig, so a config that transformers writes with defaults elided
// resolves to the same numbers here.
#ifndef VLFT_MODEL_CONFIG_H
#define VLFT_MODEL_CONFIG_H

#include "../base/error.h"

typedef struct {
    int hidden_size;
    int intermediate_size;
    int num_hidden_layers;
    int num_attention_heads;
    int num_channels;
    int image_size;
    int patch_size;
    int projection_dim;
    double layer_norm_eps;
    char hidden_act[32];  // "quick_gelu" or "gelu"
} VisionConfig;

typedef struct {
    int vocab_size;
    int hidden_size;
    int intermediate_size;
    int num_hidden_layers;
    int num_attention_heads;
    int num_key_value_heads;
    int head_dim;
    int max_position_embeddings;
    double rms_norm_eps;
    double rope_theta;
    int tie_word_embeddings;
    int attention_bias;
    int mlp_bias;
    char hidden_act[32];  // "silu"
    int bos_token_id;
    int eos_token_id;
    int pad_token_id;  // -1 when absent
} TextConfig;

typedef struct {
    char model_type[32];  // "llava" or "llama"
    int has_vision;       // llava
    VisionConfig vision;
    TextConfig text;
    char projector_hidden_act[32];
    int vision_feature_layer;  // negative counts from the end of hidden_states
    char vision_feature_select_strategy[32];  // "default" (drop class token) or "full"
    int image_token_index;
    int image_seq_length;  // image tokens per image
    int multimodal_projector_bias;
    int is_yi_vl_derived_model;
    char torch_dtype[16];  // "float32", "bfloat16", "float16" as written by transformers
} ModelConfig;

// Parses config.json text; path is used in messages.
int model_config_parse(ModelConfig *config, const char *json_text, const char *path, Error *err);
// Reads DIR/config.json.
int model_config_load(ModelConfig *config, const char *model_dir, Error *err);
// Serialises back to the JSON transformers writes (every key spelled out).
// Returns a malloc'd string.
char *model_config_to_json(const ModelConfig *config);
// Number of vision layers that must actually run to produce the selected
// feature layer (hidden_states[0] is the embeddings).
int model_config_vision_layers_needed(const ModelConfig *config);

#endif
