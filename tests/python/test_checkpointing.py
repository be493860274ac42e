"""Activation checkpointing (LlavaOptions.gradient_checkpointing, the recipe's
disable_gradient_checkpointing) and the planned activation arena.

- Gradients with checkpointing equal those without, bit for bit, also with
  LoRA dropout in the language model and the vision tower (the recompute must
  draw the same masks), 1 and 2 images, a right-padded batch of 2. (The
  PyTorch-parity comparisons of test_model_parity.py run both ways as well.)
- What checkpointing keeps: exactly each layer's input. Measured by adding
  layers: two more LLaMA layers add exactly 2 * B * L * hidden floats to the
  kept activations (without checkpointing: far more), one more CLIP layer
  exactly n_images * tokens * hidden.
- The arena is planned on the first step and reused: repeated steps plan it once.
- `vlft train` with disable_gradient_checkpointing true and false: the same losses.
"""
import json
import os

import numpy as np

import llava_reference as ref
from vlft_testing import read_model_folder, read_safetensors, run_vlft, tempdir, write_safetensors

_MODELS = {}


def tiny():
    """The tiny model folder (4 LLaMA layers, 3 CLIP layers of which 2 run, a tokenizer)."""
    if "tiny" not in _MODELS:
        _MODELS["tiny"] = os.path.join(tempdir(), "tiny")
        run_vlft("init-tiny", _MODELS["tiny"], "--seed", "7")
    return _MODELS["tiny"]


def model(text_layers=4, vision_layers=3):
    """A copy of the tiny model's weights, cut to fewer layers (the first ones)."""
    key = (text_layers, vision_layers)
    if key in _MODELS:
        return _MODELS[key]
    source = tiny()
    folder = os.path.join(tempdir(), f"tiny-{text_layers}-{vision_layers}")
    os.makedirs(folder)
    with open(os.path.join(source, "config.json")) as f:
        config = json.load(f)
    config["text_config"]["num_hidden_layers"] = text_layers
    config["vision_config"]["num_hidden_layers"] = vision_layers
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)

    def wanted(name):
        for prefix, n in (("language_model.model.layers.", text_layers), ("vision_tower.vision_model.encoder.layers.",
                                                                          vision_layers)):
            if name.startswith(prefix):
                return int(name[len(prefix):].split(".")[0]) < n
        return True
    tensors = {k: v for k, v in read_model_folder(source).items() if wanted(k)}
    write_safetensors(os.path.join(folder, "model.safetensors"), tensors)
    _MODELS[key] = folder
    return folder


def write_batch(folder, images_per_sample, seed):
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    batch = ref.random_batch(config, np.random.default_rng(seed), images_per_sample=images_per_sample)
    path = os.path.join(tempdir(), "batch.safetensors")
    write_safetensors(path, batch)
    return path, batch, config


def step(folder, batch_path, flags, checkpointing, out=True):
    """One _model-step; returns (stats, {logits, loss, grad:...} or None)."""
    out_path = os.path.join(tempdir(), "out.safetensors") if out else None
    result = run_vlft("_model-step", folder, batch_path, *flags, "--gradient-checkpointing", checkpointing,
                      *([out_path] if out else []))
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    return stats, read_safetensors(out_path)[0] if out else None


def random_adapter_dir(folder, rank, freeze_vision_tower):
    reference = ref.LlavaReference(folder, "lora", lora_rank=rank, freeze_vision_tower=freeze_vision_tower)
    adapter = ref.random_adapter(ref.lora_shapes(reference), rank, np.random.default_rng(3))
    directory = tempdir()
    write_safetensors(os.path.join(directory, "adapter_model.safetensors"), adapter)
    return directory


def assert_identical(a, b):
    assert set(a) == set(b)
    grads = [n for n in a if n.startswith("grad:")]
    assert grads, "no gradients to compare"
    for name in a:
        assert np.array_equal(a[name], b[name]), f"{name} differs with checkpointing"


def lora_dropout_flags(folder, dropout):
    return ["--finetuning-type", "lora", "--lora-rank", "4", "--lora-dropout", str(dropout), "--freeze-vision-tower",
            "0", "--load-adapter", random_adapter_dir(folder, 4, freeze_vision_tower=False)]


def check_dropout_gradients(images_per_sample, seed):
    folder = model()
    batch_path, _, _ = write_batch(folder, images_per_sample, seed)
    flags = lora_dropout_flags(folder, 0.2)
    _, off = step(folder, batch_path, flags, 0)
    _, on = step(folder, batch_path, flags, 1)
    assert_identical(off, on)
    # The masks were really in play (in the tower too): without dropout the gradients differ.
    _, plain = step(folder, batch_path, lora_dropout_flags(folder, 0.0), 1)
    assert float(plain["loss"][0]) != float(on["loss"][0])
    for part in ("language_model.model.layers.0.self_attn.q_proj", "vision_tower.vision_model.encoder.layers.0.mlp.fc1"):
        name = f"grad:base_model.model.{part}.lora_A.weight"
        assert np.abs(on[name]).max() > 0, name
        assert not np.array_equal(on[name], plain[name]), f"{name}: dropout changed nothing"


def test_lora_dropout_one_image_each_same_gradients():
    check_dropout_gradients((1, 1), seed=21)


def test_lora_dropout_two_images_same_gradients():
    check_dropout_gradients((2, 1), seed=22)


def test_full_and_everything_trainable_same_gradients_two_images():
    # (test_model_parity.py also checks these against PyTorch, both ways.)
    folder = model()
    batch_path, _, _ = write_batch(folder, (1, 2), seed=23)
    for flags in (["--finetuning-type", "full"],
                  ["--finetuning-type", "full", "--freeze-vision-tower", "0", "--freeze-projector", "0"]):
        _, off = step(folder, batch_path, flags, 0)
        _, on = step(folder, batch_path, flags, 1)
        assert_identical(off, on)


def test_checkpointed_llama_layer_keeps_only_its_input():
    images = (1, 1)
    kept = {}
    for layers in (2, 4):
        folder = model(text_layers=layers)
        batch_path, batch, config = write_batch(folder, images, seed=24)
        for checkpointing in (0, 1):
            stats, _ = step(folder, batch_path, ["--finetuning-type", "lora", "--lora-rank", "4"], checkpointing,
                            out=False)
            kept[layers, checkpointing] = stats
    rows = batch["input_ids"].size  # B * L
    layer_input = rows * config["text_config"]["hidden_size"] * 4
    grown_on = kept[4, 1]["activations_kept_total"] - kept[2, 1]["activations_kept_total"]
    grown_off = kept[4, 0]["activations_kept_total"] - kept[2, 0]["activations_kept_total"]
    assert grown_on == 2 * layer_input, (grown_on, layer_input)
    assert grown_off > 5 * grown_on, (grown_off, grown_on)  # q, k, v, attention, norms, MLP (3 x 352 wide) ...
    # The peak holds the checkpoints plus one recomputed layer: below the plain peak.
    assert kept[4, 1]["activations_peak"] < kept[4, 0]["activations_peak"]
    peak_grown_on = kept[4, 1]["activations_peak"] - kept[2, 1]["activations_peak"]
    assert peak_grown_on == 2 * layer_input, (peak_grown_on, layer_input)
    # The block holds the step (alignment and holes on top of the peak, never less).
    for stats in kept.values():
        assert stats["activations_arena"] >= stats["activations_peak"]


def test_checkpointed_clip_layer_keeps_only_its_input():
    flags = ["--finetuning-type", "full", "--freeze-vision-tower", "0", "--freeze-projector", "0"]
    kept = {}
    for vision_layers in (2, 3):  # vision_feature_layer -2: 1 and 2 layers run
        folder = model(vision_layers=vision_layers)
        batch_path, batch, config = write_batch(folder, (2, 1), seed=25)
        kept[vision_layers], _ = step(folder, batch_path, flags, 1, out=False)
    v = config["vision_config"]
    tokens = (v["image_size"] // v["patch_size"]) ** 2 + 1
    layer_input = batch["pixel_values"].shape[0] * tokens * v["hidden_size"] * 4
    grown = kept[3]["activations_kept_vision"] - kept[2]["activations_kept_vision"]
    assert grown == layer_input, (grown, layer_input)


def test_arena_is_planned_once_for_repeated_steps():
    folder = model()
    batch_path, _, _ = write_batch(folder, (1, 1), seed=26)
    for checkpointing in (0, 1):
        result = run_vlft("_model-step", folder, batch_path, "--finetuning-type", "full", "--freeze-vision-tower", "0",
                          "--gradient-checkpointing", checkpointing, "--repeat", "4")
        stats = json.loads(result.stdout.strip().splitlines()[-1])
        assert stats["activations_arena_grows"] == 1, stats  # the first step planned it, three reused it
        assert stats["activations_arena"] >= stats["activations_peak"] > 0


def write_recipe(folder, data, out, disable):
    settings = dict(model_name_or_path=tiny(), stage="sft", finetuning_type="lora", lora_rank=4, lora_dropout=0.1,
                    lora_target="all", freeze_vision_tower="false", dataset="mllm_demo", dataset_dir=data,
                    template="yi_vl", cutoff_len=512, output_dir=out, overwrite_output_dir="true", logging_steps=1,
                    save_steps=100, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                    learning_rate=5e-3, max_steps=4, lr_scheduler_type="cosine", warmup_ratio=0.2, seed=7,
                    val_size=0, disable_gradient_checkpointing=disable)
    path = os.path.join(folder, f"recipe-{disable}.yaml")
    with open(path, "w") as f:
        for k, v in settings.items():
            f.write(f"{k}: {v}\n")
    return path


def test_trainer_same_losses_with_and_without_checkpointing():
    d = tempdir()
    data = os.path.join(d, "data")
    run_vlft("demo-data", data, "--n", "16", "--seed", "5")
    runs = {}
    for disable in ("true", "false"):
        out = os.path.join(d, f"out-{disable}")
        updates = os.path.join(d, f"updates-{disable}.jsonl")
        run_vlft("train", write_recipe(d, data, out, disable), "--log-updates", updates)
        with open(updates) as f:
            runs[disable] = [json.loads(line) for line in f]
        runs[disable + "-adapter"] = read_safetensors(os.path.join(out, "adapter_model.safetensors"))[0]
    assert len(runs["true"]) == len(runs["false"]) == 4
    for a, b in zip(runs["true"], runs["false"]):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"], (a, b)
    assert runs["true"][0]["loss"] != runs["true"][-1]["loss"]  # it trained
    assert_identical({"grad:" + k: v for k, v in runs["true-adapter"].items()},
                     {"grad:" + k: v for k, v in runs["false-adapter"].items()})
