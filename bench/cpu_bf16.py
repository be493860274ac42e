"""Benchmark for issue #8 (CPU speed and memory), one script, ratios measured
side by side in one run:

  (a) one whole training step (forward + backward) of the mid-size LLaVA of
      bench/model_step.py (12x768 LLaMA + 8-layer CLIP at 224 px, Yi-VL
      projector, 385 tokens), LoRA and full: vlft with bf16 on vs the PyTorch
      reference (tests/python/llava_reference.py) under CPU bf16 autocast, same
      thread count. vlft fp32 and torch fp32 are timed beside them, because on a
      CPU without bf16 instructions torch's bf16 matmul falls back to a slow
      path and the bf16-vs-bf16 ratio alone would flatter vlft.
  (b) vlft's achieved FLOP/s over that step (model FLOPs counted from the
      shapes: forward, input gradients, weight gradients of trained tensors;
      recomputation not counted) divided by the GEMM peak that oneDNN reaches
      on this machine in the same run (`vlft _gemm-peak`: bf16 and f32
      matmuls; the better of the two is the machine's peak for this step).
  (c) with --yi6b DIR (a folder from `vlft init-tiny DIR --preset yi-vl-6b`):
      the full-size Yi-VL-6B LoRA step on one 448 px image (1024 image tokens)
      + 256 text tokens, bf16, gradient checkpointing on: seconds per sample
      and peak RSS of the process.

usage: /usr/bin/python3 bench/cpu_bf16.py [--threads N] [--repeat N] [--parts a,b,c]
                                          [--yi6b DIR] [--keep DIR]
"""
import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))
import llava_reference as ref  # noqa: E402
from model_step import mid_batch, mid_config, mid_model  # noqa: E402
from vlft_testing import tempdir, write_safetensors  # noqa: E402

VLFT = os.environ.get("VLFT_BIN", os.path.join(HERE, "..", "build", "vlft"))
GIB = 1 << 30


def step_flops(config, batch, mode, label_rows):
    """Model FLOPs of one training step (multiply-add = 2), counted from the
    shapes as vlft runs them: vision layers up to the feature layer, forward
    only when the tower is frozen; lm_head on the rows that carry a label;
    input gradients everywhere something upstream trains; weight gradients of
    trained Linears (full) or the LoRA factors (lora). Causal attention counts
    the lower triangle."""
    v, t = config["vision_config"], config["text_config"]
    ids = batch["input_ids"]
    B, L = ids.shape
    n_images = batch["pixel_values"].shape[0]
    Cv, Fv = v["hidden_size"], v["intermediate_size"]
    G = v["image_size"] // v["patch_size"]
    T = G * G + 1
    layer = config.get("vision_feature_layer", -2)
    run = v["num_hidden_layers"] + 1 + layer if layer < 0 else layer
    C, F, V = t["hidden_size"], t["intermediate_size"], t["vocab_size"]
    Hq, Hkv = t["num_attention_heads"], t["num_key_value_heads"]
    D = t.get("head_dim") or C // Hq
    N = B * L
    image_rows = int((ids == config["image_token_index"]).sum())
    fl = 0.0
    # vision tower, forward only (frozen in both modes of the bench)
    fl += n_images * 2 * G * G * 3 * v["patch_size"] ** 2 * Cv
    fl += n_images * run * (2 * T * (4 * Cv * Cv + 2 * Cv * Fv) + 4 * T * T * Cv)
    # projector (Yi-VL: linear_1 Cv->C, linear_3 C->C), forward
    proj = 2 * image_rows * (Cv * C + C * C)
    fl += proj
    linear_params = C * Hq * D + 2 * C * Hkv * D + Hq * D * C + 3 * C * F
    text_linear = 2 * N * linear_params
    attention = 2 * L * L * Hq * D * B  # QK^T and PV over the causal half
    head = 2 * label_rows * C * V
    fl += t["num_hidden_layers"] * (text_linear + attention) + head
    # backward: input gradients (layer 0's only when the projector trains)
    layers_dx = t["num_hidden_layers"] - 1
    fl += layers_dx * text_linear + t["num_hidden_layers"] * 2.5 * attention + head
    if mode == "full":
        fl += text_linear  # layer 0's input gradient (embeddings train)
        fl += t["num_hidden_layers"] * text_linear + head  # weight gradients
    else:
        r = 8
        per_token = sum(i + o for i, o in ((C, Hq * D), (C, Hkv * D), (C, Hkv * D), (Hq * D, C),
                                           (C, F), (C, F), (F, C)))
        fl += t["num_hidden_layers"] * 2 * N * r * per_token * 3
    return fl


def vlft_step(folder, batch_path, flags, threads, repeat=2):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    run = subprocess.run([VLFT, "_model-step", folder, batch_path, *flags, "--threads", str(threads),
                          "--repeat", str(repeat)], capture_output=True, text=True, env=env)
    if run.returncode != 0:
        sys.exit(f"vlft _model-step {' '.join(flags)} failed:\n{run.stderr}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def gemm_peak(threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    run = subprocess.run([VLFT, "_gemm-peak", "--threads", str(threads)], capture_output=True, text=True, env=env)
    if run.returncode != 0:
        sys.exit(f"vlft _gemm-peak failed:\n{run.stderr}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def part_ab(args, parts):
    import torch
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    config = mid_config()
    folder = mid_model(args.keep or os.path.join(tempdir(), "mid"), config, rng)
    batch, batch_path = mid_batch(config, rng)
    label_rows = int((batch["labels"][:, 1:] != -100).sum())
    peak = gemm_peak(args.threads) if "b" in parts else None
    print(f"mid-size LLaVA (bench/model_step.py's), batch 1 x {batch['input_ids'].shape[1]} tokens (256 image), "
          f"{args.threads} threads, best of {args.repeat}; load avg {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if peak:
        bf16 = peak["onednn_bf16_gflops"]
        print(f"GEMM {peak['M']}x{peak['N']}x{peak['K']} on this machine (oneDNN ISA {peak['isa']}): oneDNN bf16 "
              f"{'%.1f GFLOP/s' % bf16 if bf16 > 0 else 'has no kernel here'}, oneDNN f32 "
              f"{peak['onednn_f32_gflops']:.1f}, vlft bf16 ({peak['vlft_bf16_impl']}) {peak['vlft_bf16_gflops']:.1f}, "
              f"vlft f32 {peak['vlft_f32_gflops']:.1f}")
    for mode in ("lora", "full"):
        kwargs = dict(finetuning_type=mode, dtype=torch.float32)
        flags = ["--finetuning-type", mode]
        if mode == "lora":
            kwargs["lora_rank"] = 8
        model = ref.LlavaReference(folder, **kwargs)
        if mode == "lora":
            adapter = ref.random_adapter(ref.lora_shapes(model), 8, rng)
            ref.set_adapter(model, adapter)
            adapter_dir = tempdir()
            write_safetensors(os.path.join(adapter_dir, "adapter_model.safetensors"), adapter)
            flags += ["--load-adapter", adapter_dir]
        times = {"vlft bf16": [], "vlft fp32": [], "torch bf16": [], "torch fp32": []}
        losses = {}
        model.step(batch)  # warm-up
        for i in range(args.repeat):
            s = vlft_step(folder, batch_path, flags + ["--bf16"], args.threads)
            times["vlft bf16"].append(s["step_seconds_min"])
            losses["vlft bf16"] = s["loss"]
            s = vlft_step(folder, batch_path, flags, args.threads)
            times["vlft fp32"].append(s["step_seconds_min"])
            losses["vlft fp32"] = s["loss"]
            start = time.perf_counter()
            losses["torch fp32"] = model.step(batch)["loss"]
            times["torch fp32"].append(time.perf_counter() - start)
            if i < args.torch_bf16_repeat:
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    losses["torch bf16"] = model.step(batch)["loss"]
                times["torch bf16"].append(time.perf_counter() - start)
        best = {k: min(v) for k, v in times.items() if v}
        print(f"[{mode}] losses: " + "  ".join(f"{k} {v:.5f}" for k, v in losses.items()))
        print(f"[{mode}] step seconds: " + "  ".join(f"{k} {v:.3f}" for k, v in best.items()))
        print(f"(a) [{mode}] torch bf16 autocast / vlft bf16 = {best['torch bf16'] / best['vlft bf16']:.2f}x   "
              f"(torch fp32 / vlft bf16 = {best['torch fp32'] / best['vlft bf16']:.2f}x, "
              f"torch fp32 / vlft fp32 = {best['torch fp32'] / best['vlft fp32']:.2f}x)")
        if peak:
            fl = step_flops(config, batch, mode, label_rows)
            achieved = fl / best["vlft bf16"] / 1e9
            top = max(peak["onednn_bf16_gflops"], peak["onednn_f32_gflops"])
            best_any = max(top, peak["vlft_bf16_gflops"], peak["vlft_f32_gflops"])
            print(f"(b) [{mode}] {fl / 1e9:.1f} GFLOP per step -> vlft bf16 {achieved:.1f} GFLOP/s = "
                  f"{100 * achieved / top:.0f}% of oneDNN's best GEMM here ({top:.1f} GFLOP/s), "
                  f"{100 * achieved / best_any:.0f}% of the fastest GEMM measured (incl. OpenBLAS, {best_any:.1f})")


def part_c(args):
    folder = args.yi6b
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    rng = np.random.default_rng(1)
    batch = ref.random_batch(config, rng, images_per_sample=(1,), text_lengths=((128, 126),))
    batch_path = os.path.join(tempdir(), "batch6b.safetensors")
    write_safetensors(batch_path, batch)
    L = batch["input_ids"].shape[1]
    flags = ["--finetuning-type", "lora", "--bf16", "--gradient-checkpointing", "1"]
    start = time.perf_counter()
    s = vlft_step(folder, batch_path, flags, args.threads, repeat=1)
    wall = time.perf_counter() - start
    print(f"(c) Yi-VL-6B shapes ({folder}), LoRA r8 on all LM linears, bf16, checkpointing: 1 sample of {L} tokens "
          f"(1 image = 1024 tokens at 448 px): step {s['step_seconds_min']:.1f} s (process {wall:.1f} s with load), "
          f"loss {s['loss']:.4f}, peak RSS {s['max_rss'] / GIB:.2f} GiB (limit 20), activations peak "
          f"{s['activations_peak'] / GIB:.2f} GiB, weights mapped {s['weights_mapped'] / GIB:.2f} GiB, "
          f"owned {s['weights_owned'] / GIB:.2f} GiB")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--torch-bf16-repeat", type=int, default=1,
                        help="torch bf16 steps per mode (slow on CPUs without bf16 instructions)")
    parser.add_argument("--parts", default="a,b")
    parser.add_argument("--yi6b", help="folder of `vlft init-tiny DIR --preset yi-vl-6b` for part c")
    parser.add_argument("--keep", help="mid-size model folder to create or reuse")
    args = parser.parse_args()
    parts = args.parts.split(",")
    if "a" in parts or "b" in parts:
        part_ab(args, parts)
    if "c" in parts:
        if not args.yi6b:
            sys.exit("part c needs --yi6b DIR (vlft init-tiny DIR --preset yi-vl-6b)")
        part_c(args)


if __name__ == "__main__":
    main()
