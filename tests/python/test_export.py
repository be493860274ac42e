"""vlft export: a PEFT adapter written here with numpy is merged into the tiny
base model; merged weights must equal W + alpha/r * B @ A computed in numpy,
everything else must be copied unchanged."""
import json
import os
import shutil

import numpy as np

from vlft_testing import read_model_folder, run_vlft, tempdir, write_safetensors

TARGETS = ["language_model.model.layers.0.self_attn.q_proj", "language_model.model.layers.1.mlp.down_proj",
           "language_model.model.layers.3.self_attn.v_proj"]


def make_adapter(base, folder, rank=4, alpha=8, naming="classic", adapter_name="", rslora=False, targets=TARGETS):
    tensors = read_model_folder(base)
    rng = np.random.default_rng(1)
    out = {}
    for module in targets:
        w = tensors.get(module + ".weight", np.zeros((128, 128), np.float32))
        a = rng.standard_normal((rank, w.shape[1])).astype(np.float32) * 0.1
        b = rng.standard_normal((w.shape[0], rank)).astype(np.float32) * 0.1
        path = module
        if naming == "modern":
            path = module.replace("language_model.model.", "model.language_model.")
        suffix = f".{adapter_name}" if adapter_name else ""
        out[f"base_model.model.{path}.lora_A{suffix}.weight"] = a
        out[f"base_model.model.{path}.lora_B{suffix}.weight"] = b
    os.makedirs(folder, exist_ok=True)
    write_safetensors(os.path.join(folder, "adapter_model.safetensors"), out, {"format": "pt"})
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0, "bias": "none",
              "task_type": "CAUSAL_LM", "target_modules": targets, "base_model_name_or_path": base,
              "fan_in_fan_out": False, "use_rslora": rslora}
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump(config, f)
    return out


def check_merge(base, adapter_tensors, exported, scale):
    before, after = read_model_folder(base), read_model_folder(exported)
    assert set(before) == set(after)
    merged = set()
    for key, a in adapter_tensors.items():
        if ".lora_A" not in key:
            continue
        module = key[len("base_model.model."):].split(".lora_A")[0].replace("model.language_model.", "language_model.model.")
        b = adapter_tensors[key.replace(".lora_A", ".lora_B")]
        expected = before[module + ".weight"] + scale * (b @ a)
        assert np.allclose(after[module + ".weight"], expected, rtol=1e-6, atol=1e-7), module
        assert not np.allclose(after[module + ".weight"], before[module + ".weight"])
        merged.add(module + ".weight")
    for name in before:
        if name not in merged:
            assert np.array_equal(before[name], after[name]), name


def test_export_merges_lora_flags_form_and_shards():
    d = tempdir()
    base, adapter, out = os.path.join(d, "base"), os.path.join(d, "adapter"), os.path.join(d, "out")
    run_vlft("init-tiny", base, "--seed", 2)
    tensors = make_adapter(base, adapter, rank=4, alpha=8)
    r = run_vlft("export", "--model", base, "--adapter", adapter, "--out", out, "--size", "0.001")
    assert "3 LoRA weights merged" in r.stdout
    check_merge(base, tensors, out, 8 / 4)
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
        index = json.load(f)
    assert len(set(index["weight_map"].values())) > 1  # 1 MB shards of a 5 MB model
    for name in ("config.json", "preprocessor_config.json", "generation_config.json"):
        assert os.path.exists(os.path.join(out, name)), name
    assert not [n for n in os.listdir(d) if ".tmp." in n or ".old." in n]
    assert "all present" in run_vlft("info", out).stdout


def test_export_recipe_form_modern_names_adapter_suffix_rslora_and_bf16():
    d = tempdir()
    base, adapter, out = os.path.join(d, "base"), os.path.join(d, "adapter"), os.path.join(d, "out")
    run_vlft("init-tiny", base, "--seed", 4)
    tensors = make_adapter(base, adapter, rank=2, alpha=16, naming="modern", adapter_name="default", rslora=True)
    recipe = os.path.join(d, "export.yaml")
    with open(recipe, "w") as f:
        f.write(f"model_name_or_path: {base}\nadapter_name_or_path: {adapter}\ntemplate: yi_vl\n"
                f"finetuning_type: lora\nexport_dir: {out}\nexport_size: 5\nexport_device: cpu\n"
                "export_legacy_format: false\n")
    run_vlft("export", recipe)
    check_merge(base, tensors, out, 16 / np.sqrt(2))
    # exporting again replaces the folder whole
    run_vlft("export", recipe)
    out_bf16 = os.path.join(d, "bf16")
    run_vlft("export", "--model", base, "--adapter", adapter, "--out", out_bf16, "--dtype", "bf16")
    with open(os.path.join(out_bf16, "config.json")) as f:
        assert json.load(f)["torch_dtype"] == "bfloat16"
    merged_f32 = read_model_folder(out)
    merged_bf16 = read_model_folder(out_bf16)
    name = TARGETS[0] + ".weight"
    assert np.allclose(merged_bf16[name], merged_f32[name], rtol=1 / 128, atol=1e-6)


def test_export_errors_leave_nothing_behind():
    d = tempdir()
    base, adapter, out = os.path.join(d, "base"), os.path.join(d, "adapter"), os.path.join(d, "out")
    run_vlft("init-tiny", base)
    make_adapter(base, adapter, targets=["language_model.model.layers.9.self_attn.q_proj"])
    r = run_vlft("export", "--model", base, "--adapter", adapter, "--out", out, check=False)
    assert r.returncode == 1 and "layers.9.self_attn.q_proj" in r.stderr and "not in the base model" in r.stderr
    assert not os.path.exists(out)
    assert not [n for n in os.listdir(d) if ".tmp." in n]
    # lora_B missing
    shutil.rmtree(adapter)
    tensors = make_adapter(base, adapter)
    only_a = {k: v for k, v in tensors.items() if ".lora_A" in k or "q_proj" in k}
    write_safetensors(os.path.join(adapter, "adapter_model.safetensors"), only_a)
    r = run_vlft("export", "--model", base, "--adapter", adapter, "--out", out, check=False)
    assert r.returncode == 1 and "no lora_B" in r.stderr
    # rank disagreeing with adapter_config.json
    make_adapter(base, adapter, rank=4)
    with open(os.path.join(adapter, "adapter_config.json")) as f:
        config = json.load(f)
    config["r"] = 3
    with open(os.path.join(adapter, "adapter_config.json"), "w") as f:
        json.dump(config, f)
    r = run_vlft("export", "--model", base, "--adapter", adapter, "--out", out, check=False)
    assert r.returncode == 1 and "r = 3" in r.stderr
    config["peft_type"] = "IA3"
    with open(os.path.join(adapter, "adapter_config.json"), "w") as f:
        json.dump(config, f)
    r = run_vlft("export", "--model", base, "--adapter", adapter, "--out", out, check=False)
    assert r.returncode == 1 and "LORA" in r.stderr
    recipe = os.path.join(d, "bad.yaml")
    with open(recipe, "w") as f:
        f.write(f"model_name_or_path: {base}\nexport_dir: {out}\nexport_legacy_format: true\n")
    r = run_vlft("export", recipe, check=False)
    assert r.returncode == 1 and "export_legacy_format" in r.stderr
    assert not os.path.exists(out)
