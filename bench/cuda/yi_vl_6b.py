"""Benchmark (GPU): one training step of full-size Yi-VL-6B on one GPU.

The model is `vlft init-tiny --preset yi-vl-6b` (Yi-VL-6B's real shapes:
CLIP ViT-H/14 at 448 px, 32 layers of 1280; LayerNorm projector; Yi-6B
LLaMA, 32 layers of 4096, GQA 32/4, vocab 64064; random bf16 weights). A
step = forward + backward + the AdamW update (clipping 1.0), as `vlft train`
runs each micro-batch with gradient_accumulation_steps 1, timed by
`vlft _model-step --device cuda --update --repeat N` (the fastest of the
repeats; the first also plans the activation memory).

Samples: one image (1024 image tokens) plus text, like LLaMA-Factory's
mllm_demo rows (about 1100 tokens), and a long one filling cutoff_len 2048.
Per-sample model FLOPs count the products only (no recomputation):
  LoRA:  LM linears 2*N*P forward + 2*N*P input gradients, + the LoRA ranks,
         + the frozen tower's forward 2*T_v*P_v, + attention;
  full:  LM 6*N*P (weight gradients too) + tower forward + attention.
MFU = those FLOPs per second / the bf16 matrix peak (989 TFLOP/s, H100/H200
SXM dense datasheet), and also against cuBLAS's measured peak on the same
GPU in the same run (torch.matmul 8192^3 bf16, when torch is there).

usage: python3 bench/cuda/yi_vl_6b.py --model DIR [--mode lora|full] [--repeat N] [--out FILE]
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "python"))
import llava_reference as ref  # noqa: E402
from vlft_testing import write_safetensors  # noqa: E402

VLFT = os.environ.get("VLFT_BIN", os.path.join(HERE, "..", "..", "build-cuda", "vlft"))
PEAK_DATASHEET = 989e12


def lm_linear_params(t):
    C, F, kv = t["hidden_size"], t["intermediate_size"], t["num_key_value_heads"] * t["head_dim"]
    per_layer = C * C * 2 + 2 * C * kv + 3 * C * F
    return per_layer * t["num_hidden_layers"], per_layer


def step_flops(config, batch, mode, rank=8):
    t, v = config["text_config"], config["vision_config"]
    mask = batch["attention_mask"]
    tokens = int(mask.sum())
    P, _ = lm_linear_params(t)
    C, V = t["hidden_size"], t["vocab_size"]
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    # attention: QK^T and PV, causal half, per real row pair
    att = 0
    for row in mask:
        L = int(row.sum())
        att += 2 * 2 * t["num_hidden_layers"] * t["num_attention_heads"] * t["head_dim"] * L * L / 2
    grid = v["image_size"] // v["patch_size"]
    Tv = grid * grid + 1
    n_images = batch["pixel_values"].shape[0]
    Pv = v["num_hidden_layers"] * (4 * v["hidden_size"] ** 2 + 2 * v["hidden_size"] * v["intermediate_size"])
    vision = n_images * (2 * Tv * Pv + 4 * v["num_hidden_layers"] * v["hidden_size"] * Tv * Tv)
    head = 2 * labelled * C * V
    if mode == "lora":
        F, kv = t["intermediate_size"], t["num_key_value_heads"] * t["head_dim"]
        dims = (C + C) * 2 + (C + kv) * 2 + (C + F) * 3
        lora = 3 * 2 * tokens * rank * dims * t["num_hidden_layers"]  # forward, then dA/dB/du/dx
        return 4 * tokens * P + 3 * att + 2 * head + lora + vision
    return 6 * tokens * P + 3 * att + 3 * head + vision


def measured_peak():
    try:
        import torch
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        torch.cuda.synchronize()
        times = []
        for _ in range(10):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            a @ b
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e) / 1e3)
        del a, b
        torch.cuda.empty_cache()
        return 2 * 8192 ** 3 / float(np.median(times))
    except Exception as e:  # no torch or no GPU for it
        print(f"(no measured peak: {e})")
        return None


def run(model, batch_path, flags, repeat):
    cmd = [VLFT, "_model-step", model, batch_path, "--device", "cuda", "--update", "--repeat", str(repeat + 1), *flags]
    start = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print(" ".join(cmd))
        print(r.stderr[-3000:])
        return None
    stats = json.loads(r.stdout.strip().splitlines()[-1])
    stats["wall"] = time.time() - start
    # VLFT_CUDA_PROFILE=1: the last step's part timings
    prof = [line for line in r.stderr.splitlines() if line.startswith("cuda profile (train step)")]
    opt = [line for line in r.stderr.splitlines() if line.startswith("cuda profile (optimizer)")]
    stats["profile"] = (prof[-1] if prof else "") + (" | " + opt[-1] if opt else "")
    return stats


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--mode", choices=["lora", "full"], default="lora")
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--cases", default="demo1,demo4,long1")
    parser.add_argument("--checkpointing", default="1,0")
    parser.add_argument("--out")
    args = parser.parse_args()
    config = json.load(open(os.path.join(args.model, "config.json")))
    peak = measured_peak()
    rng = np.random.default_rng(0)
    work = os.environ.get("TMPDIR", "/tmp")
    cases = {
        # name: (samples, prompt, answer) -> ~1100 tokens (mllm_demo-like) or 2048
        "demo1": (1, 40, 60), "demo4": (4, 40, 60), "long1": (1, 500, 522), "long2": (2, 500, 522),
    }
    rows = []
    for name in args.cases.split(","):
        n, prompt, answer = cases[name]
        batch = ref.random_batch(config, rng, images_per_sample=(1,) * n, text_lengths=((prompt, answer),) * n)
        path = os.path.join(work, f"batch-{name}.safetensors")
        write_safetensors(path, batch)
        L = batch["input_ids"].shape[1]
        flops = step_flops(config, batch, args.mode)
        for ckpt in [int(c) for c in args.checkpointing.split(",")]:
            flags = ["--finetuning-type", args.mode, "--gradient-checkpointing", str(ckpt)]
            if args.mode == "lora":
                flags += ["--lora-rank", "8", "--lora-target", "all"]
            stats = run(args.model, path, flags, args.repeat)
            if stats is None:
                rows.append(dict(case=name, B=n, L=L, ckpt=ckpt, error=True))
                continue
            step = stats["step_seconds_min"]
            row = dict(case=name, B=n, L=L, ckpt=ckpt, mode=args.mode, step_s=step,
                       samples_per_s=n / step, tflops=flops / step / 1e12,
                       mfu_datasheet=flops / step / PEAK_DATASHEET,
                       mfu_measured=(flops / step / peak) if peak else None,
                       gpu_peak_gib=stats["gpu_peak_bytes"] / 2 ** 30,
                       gpu_weights_gib=stats["gpu_weights_bytes"] / 2 ** 30,
                       load_s=stats["load_seconds"], loss=stats["loss"], device=stats["device"],
                       attention=os.environ.get("VLFT_CUDA_ATTENTION", "default"), profile=stats["profile"])
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\nYi-VL-6B {args.mode} on {rows[0].get('device') if rows else '?'}; cuBLAS peak measured "
          f"{peak / 1e12 if peak else float('nan'):.0f} TFLOP/s")
    print(f"{'case':6} {'B':>2} {'L':>5} {'ckpt':>4} {'step s':>8} {'samples/s':>9} {'TFLOP/s':>8} {'MFU':>6} "
          f"{'MFUmeas':>7} {'GPU GiB':>8}")
    for r in rows:
        if r.get("error"):
            print(f"{r['case']:6} {r['B']:>2} {r['L']:>5} {r['ckpt']:>4}  FAILED")
            continue
        mm = f"{r['mfu_measured']:.3f}" if r["mfu_measured"] else "-"
        print(f"{r['case']:6} {r['B']:>2} {r['L']:>5} {r['ckpt']:>4} {r['step_s']:8.3f} {r['samples_per_s']:9.2f} "
              f"{r['tflops']:8.1f} {r['mfu_datasheet']:6.3f} {mm:>7} {r['gpu_peak_gib']:8.1f}")
    for r in rows:
        if r.get("profile"):
            print(f"{r['case']} ckpt {r['ckpt']}: {r['profile']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(rows=rows, peak_measured=peak), f, indent=1)


if __name__ == "__main__":
    main()
