"""`vlft train` end to end: the bundled demo learns, a run killed at random
moments resumes to the same bytes, and bad recipes fail before any work."""
import json
import os
import random
import signal
import subprocess
import time

from PIL import Image

from vlft_testing import ROOT, VLFT, read_safetensors, run_vlft, tempdir


def write_recipe(path, **settings):
    with open(path, "w") as f:
        for k, v in settings.items():
            f.write(f"{k}: {v}\n")


def small_setup():
    d = tempdir()
    model, data = os.path.join(d, "model"), os.path.join(d, "data")
    run_vlft("init-tiny", model, "--seed", 1)
    run_vlft("demo-data", data, "--n", 16, "--seed", 2)
    return d, model, data


def base_settings(model, data, out):
    return dict(model_name_or_path=model, stage="sft", finetuning_type="lora", lora_rank=4, dataset="mllm_demo",
                dataset_dir=data, template="yi_vl", cutoff_len=512, output_dir=out, logging_steps=1, save_steps=1,
                save_total_limit=2, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                learning_rate="5.0e-3", max_steps=12, lr_scheduler_type="cosine", warmup_ratio=0.1, seed=3,
                val_size=0)


def test_killed_runs_resume_to_the_same_bytes():
    d, model, data = small_setup()
    clean_out = os.path.join(d, "clean")
    recipe = os.path.join(d, "clean.yaml")
    write_recipe(recipe, **base_settings(model, data, clean_out))
    start = time.time()
    run_vlft("train", recipe)
    duration = time.time() - start
    with open(os.path.join(clean_out, "adapter_model.safetensors"), "rb") as f:
        reference = f.read()
    rng = random.Random(1234)
    for attempt in range(3):
        out = os.path.join(d, f"killed{attempt}")
        recipe = os.path.join(d, f"killed{attempt}.yaml")
        write_recipe(recipe, **base_settings(model, data, out))
        process = subprocess.Popen([VLFT, "train", recipe], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, max(0.4, 0.8 * duration)))
        killed = process.poll() is None
        process.send_signal(signal.SIGKILL)
        process.wait()
        # every checkpoint left on disk is complete
        for name in os.listdir(out) if os.path.isdir(out) else []:
            if name.startswith("checkpoint-"):
                assert ".tmp" not in name
                files = os.listdir(os.path.join(out, name))
                assert "adapter_model.safetensors" in files and "trainer_state.json" in files, files
        # resume: output_dir holds checkpoints, so the run continues from the latest
        r = run_vlft("train", recipe)
        with open(os.path.join(out, "adapter_model.safetensors"), "rb") as f:
            assert f.read() == reference, f"attempt {attempt} (killed mid-run: {killed}) differs"


def expect_failure(recipe, fragment, out):
    r = run_vlft("train", recipe, check=False)
    assert r.returncode == 1, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert fragment in lines[0], (fragment, lines[0])
    assert not os.path.exists(out), "a failing recipe must not create output_dir"


def test_bad_recipes_fail_before_any_work_with_one_line():
    d, model, data = small_setup()
    out = os.path.join(d, "out")
    recipe = os.path.join(d, "bad.yaml")
    cases = [
        (dict(dataset="no_such_dataset"), "no_such_dataset"),
        (dict(template="no_such_template"), "no_such_template"),
        (dict(cutoff_len=0), "cutoff_len"),
        (dict(learning_rate="-1.0e-4"), "learning_rate"),
        (dict(lr_scheduler_type="zigzag"), "lr_scheduler_type"),
        (dict(finetuning_typo="lora"), "unknown key 'finetuning_typo'"),
    ]
    for change, fragment in cases:
        write_recipe(recipe, **{**base_settings(model, data, out), **change})
        expect_failure(recipe, fragment, out)
    empty_model = os.path.join(d, "empty_model")
    os.makedirs(empty_model)
    for name in ("config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "preprocessor_config.json"):
        with open(os.path.join(model, name), "rb") as f, open(os.path.join(empty_model, name), "wb") as g:
            g.write(f.read())
    write_recipe(recipe, **{**base_settings(empty_model, data, out)})
    expect_failure(recipe, "model.safetensors", out)
    write_recipe(recipe, **{**base_settings(os.path.join(d, "nowhere"), data, out)})
    expect_failure(recipe, "nowhere", out)
    # a missing image is named, with its sample
    with open(os.path.join(data, "mllm_demo.json")) as f:
        rows = json.load(f)
    os.remove(os.path.join(data, rows[3]["images"][0]))
    write_recipe(recipe, **base_settings(model, data, out))
    expect_failure(recipe, rows[3]["images"][0], out)


def test_non_empty_output_dir_is_refused_without_overwrite():
    d, model, data = small_setup()
    out = os.path.join(d, "out")
    os.makedirs(out)
    with open(os.path.join(out, "notes.txt"), "w") as f:
        f.write("mine")
    recipe = os.path.join(d, "r.yaml")
    write_recipe(recipe, **base_settings(model, data, out))
    r = run_vlft("train", recipe, check=False)
    assert r.returncode == 1 and "overwrite_output_dir" in r.stderr
    assert os.listdir(out) == ["notes.txt"]


def test_bundled_demo_learns():
    """The README's demo recipe as it is: the final logged loss must be below
    40% of the first, and the loss plot a real PNG."""
    d = tempdir()
    run_vlft("init-tiny", os.path.join(d, "demo", "model"), "--seed", 0)
    run_vlft("demo-data", os.path.join(d, "demo", "data"), "--seed", 0)
    recipe = os.path.join(ROOT, "examples", "tiny_lora_sft.yaml")
    r = run_vlft("train", recipe, cwd=d)
    out = os.path.join(d, "demo", "saves", "lora", "sft")
    with open(os.path.join(out, "trainer_log.jsonl")) as f:
        log = [json.loads(line) for line in f if '"loss"' in line]
    first, last = log[0]["loss"], log[-1]["loss"]
    assert last < 0.4 * first, (first, last)
    with Image.open(os.path.join(out, "training_loss.png")) as image:
        assert image.format == "PNG" and image.size[0] >= 400
    adapter, _ = read_safetensors(os.path.join(out, "adapter_model.safetensors"))
    assert any(".lora_A" in k for k in adapter) and any(".lora_B" in k for k in adapter)
    with open(os.path.join(out, "all_results.json")) as f:
        results = json.load(f)
    assert results["train_samples_per_second"] > 0 and "eval_loss" in results
