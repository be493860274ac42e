// config.json parsing: transformers' defaults, validation, wrong types.
#include <criterion/criterion.h>
#include <string.h>

#include "../../src/model/config.h"

static int parse(ModelConfig *c, const char *json, Error *err) { return model_config_parse(c, json, "cfg.json", err); }

Test(config, llava_defaults_match_transformers) {
    ModelConfig c;
    Error err;
    cr_assert_eq(parse(&c, "{\"model_type\":\"llava\"}", &err), 0, "%s", err.message);
    // LlavaConfig with vision_config absent: CLIP ViT-L/14 at 336
    cr_assert_eq(c.vision.hidden_size, 1024);
    cr_assert_eq(c.vision.num_hidden_layers, 24);
    cr_assert_eq(c.vision.image_size, 336);
    cr_assert_eq(c.vision.patch_size, 14);
    cr_assert_str_eq(c.vision.hidden_act, "quick_gelu");
    cr_assert_eq(c.vision_feature_layer, -2);
    cr_assert_str_eq(c.vision_feature_select_strategy, "default");
    cr_assert_str_eq(c.projector_hidden_act, "gelu");
    cr_assert_eq(c.image_token_index, 32000);
    cr_assert_eq(c.image_seq_length, 576);
    // LlamaConfig defaults
    cr_assert_eq(c.text.vocab_size, 32000);
    cr_assert_eq(c.text.hidden_size, 4096);
    cr_assert_eq(c.text.num_key_value_heads, 32);
    cr_assert_eq(c.text.head_dim, 128);
    cr_assert_float_eq(c.text.rms_norm_eps, 1e-6, 1e-12);
    cr_assert_float_eq(c.text.rope_theta, 10000.0, 0);
    cr_assert_eq(c.text.tie_word_embeddings, 0);
}

Test(config, clip_vision_defaults_apply_inside_vision_config) {
    ModelConfig c;
    Error err;
    cr_assert_eq(parse(&c, "{\"model_type\":\"llava\",\"vision_config\":{\"patch_size\":14},"
                           "\"text_config\":{\"vocab_size\":33000}}", &err), 0, "%s", err.message);
    cr_assert_eq(c.vision.hidden_size, 768);  // CLIPVisionConfig default
    cr_assert_eq(c.vision.image_size, 224);
    cr_assert_eq(c.image_seq_length, 256);    // (224/14)^2
}

Test(config, yi_vl_6b_shapes) {
    const char *json =
        "{\"model_type\":\"llava\",\"is_yi_vl_derived_model\":true,\"image_token_index\":64000,"
        "\"vision_config\":{\"hidden_size\":1280,\"intermediate_size\":5120,\"num_hidden_layers\":32,"
        "\"num_attention_heads\":16,\"image_size\":448,\"patch_size\":14,\"hidden_act\":\"gelu\"},"
        "\"text_config\":{\"model_type\":\"llama\",\"vocab_size\":64064,\"hidden_size\":4096,\"num_key_value_heads\":4,"
        "\"rope_theta\":5000000.0,\"rms_norm_eps\":1e-05,\"max_position_embeddings\":4096}}";
    ModelConfig c;
    Error err;
    cr_assert_eq(parse(&c, json, &err), 0, "%s", err.message);
    cr_assert_eq(c.image_seq_length, 1024);
    cr_assert_eq(c.is_yi_vl_derived_model, 1);
    cr_assert_eq(c.text.num_key_value_heads, 4);
    cr_assert_eq(c.text.num_attention_heads, 32);
    cr_assert_eq(model_config_vision_layers_needed(&c), 31);
}

Test(config, full_strategy_keeps_class_token) {
    ModelConfig c;
    Error err;
    cr_assert_eq(parse(&c, "{\"model_type\":\"llava\",\"vision_feature_select_strategy\":\"full\","
                           "\"vision_config\":{\"image_size\":28,\"patch_size\":14}}", &err), 0, "%s", err.message);
    cr_assert_eq(c.image_seq_length, 5);
}

Test(config, plain_llama) {
    ModelConfig c;
    Error err;
    cr_assert_eq(parse(&c, "{\"model_type\":\"llama\",\"hidden_size\":64,\"num_attention_heads\":4,"
                           "\"num_key_value_heads\":2,\"tie_word_embeddings\":true}", &err), 0, "%s", err.message);
    cr_assert_eq(c.has_vision, 0);
    cr_assert_eq(c.text.head_dim, 16);
    cr_assert_eq(c.text.tie_word_embeddings, 1);
}

static void expect_error(const char *json, const char *fragment) {
    ModelConfig c;
    Error err = {{0}};
    cr_assert_eq(parse(&c, json, &err), -1, "accepted %s", json);
    cr_assert(strstr(err.message, "cfg.json") != NULL, "%s", err.message);
    cr_assert(strstr(err.message, fragment) != NULL, "message '%s' lacks '%s'", err.message, fragment);
}

Test(config, rejections_name_key_and_cause) {
    expect_error("not json", "not a JSON object");
    expect_error("{}", "missing model_type");
    expect_error("{\"model_type\":\"bert\"}", "'bert' is not supported");
    expect_error("{\"model_type\":\"llava\",\"text_config\":{\"hidden_size\":\"big\"}}", "text_config.hidden_size: expected an integer");
    expect_error("{\"model_type\":\"llava\",\"vision_config\":{\"patch_size\":2.5}}", "vision_config.patch_size: expected an integer");
    expect_error("{\"model_type\":\"llava\",\"vision_config\":{\"image_size\":100,\"patch_size\":14}}", "not a multiple");
    expect_error("{\"model_type\":\"llava\",\"text_config\":{\"hidden_size\":48,\"num_attention_heads\":6,\"num_key_value_heads\":4}}", "not a multiple");
    expect_error("{\"model_type\":\"llava\",\"image_seq_length\":100}", "disagrees");
    expect_error("{\"model_type\":\"llava\",\"image_token_index\":-3}", "negative");
    expect_error("{\"model_type\":\"llava\",\"vision_feature_layer\":[-2,-5]}", "list");
    expect_error("{\"model_type\":\"llava\",\"vision_feature_layer\":-40}", "outside");
    expect_error("{\"model_type\":\"llava\",\"projector_hidden_act\":\"relu\"}", "projector_hidden_act");
    expect_error("{\"model_type\":\"llama\",\"rope_scaling\":{\"type\":\"linear\"}}", "rope_scaling");
    expect_error("{\"model_type\":\"llama\",\"tie_word_embeddings\":1}", "expected true or false");
    expect_error("{\"model_type\":\"llama\",\"hidden_size\":0}", "must be positive");
}

Test(config, json_round_trip) {
    ModelConfig a, b;
    Error err;
    cr_assert_eq(parse(&a, "{\"model_type\":\"llava\",\"is_yi_vl_derived_model\":true,\"vision_config\":{\"image_size\":56,"
                           "\"patch_size\":14,\"hidden_size\":32,\"num_attention_heads\":2},\"text_config\":{\"hidden_size\":64,"
                           "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"vocab_size\":500},\"image_token_index\":400}",
                       &err), 0, "%s", err.message);
    char *json = model_config_to_json(&a);
    cr_assert_eq(parse(&b, json, &err), 0, "%s", err.message);
    free(json);
    cr_assert_eq(memcmp(&a.vision, &b.vision, sizeof a.vision), 0);
    cr_assert_eq(memcmp(&a.text, &b.text, sizeof a.text), 0);
    cr_assert_eq(a.image_seq_length, b.image_seq_length);
    cr_assert_eq(a.image_token_index, b.image_token_index);
    cr_assert_eq(b.is_yi_vl_derived_model, 1);
}
