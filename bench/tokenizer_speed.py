#!/usr/bin/python3
"""Tokenizer encode speed: vlft beside python3-sentencepiece, same text, same
run, one thread each. Prints MB/s for both and the ratio vlft / sentencepiece.

    /usr/bin/python3 bench/tokenizer_speed.py [MODEL_DIR] [MEGABYTES]

MODEL_DIR defaults to tests/data/tokenizers/yi_like. vlft is timed in-process
(`vlft _tokenize --bench`, encoding line by line); sentencepiece encodes the
same lines in one batched call with num_threads=1 (its C++ loop, no per-line
Python overhead).
"""
import os
import subprocess
import sys
import tempfile
import time

import sentencepiece as spm

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from tokenizer_strings import make_strings  # noqa: E402
import make_tokenizer_fixtures  # noqa: E402


def main():
    model_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "data", "tokenizers", "yi_like")
    megabytes = float(sys.argv[2]) if len(sys.argv) > 2 else 4.0
    vlft = os.environ.get("VLFT_BIN", os.path.join(ROOT, "build", "vlft"))
    lines = make_tokenizer_fixtures.corpus_lines(seed=5) + [s.replace("\n", " ") for s in make_strings(5000, [], 9)]
    text, size = [], 0
    while size < megabytes * 1e6:
        for line in lines:
            text.append(line)
            size += len(line.encode()) + 1
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.write("\n".join(text) + "\n")
        path = f.name
    nbytes = os.path.getsize(path)
    model = os.path.join(model_dir, "tokenizer.model")
    results = {}
    for label, args in (("vlft sentencepiece (.model)", ["--sp", model]), ("vlft fast (tokenizer.json)", ["--dir", model_dir])):
        best = None
        for _ in range(3):
            out = subprocess.run([vlft, "_tokenize", *args, "--bench", path], capture_output=True, text=True,
                                 env=dict(os.environ, OMP_NUM_THREADS="1"), check=True).stdout.split()
            seconds = float(out[1])
            best = seconds if best is None else min(best, seconds)
        results[label] = best
    sp = spm.SentencePieceProcessor(model_file=model)
    with open(path, encoding="utf-8") as f:
        sp_lines = f.read().split("\n")[:-1]
    best = None
    for _ in range(3):
        start = time.perf_counter()
        sp.encode(sp_lines, num_threads=1)
        seconds = time.perf_counter() - start
        best = seconds if best is None else min(best, seconds)
    results["python3-sentencepiece"] = best
    os.unlink(path)
    print(f"text: {nbytes / 1e6:.1f} MB, {len(sp_lines)} lines, model {model_dir}")
    for label, seconds in results.items():
        print(f"  {label:30s} {nbytes / 1e6 / seconds:8.2f} MB/s")
    base = results["python3-sentencepiece"]
    for label in list(results)[:2]:
        print(f"  ratio {label} / sentencepiece: {base / results[label]:.2f}x")


if __name__ == "__main__":
    main()
