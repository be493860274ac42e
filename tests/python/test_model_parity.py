"""vlft's model (vlft model-step) against the PyTorch reference of
llava_reference.py on tiny random models: logits, loss and the gradient of
every trainable tensor, for both projectors, 1 and 2 images per sample, a
right-padded batch of 2, and the LoRA / full / everything-trainable setups.
Every comparison runs vlft twice, without and with activation checkpointing:
both must match the reference, and each other bit for bit."""
import json
import os

import numpy as np

import llava_reference as ref
from vlft_testing import read_safetensors, read_model_folder, rel_norm, run_vlft, tempdir, tiny_model, write_safetensors



# name: (vlft flags, reference keyword arguments)
SETUPS = {
    "lora_all": (["--finetuning-type", "lora", "--lora-rank", "4"], dict(finetuning_type="lora", lora_rank=4)),
    "full_lm": (["--finetuning-type", "full"], dict(finetuning_type="full")),
    "everything": (["--finetuning-type", "full", "--freeze-vision-tower", "0", "--freeze-projector", "0"],
                   dict(finetuning_type="full", freeze_vision_tower=False, freeze_multi_modal_projector=False)),
}


def compare(folder, setup, images_per_sample, seed=0, grad_scale=1.0, report=None):
    flags, kwargs = SETUPS[setup] if isinstance(setup, str) else setup
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    rng = np.random.default_rng(seed)
    batch = ref.random_batch(config, rng, images_per_sample=images_per_sample)
    work = tempdir()
    batch_path = os.path.join(work, "batch.safetensors")
    write_safetensors(batch_path, batch)
    reference = ref.LlavaReference(folder, **kwargs)
    args = ["_model-step", folder, batch_path, *flags, "--grad-scale", grad_scale]
    if reference.lora:
        # Random non-zero A and B (B = 0 at init would hide half the gradients).
        adapter = ref.random_adapter(ref.lora_shapes(reference), kwargs.get("lora_rank", 8), rng)
        ref.set_adapter(reference, adapter)
        os.makedirs(os.path.join(work, "adapter"))
        write_safetensors(os.path.join(work, "adapter", "adapter_model.safetensors"), adapter)
        args += ["--load-adapter", os.path.join(work, "adapter")]
    expected = reference.step(batch, grad_scale=grad_scale)
    stats, outputs = [], []
    for checkpointing in (0, 1):
        out = os.path.join(work, f"out{checkpointing}.safetensors")
        result = run_vlft(*args, "--gradient-checkpointing", checkpointing, out)
        stats.append(json.loads(result.stdout.strip().splitlines()[-1]))
        outputs.append(read_safetensors(out)[0])
        check_against_reference(outputs[-1], expected, setup, report)
    # Checkpointing recomputes the same values with the same kernels on the
    # same inputs (and the same dropout masks): nothing may differ at all.
    assert set(outputs[0]) == set(outputs[1])
    for name in outputs[0]:
        assert np.array_equal(outputs[0][name], outputs[1][name]), f"{name} differs with checkpointing"
    # ...while each LLaMA layer now keeps only its input.
    assert stats[1]["gradient_checkpointing"] == 1 and stats[0]["gradient_checkpointing"] == 0
    assert stats[1]["activations_kept_total"] < stats[0]["activations_kept_total"], stats
    return stats[0], expected


def check_against_reference(got, expected, setup, report):
    logits = expected["logits"]
    assert got["logits"].shape == logits.shape
    worst = float(np.max(np.abs(got["logits"] - logits)) / np.max(np.abs(logits)))
    assert worst < 1e-4, f"{setup}: logits differ by {worst:.2e} (relative to max |logit|)"
    if report is not None:
        report["logits"] = worst
    loss = float(got["loss"][0])
    assert abs(loss - expected["loss"]) <= 1e-5 * abs(expected["loss"]), (loss, expected["loss"])
    grads = {k[len("grad:"):]: v for k, v in got.items() if k.startswith("grad:")}
    assert set(grads) == set(expected["grads"]), (sorted(set(grads) ^ set(expected["grads"])))[:10]
    assert grads, "no trainable tensors"
    nonzero = 0
    for name, g in expected["grads"].items():
        if np.linalg.norm(g) < 1e-9:
            # An analytic zero: a key bias shifts every score of a softmax row
            # equally, so its gradient vanishes; both sides must agree it is ~0.
            assert np.linalg.norm(grads[name]) < 1e-6, f"{name}: {np.linalg.norm(grads[name])} should be ~0"
            assert "k_proj.bias" in name, f"reference gradient of {name} is zero: the check would be empty"
            continue
        nonzero += 1
        err = rel_norm(grads[name], g)
        if report is not None:
            report["grad"] = max(report.get("grad", 0.0), err)
        assert err < 1e-3, f"{setup}: gradient of {name} differs by {err:.2e} (relative norm)"
    assert nonzero > 0


def test_yivl_lora_one_image():
    compare(tiny_model("yivl"), "lora_all", (1, 1))


def test_yivl_lora_two_images():
    compare(tiny_model("yivl"), "lora_all", (2, 1), seed=1)


def test_yivl_full_lm_one_image():
    compare(tiny_model("yivl"), "full_lm", (1, 1), seed=2)


def test_yivl_full_lm_two_images():
    compare(tiny_model("yivl"), "full_lm", (2, 2), seed=3)


def test_yivl_everything_one_image():
    compare(tiny_model("yivl"), "everything", (1, 1), seed=4)


def test_yivl_everything_two_images():
    compare(tiny_model("yivl"), "everything", (1, 2), seed=5)


def test_llava_lora_one_image():
    compare(tiny_model("llava"), "lora_all", (1, 1), seed=6)


def test_llava_lora_two_images():
    compare(tiny_model("llava"), "lora_all", (2, 2), seed=7)


def test_llava_full_lm_one_image():
    compare(tiny_model("llava"), "full_lm", (1, 1), seed=8)


def test_llava_full_lm_two_images():
    compare(tiny_model("llava"), "full_lm", (2, 1), seed=9)


def test_llava_everything_one_image():
    compare(tiny_model("llava"), "everything", (1, 1), seed=10)


def test_llava_everything_two_images():
    compare(tiny_model("llava"), "everything", (2, 2), seed=11)


def test_lora_with_unfrozen_tower_and_grad_scale():
    # lora_target all with the tower unfrozen also adapts the tower's linears
    # (out_proj, fc1, fc2, q/k/v); grad_scale multiplies every gradient.
    flags = ["--finetuning-type", "lora", "--lora-rank", "2", "--lora-alpha", "3", "--freeze-vision-tower", "0"]
    kwargs = dict(finetuning_type="lora", lora_rank=2, lora_alpha=3, freeze_vision_tower=False)
    stats, expected = compare(tiny_model("yivl"), (flags, kwargs), (1, 1), seed=12, grad_scale=0.25)
    assert any("vision_tower" in n and "fc1" in n for n in expected["grads"])
    assert stats["activations_kept_vision"] > 0


def test_freeze_last_layers():
    flags = ["--finetuning-type", "freeze", "--freeze-trainable-layers", "2"]
    stats, expected = compare(tiny_model("llava"), (flags, dict(finetuning_type="freeze")), (1, 1), seed=13)
    names = set(expected["grads"])
    assert any(".layers.3." in n for n in names) and not any(".layers.1." in n for n in names)


def test_bf16_checkpoint():
    compare(tiny_model("yivl", "bf16"), "full_lm", (1, 2), seed=14)


def test_frozen_tower_keeps_no_activations():
    stats, _ = compare(tiny_model("yivl"), "full_lm", (1, 1), seed=15)
    assert stats["activations_kept_vision"] == 0
    assert stats["activations_kept_total"] > 0
    # Frozen F32 weights are used from the mapping, not copied.
    assert stats["weights_mapped"] > 0


if __name__ == "__main__":
    # Prints the worst errors of every setup (numbers for reports).
    for projector in ("yivl", "llava"):
        for setup in SETUPS:
            for images in ((1, 1), (2, 1)):
                r = {}
                compare(tiny_model(projector), setup, images, report=r)
                print(f"{projector:5s} {setup:10s} images {images}: logits {r['logits']:.1e}, worst grad {r['grad']:.1e}")


def edited_model(projector, edit_config, drop=()):
    """A tiny model with config.json edited and some tensors removed."""
    source = tiny_model(projector)
    folder = os.path.join(tempdir(), "edited")
    os.makedirs(folder)
    with open(os.path.join(source, "config.json")) as f:
        config = json.load(f)
    edit_config(config)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    tensors = {k: v for k, v in read_model_folder(source).items() if k not in drop}
    write_safetensors(os.path.join(folder, "model.safetensors"), tensors)
    return folder


def test_tied_embeddings_full_strategy_last_layer():
    # tie_word_embeddings (lm_head = embed_tokens, gradients from both uses),
    # vision_feature_layer -1 (every layer runs) and the "full" strategy (class
    # token kept: 50 tokens per image).
    def edit(c):
        c["text_config"]["tie_word_embeddings"] = True
        c["tie_word_embeddings"] = True
        c["vision_feature_layer"] = -1
        c["vision_feature_select_strategy"] = "full"
        c["image_seq_length"] = 50
    folder = edited_model("llava", edit, drop=("language_model.lm_head.weight",))
    stats, expected = compare(folder, "everything", (2, 1), seed=16)
    assert "language_model.model.embed_tokens.weight" in expected["grads"]
    assert "vision_tower.vision_model.encoder.layers.2.mlp.fc2.weight" in expected["grads"]


def test_text_only_batch():
    # No images at all (pixel_values empty): the tower and projector are skipped.
    compare(tiny_model("yivl"), "lora_all", (0, 0), seed=17)


def converted_model(projector, convert):
    """A copy of a tiny model whose tensors pass through convert(name, array) -> (name, array)."""
    source = tiny_model(projector)
    folder = os.path.join(tempdir(), "converted")
    os.makedirs(folder)
    with open(os.path.join(source, "config.json")) as f, open(os.path.join(folder, "config.json"), "w") as g:
        g.write(f.read())
    tensors = dict(convert(k, v) for k, v in read_model_folder(source).items())
    write_safetensors(os.path.join(folder, "model.safetensors"), tensors)
    return folder


def test_f16_checkpoint():
    folder = converted_model("llava", lambda k, v: (k, v.astype(np.float16)))
    compare(folder, "everything", (1, 1), seed=18)


def newer_name(name):
    for old, new in (("language_model.model.", "model.language_model."), ("vision_tower.", "model.vision_tower."),
                     ("multi_modal_projector.", "model.multi_modal_projector.")):
        if name.startswith(old):
            return new + name[len(old):]
    return "lm_head.weight" if name == "language_model.lm_head.weight" else name


def test_newer_transformers_names():
    # model.language_model.* / model.vision_tower.* / lm_head.weight: loaded, and
    # fully trained tensors keep the checkpoint's own names.
    folder = converted_model("yivl", lambda k, v: (newer_name(k), v))
    stats, expected = compare(folder, "everything", (1, 1), seed=19)
    assert "lm_head.weight" in expected["grads"]
    assert all(n.startswith(("model.", "lm_head")) for n in expected["grads"])


def test_batch_without_labels():
    # No row predicts a label (all -100): nothing reaches the last layer's
    # per-row half or the lm_head, the loss is 0 and every gradient is zero.
    folder = tiny_model("yivl")
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    batch = ref.random_batch(config, np.random.default_rng(23))
    batch["labels"][:] = ref.IGNORE
    work = tempdir()
    batch_path = os.path.join(work, "batch.safetensors")
    write_safetensors(batch_path, batch)
    for setup in ("lora_all", "everything"):
        for checkpointing in (0, 1):
            out = os.path.join(work, f"{setup}{checkpointing}.safetensors")
            run_vlft("_model-step", folder, batch_path, *SETUPS[setup][0], "--gradient-checkpointing", checkpointing, out)
            got = read_safetensors(out)[0]
            assert float(got["loss"][0]) == 0.0, got["loss"]
            grads = [k for k in got if k.startswith("grad:")]
            assert grads
            for name in grads:
                assert not np.any(got[name]), f"{setup}: {name} is not zero"
