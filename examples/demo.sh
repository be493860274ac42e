#!/usr/bin/env bash
# The demo, no downloads: a tiny random Yi-VL-style model in Hugging Face
# layout, a procedurally drawn image dataset in LLaMA-Factory's mllm_demo
# format, and a LoRA fine-tune on it (about a minute on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
vlft=./build/vlft
rm -rf demo/model demo/data
"$vlft" init-tiny demo/model --seed 0
"$vlft" info demo/model
"$vlft" demo-data demo/data --seed 0
"$vlft" train examples/tiny_lora_sft.yaml
echo
echo "LoRA adapter: demo/saves/lora/sft/adapter_model.safetensors (+ adapter_config.json)"
echo "loss curve:   demo/saves/lora/sft/training_loss.png"
echo "log:          demo/saves/lora/sft/trainer_log.jsonl, all_results.json"
