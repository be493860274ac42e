"""`mpirun -np 2 vlft train`: data parallel training equals one process
accumulating over the same micro-batches, for every ZeRO stage; a killed rank
ends the job and the run resumes on one process."""
import json
import os
import re
import subprocess
import time

import numpy as np

from vlft_testing import VLFT, read_safetensors, run_vlft, tempdir

MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--mca", "btl", "self,vader", "-np"]
# OpenMPI never frees its start-up allocations and unloads its plugins, so
# LeakSanitizer (build-asan) cannot even name them: leak checks stay on for
# every single-process run, off only in processes mpirun starts.
MPI_ENV = dict(os.environ, LSAN_OPTIONS="detect_leaks=0")

# LLaMA-Factory's examples/deepspeed/ds_z3_config.json (d8a5571), as recipes name it
DS_Z3 = {
    "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto", "zero_allow_untested_optimizer": True,
    "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16,
             "hysteresis": 2, "min_loss_scale": 1},
    "bf16": {"enabled": "auto"},
    "zero_optimization": {"stage": 3, "overlap_comm": False, "contiguous_gradients": True,
                          "sub_group_size": 1e9, "reduce_bucket_size": "auto",
                          "stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto",
                          "stage3_max_live_parameters": 1e9, "stage3_max_reuse_distance": 1e9,
                          "stage3_gather_16bit_weights_on_model_save": True},
}


def write_recipe(path, **settings):
    with open(path, "w") as f:
        for k, v in settings.items():
            f.write(f"{k}: {v}\n")


def setup(n_samples):
    d = tempdir()
    model, data = os.path.join(d, "model"), os.path.join(d, "data")
    run_vlft("init-tiny", model, "--seed", 1)
    run_vlft("demo-data", data, "--n", n_samples, "--seed", 2)
    return d, model, data


def settings(model, data, out, accum, steps, save_steps):
    # threads: 1 so that 2 ranks use the 2 cores and every matmul sums in the same order
    return dict(model_name_or_path=model, stage="sft", finetuning_type="lora", lora_rank=4, dataset="mllm_demo",
                dataset_dir=data, template="yi_vl", cutoff_len=512, output_dir=out, logging_steps=1,
                save_steps=save_steps, per_device_train_batch_size=1, gradient_accumulation_steps=accum,
                learning_rate="5.0e-3", max_steps=steps, lr_scheduler_type="cosine", warmup_ratio=0.1, seed=3,
                val_size=0, threads=1, max_grad_norm=1.0, weight_decay=0.01)


def mpirun_train(recipe, ranks=2):
    return subprocess.run(MPIRUN + [str(ranks), VLFT, "train", recipe], capture_output=True, text=True, timeout=300, env=MPI_ENV)


def worst_relative(a, b):
    assert sorted(a) == sorted(b)
    return max(float(np.abs(a[k] - b[k]).max() / max(np.abs(a[k]).max(), 1e-30)) for k in a)


def losses(out):
    with open(os.path.join(out, "trainer_log.jsonl")) as f:
        return [row["loss"] for row in map(json.loads, f) if "loss" in row]


def moments_bytes(stderr):
    m = re.search(r"memory per rank \((\d+) ranks?, ZeRO stage (\d)\): optimizer moments (\d+) bytes, "
                  r"fp32 trainable values (\d+)", stderr)
    assert m, stderr
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4))


def test_two_ranks_equal_one_process_accumulating_two_for_every_zero_stage():
    d, model, data = setup(16)
    single = os.path.join(d, "single")
    write_recipe(os.path.join(d, "single.yaml"), **settings(model, data, single, 2, 10, 5))
    r = run_vlft("train", os.path.join(d, "single.yaml"))
    _, _, single_moments, values = moments_bytes(r.stderr)
    assert single_moments == 2 * values  # exp_avg + exp_avg_sq, fp32
    reference, _ = read_safetensors(os.path.join(single, "checkpoint-10", "trainable.safetensors"))
    reference_state, _ = read_safetensors(os.path.join(single, "checkpoint-10", "optimizer.safetensors"))
    with open(os.path.join(d, "ds_z3_config.json"), "w") as f:
        json.dump(DS_Z3, f)
    for stage in range(4):
        out = os.path.join(d, f"z{stage}")
        s = settings(model, data, out, 1, 10, 5)
        if stage == 3:
            s["deepspeed"] = os.path.join(d, "ds_z3_config.json")  # the stage read from the DeepSpeed file
        else:
            s["zero_stage"] = stage
        recipe = os.path.join(d, f"z{stage}.yaml")
        write_recipe(recipe, **s)
        r = mpirun_train(recipe)
        assert r.returncode == 0, r.stdout + r.stderr
        ranks, read_stage, moments, _ = moments_bytes(r.stderr)
        assert (ranks, read_stage) == (2, stage)
        # the moments are split in two from stage 1 on (the trainable values are padded to an even count)
        expected = single_moments if stage == 0 else 2 * 4 * ((values // 4 + 1) // 2)
        assert moments == expected, (stage, moments, single_moments)
        assert r.stderr.count("training:") == 1, "only rank 0 prints progress"
        trained, _ = read_safetensors(os.path.join(out, "checkpoint-10", "trainable.safetensors"))
        assert worst_relative(trained, reference) <= 1e-6, stage
        # the checkpoint's optimizer state is the full one, whatever the ranks
        state, meta = read_safetensors(os.path.join(out, "checkpoint-10", "optimizer.safetensors"))
        assert meta["step"] == "10"
        assert worst_relative(state, reference_state) <= 1e-6, stage
        assert np.allclose(losses(out), losses(single), rtol=0, atol=1e-4)
        assert len(losses(out)) == 10


def child_pids(parent):
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == parent:
                    pids.append(int(name))
            except OSError:
                pass
    return pids


def rank_of(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        for item in f.read().split(b"\0"):
            if item.startswith(b"OMPI_COMM_WORLD_RANK="):
                return int(item.split(b"=")[1])
    return None


def test_killed_rank_ends_the_job_and_one_process_resumes():
    d, model, data = setup(12)
    steps = 16
    reference_out = os.path.join(d, "reference")
    write_recipe(os.path.join(d, "reference.yaml"), **settings(model, data, reference_out, 2, steps, 4))
    run_vlft("train", os.path.join(d, "reference.yaml"))
    reference, _ = read_safetensors(os.path.join(reference_out, "trainable.safetensors")
                                    if os.path.exists(os.path.join(reference_out, "trainable.safetensors"))
                                    else os.path.join(reference_out, f"checkpoint-{steps}", "trainable.safetensors"))

    out = os.path.join(d, "killed")
    s = settings(model, data, out, 1, steps, 4)
    s["zero_stage"] = 3
    write_recipe(os.path.join(d, "killed.yaml"), **s)
    job = subprocess.Popen(MPIRUN + ["2", VLFT, "train", os.path.join(d, "killed.yaml")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=MPI_ENV)
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(out, "checkpoint-4", "vlft_state.json")) and time.time() < deadline:
        time.sleep(0.05)
    ranks = {rank_of(p): p for p in child_pids(job.pid)}
    assert set(ranks) == {0, 1}, ranks
    os.kill(ranks[1], 9)
    _, stderr = job.communicate(timeout=120)
    assert job.returncode != 0
    assert "rank 1" in stderr and "signal 9" in stderr, stderr
    assert not os.path.exists(os.path.join(out, f"checkpoint-{steps}")), "the kill came too late"
    for pid in ranks.values():  # every rank is gone
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    # the checkpoints left are complete
    saved = sorted(int(n.split("-")[1]) for n in os.listdir(out) if n.startswith("checkpoint-"))
    assert saved and all(not n.startswith(".tmp") for n in os.listdir(out) if n.startswith("checkpoint"))
    for step in saved:
        files = os.listdir(os.path.join(out, f"checkpoint-{step}"))
        assert {"trainable.safetensors", "optimizer.safetensors", "vlft_state.json"} <= set(files), files

    # one process, accumulating what the two ranks did together, continues from the latest checkpoint
    s = settings(model, data, out, 2, steps, 4)
    write_recipe(os.path.join(d, "resume.yaml"), **s)
    r = run_vlft("train", os.path.join(d, "resume.yaml"))
    assert f"checkpoint-{saved[-1]}" in r.stderr, r.stderr
    resumed, _ = read_safetensors(os.path.join(out, f"checkpoint-{steps}", "trainable.safetensors"))
    final, _ = read_safetensors(os.path.join(reference_out, f"checkpoint-{steps}", "trainable.safetensors"))
    assert worst_relative(resumed, final) <= 1e-6
    assert worst_relative(reference, final) == 0


def test_bad_deepspeed_config_is_one_line():
    d, model, data = setup(4)
    ds = os.path.join(d, "ds.json")
    with open(ds, "w") as f:
        json.dump({"zero_optimization": {"stage": 5}}, f)
    s = settings(model, data, os.path.join(d, "out"), 1, 2, 1)
    s["deepspeed"] = ds
    write_recipe(os.path.join(d, "bad.yaml"), **s)
    r = run_vlft("train", os.path.join(d, "bad.yaml"), check=False)
    assert r.returncode == 1
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "ds.json" in lines[0] and "stage" in lines[0], r.stderr


def memory_line(stderr):
    m = re.search(r"memory per rank \((\d+) ranks?, ZeRO stage (\d)\): optimizer moments (\d+) bytes, "
                  r"fp32 trainable values (\d+) bytes, grads (\d+) bytes, total (\d+) bytes", stderr)
    assert m, stderr
    ranks, stage, moments, values, grads, total = map(int, m.groups())
    assert total == moments + values + grads
    peak = re.search(r"peak memory per rank: resident \(VmHWM\) ([\d, ]+) bytes; ZeRO's transient "
                     r"buffers \(gathered layers, gradient buckets\) at most (\d+) bytes", stderr)
    assert peak, stderr
    vmhwm = [int(v) for v in peak.group(1).split(",")]
    assert len(vmhwm) == ranks and min(vmhwm) > 0
    return dict(ranks=ranks, stage=stage, moments=moments, values=values, grads=grads, total=total,
                vmhwm=vmhwm, transient=int(peak.group(2)))


def test_zero3_full_finetuning_halves_memory_per_rank_and_equals_one_process():
    # full fine-tuning of everything (vision tower and projector too), some samples without an image (a rank
    # whose batch has none still takes its part in the vision layers' gathers and reductions)
    d, model, data = setup(12)
    with open(os.path.join(data, "mllm_demo.json")) as f:
        samples = json.load(f)
    for k in range(1, len(samples), 3):
        samples[k]["images"] = []
        for message in samples[k]["messages"]:
            message["content"] = message["content"].replace("<image>", "")
    with open(os.path.join(data, "mllm_demo.json"), "w") as f:
        json.dump(samples, f)
    full = dict(finetuning_type="full", learning_rate="1.0e-4", freeze_vision_tower="false",
                freeze_multi_modal_projector="false")
    single = os.path.join(d, "single")
    write_recipe(os.path.join(d, "single.yaml"), **{**settings(model, data, single, 2, 6, 6), **full})
    one = memory_line(run_vlft("train", os.path.join(d, "single.yaml")).stderr)
    out = os.path.join(d, "z3")
    write_recipe(os.path.join(d, "z3.yaml"), **{**settings(model, data, out, 1, 6, 6), **full, "zero_stage": 3})
    r = mpirun_train(os.path.join(d, "z3.yaml"))
    assert r.returncode == 0, r.stdout + r.stderr
    two = memory_line(r.stderr)
    assert (one["ranks"], one["stage"], two["ranks"], two["stage"]) == (1, 0, 2, 3)
    # values + grads + moments per rank: about half of one process's (each rank owns half of every tensor)
    assert two["total"] <= 0.55 * one["total"], (two, one)
    assert two["values"] <= 0.55 * one["values"] and two["grads"] <= 0.55 * one["grads"], (two, one)
    # what a layer gathers while it runs stays well below the model's full values and grads
    assert 0 < two["transient"] < 0.5 * (one["values"] + one["grads"]), (two, one)
    print(f"  full fine-tuning, tiny model: 1 rank {one}; 2 ranks ZeRO-3 {two}")
    trained, _ = read_safetensors(os.path.join(out, "checkpoint-6", "trainable.safetensors"))
    reference, _ = read_safetensors(os.path.join(single, "checkpoint-6", "trainable.safetensors"))
    assert worst_relative(trained, reference) <= 1e-6
    assert np.allclose(losses(out), losses(single), rtol=0, atol=1e-4)
    # one process at stage 3 (gathers are copies, a reduce-scatter per micro-batch adds up in the shard)
    alone = os.path.join(d, "alone")
    write_recipe(os.path.join(d, "alone.yaml"), **{**settings(model, data, alone, 2, 6, 6), **full, "zero_stage": 3})
    assert memory_line(run_vlft("train", os.path.join(d, "alone.yaml")).stderr)["total"] == one["total"]
    trained, _ = read_safetensors(os.path.join(alone, "checkpoint-6", "trainable.safetensors"))
    assert worst_relative(trained, reference) <= 1e-6
