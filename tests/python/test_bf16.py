"""bf16 mode (`bf16: true`, `_model-step --bf16`): the model against three
PyTorch references, its memory, and training on the demo.

References (tests/python/llava_reference.py), on tiny random models:
- exact: fp64, no rounding. vlft's bf16 mode must stay close to it (bf16
  accuracy) and visibly away from it (bf16 really in effect: the fp32 path is
  1e-7 away).
- emulated: fp64 with every weight product through bf16 inputs (Bf16Product)
  and frozen embedding rows rounded: vlft's bf16 numbers in exact arithmetic.
- torch autocast: fp32 weights under torch.autocast("cpu", bfloat16), what
  LLaMA-Factory's bf16: true runs.

Tolerances, from measurements on these models (errors as relative norms):
- torch autocast rounds much more than vlft: every Linear's OUTPUT, the
  attention scores and probabilities, the logits and every activation
  gradient are bf16 there, while vlft rounds only the inputs of the weight
  products and keeps fp32 between them. Against exact, torch's gradients are
  6-13% off, vlft's 0.5-1.2%; vlft against torch therefore differs by about
  torch's own error. So: loss within 1e-2 of torch's (measured <= 8e-4),
  every gradient within 25% (measured <= 13%), and vlft's worst gradient at
  least as close to exact as torch's worst.
- against exact: loss within 2e-3 (measured <= 3.2e-4), gradients within 3%
  (measured <= 1.2%), logits off by more than 1e-4 (bf16 in effect).
- against emulated: a rounding decision (which bf16 an fp32 value becomes)
  flips when the fp32 and fp64 values straddle a rounding boundary, and a
  flip moves one element by a bf16 ulp (0.4%), which later layers spread;
  this is not rare, and two fp32 summation orders (vlft's oneDNN and fallback
  GEMMs) differ from each other by 0.2-0.4% in the gradients for the same
  reason. So the emulated reference is checked row by row on the logits
  (test_text_only_forward_is_the_emulated_one): rows before any flip match
  to 1e-5, which pins down exactly which values vlft rounds.
"""
import json
import os

import numpy as np
import torch

import llava_reference as ref
import vlft_testing
from vlft_testing import read_model_folder, read_safetensors, rel_norm, run_vlft, tempdir, write_safetensors



def tiny_model(projector="yivl", dtype="bf16"):
    return vlft_testing.tiny_model(projector, dtype)


def max_rel(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


SETUPS = {
    "lora": (["--finetuning-type", "lora", "--lora-rank", "4"], dict(finetuning_type="lora", lora_rank=4)),
    "full_lm": (["--finetuning-type", "full"], dict(finetuning_type="full")),
    "everything": (["--finetuning-type", "full", "--freeze-vision-tower", "0", "--freeze-projector", "0"],
                   dict(finetuning_type="full", freeze_vision_tower=False, freeze_multi_modal_projector=False)),
}


class Case:
    """One batch, the same LoRA values everywhere, vlft run with any flags."""

    def __init__(self, folder, setup, images, seed):
        self.folder = folder
        self.flags, self.kwargs = SETUPS[setup]
        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)
        rng = np.random.default_rng(seed)
        self.batch = ref.random_batch(config, rng, images_per_sample=images)
        self.work = tempdir()
        self.batch_path = os.path.join(self.work, "batch.safetensors")
        write_safetensors(self.batch_path, self.batch)
        self.adapter = None
        probe = ref.LlavaReference(folder, **self.kwargs)
        if probe.lora:
            self.adapter = ref.random_adapter(ref.lora_shapes(probe), self.kwargs.get("lora_rank", 8), rng)
            os.makedirs(os.path.join(self.work, "adapter"))
            write_safetensors(os.path.join(self.work, "adapter", "adapter_model.safetensors"), self.adapter)

    def reference(self, autocast=False, **extra):
        model = ref.LlavaReference(self.folder, **self.kwargs, **extra)
        if self.adapter is not None:
            ref.set_adapter(model, self.adapter)
        return model.step(self.batch, autocast_bf16=autocast)

    def vlft(self, *flags, env=None, name="out"):
        out = os.path.join(self.work, name + ".safetensors")
        args = ["_model-step", self.folder, self.batch_path, out, *self.flags, *flags]
        if self.adapter is not None:
            args += ["--load-adapter", os.path.join(self.work, "adapter")]
        run = run_vlft(*args, env=env)
        stats = json.loads(run.stdout.strip().splitlines()[-1])
        got, _ = read_safetensors(out)
        grads = {k[len("grad:"):]: v for k, v in got.items() if k.startswith("grad:")}
        return {"logits": got["logits"], "loss": float(got["loss"][0]), "grads": grads, "stats": stats}


def grad_errors(got, want, exact):
    """Relative-norm error of every gradient whose exact value is not an
    analytic zero (a k_proj bias: each softmax row shifts uniformly)."""
    assert set(got["grads"]) == set(want["grads"]), sorted(set(got["grads"]) ^ set(want["grads"]))[:5]
    errors = {n: rel_norm(got["grads"][n], g) for n, g in want["grads"].items()
              if np.linalg.norm(exact["grads"][n]) > 1e-9}
    assert errors, "no gradients to compare"
    return errors


def check_against_references(folder, setup, images, seed):
    case = Case(folder, setup, images, seed)
    got = case.vlft("--bf16")
    assert got["stats"]["compute"].startswith("bf16"), got["stats"]
    exact = case.reference()
    torch_bf16 = case.reference(autocast=True, dtype=torch.float32)
    # bf16 accuracy, and bf16 in effect.
    assert abs(got["loss"] - exact["loss"]) <= 2e-3 * abs(exact["loss"]), (got["loss"], exact["loss"])
    worst_exact = max(grad_errors(got, exact, exact).values())
    assert worst_exact < 3e-2, f"{setup}: gradients {worst_exact:.3g} from exact"
    assert max_rel(got["logits"], exact["logits"]) > 1e-4, "logits as exact as fp32: bf16 not in effect"
    # PyTorch's bf16 autocast.
    assert abs(got["loss"] - torch_bf16["loss"]) <= 1e-2 * abs(torch_bf16["loss"]), (got["loss"], torch_bf16["loss"])
    errors = grad_errors(got, torch_bf16, exact)
    name, worst = max(errors.items(), key=lambda item: item[1])
    assert worst < 0.25, f"{setup}: gradient of {name} {worst:.3g} from torch autocast"
    torch_worst = max(grad_errors(torch_bf16, exact, exact).values())
    assert worst_exact <= torch_worst, (worst_exact, torch_worst)
    return case, got


def test_yivl_lora_bf16_checkpoint():
    check_against_references(tiny_model("yivl", "bf16"), "lora", (1, 1), seed=0)


def test_yivl_full_lm_bf16_checkpoint_two_images():
    check_against_references(tiny_model("yivl", "bf16"), "full_lm", (2, 1), seed=1)


def test_llava_everything_f32_checkpoint():
    # Every weight trains: all of them go through the fp32-master rounding path.
    check_against_references(tiny_model("llava", "f32"), "everything", (1, 2), seed=2)


def test_llava_lora_f32_checkpoint():
    # Frozen F32 weights: converted once to owned bf16 copies.
    case, got = check_against_references(tiny_model("llava", "f32"), "lora", (1, 1), seed=3)
    assert got["stats"]["weights_owned"] > 0


def matching_rows(got, want, mask, tolerance=1e-5):
    """Per real token row of logits: 1 when every logit agrees with want to
    tolerance (relative to the largest), else 0."""
    rows = mask.reshape(-1) != 0
    a, b = got.reshape(-1, got.shape[-1])[rows], want.reshape(-1, want.shape[-1])[rows]
    return list(np.abs(a - b).max(-1) / np.abs(b).max() < tolerance)


def test_text_only_forward_is_the_emulated_one():
    """Without images, vlft's logits are those of the emulated reference (bf16
    inputs to every weight product, frozen embedding rows bf16) to fp32
    accuracy, in every token row up to the first flipped rounding decision
    (module notes): such a flip changes one element by a bf16 ulp and, through
    attention, every later row of its sequence. Over 6 batches about 60% of
    the rows match (14-100% per batch); against the exact reference, whose
    rows all carry bf16 error, none do. So: at least 25% against emulated, at
    most 5% against exact."""
    for folder, setup in ((tiny_model("yivl", "f32"), "lora"), (tiny_model("llava", "bf16"), "full_lm")):
        emulated_rows, exact_rows = [], []
        for seed in range(4, 10):
            case = Case(folder, setup, (0, 0), seed=seed)
            got = case.vlft("--bf16")
            emulated, exact = case.reference(bf16_products=True), case.reference()
            mask = case.batch["attention_mask"]
            emulated_rows += matching_rows(got["logits"], emulated["logits"], mask)
            exact_rows += matching_rows(got["logits"], exact["logits"], mask)
            assert abs(got["loss"] - emulated["loss"]) <= 5e-4 * abs(emulated["loss"])
        assert np.mean(emulated_rows) >= 0.25, f"{setup}: {np.mean(emulated_rows):.2f} of rows match emulated"
        assert np.mean(exact_rows) <= 0.05, f"{setup}: {np.mean(exact_rows):.2f} of rows match exact"


def test_tied_embeddings_frozen_bf16_table():
    # lm_head = embed_tokens: the frozen bf16 table serves both the gather and the product.
    source = tiny_model("llava", "bf16")
    folder = os.path.join(tempdir(), "tied")
    os.makedirs(folder)
    with open(os.path.join(source, "config.json")) as f:
        config = json.load(f)
    config["text_config"]["tie_word_embeddings"] = True
    config["tie_word_embeddings"] = True
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    tensors = read_model_folder(source)
    tensors.pop("language_model.lm_head.weight")
    # Stored as BF16 again (read_model_folder gives float32 values of bf16 numbers).
    raw = {k: (v.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16) for k, v in tensors.items()}
    write_bf16_safetensors(os.path.join(folder, "model.safetensors"), raw)
    check_against_references(folder, "lora", (1, 1), seed=5)


def write_bf16_safetensors(path, raw_u16):
    """A safetensors file whose tensors are BF16 (given as their uint16 bits)."""
    header, blobs, offset = {}, [], 0
    for name, bits in raw_u16.items():
        data = np.ascontiguousarray(bits).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(bits.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little") + encoded + b"".join(blobs))


def test_onednn_path_matches_fallback_in_the_model():
    """VLFT_BF16_GEMM=onednn runs the model's products through oneDNN (on a
    CPU without bf16 there, its f32 matmul on the bf16 values), twice, so the
    second step reuses cached primitives: same loss, same gradients as the
    fallback up to summation order (see the module notes)."""
    case = Case(tiny_model("yivl", "bf16"), "everything", (1, 1), seed=6)
    fallback = case.vlft("--bf16", env=dict(os.environ, VLFT_BF16_GEMM="fallback"), name="fallback")
    onednn = case.vlft("--bf16", "--repeat", "2", env=dict(os.environ, VLFT_BF16_GEMM="onednn"), name="onednn")
    assert fallback["stats"]["compute"] == "bf16-fallback" and onednn["stats"]["compute"] == "bf16-onednn"
    assert abs(onednn["loss"] - fallback["loss"]) <= 1e-4 * abs(fallback["loss"])
    exact = case.reference()
    errors = grad_errors(onednn, fallback, exact)
    assert max(errors.values()) < 2e-2, max(errors.items(), key=lambda item: item[1])
    # The oneDNN run also agrees with exact as well as the fallback does.
    assert max(grad_errors(onednn, exact, exact).values()) < 3e-2


def gemm_weight(name, shape):
    """The tensors bf16 mode stores as bf16 (llava_load.c is_gemm_weight)."""
    return "patch_embedding.weight" in name or (len(shape) == 2 and "position_embedding" not in name)


def test_frozen_bf16_checkpoint_is_used_from_the_mapping():
    """A frozen model on a BF16 checkpoint: every GEMM weight mapped, none
    copied; only the small fp32 tensors (norms, biases, position and class
    embeddings) are owned. In fp32 mode the same model owns fp32 copies of
    everything."""
    folder = tiny_model("yivl", "bf16")
    tensors = read_model_folder(folder)
    gemm = sum(v.size for k, v in tensors.items() if gemm_weight(k, v.shape))
    rest = sum(v.size for k, v in tensors.items() if not gemm_weight(k, v.shape))
    assert gemm > 10 * rest
    case = Case(folder, "full_lm", (1, 1), seed=7)  # no adapter: each run picks its finetuning type
    for finetuning in ("none", "lora"):
        stats = case.vlft("--bf16", "--finetuning-type", finetuning, name=finetuning)["stats"]
        assert stats["weights_mapped"] == 2 * gemm, (stats, gemm)
        assert stats["weights_owned"] == 4 * rest, (stats, rest)
    fp32 = case.vlft("--finetuning-type", "none", name="fp32")["stats"]
    assert fp32["compute"] == "fp32"
    assert fp32["weights_owned"] == 4 * (gemm + rest) and fp32["weights_mapped"] == 0
    # An F32 checkpoint in bf16 mode: GEMM weights converted once to bf16 copies,
    # the small F32 tensors read in place.
    folder = tiny_model("yivl", "f32")
    stats = Case(folder, "full_lm", (1, 1), seed=7).vlft("--bf16", "--finetuning-type", "none", name="f32")["stats"]
    assert stats["weights_owned"] == 2 * gemm and stats["weights_mapped"] == 4 * rest, stats


def test_full_training_keeps_fp32_masters():
    # Trainable weights stay fp32 (the optimizer's masters) with fp32 gradients.
    folder = tiny_model("yivl", "bf16")
    tensors = read_model_folder(folder)
    case = Case(folder, "full_lm", (1, 1), seed=8)
    got = case.vlft("--bf16")
    trained = sum(v.size for k, v in tensors.items() if k.startswith("language_model."))
    assert got["stats"]["grads"] == 4 * trained
    assert got["stats"]["weights_owned"] >= 4 * trained


def test_demo_recipe_bf16_tracks_fp32():
    """The demo recipe (examples/tiny_lora_sft.yaml) for 100 steps with bf16
    true and false: final logged loss within 2% (issue #8's acceptance). To
    run in about a minute on 2 cores: batch 2 without accumulation (a quarter
    of the demo's work per step), 48 samples, no eval. That is still about 4
    epochs, as in the demo, and the loss falls from ~7.6 to ~1.65, the same
    memorised regime the demo reaches (~1.5)."""
    d = tempdir()
    run_vlft("init-tiny", os.path.join(d, "demo", "model"), "--seed", 0)
    run_vlft("demo-data", os.path.join(d, "demo", "data"), "--seed", 0)
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "examples", "tiny_lora_sft.yaml")) as f:
        lines = [line for line in f if not line.startswith(("num_train_epochs", "per_device_train_batch_size",
                                                            "gradient_accumulation_steps", "max_samples",
                                                            "val_size", "per_device_eval_batch_size",
                                                            "plot_loss", "save_steps", "output_dir"))]
    final = {}
    for bf16 in ("false", "true"):
        recipe = os.path.join(d, f"bf16_{bf16}.yaml")
        with open(recipe, "w") as f:
            f.writelines(lines)
            f.write(f"max_steps: 100\nper_device_train_batch_size: 2\ngradient_accumulation_steps: 1\n"
                    f"max_samples: 48\nval_size: 0\nplot_loss: false\nsave_steps: 1000\n"
                    f"output_dir: out_{bf16}\nbf16: {bf16}\n")
        run = run_vlft("train", recipe, cwd=d)
        assert ("bf16 products" in run.stderr) == (bf16 == "true"), run.stderr[-2000:]
        with open(os.path.join(d, f"out_{bf16}", "trainer_log.jsonl")) as f:
            losses = [json.loads(line)["loss"] for line in f if '"loss"' in line]
        assert losses[-1] < 0.4 * losses[0], losses
        final[bf16] = losses
    assert final["true"] != final["false"], "bf16 changed nothing"
    a, b = final["true"][-1], final["false"][-1]
    assert abs(a - b) <= 0.02 * b, (a, b)


def test_gemm_peak_and_implementation_choice():
    """vlft _gemm-peak times oneDNN's f32 (and, where the CPU has it, bf16)
    matmul; vlft's bf16 GEMM is oneDNN exactly where oneDNN's ISA has native
    bf16, unless VLFT_BF16_GEMM says otherwise (a bad value is reported)."""
    def peak(**env):
        run = run_vlft("_gemm-peak", "--shape", "96,80,64", "--repeat", "1", env=dict(os.environ, **env))
        return json.loads(run.stdout.strip().splitlines()[-1]), run.stderr
    result, _ = peak()
    assert result["onednn_f32_gflops"] > 0 and result["vlft_f32_gflops"] > 0 and result["vlft_bf16_gflops"] > 0
    native = result["isa"] in ("avx512_core_bf16", "avx512_core_amx")
    assert result["vlft_bf16_impl"] == ("onednn" if native else "fallback"), result
    assert (result["onednn_bf16_gflops"] > 0) or "no bf16 matmul" in result["onednn_bf16_impl"], result
    assert peak(VLFT_BF16_GEMM="onednn")[0]["vlft_bf16_impl"] == "onednn"
    assert peak(VLFT_BF16_GEMM="fallback")[0]["vlft_bf16_impl"] == "fallback"
    result, stderr = peak(VLFT_BF16_GEMM="fast")
    assert "VLFT_BF16_GEMM must be 'onednn' or 'fallback', got 'fast'" in stderr
    assert result["vlft_bf16_impl"] == ("onednn" if native else "fallback")
    bad = run_vlft("_gemm-peak", "--shape", "0,1,1", check=False)
    assert bad.returncode == 2 and "bad option '--shape'" in bad.stderr
