"""Benchmark: data parallel `vlft train` on the mid-size LLaVA of
bench/model_step.py (12-layer 768-wide LLaMA, 8-layer CLIP at 224 px, LoRA
rank 8), side by side in one run:

    A  1 process  x 2 threads, per-device batch 1, gradient accumulation 2
    B  mpirun -np 2 x 1 thread, per-device batch 1, gradient accumulation 1

Both make the same updates on the same samples (tests/python/test_dist_train.py
checks that); the ratio B / A of training throughput (samples per second of
the training loop, model loading excluded) says whether two single-threaded
ranks use two cores better than one two-threaded process. Also prints the
memory each rank reports (A: one process, ZeRO 0; B: the stage given), and
the peak resident memory (VmHWM) of the largest rank.

--full trains every weight of the language model instead of LoRA (125 M
trainable values, 16 bytes each in one process): what ZeRO-3 halves.

usage: /usr/bin/python3 bench/dist.py [--steps N] [--stage S] [--rounds R] [--full] [--keep DIR]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))
from model_step import mid_config, mid_weights  # noqa: E402
from vlft_testing import tempdir, write_safetensors  # noqa: E402

VLFT = os.environ.get("VLFT_BIN", os.path.join(HERE, "..", "build", "vlft"))
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--mca", "btl", "self,vader", "-np", "2"]


def make_model(folder):
    """The mid-size weights with the tiny model's tokenizer and image processor (at 224 px)."""
    if os.path.exists(os.path.join(folder, "model.safetensors")):
        return
    tiny = os.path.join(tempdir(), "tiny")
    subprocess.run([VLFT, "init-tiny", tiny], check=True, capture_output=True)
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(tiny):
        if name.startswith("tokenizer") or name in ("special_tokens_map.json", "generation_config.json"):
            shutil.copy(os.path.join(tiny, name), folder)
    with open(os.path.join(tiny, "config.json")) as f:
        image_token = json.load(f)["image_token_index"]
    with open(os.path.join(tiny, "preprocessor_config.json")) as f:
        processor = json.load(f)
    for key in ("size", "crop_size"):
        if isinstance(processor.get(key), dict):
            processor[key] = {k: 224 for k in processor[key]}
        elif key in processor:
            processor[key] = 224
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
        json.dump(processor, f, indent=2)
    config = mid_config()
    config["image_token_index"] = image_token
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    write_safetensors(os.path.join(folder, "model.safetensors"), mid_weights(config, np.random.default_rng(0)),
                      {"format": "pt"})


def recipe(path, model, data, out, accum, steps, threads, stage, full):
    settings = dict(model_name_or_path=model, stage="sft", finetuning_type="full" if full else "lora", lora_rank=8,
                    dataset="mllm_demo",
                    dataset_dir=data, template="yi_vl", cutoff_len=2048, output_dir=out, overwrite_output_dir="true",
                    logging_steps=1, save_steps=10000, per_device_train_batch_size=1,
                    gradient_accumulation_steps=accum, learning_rate="1.0e-4", max_steps=steps, seed=1, val_size=0,
                    threads=threads, zero_stage=stage)
    with open(path, "w") as f:
        for k, v in settings.items():
            f.write(f"{k}: {v}\n")


def run(command, out, steps):
    start = time.time()
    r = subprocess.run(command, capture_output=True, text=True)
    wall = time.time() - start
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{r.stderr}")
    with open(os.path.join(out, "train_results.json")) as f:
        runtime = json.load(f)["train_runtime"]
    memory = [line for line in r.stderr.splitlines() if line.startswith(("memory per rank", "peak memory per rank"))]
    return 2 * steps / runtime, runtime, wall, "\n  ".join(memory)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--stage", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2, help="A, B alternated this many times; the best of each counts")
    parser.add_argument("--full", action="store_true", help="full fine-tuning of the language model instead of LoRA")
    parser.add_argument("--keep", help="model folder to create or reuse")
    args = parser.parse_args()
    work = tempdir()
    model = args.keep or os.path.join(work, "mid")
    make_model(model)
    data = os.path.join(work, "data")
    subprocess.run([VLFT, "demo-data", data, "--n", str(4 * args.steps), "--seed", "1"], check=True,
                   capture_output=True)
    env_note = "OMP_WAIT_POLICY=" + os.environ.get("OMP_WAIT_POLICY", "passive (vlft's default)")
    a_out, b_out = os.path.join(work, "a"), os.path.join(work, "b")
    recipe(os.path.join(work, "a.yaml"), model, data, a_out, 2, args.steps, 2, 0, args.full)
    recipe(os.path.join(work, "b.yaml"), model, data, b_out, 1, args.steps, 1, args.stage, args.full)
    # alternated, best of each side: on a shared machine the load changes from minute to minute
    a_runs, b_runs = [], []
    for _ in range(args.rounds):
        a_runs.append(run([VLFT, "train", os.path.join(work, "a.yaml")], a_out, args.steps))
        b_runs.append(run(MPIRUN + [VLFT, "train", os.path.join(work, "b.yaml")], b_out, args.steps))
    a, b = max(a_runs), max(b_runs)
    method = "full fine-tuning" if args.full else "LoRA r8"
    print(f"mid-size LLaVA, {method}, {args.steps} updates of 2 samples ({env_note}, {os.cpu_count()} cores)")
    print(f"A 1 rank x 2 threads, accum 2 : {a[0]:.3f} samples/s (train {a[1]:.1f} s, wall {a[2]:.1f} s)")
    print(f"B 2 ranks x 1 thread, ZeRO {args.stage}: {b[0]:.3f} samples/s (train {b[1]:.1f} s, wall {b[2]:.1f} s)")
    print(f"throughput ratio B/A: {b[0] / a[0]:.2f}")
    print(f"A {a[3]}")
    print(f"B {b[3]}")


if __name__ == "__main__":
    main()
