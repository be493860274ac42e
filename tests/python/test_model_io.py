"""Model loading, saving and bad input: full saves keep frozen tensors byte for
byte and names/dtypes of the source; adapters follow PEFT's layout; broken
batches and options fail with one clear line."""
import json
import os

import numpy as np

import llava_reference as ref
from vlft_testing import read_model_folder, read_safetensors, run_vlft, tempdir, write_safetensors

_CACHE = {}


def tiny(projector="yivl", dtype="f32", shards=None):
    key = (projector, dtype, shards)
    if key not in _CACHE:
        folder = os.path.join(tempdir(), "m")
        args = ["init-tiny", folder, "--projector", projector, "--dtype", dtype, "--seed", "3"]
        if shards:
            args += ["--shards", str(shards)]
        run_vlft(*args)
        _CACHE[key] = folder
    return _CACHE[key]


def write_batch(folder, seed=0, images=(1, 1)):
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    batch = ref.random_batch(config, np.random.default_rng(seed), images_per_sample=images)
    path = os.path.join(tempdir(), "batch.safetensors")
    write_safetensors(path, batch)
    return path, batch


def raw_header(path):
    import struct
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def test_save_full_keeps_every_tensor_and_dtype():
    for dtype in ("f32", "bf16"):
        folder = tiny("yivl", dtype, shards=2)
        batch, _ = write_batch(folder)
        out = os.path.join(tempdir(), "saved")
        run_vlft("_model-step", folder, batch, "--finetuning-type", "full", "--save-full", out)
        before, after = read_model_folder(folder), read_model_folder(out)
        assert set(before) == set(after)
        for name in before:
            assert before[name].dtype == after[name].dtype
            # No optimizer step ran: trained tensors too must round-trip exactly.
            assert np.array_equal(before[name], after[name]), name
        with open(os.path.join(folder, "config.json")) as f, open(os.path.join(out, "config.json")) as g:
            assert json.load(f) == json.load(g)
        shard = "model.safetensors" if os.path.exists(os.path.join(out, "model.safetensors")) else None
        if shard:
            header = raw_header(os.path.join(out, shard))
            wanted = "BF16" if dtype == "bf16" else "F32"
            assert all(v["dtype"] == wanted for k, v in header.items() if k != "__metadata__")


def test_save_adapter_peft_layout_and_reload():
    folder = tiny()
    batch, _ = write_batch(folder, seed=1)
    work = tempdir()
    # Random adapter in, adapter out: values and names must survive.
    reference = ref.LlavaReference(folder, finetuning_type="lora", lora_rank=4)
    adapter = ref.random_adapter(ref.lora_shapes(reference), 4, np.random.default_rng(5))
    os.makedirs(os.path.join(work, "in"))
    write_safetensors(os.path.join(work, "in", "adapter_model.safetensors"), adapter)
    run_vlft("_model-step", folder, batch, "--lora-rank", "4", "--load-adapter", os.path.join(work, "in"),
             "--save-adapter", os.path.join(work, "out"))
    saved, metadata = read_safetensors(os.path.join(work, "out", "adapter_model.safetensors"))
    assert metadata == {"format": "pt"}
    assert set(saved) == set(adapter)
    for name in adapter:
        assert np.array_equal(saved[name], adapter[name]), name
    with open(os.path.join(work, "out", "adapter_config.json")) as f:
        config = json.load(f)
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["bias"] == "none"
    assert config["base_model_name_or_path"] == folder
    assert config["inference_mode"] is True and config["fan_in_fan_out"] is False
    assert config["modules_to_save"] is None
    # Full module paths of every LM linear (lm_head, projector, frozen tower excluded).
    layers = 4
    expected = {f"language_model.model.layers.{i}.{part}" for i in range(layers) for part in
                ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                 "mlp.up_proj", "mlp.down_proj")}
    assert set(config["target_modules"]) == expected


def test_lora_init_is_peft_like():
    # Fresh LoRA: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0, so the model starts equal to the base.
    folder = tiny()
    work = tempdir()
    batch, _ = write_batch(folder, seed=2)
    run_vlft("_model-step", folder, batch, "--save-adapter", work, "--seed", "9")
    saved, _ = read_safetensors(os.path.join(work, "adapter_model.safetensors"))
    a = saved["base_model.model.language_model.model.layers.0.mlp.down_proj.lora_A.weight"]
    assert a.shape == (8, 352)
    bound = 1 / np.sqrt(352)
    assert np.abs(a).max() <= bound and np.abs(a).max() > 0.9 * bound and abs(a.mean()) < 0.1 * bound
    assert all(not v.any() for k, v in saved.items() if "lora_B" in k)


def test_targets_and_freeze_flags_select_like_llamafactory():
    folder = tiny()
    names = run_vlft("_model-step", folder, "--list-params", "--lora-target", "q_proj,v_proj").stdout.split()
    assert len(names) == 2 * 2 * 4 and all(("q_proj" in n or "v_proj" in n) and "vision" not in n for n in names)
    # Unfrozen tower: q_proj also matches the tower's attention (all its layers, as PEFT would adapt them).
    names = run_vlft("_model-step", folder, "--list-params", "--lora-target", "q_proj",
                     "--freeze-vision-tower", "0").stdout.split()
    assert any(n.startswith("base_model.model.vision_tower.") for n in names)
    # Full with defaults: language model only.
    names = run_vlft("_model-step", folder, "--list-params", "--finetuning-type", "full").stdout.split()
    assert names and all(n.startswith("language_model.") for n in names)
    # Projector unfrozen joins it; train the projector alone with the LM frozen.
    names = run_vlft("_model-step", folder, "--list-params", "--finetuning-type", "full", "--freeze-projector", "0",
                     "--freeze-language-model", "1").stdout.split()
    assert names and all(n.startswith("multi_modal_projector.") for n in names)


def test_bad_inputs_fail_with_one_line():
    folder = tiny()
    batch_path, batch = write_batch(folder, seed=3)
    # One image token too few.
    broken = dict(batch)
    ids = batch["input_ids"].copy()
    ids[0, list(ids[0]).index(1000)] = 5
    broken["input_ids"] = ids
    path = os.path.join(tempdir(), "broken.safetensors")
    write_safetensors(path, broken)
    r = run_vlft("_model-step", folder, path, check=False)
    assert r.returncode == 1 and "image tokens" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # Token id past the vocabulary.
    ids = batch["input_ids"].copy()
    ids[1, 0] = 5000
    write_safetensors(path, dict(batch, input_ids=ids))
    r = run_vlft("_model-step", folder, path, check=False)
    assert r.returncode == 1 and "vocabulary" in r.stderr
    # A target that matches nothing; a target that is not a Linear.
    r = run_vlft("_model-step", folder, batch_path, "--lora-target", "nothing_here", check=False)
    assert r.returncode == 1 and "nothing_here" in r.stderr
    r = run_vlft("_model-step", folder, batch_path, "--lora-target", "mlp", check=False)
    assert r.returncode == 1 and "not a Linear" in r.stderr
    # Missing model folder.
    r = run_vlft("_model-step", os.path.join(tempdir(), "none"), batch_path, check=False)
    assert r.returncode == 1 and "config.json" in r.stderr
    # Adapter of another rank.
    work = tempdir()
    run_vlft("_model-step", folder, batch_path, "--lora-rank", "2", "--save-adapter", work)
    r = run_vlft("_model-step", folder, batch_path, "--lora-rank", "4", "--load-adapter", work, check=False)
    assert r.returncode == 1 and "adapter_model.safetensors" in r.stderr


def test_repeat_is_deterministic_grad_scale_scales_eval_loss_matches():
    folder = tiny("llava")
    batch_path, batch = write_batch(folder, seed=4)
    work = tempdir()
    # --repeat runs zero_grad + step each time: results must be identical to a single run.
    run_vlft("_model-step", folder, batch_path, os.path.join(work, "a.safetensors"), "--finetuning-type", "full")
    run_vlft("_model-step", folder, batch_path, os.path.join(work, "b.safetensors"), "--finetuning-type", "full",
             "--repeat", "2", "--grad-scale", "2")
    a, _ = read_safetensors(os.path.join(work, "a.safetensors"))
    b, _ = read_safetensors(os.path.join(work, "b.safetensors"))
    assert a["loss"][0] == b["loss"][0]
    for name in a:
        if name.startswith("grad:"):
            np.testing.assert_allclose(b[name], 2 * a[name], rtol=1e-5, atol=1e-9)
    expected = ref.LlavaReference(folder, finetuning_type="none").step(batch)["loss"]
    r = run_vlft("_model-step", folder, batch_path, "--finetuning-type", "none")
    assert abs(json.loads(r.stdout)["loss"] - expected) < 1e-5 * expected


def test_adapter_config_round_trip_rebuilds_the_same_adapter():
    # Save with non-default options, rebuild from adapter_config.json alone: same
    # tensors, same loss, same gradients.
    folder = tiny("llava")
    batch, _ = write_batch(folder, seed=6)
    work = tempdir()
    flags = ["--lora-rank", "3", "--lora-alpha", "5", "--lora-target", "q_proj,down_proj", "--seed", "11"]
    run_vlft("_model-step", folder, batch, os.path.join(work, "a.safetensors"), *flags,
             "--save-adapter", os.path.join(work, "ad"))
    with open(os.path.join(work, "ad", "adapter_config.json")) as f:
        config = json.load(f)
    assert config["r"] == 3 and config["lora_alpha"] == 5 and len(config["target_modules"]) == 8
    run_vlft("_model-step", folder, batch, os.path.join(work, "b.safetensors"), "--adapter-options",
             os.path.join(work, "ad"), "--load-adapter", os.path.join(work, "ad"))
    a, _ = read_safetensors(os.path.join(work, "a.safetensors"))
    b, _ = read_safetensors(os.path.join(work, "b.safetensors"))
    assert set(a) == set(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), name
