// LLaMA-Factory recipe keys -> LlavaOptions (FinetuningArguments semantics).
#include <criterion/criterion.h>
#include <string.h>

#include "../../src/model/llava.h"
#include "../../src/train/recipe.h"

static void parse(const char *yaml, Recipe *r) {
    Error err;
    cr_assert_eq(recipe_parse(r, yaml, strlen(yaml), "test.yaml", NULL, &err), 0, "%s", err.message);
}

Test(llava_options, lora_defaults_follow_llamafactory) {
    Recipe r;
    parse("model_name_or_path: m\nstage: sft\nfinetuning_type: lora\nlora_rank: 8\nlora_target: all\n", &r);
    LlavaOptions o;
    Error err;
    cr_assert_eq(llava_options_from_recipe(&r, &o, &err), 0, "%s", err.message);
    cr_expect_eq(o.finetuning_type, FINETUNE_LORA);
    cr_expect_eq(o.lora_rank, 8);
    cr_expect_float_eq(o.lora_alpha, 16.0, 1e-12);  // 2 * rank when unset
    cr_expect_float_eq(o.lora_dropout, 0.0, 1e-12);
    cr_expect_str_eq(o.lora_target, "all");
    cr_expect_eq(o.freeze_vision_tower, 1);
    cr_expect_eq(o.freeze_multi_modal_projector, 1);
    cr_expect_eq(o.freeze_language_model, 0);
    recipe_free(&r);
}

Test(llava_options, full_and_freeze_keys) {
    Recipe r;
    parse("model_name_or_path: m\nfinetuning_type: full\nfreeze_vision_tower: false\n"
          "freeze_multi_modal_projector: false\nlora_alpha: 5\nlora_rank: 4\n",
          &r);
    LlavaOptions o;
    Error err;
    cr_assert_eq(llava_options_from_recipe(&r, &o, &err), 0, "%s", err.message);
    cr_expect_eq(o.finetuning_type, FINETUNE_FULL);
    cr_expect_eq(o.freeze_vision_tower, 0);
    cr_expect_eq(o.freeze_multi_modal_projector, 0);
    cr_expect_float_eq(o.lora_alpha, 5.0, 1e-12);
    recipe_free(&r);
    parse("model_name_or_path: m\nfinetuning_type: freeze\nfreeze_trainable_layers: -3\n"
          "freeze_trainable_modules: mlp,self_attn\n",
          &r);
    cr_assert_eq(llava_options_from_recipe(&r, &o, &err), 0, "%s", err.message);
    cr_expect_eq(o.finetuning_type, FINETUNE_FREEZE);
    cr_expect_eq(o.freeze_trainable_layers, -3);
    cr_expect_str_eq(o.freeze_trainable_modules, "mlp,self_attn");
    recipe_free(&r);
    // train_mm_proj_only: the projector alone.
    parse("model_name_or_path: m\nfinetuning_type: full\ntrain_mm_proj_only: true\n", &r);
    cr_assert_eq(llava_options_from_recipe(&r, &o, &err), 0, "%s", err.message);
    cr_expect_eq(o.freeze_language_model, 1);
    cr_expect_eq(o.freeze_multi_modal_projector, 0);
    cr_expect_eq(o.freeze_vision_tower, 1);
    recipe_free(&r);
}

Test(llava_options, gradient_checkpointing_on_unless_disabled) {
    // LLaMA-Factory enables gradient checkpointing unless disable_gradient_checkpointing is set.
    Recipe r;
    LlavaOptions o;
    Error err;
    parse("model_name_or_path: m\nfinetuning_type: lora\n", &r);
    cr_assert_eq(llava_options_from_recipe(&r, &o, &err), 0, "%s", err.message);
    cr_expect_eq(o.gradient_checkpointing, 1);
    recipe_free(&r);
    parse("model_name_or_path: m\nfinetuning_type: full\ndisable_gradient_checkpointing: true\n", &r);
    cr_assert_eq(llava_options_from_recipe(&r, &o, &err), 0, "%s", err.message);
    cr_expect_eq(o.gradient_checkpointing, 0);
    recipe_free(&r);
    parse("model_name_or_path: m\ndisable_gradient_checkpointing: false\n", &r);
    cr_assert_eq(llava_options_from_recipe(&r, &o, &err), 0, "%s", err.message);
    cr_expect_eq(o.gradient_checkpointing, 1);
    recipe_free(&r);
}
