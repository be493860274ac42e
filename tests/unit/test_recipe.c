// LLaMA-Factory YAML recipes: keys, types, defaults, warnings, validation.
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "../../src/train/recipe.h"

static int parse(Recipe *r, const char *yaml, Error *err, char *warnings, size_t warnings_size) {
    FILE *warn = fmemopen(warnings, warnings_size, "w");
    int rc = recipe_parse(r, yaml, strlen(yaml), "r.yaml", warn, err);
    fclose(warn);
    return rc;
}

static const char *lora_recipe =
    "### model\n"
    "model_name_or_path: models/Yi-VL-6B-hf\n"
    "trust_remote_code: true\n"
    "\n"
    "### method\n"
    "stage: sft\n"
    "do_train: true\n"
    "finetuning_type: lora\n"
    "lora_rank: 8\n"
    "lora_target: all\n"
    "\n"
    "### dataset\n"
    "dataset: mllm_demo\n"
    "template: llava\n"
    "cutoff_len: 2048\n"
    "max_samples: 1000\n"
    "overwrite_cache: true\n"
    "preprocessing_num_workers: 16\n"
    "\n"
    "### output\n"
    "output_dir: saves/yi-vl-6b/lora/sft\n"
    "logging_steps: 10\n"
    "save_steps: 500\n"
    "plot_loss: true\n"
    "overwrite_output_dir: true\n"
    "\n"
    "### train\n"
    "per_device_train_batch_size: 1\n"
    "gradient_accumulation_steps: 8\n"
    "learning_rate: 1.0e-4\n"
    "num_train_epochs: 3.0\n"
    "lr_scheduler_type: cosine\n"
    "warmup_ratio: 0.1\n"
    "bf16: true\n"
    "ddp_timeout: 180000000\n"
    "resume_from_checkpoint: null\n"
    "\n"
    "### eval\n"
    "val_size: 0.01\n"
    "per_device_eval_batch_size: 1\n"
    "eval_strategy: steps\n"
    "eval_steps: 500\n";

Test(recipe, seed_lora_recipe_parses_with_warnings) {
    Recipe r;
    Error err;
    char warnings[4096] = "";
    cr_assert_eq(parse(&r, lora_recipe, &err, warnings, sizeof warnings), 0, "%s", err.message);
    cr_assert_str_eq(r.model_name_or_path, "models/Yi-VL-6B-hf");
    cr_assert_str_eq(r.finetuning_type, "lora");
    cr_assert_eq(r.lora_rank, 8);
    cr_assert_eq(recipe_lora_alpha(&r), 16);
    cr_assert_str_eq(r.template_name, "llava");
    cr_assert_eq(r.cutoff_len, 2048);
    cr_assert_eq(r.max_samples, 1000);
    cr_assert_eq(r.gradient_accumulation_steps, 8);
    cr_assert_float_eq(r.learning_rate, 1e-4, 1e-18);
    cr_assert_float_eq(r.num_train_epochs, 3.0, 0);
    cr_assert_float_eq(r.val_size, 0.01, 1e-15);
    cr_assert_eq(r.bf16, 1);
    cr_assert_null(r.resume_from_checkpoint);
    cr_assert_eq(r.freeze_vision_tower, 1);  // LLaMA-Factory default
    cr_assert_str_eq(r.dataset_dir, "data");
    cr_assert(strstr(warnings, "r.yaml:3: 'trust_remote_code'") != NULL, "%s", warnings);
    cr_assert(strstr(warnings, "'ddp_timeout'") != NULL, "%s", warnings);
    cr_assert(strstr(warnings, "'overwrite_cache'") != NULL, "%s", warnings);
    // one line per ignored key
    int lines = 0;
    for (const char *p = warnings; *p; p++) lines += *p == '\n';
    cr_assert_eq(lines, 4, "%s", warnings);
    cr_assert_eq(recipe_validate(&r, "r.yaml", &err), 0, "%s", err.message);
    recipe_free(&r);
}

Test(recipe, defaults_follow_transformers) {
    Recipe r;
    Error err;
    char w[256];
    cr_assert_eq(parse(&r, "model_name_or_path: m\n", &err, w, sizeof w), 0, "%s", err.message);
    cr_assert_eq(r.per_device_train_batch_size, 8);
    cr_assert_eq(r.gradient_accumulation_steps, 1);
    cr_assert_float_eq(r.learning_rate, 5e-5, 1e-18);
    cr_assert_str_eq(r.lr_scheduler_type, "linear");
    cr_assert_float_eq(r.adam_beta2, 0.999, 0);
    cr_assert_float_eq(r.adam_epsilon, 1e-8, 0);
    cr_assert_float_eq(r.max_grad_norm, 1.0, 0);
    cr_assert_eq(r.seed, 42);
    cr_assert_eq(r.logging_steps, 500);
    cr_assert_eq(r.cutoff_len, 2048);
    cr_assert_eq(r.use_fast_tokenizer, 1);
    cr_assert_eq(r.image_max_pixels, 768 * 768);
    recipe_free(&r);
}

static void expect_error(const char *yaml, const char *fragment) {
    Recipe r;
    Error err = {{0}};
    char w[1024];
    cr_assert_eq(parse(&r, yaml, &err, w, sizeof w), -1, "accepted: %s", yaml);
    cr_assert(strstr(err.message, fragment) != NULL, "message '%s' lacks '%s'", err.message, fragment);
}

Test(recipe, unknown_key_names_key_and_line) {
    expect_error("model_name_or_path: m\nlearning_rat: 1.0\n", "r.yaml:2: unknown key 'learning_rat'");
}

Test(recipe, wrong_types_name_key_line_and_type) {
    expect_error("cutoff_len: long\n", "r.yaml:1: cutoff_len: expected an integer, got 'long'");
    expect_error("a: 1\n", "unknown key 'a'");
    expect_error("model_name_or_path: m\n\nlearning_rate: fast\n", "r.yaml:3: learning_rate: expected a number, got 'fast'");
    expect_error("bf16: maybe\n", "r.yaml:1: bf16: expected true or false, got 'maybe'");
    expect_error("lora_rank: 2.5\n", "lora_rank: expected an integer");
    expect_error("cutoff_len: [1, 2]\n", "cutoff_len: expected an integer, got a list");
    expect_error("cutoff_len:\n  a: 1\n", "cutoff_len: expected an integer, got a mapping");
}

Test(recipe, structural_errors) {
    expect_error("", "empty recipe");
    expect_error("- a\n- b\n", "mapping");
    expect_error("model_name_or_path: m\ntemplate: \"unterminated\n", "r.yaml:2: invalid YAML");
    expect_error("just a scalar\n", "mapping");
}

Test(recipe, yaml_number_and_bool_spellings) {
    Recipe r;
    Error err;
    char w[256];
    // PyYAML reads 1e-4 as a string; transformers' parser still makes it a float.
    cr_assert_eq(parse(&r, "learning_rate: 1e-4\nbf16: True\nplot_loss: yes\nnum_train_epochs: 2\nmax_steps: 10.0\n", &err, w,
                       sizeof w), 0, "%s", err.message);
    cr_assert_float_eq(r.learning_rate, 1e-4, 1e-18);
    cr_assert_eq(r.bf16, 1);
    cr_assert_eq(r.plot_loss, 1);
    cr_assert_float_eq(r.num_train_epochs, 2.0, 0);
    cr_assert_eq(r.max_steps, 10);
    recipe_free(&r);
}

Test(recipe, list_values_join_and_resume_forms) {
    Recipe r;
    Error err;
    char w[256];
    cr_assert_eq(parse(&r, "dataset: [a, b]\nlora_target: q_proj,v_proj\nresume_from_checkpoint: true\n", &err, w, sizeof w),
                 0, "%s", err.message);
    cr_assert_str_eq(r.dataset, "a,b");
    cr_assert_str_eq(r.lora_target, "q_proj,v_proj");
    cr_assert_str_eq(r.resume_from_checkpoint, "true");
    recipe_free(&r);
    cr_assert_eq(parse(&r, "resume_from_checkpoint: out/checkpoint-5\n", &err, w, sizeof w), 0, "%s", err.message);
    cr_assert_str_eq(r.resume_from_checkpoint, "out/checkpoint-5");
    recipe_free(&r);
}

static void expect_invalid(const char *yaml, const char *fragment) {
    Recipe r;
    Error err = {{0}};
    char w[1024];
    cr_assert_eq(parse(&r, yaml, &err, w, sizeof w), 0, "%s", err.message);
    cr_assert_eq(recipe_validate(&r, "r.yaml", &err), -1, "validated: %s", yaml);
    cr_assert(strstr(err.message, fragment) != NULL, "message '%s' lacks '%s'", err.message, fragment);
    recipe_free(&r);
}

#define BASE "model_name_or_path: m\ndataset: d\ntemplate: yi_vl\noutput_dir: o\n"

Test(recipe, validation_of_values) {
    expect_invalid("dataset: d\n", "model_name_or_path is required");
    expect_invalid("model_name_or_path: m\ntemplate: t\noutput_dir: o\n", "dataset is required");
    expect_invalid(BASE "cutoff_len: 0\n", "cutoff_len must be at least 1");
    expect_invalid(BASE "learning_rate: -1.0e-4\n", "learning_rate must not be negative");
    expect_invalid(BASE "stage: dpo\n", "stage 'dpo'");
    expect_invalid(BASE "finetuning_type: qlora\n", "finetuning_type 'qlora'");
    expect_invalid(BASE "lr_scheduler_type: polynomial\n", "lr_scheduler_type 'polynomial'");
    expect_invalid(BASE "gradient_accumulation_steps: 0\n", "gradient_accumulation_steps");
    expect_invalid(BASE "warmup_ratio: 1.5\n", "warmup_ratio");
    expect_invalid(BASE "lora_dropout: 1.0\n", "lora_dropout");
}

Test(recipe, print_config_lists_every_key) {
    Recipe r;
    Error err;
    char w[256];
    cr_assert_eq(parse(&r, BASE "lora_rank: 4\n", &err, w, sizeof w), 0, "%s", err.message);
    char out[16384] = "";
    FILE *fp = fmemopen(out, sizeof out, "w");
    recipe_print(&r, fp);
    fclose(fp);
    cr_assert(strstr(out, "lora_alpha: 8\n") != NULL, "%s", out);
    cr_assert(strstr(out, "template: yi_vl\n") != NULL);
    cr_assert(strstr(out, "learning_rate: 5e-05\n") != NULL, "%s", out);
    cr_assert(strstr(out, "adapter_name_or_path: null\n") != NULL);
    recipe_free(&r);
}

Test(recipe, ignored_keys_with_collection_values_are_skipped) {
    Recipe r;
    Error err;
    char w[1024] = "";
    cr_assert_eq(parse(&r, "report_to: none\nddp_timeout: 5\nflash_attn:\n  a: 1\n  b: [1, 2]\ncutoff_len: 7\n", &err, w, sizeof w),
                 0, "%s", err.message);
    cr_assert_eq(r.cutoff_len, 7);
    cr_assert(strstr(w, "'flash_attn'") != NULL, "%s", w);
    recipe_free(&r);
}
