// recipe.h - a LLaMA-Factory training YAML as a typed struct.
//
// The same keys LLaMA-Factory (and the transformers TrainingArguments it
// passes on) accept, with their defaults. An unknown key is an error naming
// it and its line; a value of the wrong type is an error naming key, line and
// the type expected; a key LLaMA-Factory knows but that means nothing to vlft
// (ddp_timeout, preprocessing_num_workers, ...) is accepted with a one-line
// warning.
#ifndef VLFT_RECIPE_H
#define VLFT_RECIPE_H

#include <stdio.h>

#include "../base/error.h"

typedef struct {
    // model
    char *model_name_or_path;
    char *adapter_name_or_path;
    int use_fast_tokenizer;
    int image_max_pixels;
    int image_min_pixels;
    // method
    char *stage;            // "sft"
    int do_train;
    int do_eval;
    char *finetuning_type;  // "lora" | "full" | "freeze"
    int lora_rank;
    int lora_alpha;         // 0 = unset: 2 * lora_rank, as LLaMA-Factory
    double lora_dropout;
    char *lora_target;      // "all" or comma-separated module names
    char *additional_target;
    int freeze_vision_tower;
    int freeze_multi_modal_projector;
    int train_mm_proj_only;
    int freeze_trainable_layers;
    char *freeze_trainable_modules;
    int disable_gradient_checkpointing;
    // dataset
    char *dataset;          // comma-separated names in dataset_info.json
    char *eval_dataset;
    char *dataset_dir;
    char *template_name;    // key "template"
    int cutoff_len;
    int max_samples;        // 0 = all
    double val_size;
    int train_on_prompt;
    int mask_history;
    int allow_paths_outside_dataset_dir;  // vlft's own key: data files and images may lie outside dataset_dir
    int dataloader_num_workers;
    // output
    char *output_dir;
    int logging_steps;
    int save_steps;
    int save_total_limit;   // 0 = keep all
    int plot_loss;
    int overwrite_output_dir;
    int save_only_model;
    char *report_to;
    // train
    int per_device_train_batch_size;
    int per_device_eval_batch_size;
    int gradient_accumulation_steps;
    double learning_rate;
    double num_train_epochs;
    int max_steps;          // <= 0: from epochs
    char *lr_scheduler_type;
    double warmup_ratio;
    int warmup_steps;
    int bf16;               // bf16 weight products (llava.h LlavaOptions.bf16)
    double adam_beta1;
    double adam_beta2;
    double adam_epsilon;
    double weight_decay;
    double max_grad_norm;
    int seed;
    char *resume_from_checkpoint;  // NULL, a path, or "true" (= latest)
    char *eval_strategy;    // "no" | "steps" | "epoch"
    int eval_steps;
    // vlft's own
    char *device;           // "auto" | "cpu" | "cuda"
    int threads;            // 0 = all cores
    char *deepspeed;        // path of a DeepSpeed JSON (ZeRO stage)
    int zero_stage;         // -1 = from deepspeed file or 0
    // export (llamafactory-cli export)
    char *export_dir;
    int export_size;        // GB per shard
    int export_legacy_format;
    int export_quantization_bit;
} Recipe;

// Fills r with the defaults.
void recipe_defaults(Recipe *r);
// Parses a YAML file; warnings (one line each) go to warn_out when not NULL.
int recipe_load(Recipe *r, const char *path, FILE *warn_out, Error *err);
// Same, from text (path used in messages).
int recipe_parse(Recipe *r, const char *yaml_text, size_t length, const char *path, FILE *warn_out, Error *err);
// Checks values (ranges, enumerations) after parsing; path for messages.
int recipe_validate(const Recipe *r, const char *path, Error *err);
// Effective LoRA alpha (2 * rank when unset).
int recipe_lora_alpha(const Recipe *r);
// Prints every key with its resolved value, one "key: value" line each.
void recipe_print(const Recipe *r, FILE *out);
void recipe_free(Recipe *r);

#endif
