"""The training loop (src/train) on the toy model of `vlft _train-toy`:
parity with a PyTorch training loop, outputs, checkpoints, kill -9 / Ctrl-C
and resume, output_dir rules."""
import json
import os
import random
import signal
import subprocess
import time

import numpy as np

from toy_reference import make_toy, reference_run, write_recipe
from vlft_testing import VLFT, read_safetensors, run_vlft, tempdir


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def final_params(output_dir):
    return read_safetensors(os.path.join(output_dir, "model.safetensors"))[0]


def relative_error(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def test_parity_with_pytorch_loop():
    # 36 train samples, batch 4 -> 9 micro-batches an epoch, accumulation 2 ->
    # 4 counted updates an epoch but 5 done (the last one partial), 3 epochs
    # -> 12 steps, 3 of warmup, cosine, clipping at 0.5, decay on weights only.
    folder = tempdir()
    tensors = make_toy(folder)
    out = os.path.join(folder, "out")
    recipe, cfg = write_recipe(folder, out)
    updates_path = os.path.join(folder, "updates.jsonl")
    run_vlft("_train-toy", recipe, "--updates", updates_path)
    ref = reference_run(tensors, cfg)
    got = read_jsonl(updates_path)
    assert ref["max_steps"] == 12 and len(got) == len(ref["updates"]) == 12, (len(got), ref["max_steps"])
    assert any(u["micro_batches"] == 1 for u in ref["updates"]), "the run should include a partial accumulation"
    assert any(u["grad_norm"] > cfg["max_grad_norm"] for u in ref["updates"]), "clipping should be active"
    for mine, theirs in zip(got, ref["updates"]):
        assert mine["step"] == theirs["step"]
        assert abs(mine["loss"] - theirs["loss"]) < 1e-5, (mine, theirs)
        assert abs(mine["lr"] - theirs["lr"]) < 1e-12, (mine, theirs)
        assert abs(mine["grad_norm"] - theirs["grad_norm"]) <= 1e-4 * theirs["grad_norm"], (mine, theirs)
        assert abs(mine["epoch"] - theirs["epoch"]) < 1e-12
    params = final_params(out)
    for name, value in ref["params"].items():
        assert relative_error(params[name], value) < 1e-4, (name, relative_error(params[name], value))
    # the logged loss: mean over the logging window of each update's loss, 4 decimals;
    # the logged lr: the scheduler's after its step (the next update's)
    logs = [line for line in read_jsonl(os.path.join(out, "trainer_log.jsonl")) if "loss" in line]
    assert [line["current_steps"] for line in logs] == list(range(2, 13, 2))
    for line in logs:
        window = ref["updates"][line["current_steps"] - 2:line["current_steps"]]
        assert abs(line["loss"] - round(sum(u["loss"] for u in window) / 2, 4)) <= 1.01e-4, line
        assert abs(line["lr"] - window[-1]["next_lr"]) < 1e-12, line
        assert abs(line["epoch"] - window[-1]["epoch"]) < 1e-12, line
    with open(os.path.join(out, "eval_results.json")) as f:
        eval_results = json.load(f)
    assert abs(eval_results["eval_loss"] - ref["eval_loss"]) < 1e-5, (eval_results, ref["eval_loss"])
    with open(os.path.join(out, "train_results.json")) as f:
        train_results = json.load(f)
    expected_train_loss = sum(u["loss"] for u in ref["updates"]) / len(ref["updates"])
    assert abs(train_results["train_loss"] - expected_train_loss) < 1e-5


def test_parity_linear_max_steps_and_warmup_steps():
    # 37 samples / batch 4 = 10 micro-batches, accumulation 4: transformers 4.50
    # runs 8 + (37 % 4 = 1) of them an epoch; the 9th waits for the next epoch's
    # first update and the 10th is never run.
    folder = tempdir()
    tensors = make_toy(folder, n=37)
    out = os.path.join(folder, "out")
    recipe, cfg = write_recipe(folder, out, lr_scheduler_type="linear", max_steps=7, warmup_steps=2,
                               gradient_accumulation_steps=4, per_device_train_batch_size=4, val_size=0,
                               weight_decay=0.0, max_grad_norm=1.0, learning_rate=0.02, seed=1234)
    updates_path = os.path.join(folder, "updates.jsonl")
    run_vlft("_train-toy", recipe, "--updates", updates_path)
    ref = reference_run(tensors, cfg)
    got = read_jsonl(updates_path)
    assert len(got) == len(ref["updates"]) == 7
    assert [u["micro_batches"] for u in ref["updates"]] == [4, 4, 5, 4, 5, 4, 5]
    for mine, theirs in zip(got, ref["updates"]):
        assert abs(mine["loss"] - theirs["loss"]) < 1e-5 and abs(mine["lr"] - theirs["lr"]) < 1e-12, (mine, theirs)
    params = final_params(out)
    for name, value in ref["params"].items():
        assert relative_error(params[name], value) < 1e-4, name
    assert not os.path.exists(os.path.join(out, "eval_results.json"))


def test_output_files_and_fields():
    folder = tempdir()
    make_toy(folder)
    out = os.path.join(folder, "out")
    recipe, _ = write_recipe(folder, out, plot_loss=True, eval_strategy="steps", eval_steps=5)
    run_vlft("_train-toy", recipe)
    lines = read_jsonl(os.path.join(out, "trainer_log.jsonl"))
    train_keys = ["current_steps", "total_steps", "loss", "lr", "epoch", "percentage", "elapsed_time", "remaining_time"]
    eval_keys = ["current_steps", "total_steps", "eval_loss", "epoch", "percentage", "elapsed_time", "remaining_time"]
    train_lines = [line for line in lines if "loss" in line]
    eval_lines = [line for line in lines if "eval_loss" in line]
    assert train_lines and all(list(line) == train_keys for line in train_lines), train_lines[0]
    assert [line["current_steps"] for line in eval_lines] == [5, 10], eval_lines
    assert all(list(line) == eval_keys for line in eval_lines)
    assert lines[-1]["current_steps"] == 12 and lines[-1]["percentage"] == 100.0 and "loss" not in lines[-1]
    for line in lines:
        assert line["total_steps"] == 12
        h, m, s = line["elapsed_time"].split(":")
        assert int(m) < 60 and int(s) < 60
    with open(os.path.join(out, "train_results.json")) as f:
        train = json.load(f)
    assert sorted(train) == ["epoch", "train_loss", "train_runtime", "train_samples_per_second", "train_steps_per_second"]
    assert abs(train["epoch"] - (2 + 4 / 9)) < 1e-12  # stopped 4 micro-batches into the third epoch
    with open(os.path.join(out, "eval_results.json")) as f:
        evaluation = json.load(f)
    assert sorted(evaluation) == ["epoch", "eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"]
    with open(os.path.join(out, "all_results.json")) as f:
        all_results = json.load(f)
    assert all_results == {**train, **evaluation}
    with open(os.path.join(out, "trainer_state.json")) as f:
        state = json.load(f)
    assert state["global_step"] == 12 and state["max_steps"] == 12 and state["num_train_epochs"] == 3
    assert state["logging_steps"] == 2 and state["save_steps"] == 4 and state["train_batch_size"] == 4
    history = state["log_history"]
    assert [e["step"] for e in history if "loss" in e] == [2, 4, 6, 8, 10, 12]
    assert all(sorted(e) == ["epoch", "grad_norm", "learning_rate", "loss", "step"] for e in history if "loss" in e)
    assert [e["step"] for e in history if "eval_loss" in e] == [5, 10]
    assert "train_loss" in history[-1] and history[-1]["step"] == 12
    assert abs(history[-1]["train_loss"] - train["train_loss"]) < 1e-12
    with open(os.path.join(out, "trainer_state.json")) as f:
        text = f.read()
    assert text == json.dumps(state, indent=2, sort_keys=True) + "\n", "trainer_state.json should be json.dump(indent=2, sort_keys)"
    # max_grad_norm 0: no clipping, and transformers then logs no grad_norm
    out2 = os.path.join(folder, "out2")
    recipe2, _ = write_recipe(folder, out2, name="r2.yaml", max_grad_norm=0)
    run_vlft("_train-toy", recipe2)
    with open(os.path.join(out2, "trainer_state.json")) as f:
        history = json.load(f)["log_history"]
    assert all("grad_norm" not in e for e in history) and any("loss" in e for e in history)


def test_loss_plots_are_valid_png():
    from PIL import Image
    folder = tempdir()
    make_toy(folder)
    out = os.path.join(folder, "out")
    recipe, _ = write_recipe(folder, out, plot_loss=True, eval_strategy="steps", eval_steps=4, logging_steps=1)
    run_vlft("_train-toy", recipe)
    for name in ("training_loss.png", "training_eval_loss.png"):
        path = os.path.join(out, name)
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        image = Image.open(path)
        image.load()
        assert image.size == (640, 480), image.size
        pixels = np.asarray(image.convert("RGB")).astype(int)
        blue = (np.abs(pixels[..., 0] - 0x1F) < 30) & (np.abs(pixels[..., 1] - 0x77) < 30) & (np.abs(pixels[..., 2] - 0xB4) < 30)
        assert blue.sum() > 200, f"{name}: the curve is missing"
        dark = (pixels.sum(axis=2) < 150).sum()
        assert dark > 500, f"{name}: axes and labels are missing"
    # no eval -> no eval plot
    out2 = os.path.join(folder, "out2")
    recipe2, _ = write_recipe(folder, out2, name="r2.yaml", plot_loss=True, val_size=0)
    run_vlft("_train-toy", recipe2)
    assert os.path.exists(os.path.join(out2, "training_loss.png"))
    assert not os.path.exists(os.path.join(out2, "training_eval_loss.png"))


def test_checkpoint_rotation_and_contents():
    folder = tempdir()
    make_toy(folder)
    out = os.path.join(folder, "out")
    recipe, _ = write_recipe(folder, out, save_steps=1, save_total_limit=2)
    run_vlft("_train-toy", recipe)
    checkpoints = sorted(name for name in os.listdir(out) if name.startswith("checkpoint-"))
    assert checkpoints == ["checkpoint-11", "checkpoint-12"], checkpoints
    assert not [name for name in os.listdir(out) if "tmp" in name]
    last = os.path.join(out, "checkpoint-12")
    assert sorted(os.listdir(last)) == ["model.safetensors", "optimizer.safetensors", "trainable.safetensors",
                                        "trainer_state.json", "vlft_state.json"]
    weights = read_safetensors(os.path.join(last, "model.safetensors"))[0]
    final = final_params(out)
    for name in final:
        assert np.array_equal(weights[name], final[name])
    optimizer, metadata = read_safetensors(os.path.join(last, "optimizer.safetensors"))
    assert metadata["step"] == "12"
    assert sorted(optimizer) == sorted(f"{kind}.{name}" for kind in ("exp_avg", "exp_avg_sq") for name in final)
    assert all(np.all(v >= 0) for k, v in optimizer.items() if k.startswith("exp_avg_sq."))
    with open(os.path.join(last, "vlft_state.json")) as f:
        state = json.load(f)
    assert state["global_step"] == 12 and state["scheduler_last_epoch"] == 12
    # keep everything when save_total_limit is unset; the last step is always saved
    out2 = os.path.join(folder, "out2")
    recipe2, _ = write_recipe(folder, out2, name="r2.yaml", save_steps=5)
    run_vlft("_train-toy", recipe2)
    assert sorted(n for n in os.listdir(out2) if n.startswith("checkpoint-")) == ["checkpoint-10", "checkpoint-12", "checkpoint-5"]


def _tensors_equal(a_dir, b_dir):
    a, b = final_params(a_dir), final_params(b_dir)
    return set(a) == set(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)


def _wait_for(path, timeout=20):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if time.time() > deadline:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.01)


def test_kill_and_resume_is_bitwise_identical():
    # 37 samples, batch 4, accumulation 4: each epoch leaves one micro-batch
    # waiting for the next epoch's first update (see schedule.h), which a
    # resume has to replay too
    folder = tempdir()
    make_toy(folder, n=37)
    # (a checkpoint every step, two kept: kills often land while one is written or deleted)
    common = dict(num_train_epochs=12, save_steps=1, save_total_limit=2, logging_steps=1, val_size=0,
                  gradient_accumulation_steps=4)
    reference_out = os.path.join(folder, "reference")
    recipe, _ = write_recipe(folder, reference_out, name="reference.yaml", **common)
    run_vlft("_train-toy", recipe, "--noise", "0.3")
    out = os.path.join(folder, "out")
    first, _ = write_recipe(folder, out, name="first.yaml", **common)
    resume, _ = write_recipe(folder, out, name="resume.yaml", resume_from_checkpoint=True, **common)
    rng = random.Random(1234)
    kills = resumable_kills = 0
    recipe = first
    for attempt in range(6):
        process = subprocess.Popen([VLFT, "_train-toy", recipe, "--noise", "0.3", "--delay-ms", "15"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if kills < 3:
            # kill at a random moment while it runs
            time.sleep(rng.uniform(0.05, 0.4))
            assert process.poll() is None, "the run ended before the kill; slow it down"
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
            if any(n.startswith("checkpoint-") for n in os.listdir(out)):
                recipe = resume
                resumable_kills += 1
            continue
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        assert "resuming from" in stderr, "the last run should have resumed from a checkpoint"
        break
    assert kills == 3 and resumable_kills >= 2, resumable_kills
    assert sorted(n for n in os.listdir(out) if "checkpoint" in n) == ["checkpoint-23", "checkpoint-24"], os.listdir(out)
    assert _tensors_equal(out, reference_out), "resumed run differs from the uninterrupted one"
    with open(os.path.join(reference_out, "trainer_state.json")) as f:
        last = f"checkpoint-{json.load(f)['global_step']}"
    a = read_safetensors(os.path.join(out, last, "optimizer.safetensors"))[0]
    b = read_safetensors(os.path.join(reference_out, last, "optimizer.safetensors"))[0]
    assert all(a[k].tobytes() == b[k].tobytes() for k in b)
    strip = lambda lines: [{k: v for k, v in line.items() if not k.endswith("_time")} for line in lines]
    assert strip(read_jsonl(os.path.join(out, "trainer_log.jsonl"))) == strip(read_jsonl(os.path.join(reference_out, "trainer_log.jsonl")))
    with open(os.path.join(out, "train_results.json")) as f, open(os.path.join(reference_out, "train_results.json")) as g:
        assert json.load(f)["train_loss"] == json.load(g)["train_loss"]


def test_ctrl_c_saves_a_checkpoint_that_resumes():
    folder = tempdir()
    make_toy(folder)
    common = dict(num_train_epochs=4, save_steps=100, logging_steps=1, gradient_accumulation_steps=3)
    reference_out = os.path.join(folder, "reference")
    recipe, _ = write_recipe(folder, reference_out, name="reference.yaml", **common)
    run_vlft("_train-toy", recipe, "--noise", "0.2")
    out = os.path.join(folder, "out")
    first, _ = write_recipe(folder, out, name="first.yaml", **common)
    process = subprocess.Popen([VLFT, "_train-toy", first, "--noise", "0.2", "--delay-ms", "20"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(os.path.join(out, "trainer_log.jsonl"))
    time.sleep(0.13)  # lands inside some accumulation
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, (process.returncode, stderr)
    assert "interrupted: saved" in stderr, stderr
    checkpoints = [n for n in os.listdir(out) if n.startswith("checkpoint-")]
    assert len(checkpoints) == 1, checkpoints
    assert not os.path.exists(os.path.join(out, "model.safetensors")), "an interrupted run has no final weights"
    step = int(checkpoints[0].split("-")[1])
    with open(os.path.join(out, checkpoints[0], "vlft_state.json")) as f:
        assert json.load(f)["global_step"] == step
    # without trainable.safetensors resume falls back on the model's load_weights
    os.remove(os.path.join(out, checkpoints[0], "trainable.safetensors"))
    resume, _ = write_recipe(folder, out, name="resume.yaml", resume_from_checkpoint=os.path.join(out, checkpoints[0]), **common)
    result = run_vlft("_train-toy", resume, "--noise", "0.2")
    assert f"step {step}" in result.stderr
    assert _tensors_equal(out, reference_out)


def test_output_dir_rules():
    folder = tempdir()
    make_toy(folder)
    out = os.path.join(folder, "out")
    os.makedirs(out)
    with open(os.path.join(out, "notes.txt"), "w") as f:
        f.write("keep me")
    recipe, _ = write_recipe(folder, out)
    result = run_vlft("_train-toy", recipe, check=False)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "not empty" in result.stderr and out in result.stderr, result.stderr
    assert os.listdir(out) == ["notes.txt"], "a refused run must not write anything"
    # resume true with no checkpoint: refused too
    resume, _ = write_recipe(folder, out, name="resume.yaml", resume_from_checkpoint=True)
    result = run_vlft("_train-toy", resume, check=False)
    assert result.returncode == 1 and "no complete checkpoint" in result.stderr, result.stderr
    # overwrite_output_dir: runs, replaces the previous run's log and checkpoints
    overwrite, _ = write_recipe(folder, out, name="overwrite.yaml", overwrite_output_dir=True)
    run_vlft("_train-toy", overwrite)
    first_log = read_jsonl(os.path.join(out, "trainer_log.jsonl"))
    run_vlft("_train-toy", overwrite)
    assert len(read_jsonl(os.path.join(out, "trainer_log.jsonl"))) == len(first_log)
    assert os.path.exists(os.path.join(out, "notes.txt"))
    # LLaMA-Factory resumes by itself from the last checkpoint of a non-empty output_dir
    result = run_vlft("_train-toy", recipe)
    assert "resuming from" in result.stderr and "checkpoint-12" in result.stderr


def test_progress_bar_on_a_terminal_and_lines_otherwise():
    import pty
    folder = tempdir()
    make_toy(folder)
    recipe, _ = write_recipe(folder, os.path.join(folder, "out"), logging_steps=4)
    master, slave = pty.openpty()
    process = subprocess.Popen([VLFT, "_train-toy", recipe], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    assert process.wait() == 0
    os.close(master)
    text = b"".join(chunks).decode()
    bars = [part for part in text.split("\r") if "/12 loss" in part]
    assert len(bars) >= 12, text  # one redraw per update
    assert "12/12" in bars[-1] and "samples/s" in bars[-1] and "ETA" in bars[-1] and "lr" in bars[-1]
    # not a terminal: plain lines at each logging step, no carriage returns
    recipe2, _ = write_recipe(folder, os.path.join(folder, "out2"), name="r2.yaml", logging_steps=4)
    result = run_vlft("_train-toy", recipe2)
    assert "\r" not in result.stderr
    steps = [line.split()[1] for line in result.stderr.splitlines() if line.startswith("step ")]
    assert steps == ["4/12", "8/12", "12/12"], result.stderr


def test_resume_refuses_bad_or_mismatched_checkpoints():
    folder = tempdir()
    make_toy(folder)
    out = os.path.join(folder, "out")
    recipe, _ = write_recipe(folder, out, save_steps=4)
    run_vlft("_train-toy", recipe)
    # a half-written checkpoint folder from a killed run is ignored and removed
    stale = os.path.join(out, ".tmp-checkpoint-13.99999")
    os.makedirs(stale)
    resume, _ = write_recipe(folder, out, name="resume.yaml", resume_from_checkpoint=os.path.join(out, "checkpoint-8"))
    run_vlft("_train-toy", resume)
    assert not os.path.exists(stale)
    # another batch size: the data position would mean something else
    other, _ = write_recipe(folder, out, name="other.yaml", per_device_train_batch_size=2,
                            resume_from_checkpoint=os.path.join(out, "checkpoint-8"))
    result = run_vlft("_train-toy", other, check=False)
    assert result.returncode == 1 and "vlft_state.json" in result.stderr and "batch" in result.stderr, result.stderr
    # a damaged state file: one line naming it
    state = os.path.join(out, "checkpoint-8", "vlft_state.json")
    with open(state, "w") as f:
        f.write("{not json")
    result = run_vlft("_train-toy", resume, check=False)
    assert result.returncode == 1 and state in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    # a damaged optimizer state
    with open(os.path.join(out, "checkpoint-12", "optimizer.safetensors"), "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    latest, _ = write_recipe(folder, out, name="latest.yaml", resume_from_checkpoint=True)
    result = run_vlft("_train-toy", latest, check=False)
    assert result.returncode == 1 and "optimizer.safetensors" in result.stderr, result.stderr


def test_eval_each_epoch():
    # 9 micro-batches of 4, accumulation 2 -> updates at micro-batches 2, 4, 6, 8, 9:
    # epochs end at steps 5 and 10; the run stops at 12, inside the third
    folder = tempdir()
    tensors = make_toy(folder)
    out = os.path.join(folder, "out")
    recipe, cfg = write_recipe(folder, out, eval_strategy="epoch")
    run_vlft("_train-toy", recipe)
    with open(os.path.join(out, "trainer_state.json")) as f:
        history = json.load(f)["log_history"]
    evals = [e for e in history if "eval_loss" in e]
    assert [(e["step"], e["epoch"]) for e in evals] == [(5, 1.0), (10, 2.0)], evals
    with open(os.path.join(out, "eval_results.json")) as f:
        final = json.load(f)
    assert abs(final["eval_loss"] - reference_run(tensors, cfg)["eval_loss"]) < 1e-5


def test_val_size_as_a_count():
    folder = tempdir()
    tensors = make_toy(folder, n=30)
    out = os.path.join(folder, "out")
    recipe, cfg = write_recipe(folder, out, val_size=5, seed=3, num_train_epochs=1)
    updates_path = os.path.join(folder, "updates.jsonl")
    run_vlft("_train-toy", recipe, "--updates", updates_path)
    ref = reference_run(tensors, cfg)
    assert ref["n_train"] == 25
    got = read_jsonl(updates_path)
    assert len(got) == len(ref["updates"]) > 0
    assert all(abs(a["loss"] - b["loss"]) < 1e-5 for a, b in zip(got, ref["updates"]))
    with open(os.path.join(out, "eval_results.json")) as f:
        assert abs(json.load(f)["eval_loss"] - ref["eval_loss"]) < 1e-5
