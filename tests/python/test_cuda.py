"""The CUDA backend (device: cuda, `make CUDA=1`).

Without a GPU build or a GPU (`vlft _cuda-info` exits 77) every GPU check is
reported as SKIP with the reason; what can be checked without one (the clear
errors of a CPU-only build) always runs.

With a GPU (run as `VLFT_BIN=build-cuda/vlft VLFT_BUILD=build-cuda
tests/run.sh build-cuda test_cuda`, or by bench/cuda/device_check.sh):
- the kernel and attention parity programs (tests/cuda/*.c, each CUDA kernel
  against the CPU kernels of src/kernels/kernels.h);
- the model step against the float64 PyTorch reference of
  llava_reference.py on tiny random models, with bf16 tolerances (the GPU
  keeps activations between products in bf16, see src/kernels/cuda/cuda.h),
  for both projectors, LoRA / full LM / trained projector, 1 and 2 images,
  a right-padded batch of 2, with and without activation checkpointing;
- `vlft train` on the demo: the loss curve on the GPU tracks the CPU fp32 run,
  and a resumed GPU run ends where an uninterrupted one does.

Tolerances (relative norms against the fp64 reference): the CPU bf16 mode,
which rounds only product inputs, is within 3% on gradients
(test_bf16.py); the GPU also stores q/k/v, attention and MLP activations and
their gradients in bf16, as torch autocast does (which test_bf16.py measured
at 6-13% from exact). So: loss within 2e-2, logits within 5e-2 of the
largest logit, every gradient within 15%, and the worst gradient error below
torch autocast's own worst on the same model (checked loosely: 25%).
"""
import json
import os
import subprocess

import numpy as np

import llava_reference as ref
from vlft_testing import VLFT, Skip, read_safetensors, rel_norm, run_vlft, tempdir, tiny_model, write_safetensors

BUILD = os.environ.get("VLFT_BUILD", os.path.join(os.path.dirname(VLFT)))


def gpu_or_skip():
    result = subprocess.run([VLFT, "_cuda-info"], capture_output=True, text=True)
    if result.returncode == 77:
        raise Skip(result.stdout.strip())
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_cuda_device_on_a_cpu_build_is_a_clear_error():
    result = subprocess.run([VLFT, "_cuda-info"], capture_output=True, text=True)
    if result.returncode == 0:
        raise Skip("this vlft has CUDA and a GPU: the CPU-build message does not apply")
    folder = tiny_model()
    config = json.load(open(os.path.join(folder, "config.json")))
    batch = ref.random_batch(config, np.random.default_rng(0))
    path = os.path.join(tempdir(), "batch.safetensors")
    write_safetensors(path, batch)
    run = run_vlft("_model-step", folder, path, "--device", "cuda", check=False)
    assert run.returncode == 1, run
    assert run.stderr.count("\n") == 1, run.stderr
    if "without CUDA" in result.stdout:
        assert "built without CUDA" in run.stderr and "make CUDA=1" in run.stderr, run.stderr
    else:
        assert "GPU" in run.stderr, run.stderr
    # device: auto falls back to the CPU and runs.
    auto = run_vlft("_model-step", folder, path, "--device", "auto")
    assert json.loads(auto.stdout.strip().splitlines()[-1])["device"] == "cpu"


def run_parity_program(name):
    gpu_or_skip()
    program = os.path.join(BUILD, "tests", "cuda", name)
    assert os.path.exists(program), f"{program} missing: build it with `make CUDA=1 cuda-tests`"
    result = subprocess.run([program], capture_output=True, text=True, timeout=600)
    print(result.stdout[-4000:])
    if result.returncode == 77:
        raise Skip(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " 0 failed" in result.stdout, result.stdout[-2000:]


def test_cuda_kernels_match_the_cpu_kernels():
    run_parity_program("kernel_parity")


def test_cuda_attention_matches_the_cpu_attention():
    run_parity_program("attention_parity")


SETUPS = {
    "lora": (["--finetuning-type", "lora", "--lora-rank", "4"], dict(finetuning_type="lora", lora_rank=4)),
    "full_lm": (["--finetuning-type", "full"], dict(finetuning_type="full")),
    "projector_and_lm": (["--finetuning-type", "full", "--freeze-projector", "0"],
                         dict(finetuning_type="full", freeze_multi_modal_projector=False)),
}


def gpu_step_against_reference(projector, setup, images_per_sample, seed):
    import torch
    folder = tiny_model(projector)
    flags, kwargs = SETUPS[setup]
    config = json.load(open(os.path.join(folder, "config.json")))
    rng = np.random.default_rng(seed)
    batch = ref.random_batch(config, rng, images_per_sample=images_per_sample)
    work = tempdir()
    batch_path = os.path.join(work, "batch.safetensors")
    write_safetensors(batch_path, batch)
    reference = ref.LlavaReference(folder, dtype=torch.float64, **kwargs)
    args = ["_model-step", folder, batch_path, *flags, "--device", "cuda"]
    if reference.lora:
        adapter = ref.random_adapter(ref.lora_shapes(reference), 4, rng)
        ref.set_adapter(reference, adapter)
        os.makedirs(os.path.join(work, "adapter"))
        write_safetensors(os.path.join(work, "adapter", "adapter_model.safetensors"), adapter)
        args += ["--load-adapter", os.path.join(work, "adapter")]
    expected = reference.step(batch)
    results = []
    for checkpointing in (0, 1):
        out = os.path.join(work, f"out{checkpointing}.safetensors")
        run = run_vlft(*args, "--gradient-checkpointing", checkpointing, out)
        stats = json.loads(run.stdout.strip().splitlines()[-1])
        assert stats["compute"] == "bf16-cuda" and stats["device"] != "cpu", stats
        got = read_safetensors(out)[0]
        logits = expected["logits"]
        logit_err = float(np.max(np.abs(got["logits"] - logits)) / np.max(np.abs(logits)))
        loss_err = abs(float(got["loss"][0]) - expected["loss"]) / abs(expected["loss"])
        grads = {k[len("grad:"):]: v for k, v in got.items() if k.startswith("grad:")}
        assert set(grads) == set(expected["grads"]), sorted(set(grads) ^ set(expected["grads"]))[:10]
        worst, worst_name = 0.0, ""
        for name, g in expected["grads"].items():
            if np.linalg.norm(g) < 1e-9:
                assert np.linalg.norm(grads[name]) < 1e-4, name
                continue
            e = rel_norm(grads[name], g)
            if e > worst:
                worst, worst_name = e, name
        print(f"{projector} {setup} images {images_per_sample} ckpt {checkpointing}: logits {logit_err:.2e} "
              f"loss {loss_err:.2e} worst grad {worst:.2e} ({worst_name})")
        assert np.all(np.isfinite(got["logits"])), "non-finite logits"
        assert logit_err < 5e-2, (setup, logit_err)
        assert loss_err < 2e-2, (setup, loss_err)
        assert worst < 0.15, (setup, worst_name, worst)
        assert logit_err > 1e-6, "logits equal to fp64: bf16 is not in effect?"
        results.append(got)
    # Checkpointing recomputes the same layers with the same kernels: only
    # the order of atomic additions (norm weight gradients) may differ.
    for name in results[0]:
        assert rel_norm(results[1][name], results[0][name]) < 1e-3, name


def test_cuda_step_matches_the_reference_yivl():
    gpu_or_skip()
    for setup in SETUPS:
        gpu_step_against_reference("yivl", setup, (1, 1), seed=1)
    gpu_step_against_reference("yivl", "lora", (1, 2), seed=2)


def test_cuda_step_matches_the_reference_llava():
    gpu_or_skip()
    for setup in SETUPS:
        gpu_step_against_reference("llava", setup, (1, 2), seed=3)


def write_recipe(path, **settings):
    with open(path, "w") as f:
        for k, v in settings.items():
            f.write(f"{k}: {v}\n")


def train_losses(out):
    losses = []
    with open(os.path.join(out, "trainer_log.jsonl")) as f:
        for line in f:
            entry = json.loads(line)
            if "loss" in entry and "current_steps" in entry:
                losses.append(entry["loss"])
    return np.array(losses)


def test_cuda_training_tracks_the_cpu_and_resumes():
    gpu_or_skip()
    d = tempdir()
    model, data = os.path.join(d, "model"), os.path.join(d, "data")
    run_vlft("init-tiny", model, "--seed", 1)
    run_vlft("demo-data", data, "--n", 48, "--seed", 2)
    settings = dict(model_name_or_path=model, stage="sft", finetuning_type="lora", lora_rank=8, dataset="mllm_demo",
                    dataset_dir=data, template="yi_vl", cutoff_len=512, logging_steps=1, save_steps=20,
                    per_device_train_batch_size=4, gradient_accumulation_steps=1, learning_rate="5.0e-3",
                    max_steps=40, lr_scheduler_type="cosine", warmup_ratio=0.1, seed=3, val_size=0)
    curves = {}
    for device in ("cpu", "cuda"):
        out = os.path.join(d, device)
        write_recipe(os.path.join(d, f"{device}.yaml"), output_dir=out, device=device, **settings)
        run_vlft("train", os.path.join(d, f"{device}.yaml"))
        curves[device] = train_losses(out)
        assert os.path.exists(os.path.join(out, "adapter_model.safetensors"))
    cpu, gpu = curves["cpu"], curves["cuda"]
    print("cpu", np.round(cpu, 4).tolist())
    print("gpu", np.round(gpu, 4).tolist())
    assert len(cpu) == len(gpu) == 40
    assert gpu[-1] < 0.5 * gpu[0], "the GPU run did not learn"
    rel = np.abs(gpu - cpu) / np.abs(cpu)
    assert rel.max() < 5e-2, rel.max()
    # Resume on the GPU from checkpoint-20: the second half follows the uninterrupted run.
    out = os.path.join(d, "cuda")
    resumed = os.path.join(d, "resumed")
    os.makedirs(resumed)
    subprocess.run(["cp", "-r", os.path.join(out, "checkpoint-20"), resumed], check=True)
    write_recipe(os.path.join(d, "resume.yaml"), output_dir=resumed, device="cuda",
                 resume_from_checkpoint=os.path.join(resumed, "checkpoint-20"), **settings)
    run_vlft("train", os.path.join(d, "resume.yaml"))
    again = train_losses(resumed)[-20:]  # (the log of a resumed run starts after its checkpoint)
    assert len(again) == 20, len(again)
    assert np.max(np.abs(again - gpu[20:]) / np.abs(gpu[20:])) < 1e-2, (again, gpu[20:])
    a = read_safetensors(os.path.join(out, "adapter_model.safetensors"))[0]
    b = read_safetensors(os.path.join(resumed, "adapter_model.safetensors"))[0]
    for name in a:
        assert rel_norm(b[name], a[name]) < 1e-2, name
