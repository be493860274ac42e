"""The benchmarks in bench/ still build and run. No test times anything (the
brief keeps speed out of tests); these run each bench script on tiny
settings, so that a change to the sources, headers or test helpers that
breaks a benchmark fails here instead of being found sessions later (that
happened to bench/attention.sh and bench/elementwise_exp.sh). The baseline
revision given to the A/B scripts is HEAD, which any clone has."""
import os
import re
import subprocess
import sys

from vlft_testing import ROOT

BENCH = os.path.join(ROOT, "bench")


def run_script(*args, timeout=300):
    result = subprocess.run(["bash", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, args))} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_attention_bench_runs_and_agrees_with_its_baseline():
    out = run_script(os.path.join(BENCH, "attention.sh"), 2, 1, "HEAD")
    diffs = re.findall(r"max \|new - baseline\|: (.*)", out)
    assert len(diffs) >= 4, out  # one per shape: Yi text, ViT-H, and the mid-size LM and tower
    for line in diffs:
        values = [float(v) for v in re.findall(r"[a-z]+ ([0-9.e+-]+)", line)]
        assert len(values) == 5 and max(values) < 1e-4, line
    assert out.count("speed-up (baseline / new)") == len(diffs), out


def test_elementwise_bench_runs_and_agrees_with_its_baseline():
    out = run_script(os.path.join(BENCH, "elementwise_exp.sh"), 2, 1, "HEAD")
    assert re.search(r"^swiglu .*x$", out, re.M) and re.search(r"^cross_entropy .*\(loss", out, re.M), out
    new_loss, old_loss = map(float, re.search(r"\(loss ([0-9.e+-]+) vs ([0-9.e+-]+)\)", out).groups())
    assert abs(new_loss - old_loss) <= 1e-3 * abs(old_loss), out


def test_image_preprocess_bench_runs():
    out = run_script(os.path.join(BENCH, "image_preprocess.sh"), 1)
    ratio = float(re.search(r"speedup \(Pillow\+numpy time / vlft time\): ([0-9.]+)x", out).group(1))
    assert ratio > 0, out


def test_optimizer_bench_runs():
    out = run_script(os.path.join(BENCH, "optimizer.sh"), 100000, 1)
    ratio = float(re.search(r"torch/vlft = ([0-9.]+)", out).group(1))
    assert ratio > 0, out


def test_python_benches_and_device_script_load():
    # The Python benches take minutes on the mid-size model, so here they are
    # only imported (in a child, as they set thread variables when loaded):
    # that catches a renamed helper or a syntax error. The GPU script cannot
    # run here: bash -n checks its syntax (the other scripts ran above).
    scripts = sorted(os.path.join(d, f) for d in (BENCH, os.path.join(BENCH, "cuda"))
                     for f in os.listdir(d) if f.endswith(".py"))
    assert len(scripts) >= 8, scripts
    loader = (
        "import importlib.util, os, sys\n"
        "for path in sys.argv[1:]:\n"
        "    sys.path.insert(0, os.path.dirname(path))\n"
        "    spec = importlib.util.spec_from_file_location('bench_' + os.path.basename(path)[:-3], path)\n"
        "    spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "    print('loaded', path)\n")
    result = subprocess.run([sys.executable, "-c", loader, *scripts], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("loaded ") == len(scripts), result.stdout
    check = subprocess.run(["bash", "-n", os.path.join(BENCH, "cuda", "device_check.sh")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
