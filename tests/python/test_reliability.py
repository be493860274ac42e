"""Reliability: a training run SIGKILLed 20 times (half of them while a
checkpoint is being written) resumes to the uninterrupted run's bytes and
leaves only loadable checkpoints; a disk that fills while saving leaves the
previous outputs intact; dataset paths may not escape dataset_dir."""
import json
import os
import random
import signal
import subprocess
import time

from test_train_cli import base_settings, small_setup, write_recipe
from vlft_testing import VLFT, read_safetensors, run_vlft, tempdir

KILL_STEPS = 24


def check_checkpoints_load(out):
    """Every checkpoint-N folder is complete: each safetensors file reads with
    the independent reader, each JSON parses, and vlft itself opens the
    adapter. Returns the step numbers found."""
    steps = []
    for name in sorted(os.listdir(out)):
        if not name.startswith("checkpoint-"):
            continue
        path = os.path.join(out, name)
        files = set(os.listdir(path))
        for needed in ("adapter_model.safetensors", "adapter_config.json", "trainable.safetensors",
                       "optimizer.safetensors", "trainer_state.json", "vlft_state.json"):
            assert needed in files, (name, sorted(files))
        for f in files:
            if f.endswith(".safetensors"):
                tensors, _ = read_safetensors(os.path.join(path, f))
                assert tensors, (name, f)
            elif f.endswith(".json"):
                with open(os.path.join(path, f)) as fh:
                    json.load(fh)
        with open(os.path.join(path, "vlft_state.json")) as fh:
            assert json.load(fh)["global_step"] == int(name.split("-")[1])
        run_vlft("tensors", os.path.join(path, "adapter_model.safetensors"))
        steps.append(int(name.split("-")[1]))
    return steps


def temp_checkpoints(out):
    return [n for n in os.listdir(out) if n.startswith(".tmp-checkpoint-")] if os.path.isdir(out) else []


def latest_step(out):
    steps = [int(n.split("-")[1]) for n in os.listdir(out) if n.startswith("checkpoint-")] if os.path.isdir(out) else []
    return max(steps, default=0)


def test_twenty_kills_resume_to_the_uninterrupted_bytes():
    d, model, data = small_setup()
    clean_out = os.path.join(d, "clean")
    recipe = os.path.join(d, "clean.yaml")
    write_recipe(recipe, **{**base_settings(model, data, clean_out), "max_steps": KILL_STEPS})
    run_vlft("train", recipe)
    with open(os.path.join(clean_out, "adapter_model.safetensors"), "rb") as f:
        reference = f.read()

    out = os.path.join(d, "killed")
    recipe = os.path.join(d, "killed.yaml")
    write_recipe(recipe, **{**base_settings(model, data, out), "max_steps": KILL_STEPS})
    rng = random.Random(20)
    kills = mid_write = 0
    for attempt in range(20):
        # Kill moments follow the run: attempt k waits for about step
        # 2 + k * 21 / 20; even attempts strike as soon as a checkpoint's
        # temporary folder appears (a write in progress), odd ones at a
        # random moment after a checkpoint landed. (A run killed before its
        # first checkpoint has nothing to resume: like LLaMA-Factory, vlft
        # then asks for overwrite_output_dir, so kills start after step 1.)
        target = 2 + attempt * (KILL_STEPS - 3) // 20
        during_write = attempt % 2 == 0
        process = subprocess.Popen([VLFT, "train", recipe], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while process.poll() is None and time.time() < deadline:
            if during_write:
                if temp_checkpoints(out) and latest_step(out) + 1 >= target:
                    break
            elif latest_step(out) >= target:
                time.sleep(rng.uniform(0.0, 0.4))
                break
            time.sleep(0.0005)  # poll often enough to catch a write, without taking a core from vlft
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
        if temp_checkpoints(out):
            mid_write += 1  # the kill left a half-written checkpoint behind
        check_checkpoints_load(out)
    # the last resume runs to the end
    run_vlft("train", recipe)
    assert not temp_checkpoints(out), "a finished run sweeps half-written checkpoints"
    check_checkpoints_load(out)
    with open(os.path.join(out, "adapter_model.safetensors"), "rb") as f:
        assert f.read() == reference, "the killed-and-resumed run differs from the uninterrupted one"
    print(f"  kill test: {kills} kills, {mid_write} during a checkpoint write")
    assert kills == 20, f"only {kills} of 20 runs were still alive to be killed"
    assert mid_write >= 5, f"only {mid_write} kills landed during a checkpoint write"


def limit_file_size(limit):
    """preexec_fn: the child may write no file past limit bytes (RLIMIT_FSIZE;
    Python restores SIGXFSZ to its default in the child, so vlft itself must
    turn the signal into a write error)."""
    import resource

    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def vlft_limited(limit, *args):
    return subprocess.run([VLFT, *map(str, args)], capture_output=True, text=True, preexec_fn=limit_file_size(limit))


def test_disk_full_while_saving_keeps_the_previous_outputs():
    d, model, data = small_setup()
    settings = dict(base_settings(model, data, None), max_steps=8, save_steps=2)
    clean_out = os.path.join(d, "clean")
    recipe = os.path.join(d, "clean.yaml")
    write_recipe(recipe, **{**settings, "output_dir": clean_out})
    run_vlft("train", recipe)
    with open(os.path.join(clean_out, "adapter_model.safetensors"), "rb") as f:
        reference = f.read()
    optimizer_size = os.path.getsize(os.path.join(clean_out, "checkpoint-8", "optimizer.safetensors"))
    small_size = max(os.path.getsize(os.path.join(clean_out, n)) for n in ("trainer_log.jsonl", "adapter_config.json"))

    # A run stopped by Ctrl-C after checkpoint-2 ...
    out = os.path.join(d, "full")
    recipe = os.path.join(d, "full.yaml")
    write_recipe(recipe, **{**settings, "output_dir": out})
    process = subprocess.Popen([VLFT, "train", recipe], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while process.poll() is None and latest_step(out) < 2:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    process.wait()
    saved = latest_step(out)
    assert saved >= 2
    before = {n: open(os.path.join(out, f"checkpoint-{saved}", n), "rb").read()
              for n in os.listdir(os.path.join(out, f"checkpoint-{saved}"))}
    assert saved < 8, "the run ended before Ctrl-C"
    # ... resumed on a "disk" that holds no file as big as the optimizer
    # state: the next checkpoint fails with a one-line error naming the
    # file, and the previous checkpoint is untouched.
    r = vlft_limited(max(small_size + 4096, optimizer_size // 2), "train", recipe)
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.startswith("vlft train:")]
    print("  disk full:", lines[0] if lines else r.stderr)
    assert len(lines) == 1 and "File too large" in lines[0] and ".safetensors" in lines[0], r.stderr
    assert not temp_checkpoints(out)
    assert latest_step(out) == saved
    check_checkpoints_load(out)
    for n, data_bytes in before.items():
        with open(os.path.join(out, f"checkpoint-{saved}", n), "rb") as f:
            assert f.read() == data_bytes, n
    # with room again, the run resumes and ends where the clean run did
    run_vlft("train", recipe)
    with open(os.path.join(out, "adapter_model.safetensors"), "rb") as f:
        assert f.read() == reference

    # export: a second export into the same folder that runs out of space
    # fails and leaves the first export whole
    export = os.path.join(d, "merged")
    run_vlft("export", "--model", model, "--adapter", clean_out, "--out", export, "--dtype", "f32")
    first = {n: open(os.path.join(export, n), "rb").read() for n in os.listdir(export)}
    r = vlft_limited(4096, "export", "--model", model, "--adapter", out, "--out", export, "--dtype", "f32")
    print("  export disk full:", r.stderr.strip())
    assert r.returncode == 1 and "File too large" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert {n: open(os.path.join(export, n), "rb").read() for n in os.listdir(export)} == first
    assert not [n for n in os.listdir(d) if n.startswith("merged.")], os.listdir(d)
    run_vlft("info", export)


def preview(d, data, extra=""):
    recipe = os.path.join(d, "preview.yaml")
    with open(recipe, "w") as f:
        f.write(f"model_name_or_path: {os.path.join(d, 'model')}\nstage: sft\nfinetuning_type: lora\n"
                f"dataset: mllm_demo\ndataset_dir: {data}\ntemplate: yi_vl\ncutoff_len: 512\n"
                f"output_dir: {os.path.join(d, 'out')}\n{extra}")
    return run_vlft("data", "preview", recipe, check=False)


def test_dataset_paths_may_not_escape_dataset_dir():
    d, model, data = small_setup()
    with open(os.path.join(data, "mllm_demo.json")) as f:
        rows = json.load(f)
    first_image = rows[0]["images"][0]
    outside = os.path.join(d, "outside.png")
    with open(os.path.join(data, first_image), "rb") as f, open(outside, "wb") as g:
        g.write(f.read())
    os.symlink(outside, os.path.join(data, "images", "link_out.png"))
    os.symlink(os.path.join(data, first_image), os.path.join(data, "images", "link_in.png"))
    assert preview(d, data).returncode == 0

    def with_image(path):
        changed = json.loads(json.dumps(rows))
        changed[1]["images"][0] = path
        with open(os.path.join(data, "mllm_demo.json"), "w") as f:
            json.dump(changed, f)

    for path in ("../outside.png", outside, "images/link_out.png", "images/../../outside.png"):
        with_image(path)
        r = preview(d, data)
        assert r.returncode == 1, (path, r.stdout[:200])
        assert "sample 1: image 0" in r.stderr and "outside dataset_dir" in r.stderr, (path, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        # the explicit key lets it through
        assert preview(d, data, "allow_paths_outside_dataset_dir: true\n").returncode == 0, path
    # a symlink that stays inside is fine
    with_image("images/link_in.png")
    assert preview(d, data).returncode == 0
    # a data file outside dataset_dir: by "..", or by a symlink
    with_image(first_image)
    os.rename(os.path.join(data, "mllm_demo.json"), os.path.join(d, "rows.json"))
    with open(os.path.join(data, "dataset_info.json")) as f:
        info = json.load(f)
    for file_name, make_link in (("../rows.json", False), ("rows_link.json", True)):
        if make_link:
            os.symlink(os.path.join(d, "rows.json"), os.path.join(data, file_name))
        info["mllm_demo"]["file_name"] = file_name
        with open(os.path.join(data, "dataset_info.json"), "w") as f:
            json.dump(info, f)
        r = preview(d, data)
        assert r.returncode == 1 and "outside dataset_dir" in r.stderr and "rows" in r.stderr, (file_name, r.stderr)
        assert preview(d, data, "allow_paths_outside_dataset_dir: true\n").returncode == 0, file_name
