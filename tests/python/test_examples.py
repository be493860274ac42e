"""examples/*.yaml parse with `vlft train --print-config` and hold the seed
recipes' values from DESIGN.md (LLaMA-Factory's Yi-VL recipes)."""
import os

from vlft_testing import ROOT, run_vlft


def resolved(name):
    out = run_vlft("train", "--print-config", os.path.join(ROOT, "examples", name)).stdout
    return dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)


COMMON = {"stage": "sft", "dataset": "mllm_demo", "cutoff_len": "2048", "max_samples": "1000",
          "per_device_train_batch_size": "1", "lr_scheduler_type": "cosine", "warmup_ratio": "0.1", "bf16": "true",
          "val_size": "0.01", "freeze_vision_tower": "true", "freeze_multi_modal_projector": "true",
          "train_mm_proj_only": "false", "plot_loss": "true"}


def check(config, expected):
    for key, value in expected.items():
        assert config[key] == value, (key, config[key], value)


def test_yi_vl_full_recipe():
    config = resolved("yi_vl_6b_full_sft.yaml")
    check(config, COMMON)
    check(config, {"finetuning_type": "full", "template": "yi_vl", "gradient_accumulation_steps": "2",
                   "learning_rate": "1e-05", "num_train_epochs": "10"})


def test_yi_vl_lora_recipe():
    config = resolved("yi_vl_6b_lora_sft.yaml")
    check(config, COMMON)
    check(config, {"finetuning_type": "lora", "lora_rank": "8", "lora_alpha": "16", "lora_target": "all",
                   "template": "llava", "gradient_accumulation_steps": "8", "learning_rate": "0.0001",
                   "num_train_epochs": "3"})


def test_tiny_recipes():
    for name, kind in (("tiny_lora_sft.yaml", "lora"), ("tiny_full_sft.yaml", "full")):
        config = resolved(name)
        check(config, {"finetuning_type": kind, "model_name_or_path": "demo/model", "dataset_dir": "demo/data",
                       "dataset": "mllm_demo", "template": "yi_vl", "cutoff_len": "256", "logging_steps": "5",
                       "plot_loss": "true", "overwrite_output_dir": "true"})
