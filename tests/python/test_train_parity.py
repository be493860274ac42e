"""`vlft train` against a PyTorch training loop on the same tiny model and data:
the reference LLaVA of llava_reference.py, torch.optim.AdamW, LambdaLR with
transformers' cosine-with-warmup lambda, clip_grad_norm_, the data order of
transformers' sampler (torch.randperm seeded seed + epoch), images through
Pillow, samples as `vlft data dump` encodes them (their ids are checked against
an independent restatement elsewhere). 10 updates with accumulation 2."""
import json
import math
import os

import numpy as np
import torch
from PIL import Image

from llava_reference import LlavaReference
from vlft_testing import read_model_folder, read_safetensors, run_vlft, tempdir, write_safetensors

MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


def clip_pixels(path, size):
    """CLIPImageProcessor: shortest edge -> size (Pillow BICUBIC), center crop,
    rescale, normalize; channels first."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    image = image.resize((new_w, new_h), Image.BICUBIC)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = np.asarray(image, dtype=np.float64)[top:top + size, left:left + size] * (1 / 255)
    x = ((x.astype(np.float32) - MEAN.astype(np.float32)) / STD.astype(np.float32)).astype(np.float32)
    return x.transpose(2, 0, 1)


def collate(samples, ids, size, pad_id):
    chosen = [samples[i] for i in ids]
    length = max(len(s["input_ids"]) for s in chosen)
    b = len(chosen)
    input_ids = np.full((b, length), pad_id, np.int32)
    labels = np.full((b, length), -100, np.int32)
    mask = np.zeros((b, length), np.int32)
    pixels = []
    for i, s in enumerate(chosen):
        n = len(s["input_ids"])
        input_ids[i, :n] = s["input_ids"]
        labels[i, :n] = s["labels"]
        mask[i, :n] = 1
        pixels += [s["pixels"][k] for k in range(len(s["pixels"]))]
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask,
            "pixel_values": np.stack(pixels) if pixels else np.zeros((0, 3, size, size), np.float32)}


def cosine_lambda(warmup, total):
    def f(k):
        if k < warmup:
            return k / max(1, warmup)
        progress = (k - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))
    return f


def setup(finetuning_type, lr):
    d = tempdir()
    model, data, out = os.path.join(d, "model"), os.path.join(d, "data"), os.path.join(d, "out")
    run_vlft("init-tiny", model, "--seed", 11)
    run_vlft("demo-data", data, "--n", 24, "--seed", 5)
    recipe = os.path.join(d, "recipe.yaml")
    settings = dict(model_name_or_path=model, stage="sft", finetuning_type=finetuning_type, lora_rank=4,
                    lora_target="all", dataset="mllm_demo", dataset_dir=data, template="yi_vl", cutoff_len=512,
                    output_dir=out, overwrite_output_dir="true", logging_steps=1, save_steps=100,
                    per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=lr, max_steps=10,
                    lr_scheduler_type="cosine", warmup_ratio=0.2, weight_decay=0.01, max_grad_norm=0.5, seed=7,
                    val_size=0, adam_beta2=0.99)
    with open(recipe, "w") as f:
        for k, v in settings.items():
            f.write(f"{k}: {v}\n")
    dump = run_vlft("data", "dump", recipe).stdout.splitlines()
    samples = [json.loads(line) for line in dump]
    assert all(s["split"] == "train" for s in samples) and len(samples) == 24
    with open(os.path.join(model, "config.json")) as f:
        config = json.load(f)
    size = config["vision_config"]["image_size"]
    for s in samples:
        s["pixels"] = [clip_pixels(p, size) for p in s["images"]]
    return d, model, out, recipe, settings, samples, size


def reference_loop(ref, samples, settings, size, pad_id):
    params = ref.trainable
    decay = [t for n, t in params.items() if not (n.endswith(".bias") or "norm" in n)]
    no_decay = [t for n, t in params.items() if n.endswith(".bias") or "norm" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=settings["learning_rate"], betas=(0.9, settings["adam_beta2"]), eps=1e-8)
    total, accum, bs = settings["max_steps"], settings["gradient_accumulation_steps"], settings[
        "per_device_train_batch_size"]
    warmup = math.ceil(settings["warmup_ratio"] * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_lambda(warmup, total))
    losses, step, epoch = [], 0, 0
    while step < total:
        g = torch.Generator()
        g.manual_seed(settings["seed"] + epoch)
        order = torch.randperm(len(samples), generator=g).tolist()
        batches = [order[i:i + bs] for i in range(0, len(order), bs)]
        update_loss = 0.0
        for b, ids in enumerate(batches):
            _, loss = ref.forward(collate(samples, ids, size, pad_id))
            (loss / accum).backward()
            update_loss += float(loss) / accum
            if (b + 1) % accum == 0:
                torch.nn.utils.clip_grad_norm_(list(params.values()), settings["max_grad_norm"])
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                losses.append(update_loss)
                update_loss = 0.0
                step += 1
                if step == total:
                    break
        epoch += 1
    return losses


def read_updates(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def relative(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-30))


def test_lora_training_matches_pytorch_loop():
    d, model, out, recipe, settings, samples, size = setup("lora", 5e-3)
    initial, updates = os.path.join(d, "initial"), os.path.join(d, "updates.jsonl")
    run_vlft("train", recipe, "--save-initial", initial, "--log-updates", updates)
    start, _ = read_safetensors(os.path.join(initial, "adapter_model.safetensors"))
    ref = LlavaReference(model, "lora", lora_rank=4, adapter=start, dtype=torch.float64)
    assert set(ref.trainable) == set(start)
    losses = reference_loop(ref, samples, settings, size, pad_id=0)
    got = read_updates(updates)
    assert [u["step"] for u in got] == list(range(1, 11))
    for u, want in zip(got, losses):
        assert abs(u["loss"] - want) <= 1e-5 * max(1.0, abs(want)), (u["step"], u["loss"], want)
    final, _ = read_safetensors(os.path.join(out, "adapter_model.safetensors"))
    moved = 0
    for name, tensor in ref.trainable.items():
        want = tensor.detach().numpy()
        assert relative(final[name], want) < 1e-4, (name, relative(final[name], want))
        moved += not np.allclose(final[name], start[name])
    assert moved == len(final)  # every A and B was updated
    with open(os.path.join(out, "adapter_config.json")) as f:
        adapter_config = json.load(f)
    assert adapter_config["r"] == 4 and adapter_config["lora_alpha"] == 8 and adapter_config["peft_type"] == "LORA"
    with open(os.path.join(out, "all_results.json")) as f:
        results = json.load(f)
    assert abs(results["train_loss"] - float(np.mean(losses))) < 1e-4


def test_full_training_with_frozen_tower_and_projector_matches_pytorch_loop():
    d, model, out, recipe, settings, samples, size = setup("full", 1e-3)
    updates = os.path.join(d, "updates.jsonl")
    run_vlft("train", recipe, "--log-updates", updates)
    ref = LlavaReference(model, "full", dtype=torch.float64)
    assert all(n.startswith("language_model.") for n in ref.trainable)
    losses = reference_loop(ref, samples, settings, size, pad_id=0)
    got = read_updates(updates)
    for u, want in zip(got, losses):
        assert abs(u["loss"] - want) <= 1e-5 * max(1.0, abs(want)), (u["step"], u["loss"], want)
    before, after = read_model_folder(model), read_model_folder(out)
    assert set(before) == set(after)
    for name in before:
        if name in ref.trainable:
            want = ref.trainable[name].detach().numpy()
            assert relative(after[name], want) < 1e-4, (name, relative(after[name], want))
            assert not np.array_equal(after[name], before[name]), name
        else:  # frozen tower and projector: byte for byte
            assert np.array_equal(after[name], before[name]), name
    # the output folder loads back into vlft as a model
    assert "all present" in run_vlft("info", out).stdout


def test_trained_adapter_loads_by_peft_names_and_exports_to_the_same_logits():
    """The adapter a LoRA run writes, loaded by its PEFT key names onto the
    base model in PyTorch, gives vlft's logits; `vlft export` merges it into
    a model whose logits equal base + adapter."""
    d, model, out, recipe, settings, samples, size = setup("lora", 5e-3)
    run_vlft("train", recipe)
    adapter, _ = read_safetensors(os.path.join(out, "adapter_model.safetensors"))
    batch = collate(samples, [0, 5], size, pad_id=0)
    batch_path = os.path.join(d, "batch.safetensors")
    write_safetensors(batch_path, batch)
    vlft_out = os.path.join(d, "step.safetensors")
    run_vlft("_model-step", model, batch_path, vlft_out, "--finetuning-type", "lora", "--lora-rank", 4,
             "--load-adapter", out)
    got, _ = read_safetensors(vlft_out)
    ref = LlavaReference(model, "lora", lora_rank=4, adapter=adapter, dtype=torch.float64)
    expected = ref.step(batch)["logits"]
    scale = np.max(np.abs(expected))
    assert np.max(np.abs(got["logits"] - expected)) / scale < 1e-5
    merged = os.path.join(d, "merged")
    run_vlft("export", "--model", model, "--adapter", out, "--out", merged)
    merged_out = os.path.join(d, "merged.safetensors")
    run_vlft("_model-step", merged, batch_path, merged_out, "--finetuning-type", "none")
    merged_logits, _ = read_safetensors(merged_out)
    assert np.max(np.abs(merged_logits["logits"] - got["logits"])) / scale < 1e-5
    plain = LlavaReference(model, "none", dtype=torch.float64).step(batch)["logits"]
    assert np.max(np.abs(plain - expected)) / scale > 1e-3  # the adapter does change the logits
