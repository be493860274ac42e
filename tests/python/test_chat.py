"""vlft chat: greedy tokens from the KV-cache decode equal a float64 PyTorch
reference that recomputes the whole forward at every step (no cache), with
and without an image, with a trained LoRA adapter, and with a repetition
penalty; sampling is repeatable by seed; the REPL answers two turns and an
/image command in a terminal (tmux) and exits cleanly on /exit and on EOF."""
import os
import shutil
import subprocess
import time

import numpy as np
import torch

from llava_reference import LlavaReference
from test_train_parity import clip_pixels
from vlft_testing import VLFT, read_safetensors, run_vlft, tempdir

N_NEW = 64
_setup = {}


def setup():
    """The tiny model, a drawn image, and a LoRA adapter from a short training run (made once)."""
    if _setup:
        return _setup
    d = tempdir()
    model, data, out = os.path.join(d, "model"), os.path.join(d, "data"), os.path.join(d, "out")
    run_vlft("init-tiny", model, "--seed", 1)
    run_vlft("demo-data", data, "--n", 8, "--seed", 2)
    images = sorted(os.path.join(data, "images", f) for f in os.listdir(os.path.join(data, "images")))
    recipe = os.path.join(d, "r.yaml")
    settings = dict(model_name_or_path=model, stage="sft", finetuning_type="lora", lora_rank=4, dataset="mllm_demo",
                    dataset_dir=data, template="yi_vl", cutoff_len=512, output_dir=out, logging_steps=1,
                    per_device_train_batch_size=2, gradient_accumulation_steps=1, learning_rate="1.0e-3",
                    max_steps=2, lr_scheduler_type="constant", seed=3, val_size=0)
    with open(recipe, "w") as f:
        for k, v in settings.items():
            f.write(f"{k}: {v}\n")
    run_vlft("train", recipe)
    _setup.update(dir=d, model=model, images=images, adapter=out)
    return _setup


def chat_ids(*args):
    r = run_vlft("chat", "--print-ids", "--max-new-tokens", N_NEW, "--threads", 2, *args)
    lines = dict(line.split(" ", 1) if " " in line else (line, "") for line in r.stdout.strip().splitlines())
    return [int(x) for x in lines["prompt_ids"].split()], [int(x) for x in lines["output_ids"].split()]


def reference_greedy(reference, prompt, pixels, n_new, penalty=1.0, stop=(2,)):
    """Greedy continuation, full recomputation per step (float64), with
    transformers' RepetitionPenaltyLogitsProcessor when penalty != 1."""
    ids = list(prompt)
    out, margins = [], []
    image_token = reference.config["image_token_index"]
    with torch.no_grad():
        features = None
        if pixels is not None:
            features = reference.project(reference.vision_features(torch.tensor(pixels, dtype=reference.dtype)))
            features = features.reshape(-1, features.shape[-1])
        for _ in range(n_new):
            t = torch.tensor([ids], dtype=torch.long)
            x = reference.w("language_model.model.embed_tokens.weight")[t]
            if features is not None:
                x = x.masked_scatter((t == image_token)[..., None].expand_as(x), features)
            logits = reference.language(x, [[1] * len(ids)])
            scores = logits[0, -1].clone()
            if penalty != 1.0:
                seen = torch.tensor(sorted(set(ids)), dtype=torch.long)
                s = scores[seen]
                scores[seen] = torch.where(s < 0, s * penalty, s / penalty)
            top2 = torch.topk(scores, 2).values
            margins.append(float(top2[0] - top2[1]))
            nxt = int(torch.argmax(scores))
            if nxt in stop:
                break
            out.append(nxt)
            ids.append(nxt)
    return out, min(margins)


def check(reference, prompt, out, pixels, penalty=1.0):
    expected, margin = reference_greedy(reference, prompt, pixels, N_NEW, penalty)
    assert len(out) == N_NEW, f"stopped early: {out}"
    assert out == expected, f"vlft {out}\nref  {expected}\n(smallest top-2 margin {margin:.2e})"
    return expected


def test_greedy_equals_reference_without_and_with_image():
    s = setup()
    reference = LlavaReference(s["model"], finetuning_type="none")
    prompt, out = chat_ids("--model", s["model"], "Describe the weather today.")
    assert len(out) == N_NEW and 1000 not in prompt
    check(reference, prompt, out, None)
    # The repetition penalty makes the tiny model's answer vary (plain greedy repeats itself).
    prompt, out = chat_ids("--model", s["model"], "--repetition-penalty", 2.0, "--image", s["images"][0],
                           "What is in the picture?")
    assert prompt.count(1000) == 49, "one image = image_seq_length image tokens"
    pixels = np.stack([clip_pixels(s["images"][0], 112)])
    expected = check(reference, prompt, out, pixels, penalty=2.0)
    assert len(set(expected)) > 50


def test_bf16_chat_follows_the_fp32_answer():
    # bf16 products round every weight and input to 8 bits of mantissa, so the
    # answer may drift from the fp32 one late; the first tokens, whose top-2
    # margins are wide on this model, must agree (the run is deterministic).
    s = setup()
    args = ("--model", s["model"], "--repetition-penalty", 2.0, "--image", s["images"][0], "What is in the picture?")
    prompt32, out32 = chat_ids(*args)
    prompt16, out16 = chat_ids("--bf16", *args)
    assert prompt16 == prompt32 and len(out16) == N_NEW
    assert out16[:8] == out32[:8], f"bf16 {out16}\nfp32 {out32}"
    # ... and bf16 is really in effect: the f32 checkpoint's GEMM weights are
    # converted to owned bf16 copies (2 bytes a value), not used in place.
    def weights(*flags):
        r = run_vlft("chat", "--stats", "--max-new-tokens", 1, "--threads", 2, *flags, "--model", s["model"], "hi")
        line = next(x for x in r.stderr.splitlines() if x.startswith("stats: weights"))
        return [int(x) for x in line.split() if x.isdigit()][:2]
    mapped32, owned32 = weights()
    mapped16, owned16 = weights("--bf16")
    assert owned32 == 0 and mapped32 > 0
    assert owned16 > 0 and owned16 + 2 * mapped16 < mapped32, (mapped16, owned16, mapped32)


def test_greedy_with_trained_adapter_equals_reference():
    s = setup()
    adapter, _ = read_safetensors(os.path.join(s["adapter"], "adapter_model.safetensors"))
    reference = LlavaReference(s["model"], finetuning_type="lora", lora_rank=4, adapter=adapter)
    pixels = np.stack([clip_pixels(s["images"][1], 112)])
    args = ["--repetition-penalty", 1.5, "--image", s["images"][1], "Who drew this?"]
    prompt, out = chat_ids("--model", s["model"], "--adapter", s["adapter"], *args)
    expected = check(reference, prompt, out, pixels, 1.5)
    assert len(set(expected)) > 30
    # The adapter changes the answer (so the check above is about the adapter).
    _, plain = chat_ids("--model", s["model"], *args)
    assert plain != out


def test_sampling_is_repeatable_by_seed_and_varies_with_it():
    s = setup()
    args = ["--model", s["model"], "--do-sample", "--temperature", 1.5, "--top-k", 40, "--top-p", 0.95]
    _, a = chat_ids(*args, "--seed", 7, "Tell me a story.")
    _, b = chat_ids(*args, "--seed", 7, "Tell me a story.")
    _, c = chat_ids(*args, "--seed", 8, "Tell me a story.")
    assert a == b and a != c


def test_bad_inputs_fail_with_one_line():
    s = setup()
    for args, fragment in [(["--model", os.path.join(s["dir"], "nowhere"), "hi"], "nowhere"),
                           (["--model", s["model"], "--image", os.path.join(s["dir"], "missing.png"), "hi"], "missing.png"),
                           (["--model", s["model"], "--template", "nope", "hi"], "nope"),
                           (["--model", s["model"], "--adapter", s["model"], "hi"], "adapter_config.json")]:
        r = run_vlft("chat", *args, check=False)
        assert r.returncode == 1, (args, r.returncode, r.stderr)
        assert fragment in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def _tmux(*args):
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


def _wait_for(session, predicate, timeout=60):
    end = time.time() + timeout
    screen = ""
    while time.time() < end:
        screen = _tmux("capture-pane", "-p", "-t", session, "-S", "-200")
        if predicate(screen):
            return screen
        time.sleep(0.2)
    raise AssertionError("timed out; screen:\n" + screen)


def _run_repl(d, s, name, finish):
    session = f"vlft-chat-{os.getpid()}-{name}"
    status = os.path.join(d, f"{name}.status")
    socket = ["-L", session]
    cmd = (f"{VLFT} chat --model {s['model']} --max-new-tokens 12 --threads 2; echo EXIT=$? > {status}; sleep 30")
    subprocess.run(["tmux", *socket, "new-session", "-d", "-s", session, "-x", "200", "-y", "50", cmd], check=True)
    try:
        def t(*a):
            return _tmux(*socket, *a)

        def wait(pred):
            end = time.time() + 60
            while time.time() < end:
                screen = t("capture-pane", "-p", "-t", session, "-S", "-500")
                if pred(screen):
                    return screen
                time.sleep(0.2)
            raise AssertionError("timed out; screen:\n" + screen)

        wait(lambda sc: sc.count("User:") == 1)
        t("send-keys", "-t", session, "-l", "Hello, who are you?")
        t("send-keys", "-t", session, "Enter")
        wait(lambda sc: sc.count("User:") == 2)
        t("send-keys", "-t", session, "-l", f"/image {s['images'][0]}")
        t("send-keys", "-t", session, "Enter")
        wait(lambda sc: "image attached" in sc and sc.count("User:") == 3)
        t("send-keys", "-t", session, "-l", "And what is this?")
        t("send-keys", "-t", session, "Enter")
        screen = wait(lambda sc: sc.count("User:") == 4)
        t("send-keys", "-t", session, "-l", "/reset")
        t("send-keys", "-t", session, "Enter")
        wait(lambda sc: "history cleared" in sc and sc.count("User:") == 5)
        finish(t, session)
        end = time.time() + 30
        while not os.path.exists(status) and time.time() < end:
            time.sleep(0.2)
        assert os.path.exists(status), "vlft chat did not exit"
        with open(status) as f:
            assert f.read().strip() == "EXIT=0"
        answers = [line for line in screen.splitlines() if line.startswith("Assistant: ")]
        assert len(answers) == 2, screen
        assert all(len(a) > len("Assistant: ") for a in answers), screen
        assert "error" not in screen, screen
        return screen
    finally:
        subprocess.run(["tmux", *socket, "kill-server"], capture_output=True)


def test_repl_in_tmux_two_turns_image_and_clean_exit():
    if shutil.which("tmux") is None:
        raise AssertionError("tmux is not installed (apt-get install tmux)")
    s = setup()
    d = tempdir()

    def by_exit(t, session):
        t("send-keys", "-t", session, "-l", "/exit")
        t("send-keys", "-t", session, "Enter")

    def by_eof(t, session):
        t("send-keys", "-t", session, "C-d")

    _run_repl(d, s, "exit", by_exit)
    _run_repl(d, s, "eof", by_eof)


def test_peft_adapter_on_tower_and_language_model_equals_reference():
    """An adapter as PEFT writes it (full module paths, one in the vision tower)."""
    from test_export import make_adapter
    s = setup()
    folder = os.path.join(tempdir(), "peft")
    targets = ["vision_tower.vision_model.encoder.layers.0.self_attn.q_proj",
               "language_model.model.layers.1.mlp.down_proj", "language_model.model.layers.3.self_attn.v_proj"]
    tensors = make_adapter(s["model"], folder, rank=4, alpha=8, targets=targets)
    reference = LlavaReference(s["model"], finetuning_type="lora", lora_rank=4, lora_alpha=8,
                               lora_target=",".join(targets), freeze_vision_tower=False, adapter=tensors)
    pixels = np.stack([clip_pixels(s["images"][2], 112)])
    prompt, out = chat_ids("--model", s["model"], "--adapter", folder, "--repetition-penalty", 2.0,
                           "--image", s["images"][2], "Look.")
    check(reference, prompt, out, pixels, penalty=2.0)
    _, base_out = chat_ids("--model", s["model"], "--repetition-penalty", 2.0, "--image", s["images"][2], "Look.")
    assert base_out != out


def test_prompt_is_the_training_encoding_of_the_same_turn():
    """The first turn's prompt (with its image) is exactly the prompt part of
    the same conversation as `vlft train` encodes it (the dataset encoding is
    checked against LLaMA-Factory elsewhere): same ids, and the answer's
    labels start right after it."""
    import json
    s = setup()
    data = os.path.join(s["dir"], "data")
    with open(os.path.join(data, "mllm_demo.json")) as f:
        row = json.load(f)[0]
    user = row["messages"][0]["content"]
    assert user.startswith("<image>")
    recipe = os.path.join(tempdir(), "r.yaml")
    with open(recipe, "w") as f:
        f.write(f"model_name_or_path: {s['model']}\nstage: sft\nfinetuning_type: lora\ndataset: mllm_demo\n"
                f"dataset_dir: {data}\ntemplate: yi_vl\ncutoff_len: 1024\noutput_dir: {tempdir()}/o\n"
                f"val_size: 0\nmax_samples: 1\n")
    dumped = [json.loads(line) for line in run_vlft("data", "dump", recipe).stdout.splitlines() if line.startswith("{")]
    sample = dumped[0]
    image = os.path.join(data, row["images"][0])
    prompt, _ = chat_ids("--model", s["model"], "--image", image, "--max-new-tokens", 1, user[len("<image>"):])
    n = len(prompt)
    assert sample["input_ids"][:n] == prompt
    # (yi_vl is efficient_eos: the first prompt label is EOS, never used after the shift)
    assert all(label == -100 for label in sample["labels"][1:n]) and sample["labels"][n] != -100


def test_second_turn_reuses_the_cache_and_equals_reference():
    """Turn 2 (history + an image attached with /image) prefills only what
    follows the cached conversation; its greedy tokens still equal the
    reference's full recomputation of the whole turn-2 prompt."""
    s = setup()
    script = f"Hello there.\n/image {s['images'][3]}\nAnd now?\n/exit\n"
    r = subprocess.run([VLFT, "chat", "--model", s["model"], "--print-ids", "--stats", "--max-new-tokens", "24",
                        "--repetition-penalty", "2.0", "--threads", "2"], input=script, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()  # the REPL's "User: Assistant: " prompts precede the id lines
    prompts = [[int(x) for x in line.split("prompt_ids")[1].split()] for line in lines if "prompt_ids" in line]
    outputs = [[int(x) for x in line.split("output_ids")[1].split()] for line in lines if "output_ids" in line]
    assert len(prompts) == 2 and len(outputs) == 2
    assert prompts[1][:len(prompts[0])] == prompts[0] and prompts[1].count(1000) == 49
    reused = [int(x) for x in __import__("re").findall(r"(\d+) reused from the cache", r.stderr)]
    assert reused[0] == 0 and reused[1] >= len(prompts[0]), r.stderr
    reference = LlavaReference(s["model"], finetuning_type="none")
    pixels = np.stack([clip_pixels(s["images"][3], 112)])
    expected, _ = reference_greedy(reference, prompts[1], pixels, 24, 2.0)
    assert outputs[1] == expected
