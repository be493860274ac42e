"""Benchmark: one forward+backward step of a mid-size LLaVA (12-layer 768-wide
LLaMA, 8-layer CLIP tower at 224 px, Yi-VL projector, random weights) in vlft
and in the PyTorch reference of tests/python/llava_reference.py, side by side
on this machine, same thread count, fp32. Prints times, the ratio, and memory.

usage: /usr/bin/python3 bench/model_step.py [--threads N] [--repeat N] [--mode lora|full] [--keep DIR]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

# Threads that wait sleep instead of spinning, for both sides: on a shared
# machine spinning OpenMP barriers distort timings.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def threads_from_argv():
    for i, arg in enumerate(sys.argv):
        if arg == "--threads" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return str(os.cpu_count())


# torch's products run in the OpenBLAS that numpy loads first, with the
# thread count it reads when it loads: torch.set_num_threads does not reach
# it, so the count goes into the environment before numpy is imported.
os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = threads_from_argv()

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))
import llava_reference as ref  # noqa: E402
from vlft_testing import tempdir, write_safetensors  # noqa: E402

VLFT = os.environ.get("VLFT_BIN", os.path.join(HERE, "..", "build", "vlft"))


def mid_config():
    return {
        "model_type": "llava", "architectures": ["LlavaForConditionalGeneration"], "is_yi_vl_derived_model": True,
        "image_token_index": 31000, "image_seq_length": 256, "projector_hidden_act": "gelu",
        "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "torch_dtype": "float32",
        "multimodal_projector_bias": True,
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": 768, "intermediate_size": 3072,
                          "num_hidden_layers": 8, "num_attention_heads": 12, "num_channels": 3, "image_size": 224,
                          "patch_size": 14, "projection_dim": 768, "layer_norm_eps": 1e-5, "hidden_act": "quick_gelu"},
        "text_config": {"model_type": "llama", "vocab_size": 32000, "hidden_size": 768, "intermediate_size": 2048,
                        "num_hidden_layers": 12, "num_attention_heads": 12, "num_key_value_heads": 4, "head_dim": 64,
                        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                        "hidden_act": "silu", "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
                        "pad_token_id": 0},
    }


def mid_weights(c, rng):
    v, t = c["vision_config"], c["text_config"]
    h, d, f, vf = v["hidden_size"], t["hidden_size"], t["intermediate_size"], v["intermediate_size"]
    kv = t["num_key_value_heads"] * t["head_dim"]
    w = {}

    def normal(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)

    def norm(n):
        return (1 + 0.1 * rng.standard_normal(n, dtype=np.float32)).astype(np.float32)

    p = "vision_tower.vision_model."
    grid = v["image_size"] // v["patch_size"]
    w[p + "embeddings.class_embedding"] = normal(h)
    w[p + "embeddings.patch_embedding.weight"] = normal(h, 3, v["patch_size"], v["patch_size"])
    w[p + "embeddings.position_embedding.weight"] = normal(grid * grid + 1, h)
    for ln in ("pre_layrnorm", "post_layernorm"):
        w[p + ln + ".weight"], w[p + ln + ".bias"] = norm(h), normal(h)
    for i in range(v["num_hidden_layers"]):
        q = f"{p}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            w[q + f"self_attn.{proj}.weight"], w[q + f"self_attn.{proj}.bias"] = normal(h, h), normal(h)
        w[q + "mlp.fc1.weight"], w[q + "mlp.fc1.bias"] = normal(vf, h), normal(vf)
        w[q + "mlp.fc2.weight"], w[q + "mlp.fc2.bias"] = normal(h, vf), normal(h)
        for ln in ("layer_norm1", "layer_norm2"):
            w[q + ln + ".weight"], w[q + ln + ".bias"] = norm(h), normal(h)
    m = "multi_modal_projector."
    w[m + "linear_1.weight"], w[m + "linear_1.bias"] = normal(d, h), normal(d)
    w[m + "linear_2.weight"], w[m + "linear_2.bias"] = norm(d), normal(d)
    w[m + "linear_3.weight"], w[m + "linear_3.bias"] = normal(d, d), normal(d)
    w[m + "linear_4.weight"], w[m + "linear_4.bias"] = norm(d), normal(d)
    lm = "language_model.model."
    w[lm + "embed_tokens.weight"] = normal(t["vocab_size"], d)
    for i in range(t["num_hidden_layers"]):
        q = f"{lm}layers.{i}."
        w[q + "self_attn.q_proj.weight"] = normal(d, d)
        w[q + "self_attn.k_proj.weight"] = normal(kv, d)
        w[q + "self_attn.v_proj.weight"] = normal(kv, d)
        w[q + "self_attn.o_proj.weight"] = normal(d, d)
        w[q + "mlp.gate_proj.weight"] = normal(f, d)
        w[q + "mlp.up_proj.weight"] = normal(f, d)
        w[q + "mlp.down_proj.weight"] = normal(d, f)
        w[q + "input_layernorm.weight"] = norm(d)
        w[q + "post_attention_layernorm.weight"] = norm(d)
    w[lm + "norm.weight"] = norm(d)
    w["language_model.lm_head.weight"] = normal(t["vocab_size"], d)
    return w


def mid_model(folder, config, rng):
    """Writes the mid-size model (config.json, model.safetensors) into folder
    unless it is already there; returns folder."""
    if not os.path.exists(os.path.join(folder, "model.safetensors")):
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        write_safetensors(os.path.join(folder, "model.safetensors"), mid_weights(config, rng), {"format": "pt"})
    return folder


def mid_batch(config, rng):
    """The benchmark's sample: one image (256 tokens) + 64 prompt + 63 answer
    tokens, written to a temporary safetensors file; returns (batch, path)."""
    batch = ref.random_batch(config, rng, images_per_sample=(1,), text_lengths=((64, 63),))
    path = os.path.join(tempdir(), "batch.safetensors")
    write_safetensors(path, batch)
    return batch, path


def torch_step(model, batch):
    """The reference's forward and backward, without step()'s copies of the
    gradients into numpy (476 MiB in full mode) that vlft's timing has no
    counterpart of."""
    for t in model.trainable.values():
        t.grad = None
    _, loss = model.forward(batch)
    loss.backward()
    return float(loss)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--mode", choices=["lora", "full"], default="lora")
    parser.add_argument("--keep", help="model folder to create or reuse")
    args = parser.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    config = mid_config()
    folder = mid_model(args.keep or os.path.join(tempdir(), "mid"), config, rng)
    batch, batch_path = mid_batch(config, rng)
    length = batch["input_ids"].shape[1]
    flags = ["--finetuning-type", "lora"] if args.mode == "lora" else ["--finetuning-type", "full"]
    import torch
    kwargs = dict(finetuning_type=args.mode, dtype=torch.float32)
    if args.mode == "lora":
        kwargs["lora_rank"] = 8
    model = ref.LlavaReference(folder, **kwargs)
    if args.mode == "lora":
        # The same random (non-zero) adapter on both sides, so losses agree.
        adapter = ref.random_adapter(ref.lora_shapes(model), 8, rng)
        ref.set_adapter(model, adapter)
        adapter_dir = tempdir()
        write_safetensors(os.path.join(adapter_dir, "adapter_model.safetensors"), adapter)
        flags += ["--load-adapter", adapter_dir]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads))

    # Side by side, interleaved: on a shared machine the load changes from
    # minute to minute, so each round times one vlft step and one torch step
    # back to back, and the fastest of each side is compared.
    torch_step(model, batch)  # warm-up
    vlft_times, torch_times, vlft_cpu, torch_cpu = [], [], [], []
    for _ in range(args.repeat):
        run = subprocess.run([VLFT, "_model-step", folder, batch_path, *flags, "--threads", str(args.threads),
                              "--repeat", "2"], capture_output=True, text=True, env=env)
        if run.returncode != 0:
            sys.exit(run.stderr)
        stats = json.loads(run.stdout.strip().splitlines()[-1])
        vlft_times.append(stats["step_seconds_min"])  # the second step: weights already paged in
        vlft_cpu.append(stats["step_cpu_seconds_min"])
        start, cpu_start = time.perf_counter(), time.process_time()
        torch_loss = torch_step(model, batch)
        torch_times.append(time.perf_counter() - start)
        torch_cpu.append(time.process_time() - cpu_start)
    torch_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    vlft_best, torch_best = min(vlft_times), min(torch_times)

    mib = 1 << 20
    print(f"mid-size LLaVA: LM 12x768 (GQA 12/4, MLP 2048, vocab 32000), tower 8x768 at 224px (7 run), "
          f"Yi-VL projector; batch 1 x {length} tokens (256 image); {args.mode}; fp32; {args.threads} threads")
    print(f"load avg (1 min) during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"loss vlft {stats['loss']:.6f}  torch {torch_loss:.6f}")
    print(f"step time (best of {args.repeat})  vlft {vlft_best:.3f} s   torch {torch_best:.3f} s   "
          f"ratio torch/vlft = {torch_best / vlft_best:.2f}x")
    print(f"CPU time (all threads, best of {args.repeat})  vlft {min(vlft_cpu):.3f} s   torch {min(torch_cpu):.3f} s   "
          f"ratio torch/vlft = {min(torch_cpu) / min(vlft_cpu):.2f}x")
    print(f"  all vlft: {' '.join(f'{t:.2f}' for t in vlft_times)}   all torch: {' '.join(f'{t:.2f}' for t in torch_times)}")
    vlft_median, torch_median = float(np.median(vlft_times)), float(np.median(torch_times))
    # The medians and the per-round ratios show how far the noise of a shared machine moves the best-of figure.
    rounds = sorted(t / v for v, t in zip(vlft_times, torch_times))
    print(f"median step time  vlft {vlft_median:.3f} s   torch {torch_median:.3f} s   ratio {torch_median / vlft_median:.2f}x; "
          f"per-round ratios {rounds[0]:.2f}x .. {rounds[-1]:.2f}x")
    print(f"vlft memory: activations peak {stats['activations_peak'] / mib:.1f} MiB, kept for backward "
          f"{stats['activations_kept_total'] / mib:.1f} MiB of which vision tower {stats['activations_kept_vision'] / mib:.1f} MiB; "
          f"weights mapped {stats['weights_mapped'] / mib:.0f} MiB, owned {stats['weights_owned'] / mib:.0f} MiB, "
          f"grads {stats['grads'] / mib:.0f} MiB; process peak RSS (VmHWM) {stats['max_rss'] / mib:.0f} MiB")
    print(f"torch: bench process peak RSS {torch_rss / mib:.0f} MiB (includes the Python loader's copy of the weights)")


if __name__ == "__main__":
    main()
