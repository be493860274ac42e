"""Benchmark: bf16 mode. One forward+backward step of the mid-size LLaVA of
bench/model_step.py (12-layer 768-wide LLaMA, 8-layer CLIP tower at 224 px,
Yi-VL projector, random weights), side by side on this machine with the same
thread count:
  vlft bf16 (_model-step --bf16)   vlft fp32
  torch bf16 autocast              torch fp32     (tests/python/llava_reference.py)
and the machine's GEMM peak as oneDNN reaches it (vlft _gemm-peak: bf16 and
f32 matmul), with vlft's achieved FLOP/s over the step against it.

usage: /usr/bin/python3 bench/bf16_step.py [--threads N] [--repeat N] [--mode lora|full|both] [--keep DIR]
                                          [--torch-bf16-repeat N]
Prints a table, then one JSON line with every number.
"""
import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as bench/model_step.py

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))
sys.path.insert(0, HERE)
import llava_reference as ref  # noqa: E402
from model_step import mid_config, mid_weights  # noqa: E402
from vlft_testing import tempdir, write_safetensors  # noqa: E402

VLFT = os.environ.get("VLFT_BIN", os.path.join(HERE, "..", "build", "vlft"))


def step_flops(config, length, n_images, mode):
    """Multiply-add FLOPs (x2) of the step's weight products and attention.
    Frozen tower and projector: forward only. Language model: forward, dx,
    and dW too when full. LoRA's rank-8 products are left out (< 1%)."""
    v, t = config["vision_config"], config["text_config"]
    tokens_v = (v["image_size"] // v["patch_size"]) ** 2 + 1
    layers_v = v["num_hidden_layers"] - 1  # vision_feature_layer -2
    h, f = v["hidden_size"], v["intermediate_size"]
    vision = n_images * (2 * tokens_v * (4 * h * h + 2 * h * f) * layers_v          # q k v o fc1 fc2
                         + 4 * tokens_v * tokens_v * h * layers_v                  # scores and values
                         + 2 * (tokens_v - 1) * 3 * v["patch_size"] ** 2 * h)      # patch embedding
    d, ff, kv = t["hidden_size"], t["intermediate_size"], t["num_key_value_heads"] * t["head_dim"]
    projector = n_images * 2 * (tokens_v - 1) * (h * d + d * d)
    per_token = 2 * (2 * d * d + 2 * d * kv + 3 * d * ff)                         # q o, k v, gate up down
    lm_forward = length * per_token * t["num_hidden_layers"] + 2 * length * length * d * t["num_hidden_layers"]
    head = 2 * 64 * d * t["vocab_size"]  # logits of the labelled rows only (64 answer tokens)
    backward_factor = 3 if mode == "full" else 2  # dx (+ dW)
    return vision + projector + backward_factor * (lm_forward + head)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--mode", choices=["lora", "full", "both"], default="both")
    parser.add_argument("--keep", help="model folder to create or reuse")
    parser.add_argument("--torch-bf16-repeat", type=int, default=1,
                        help="rounds that also time torch bf16 autocast (its AVX2 step takes minutes)")
    args = parser.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    config = mid_config()
    folder = args.keep or os.path.join(tempdir(), "mid")
    if not os.path.exists(os.path.join(folder, "model.safetensors")):
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        write_safetensors(os.path.join(folder, "model.safetensors"), mid_weights(config, rng), {"format": "pt"})
    batch = ref.random_batch(config, rng, images_per_sample=(1,), text_lengths=((64, 63),))
    batch_path = os.path.join(tempdir(), "batch.safetensors")
    write_safetensors(batch_path, batch)
    length = batch["input_ids"].shape[1]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads))

    peak_run = subprocess.run([VLFT, "_gemm-peak", "--shape", "2048,2048,2048", "--threads", str(args.threads)],
                              capture_output=True, text=True, env=env)
    peak = json.loads(peak_run.stdout.strip().splitlines()[-1])
    results = {"threads": args.threads, "tokens": int(length), "gemm_peak": peak, "modes": {}}
    modes = ["lora", "full"] if args.mode == "both" else [args.mode]
    for mode in modes:
        flags = ["--finetuning-type", mode]
        model = ref.LlavaReference(folder, finetuning_type=mode, dtype=torch.float32,
                                   **({"lora_rank": 8} if mode == "lora" else {}))
        if mode == "lora":
            adapter = ref.random_adapter(ref.lora_shapes(model), 8, rng)
            ref.set_adapter(model, adapter)
            adapter_dir = tempdir()
            write_safetensors(os.path.join(adapter_dir, "adapter_model.safetensors"), adapter)
            flags += ["--load-adapter", adapter_dir]
        model.step(batch)  # warm-up (a bf16 one would take minutes; its one-off costs are small beside them)
        times = {k: [] for k in ("vlft_bf16", "vlft_fp32", "torch_bf16", "torch_fp32")}
        stats, losses = {}, {}
        # Interleaved rounds: the load of a shared machine changes minute to minute.
        for round_index in range(args.repeat):
            for name, extra in (("vlft_bf16", ["--bf16"]), ("vlft_fp32", [])):
                run = subprocess.run([VLFT, "_model-step", folder, batch_path, *flags, *extra, "--threads",
                                      str(args.threads), "--repeat", "2"], capture_output=True, text=True, env=env)
                if run.returncode != 0:
                    sys.exit(run.stderr)
                stats[name] = json.loads(run.stdout.strip().splitlines()[-1])
                times[name].append(stats[name]["step_seconds_min"])  # second step: weights paged in
                losses[name] = stats[name]["loss"]
            for name, autocast in (("torch_bf16", True), ("torch_fp32", False)):
                if autocast and round_index >= args.torch_bf16_repeat:
                    continue
                start = time.perf_counter()
                out = model.step(batch, autocast_bf16=autocast)
                times[name].append(time.perf_counter() - start)
                losses[name] = out["loss"]
        best = {k: min(v) for k, v in times.items()}
        flops = step_flops(config, length, 1, mode)
        achieved = flops / best["vlft_bf16"] * 1e-9
        results["modes"][mode] = {"seconds": best, "all_seconds": times, "loss": losses, "step_gflop": flops * 1e-9,
                                  "vlft_bf16_gflops": achieved,
                                  "memory": {k: {m: s[m] for m in ("weights_owned", "weights_mapped", "grads",
                                                                   "activations_peak", "max_rss")}
                                             for k, s in stats.items()}}
        mib = 1 << 20
        print(f"== {mode}: mid-size LLaVA, batch 1 x {length} tokens (256 image), {args.threads} threads, "
              f"load avg {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print("  loss    " + "  ".join(f"{k} {v:.5f}" for k, v in losses.items()))
        print(f"  step s (best of {args.repeat}; torch bf16 of {min(args.repeat, args.torch_bf16_repeat)})  " + "  ".join(f"{k} {v:.3f}" for k, v in best.items()))
        print(f"  torch bf16 / vlft bf16 = {best['torch_bf16'] / best['vlft_bf16']:.2f}x   "
              f"torch fp32 / vlft bf16 = {best['torch_fp32'] / best['vlft_bf16']:.2f}x   "
              f"vlft fp32 / vlft bf16 = {best['vlft_fp32'] / best['vlft_bf16']:.2f}x")
        print(f"  vlft bf16: {flops * 1e-9:.1f} GFLOP per step -> {achieved:.1f} GFLOP/s")
        for name in ("vlft_bf16", "vlft_fp32"):
            s = stats[name]
            print(f"  {name} memory: weights owned {s['weights_owned'] / mib:.0f} MiB, mapped "
                  f"{s['weights_mapped'] / mib:.0f} MiB, grads {s['grads'] / mib:.0f} MiB, activations peak "
                  f"{s['activations_peak'] / mib:.0f} MiB, peak RSS {s['max_rss'] / mib:.0f} MiB")
    print(f"== GEMM peak ({peak['M']}x{peak['N']}x{peak['K']}, {peak['threads']} threads, oneDNN ISA {peak['isa']}): "
          f"oneDNN bf16 {peak['onednn_bf16_gflops']:.1f} GFLOP/s ({peak['onednn_bf16_impl']}), "
          f"oneDNN f32 {peak['onednn_f32_gflops']:.1f} ({peak['onednn_f32_impl']}), "
          f"vlft bf16 GEMM {peak['vlft_bf16_gflops']:.1f} ({peak['vlft_bf16_impl']}), "
          f"vlft fp32 GEMM {peak['vlft_f32_gflops']:.1f}")
    for mode, r in results["modes"].items():
        for key in ("onednn_bf16_gflops", "onednn_f32_gflops"):
            if peak[key] > 0:
                print(f"  {mode}: vlft bf16 step at {100 * r['vlft_bf16_gflops'] / peak[key]:.0f}% of {key[:-7]} peak")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
