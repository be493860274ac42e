"""Foundation checks against independent Python code: safetensors written by a
few-line numpy writer are read by vlft and vice versa; init-tiny writes exactly
the tensors transformers' LlavaForConditionalGeneration would save; the CLI's
exit codes and one-line errors."""
import json
import os

import numpy as np

from vlft_testing import (read_model_folder, read_safetensors, run_vlft, tempdir, write_safetensors)


def test_python_written_file_round_trips_through_vlft():
    rng = np.random.default_rng(0)
    tensors = {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f16": rng.standard_normal((7,)).astype(np.float16),
        "f64": rng.standard_normal((2, 2)).astype(np.float64),
        "i64": rng.integers(-2**40, 2**40, (4,)).astype(np.int64),
        "i32": rng.integers(-2**30, 2**30, (2, 3)).astype(np.int32),
        "u8": rng.integers(0, 255, (9,)).astype(np.uint8),
        "bool": rng.integers(0, 2, (5,)).astype(np.bool_),
        "empty": np.zeros((0, 3), np.float32),
        "scalar": np.array(3.25, np.float32),
        "name with \"quote\" and \\ slash": np.arange(3, dtype=np.int8),
    }
    d = tempdir()
    src = os.path.join(d, "in.safetensors")
    write_safetensors(src, tensors, {"format": "pt", "note": "written by numpy"})
    listing = run_vlft("tensors", src).stdout.splitlines()
    listed = {line.split("\t")[0]: line.split("\t")[1:] for line in listing}
    assert set(listed) == set(tensors)
    assert listed["f32"] == ["F32", "[3, 5]"]
    assert listed["scalar"] == ["F32", "[]"]
    dst = os.path.join(d, "out.safetensors")
    run_vlft("tensors", src, "--copy-to", dst)
    back, metadata = read_safetensors(dst)
    assert metadata == {"format": "pt"}
    assert set(back) == set(tensors)
    for name, array in tensors.items():
        assert back[name].dtype == array.dtype, name
        assert back[name].shape == array.shape, name
        assert np.array_equal(back[name], array), name
    # the header vlft writes is padded so the data starts 8-byte aligned
    with open(dst, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
    assert n % 8 == 0


def test_vlft_rejects_truncated_file_naming_it():
    d = tempdir()
    path = os.path.join(d, "model.safetensors")
    write_safetensors(path, {"w": np.ones((64, 64), np.float32)})
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:-100])
    result = run_vlft("tensors", path, check=False)
    assert result.returncode == 1
    assert path in result.stderr and "out of bounds" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def expected_llava_tensors(config, yivl):
    """What LlavaForConditionalGeneration.state_dict() holds for this config,
    restated from transformers' module structure (CLIPVisionModel, the
    projector, LlamaForCausalLM)."""
    v, t = config["vision_config"], config["text_config"]
    h, inter, grid = v["hidden_size"], v["intermediate_size"], v["image_size"] // v["patch_size"]
    out = {}
    vm = "vision_tower.vision_model."
    out[vm + "embeddings.class_embedding"] = [h]
    out[vm + "embeddings.patch_embedding.weight"] = [h, 3, v["patch_size"], v["patch_size"]]
    out[vm + "embeddings.position_embedding.weight"] = [grid * grid + 1, h]
    for ln in ("pre_layrnorm", "post_layernorm"):
        out[vm + ln + ".weight"] = [h]
        out[vm + ln + ".bias"] = [h]
    for i in range(v["num_hidden_layers"]):
        p = f"{vm}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[p + f"self_attn.{proj}.weight"] = [h, h]
            out[p + f"self_attn.{proj}.bias"] = [h]
        for ln in ("layer_norm1", "layer_norm2"):
            out[p + ln + ".weight"] = [h]
            out[p + ln + ".bias"] = [h]
        out[p + "mlp.fc1.weight"] = [inter, h]
        out[p + "mlp.fc1.bias"] = [inter]
        out[p + "mlp.fc2.weight"] = [h, inter]
        out[p + "mlp.fc2.bias"] = [h]
    d = t["hidden_size"]
    mp = "multi_modal_projector."
    out[mp + "linear_1.weight"] = [d, h]
    out[mp + "linear_1.bias"] = [d]
    if yivl:
        for name in ("linear_2", "linear_4"):  # LayerNorms
            out[mp + name + ".weight"] = [d]
            out[mp + name + ".bias"] = [d]
        out[mp + "linear_3.weight"] = [d, d]
        out[mp + "linear_3.bias"] = [d]
    else:
        out[mp + "linear_2.weight"] = [d, d]
        out[mp + "linear_2.bias"] = [d]
    hd = t["head_dim"]
    q, kv = t["num_attention_heads"] * hd, t["num_key_value_heads"] * hd
    lm = "language_model.model."
    out[lm + "embed_tokens.weight"] = [t["vocab_size"], d]
    out[lm + "norm.weight"] = [d]
    for i in range(t["num_hidden_layers"]):
        p = f"{lm}layers.{i}."
        out[p + "self_attn.q_proj.weight"] = [q, d]
        out[p + "self_attn.k_proj.weight"] = [kv, d]
        out[p + "self_attn.v_proj.weight"] = [kv, d]
        out[p + "self_attn.o_proj.weight"] = [d, q]
        out[p + "mlp.gate_proj.weight"] = [t["intermediate_size"], d]
        out[p + "mlp.up_proj.weight"] = [t["intermediate_size"], d]
        out[p + "mlp.down_proj.weight"] = [d, t["intermediate_size"]]
        out[p + "input_layernorm.weight"] = [d]
        out[p + "post_attention_layernorm.weight"] = [d]
    if not config.get("tie_word_embeddings", False):
        out["language_model.lm_head.weight"] = [t["vocab_size"], d]
    return out


def check_tiny(projector, shards, dtype):
    d = tempdir()
    run_vlft("init-tiny", d, "--projector", projector, "--shards", shards, "--dtype", dtype, "--seed", 3)
    with open(os.path.join(d, "config.json")) as f:
        config = json.load(f)
    assert config["model_type"] == "llava"
    assert config["architectures"] == ["LlavaForConditionalGeneration"]
    assert config.get("is_yi_vl_derived_model", False) == (projector == "yivl")
    assert config["torch_dtype"] == {"f32": "float32", "bf16": "bfloat16"}[dtype]
    tensors = read_model_folder(d)
    expected = expected_llava_tensors(config, projector == "yivl")
    assert set(tensors) == set(expected), set(tensors) ^ set(expected)
    for name, shape in expected.items():
        assert list(tensors[name].shape) == shape, (name, tensors[name].shape, shape)
        assert np.isfinite(tensors[name]).all(), name
    emb = tensors["language_model.model.embed_tokens.weight"]
    assert 0.015 < float(emb.std()) < 0.025  # N(0, 0.02)
    with open(os.path.join(d, "preprocessor_config.json")) as f:
        pre = json.load(f)
    size = config["vision_config"]["image_size"]
    assert pre["size"] == {"shortest_edge": size}
    assert pre["crop_size"] == {"height": size, "width": size}
    assert pre["image_processor_type"] == "CLIPImageProcessor"
    assert pre["resample"] == 3
    with open(os.path.join(d, "generation_config.json")) as f:
        gen = json.load(f)
    assert gen["eos_token_id"] == config["text_config"]["eos_token_id"]
    if shards > 1:
        with open(os.path.join(d, "model.safetensors.index.json")) as f:
            index = json.load(f)
        files = set(index["weight_map"].values())
        assert len(files) == shards, files
        total = sum(t.size * (2 if dtype == "bf16" else 4) for t in tensors.values())
        assert index["metadata"]["total_size"] == total
    summary = run_vlft("info", d).stdout
    assert "all present" in summary
    return tensors


def test_init_tiny_yivl_single_file_f32():
    check_tiny("yivl", 1, "f32")


def test_init_tiny_llava_sharded_bf16():
    check_tiny("llava", 3, "bf16")


def test_init_tiny_is_deterministic_by_seed():
    a, b, c = tempdir(), tempdir(), tempdir()
    run_vlft("init-tiny", a, "--seed", 5)
    run_vlft("init-tiny", b, "--seed", 5, "--shards", 2, env=dict(os.environ, OMP_NUM_THREADS="1"))
    run_vlft("init-tiny", c, "--seed", 6)
    ta, tb, tc = read_model_folder(a), read_model_folder(b), read_model_folder(c)
    name = "language_model.model.layers.0.self_attn.q_proj.weight"
    assert all(np.array_equal(ta[k], tb[k]) for k in ta)  # neither sharding nor threads change values
    assert not np.array_equal(ta[name], tc[name])


def test_info_rejects_a_model_whose_weights_disagree_with_config():
    d = tempdir()
    run_vlft("init-tiny", d)
    with open(os.path.join(d, "config.json")) as f:
        config = json.load(f)
    config["text_config"]["intermediate_size"] = 300
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f)
    result = run_vlft("info", d, check=False)
    assert result.returncode == 1
    assert "mlp" in result.stderr and "[352,128]" in result.stderr and "[300,128]" in result.stderr
    os.remove(os.path.join(d, "model.safetensors"))
    result = run_vlft("info", d, check=False)
    assert result.returncode == 1 and "no model.safetensors" in result.stderr


def test_cli_exit_codes_and_messages():
    assert run_vlft("--help").stdout.startswith("usage: vlft")
    assert run_vlft("--version").stdout.startswith("vlft ")
    for command in ("train", "init-tiny", "info", "tensors"):
        assert "usage: vlft " + command in run_vlft(command, "--help").stdout
    r = run_vlft("frobnicate", check=False)
    assert r.returncode == 2 and "unknown command 'frobnicate'" in r.stderr
    r = run_vlft("init-tiny", check=False)
    assert r.returncode == 2
    r = run_vlft("init-tiny", "x", "--shards", "zero", check=False)
    assert r.returncode == 2 and "--shards" in r.stderr
    r = run_vlft(check=False)
    assert r.returncode == 2
    r = run_vlft("info", "/nonexistent/model", check=False)
    assert r.returncode == 1 and "/nonexistent/model" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_train_print_config_and_recipe_errors():
    d = tempdir()
    recipe = os.path.join(d, "r.yaml")
    with open(recipe, "w") as f:
        f.write("model_name_or_path: m\nstage: sft\ndataset: mllm_demo\ntemplate: yi_vl\noutput_dir: out\n"
                "lora_rank: 4\nddp_timeout: 9\nlearning_rate: 1.0e-4\n")
    r = run_vlft("train", "--print-config", recipe)
    assert "lora_alpha: 8\n" in r.stdout and "learning_rate: 0.0001\n" in r.stdout
    assert r.stderr.count("\n") == 1 and "ddp_timeout" in r.stderr
    with open(recipe, "a") as f:
        f.write("lora_rnk: 8\n")
    r = run_vlft("train", "--print-config", recipe, check=False)
    assert r.returncode == 1
    assert f"{recipe}:9: unknown key 'lora_rnk'" in r.stderr
