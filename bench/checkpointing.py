"""Benchmark: activation checkpointing on vs off, side by side on the mid-size
LLaVA of bench/model_step.py (12-layer 768-wide LLaMA, 8-layer CLIP tower at
224 px, Yi-VL projector, random weights), fp32, same threads. Prints the step
time of each (best of N, interleaved rounds), the ratio, and the activation
memory: peak, kept for the backward, the planned arena block, process peak RSS.

usage: /usr/bin/python3 bench/checkpointing.py [--threads N] [--repeat N] [--mode lora|full|everything]
                                               [--batch B] [--text T] [--keep DIR] [--vlft PATH]
                                               [--baseline PATH]
--baseline times another vlft build (e.g. one from before the arena) in the same
rounds, without checkpointing (it need not know the flag).
"""
import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))
import llava_reference as ref  # noqa: E402
from model_step import mid_config, mid_model  # noqa: E402
from vlft_testing import tempdir, write_safetensors  # noqa: E402

MODES = {
    "lora": ["--finetuning-type", "lora", "--lora-rank", "8"],
    "full": ["--finetuning-type", "full"],
    "everything": ["--finetuning-type", "full", "--freeze-vision-tower", "0", "--freeze-projector", "0"],
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--mode", choices=sorted(MODES), default="lora")
    parser.add_argument("--batch", type=int, default=1, help="samples per batch (one image each)")
    parser.add_argument("--text", type=int, default=64, help="prompt and answer tokens per sample")
    parser.add_argument("--keep", help="model folder to create or reuse")
    parser.add_argument("--vlft", default=os.environ.get("VLFT_BIN", os.path.join(HERE, "..", "build", "vlft")))
    parser.add_argument("--baseline", help="another vlft binary to time in the same rounds (no checkpointing)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    config = mid_config()
    folder = mid_model(args.keep or os.path.join(tempdir(), "mid"), config, rng)
    batch = ref.random_batch(config, np.random.default_rng(1), images_per_sample=(1,) * args.batch,
                             text_lengths=((args.text, args.text - 1),) * args.batch)
    batch_path = os.path.join(args.keep or tempdir(), f"batch-{args.batch}x{args.text}.safetensors")
    write_safetensors(batch_path, batch)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads))

    best, best_cpu, stats = {}, {}, {}
    runs = [(0, args.vlft, ["--gradient-checkpointing", "0"]), (1, args.vlft, ["--gradient-checkpointing", "1"])]
    if args.baseline:
        runs.append(("baseline", args.baseline, []))
    for _ in range(args.repeat):  # interleaved: the machine's load changes from minute to minute
        for checkpointing, binary, flags in runs:
            run = subprocess.run([binary, "_model-step", folder, batch_path, *MODES[args.mode], "--threads",
                                  str(args.threads), "--repeat", "3", *flags], capture_output=True, text=True, env=env)
            if run.returncode != 0:
                sys.exit(run.stderr)
            s = json.loads(run.stdout.strip().splitlines()[-1])
            stats[checkpointing] = s
            # steps 2 and 3: weights paged in, the arena planned by step 1
            best[checkpointing] = min(best.get(checkpointing, 1e9), s["step_seconds_min"])
            best_cpu[checkpointing] = min(best_cpu.get(checkpointing, 1e9), s["step_cpu_seconds_min"])
    if stats[0]["loss"] != stats[1]["loss"]:
        sys.exit(f"losses differ: {stats[0]['loss']} vs {stats[1]['loss']}")
    mib = 1 << 20
    b, length = batch["input_ids"].shape
    print(f"mid-size LLaVA (LM 12x768, tower 8x768 at 224px, Yi-VL projector); batch {b} x {length} tokens "
          f"({b} x 256 image); {args.mode}; fp32; {args.threads} threads; vlft {args.vlft}")
    print(f"load avg (1 min): {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; loss {stats[1]['loss']:.6f} both ways")
    print(f"step time (best of {args.repeat} runs x 2 steps)  off {best[0]:.3f} s   on {best[1]:.3f} s   "
          f"on/off = {best[1] / best[0]:.2f}x")
    print(f"CPU time (all threads, best)              off {best_cpu[0]:.3f} s   on {best_cpu[1]:.3f} s   "
          f"on/off = {best_cpu[1] / best_cpu[0]:.2f}x")
    for checkpointing, name in ((0, "off"), (1, "on ")):
        s = stats[checkpointing]
        print(f"checkpointing {name}: activations peak {s['activations_peak'] / mib:7.1f} MiB, kept for backward "
              f"{s['activations_kept_total'] / mib:7.1f} MiB (vision {s['activations_kept_vision'] / mib:.1f}), "
              f"arena block {s['activations_arena'] / mib:7.1f} MiB (planned {s['activations_arena_grows']}x), "
              f"peak RSS {s['max_rss'] / mib:.0f} MiB")
    if args.baseline:
        s = stats["baseline"]
        print(f"baseline {args.baseline}: step {best['baseline']:.3f} s, CPU {best_cpu['baseline']:.3f} s "
              f"(off here / baseline: step {best[0] / best['baseline']:.2f}x, CPU "
              f"{best_cpu[0] / best_cpu['baseline']:.2f}x), loss {s['loss']:.6f}, activations peak "
              f"{s['activations_peak'] / mib:.1f} MiB, peak RSS {s['max_rss'] / mib:.0f} MiB")


if __name__ == "__main__":
    main()
