"""Golden tests for the text pipeline: `vlft data dump` must give the
input_ids / labels / image lists that LLaMA-Factory (pinned commit) computes.
The expected arrays are computed here independently: python3-sentencepiece
for the ids, and a short restatement of LLaMA-Factory's template, mm_plugin,
supervised processor, converter and split rules."""
import json
import math
import os

import numpy as np
import sentencepiece as spm
from PIL import Image

from vlft_testing import ROOT, run_vlft, tempdir

IGNORE = -100
YI_SYSTEM = ("This is a chat between an inquisitive human and an AI assistant. "
             "Assume the role of the AI assistant. Read all the images carefully, "
             "and respond to the human's questions with informative, helpful, detailed and polite answers. "
             "这是一个好奇的人类和一个人工智能助手之间的对话。假设你扮演这个AI助手的角色。"
             "仔细阅读所有的图像，并对人类的问题做出信息丰富、有帮助、详细的和礼貌的回答。\n\n")
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
# name: (user slots, assistant slots, system slots, default system, stop words, efficient_eos, llava plugin)
TEMPLATES = {
    "yi_vl": (["### Human: {{content}}\n### Assistant:"], ["{{content}}\n"], ["{{content}}"], YI_SYSTEM, ["###"], True, True),
    "llava": (["USER: {{content}} ASSISTANT:"], ["{{content}}", "EOS"], ["{{content}}"], VICUNA_SYSTEM, [], False, True),
    "vicuna": (["USER: {{content}} ASSISTANT:"], ["{{content}}", "EOS"], ["{{content}}"], VICUNA_SYSTEM, [], False, False),
    "default": (["Human: {{content}}", "EOS", "\nAssistant:"], ["{{content}}", "EOS", "\n"],
                ["System: {{content}}", "EOS", "\n"], "", [], False, False),
    "alpaca": (["### Instruction:\n{{content}}\n\n### Response:\n"], ["{{content}}", "EOS", "\n\n"], ["{{content}}"],
               "Below is an instruction that describes a task. Write a response that appropriately completes the "
               "request.\n\n", [], False, False),
    "empty": (["{{content}}"], ["{{content}}"], ["{{content}}"], "", [], False, False),
}
IMAGE_SEQ = 49  # the tiny model: (112 / 16)^2


class RefTokenizer:
    """The slow-tokenizer view: added tokens split out, sentencepiece between."""

    def __init__(self, model_dir, stop_words):
        self.sp = spm.SentencePieceProcessor(model_file=os.path.join(model_dir, "tokenizer.model"))
        self.added = {"<unk>": 0, "<|startoftext|>": 1, "<|endoftext|>": 2, "<image>": 1000}
        for word in stop_words:  # add_special_tokens: existing piece keeps its id, else a new one
            pid = self.sp.piece_to_id(word)
            self.added[word] = pid if pid != self.sp.unk_id() else max(self.added.values()) + 1
        self.eos = 2

    def encode(self, text):
        ids, pos = [], 0
        while pos < len(text):
            hits = [(text.find(a, pos), -len(a), a) for a in self.added if text.find(a, pos) >= 0]
            if not hits:
                ids += self.sp.encode(text[pos:])
                break
            start, _, token = min(hits)
            if start > pos:
                ids += self.sp.encode(text[pos:start])
            ids.append(self.added[token])
            pos = start + len(token)
        return ids


def apply_slots(slots, content, tok):
    ids = []
    for slot in slots:
        if slot == "EOS":
            ids.append(tok.eos)
        else:
            text = slot.replace("{{content}}", content, 1)
            if text:
                ids += tok.encode(text)
    return ids


def infer_seqlen(source_len, target_len, cutoff_len):
    if target_len * 2 < cutoff_len:
        max_target = cutoff_len
    elif source_len * 2 < cutoff_len:
        max_target = cutoff_len - source_len
    else:
        max_target = int(cutoff_len * (target_len / (source_len + target_len)))
    new_target = min(max_target, target_len)
    new_source = min(max(cutoff_len - new_target, 0), source_len)
    return new_source, new_target


def reference_example(messages, system, images, template, tok, cutoff, train_on_prompt=False, mask_history=False):
    user, assistant, system_slots, default_system, _, efficient_eos, llava = TEMPLATES[template]
    count = sum(m["content"].count("<image>") for m in messages)
    assert count == len(images)
    if llava:
        messages = [dict(m, content=m["content"].replace("<image>", "<image>" * IMAGE_SEQ)) for m in messages]
    system = system or default_system
    encoded = []
    for i, m in enumerate(messages):
        ids = []
        if i == 0 and system:
            ids += apply_slots(system_slots, system, tok)
        ids += apply_slots(user if m["role"] == "user" else assistant, m["content"], tok)
        encoded.append(ids)
    pairs = [(encoded[i], encoded[i + 1]) for i in range(0, len(encoded), 2)]
    if mask_history:
        pairs = pairs[::-1]
    input_ids, labels = [], []
    total = 1 if efficient_eos else 0
    for turn, (source, target) in enumerate(pairs):
        if total >= cutoff:
            break
        s_len, t_len = infer_seqlen(len(source), len(target), cutoff - total)
        source, target = source[:s_len], target[:t_len]
        total += s_len + t_len
        if train_on_prompt:
            source_label = source
        elif efficient_eos:
            source_label = [tok.eos] + [IGNORE] * (s_len - 1)
        else:
            source_label = [IGNORE] * s_len
        target_label = [IGNORE] * t_len if mask_history and turn != 0 else target
        if mask_history:
            input_ids = source + target + input_ids
            labels = source_label + target_label + labels
        else:
            input_ids += source + target
            labels += source_label + target_label
    if efficient_eos:
        input_ids.append(tok.eos)
        labels.append(tok.eos)
    return input_ids, labels


_TINY_MODEL = []


def tiny_model():
    """One tiny model (with its tokenizer files) shared by every test here."""
    if not _TINY_MODEL:
        path = os.path.join(tempdir(), "model")
        run_vlft("init-tiny", path)
        _TINY_MODEL.append(path)
    return _TINY_MODEL[0]


def make_world(rows, template, fmt="sharegpt", extra_recipe="", columns=None, n_images=4):
    """A tiny model, a dataset folder with images, a recipe; returns paths."""
    root = tempdir()
    model = tiny_model()
    data = os.path.join(root, "data")
    os.makedirs(os.path.join(data, "imgs"))
    for i in range(n_images):
        Image.new("RGB", (20 + i, 16), (i * 40, 100, 200)).save(os.path.join(data, "imgs", f"{i}.png"))
    if columns is None:
        columns = ({"columns": {"messages": "messages", "images": "images"},
                    "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                             "system_tag": "system"}}
                   if fmt == "sharegpt" else {"columns": {"prompt": "instruction", "query": "input", "response": "output",
                                                          "system": "system", "history": "history", "images": "images"}})
    info = {"demo": dict({"file_name": "demo.json", "formatting": fmt}, **columns)}
    with open(os.path.join(data, "dataset_info.json"), "w") as f:
        json.dump(info, f)
    with open(os.path.join(data, "demo.json"), "w") as f:
        json.dump(rows, f, ensure_ascii=False)
    recipe = os.path.join(root, "recipe.yaml")
    with open(recipe, "w") as f:
        f.write(f"model_name_or_path: {model}\nstage: sft\ndo_train: true\nfinetuning_type: lora\n"
                f"dataset: demo\ndataset_dir: {data}\ntemplate: {template}\noutput_dir: {root}/out\n{extra_recipe}")
    return model, data, recipe


def dump(recipe):
    out = run_vlft("data", "dump", recipe)
    return [json.loads(line) for line in out.stdout.splitlines()]


def demo_rows():
    return [
        {"messages": [{"role": "user", "content": "<image>What shape is in the image?"},
                      {"role": "assistant", "content": "There is one red circle at the top left on a white background."},
                      {"role": "user", "content": "How many squares are there? <image>"},
                      {"role": "assistant", "content": "Three. 你好 😀"},
                      {"role": "user", "content": "What colour is the triangle?"},
                      {"role": "assistant", "content": "It is blue.  ### done"}],
         "images": ["imgs/0.png", "imgs/1.png"]},
        {"messages": [{"role": "system", "content": "You are terse."},
                      {"role": "user", "content": "<image><image>Compare   them.\n\tNow."},
                      {"role": "assistant", "content": "The left one is bigger: 12345 px."}],
         "images": ["imgs/2.png", "imgs/3.png"]},
        {"messages": [{"role": "user", "content": "No image here, just text."},
                      {"role": "assistant", "content": "Fine."}], "images": []},
    ]


def check(template, rows, extra="", train_on_prompt=False, mask_history=False, cutoff=2048):
    model, data, recipe = make_world(rows, template, extra_recipe=extra)
    got = dump(recipe)
    tok = RefTokenizer(model, TEMPLATES[template][4])
    assert len(got) == len(rows)
    for sample, row in zip(got, rows):
        messages = row["messages"]
        system = ""
        if messages[0]["role"] == "system":
            system, messages = messages[0]["content"], messages[1:]
        ids, labels = reference_example(messages, system, row["images"], template, tok, cutoff, train_on_prompt,
                                        mask_history)
        assert sample["input_ids"] == ids, f"{template}: input_ids differ\n vlft {sample['input_ids']}\n ref  {ids}"
        assert sample["labels"] == labels, f"{template}: labels differ\n vlft {sample['labels']}\n ref  {labels}"
        assert sample["images"] == [os.path.join(data, p) for p in row["images"]]
        assert sample["input_ids"].count(1000) == IMAGE_SEQ * len(row["images"])


def test_yi_vl_multiturn_multi_image():
    check("yi_vl", demo_rows())


def test_llava_multiturn_multi_image():
    check("llava", demo_rows())


def test_text_templates():
    rows = [r for r in demo_rows() if not r["images"]]
    for template in ("vicuna", "default", "alpaca", "empty"):
        check(template, rows)


def test_train_on_prompt_and_mask_history():
    check("llava", demo_rows(), "train_on_prompt: true\n", train_on_prompt=True)
    check("llava", demo_rows(), "mask_history: true\n", mask_history=True)
    check("yi_vl", demo_rows(), "mask_history: true\n", mask_history=True)


def text_rows():
    return [{"messages": [{"role": "user", "content": "What shape is in the image? " * k},
                          {"role": "assistant", "content": "There is one red circle at the top left. " * (4 - k)},
                          {"role": "user", "content": "How many squares are there?"},
                          {"role": "assistant", "content": "Three. " * k + "你好"}], "images": []} for k in (1, 2, 3)]


def test_cutoff_len_truncation():
    for cutoff in (3, 7, 20, 40, 60, 130):
        check("yi_vl", text_rows(), f"cutoff_len: {cutoff}\n", cutoff=cutoff)
        check("llava", text_rows(), f"cutoff_len: {cutoff}\nmask_history: true\n", mask_history=True, cutoff=cutoff)
    check("yi_vl", demo_rows(), "cutoff_len: 400\n", cutoff=400)  # all image tokens fit


def test_cutoff_through_image_tokens_is_an_error():
    model, data, recipe = make_world(demo_rows(), "yi_vl", extra_recipe="cutoff_len: 60\n")
    out = run_vlft("data", "dump", recipe, check=False)
    assert out.returncode == 1 and "sample 0" in out.stderr and "cutoff_len 60" in out.stderr, out.stderr


def test_image_count_mismatch_is_an_error():
    rows = demo_rows()
    rows[1]["images"] = ["imgs/2.png"]
    model, data, recipe = make_world(rows, "llava")
    out = run_vlft("data", "dump", recipe, check=False)
    assert out.returncode == 1 and "sample 1: 2 <image> tokens in the messages but 1 images" in out.stderr, out.stderr


def test_missing_image_is_an_error_naming_sample_and_path():
    rows = demo_rows()
    rows[0]["images"][1] = "imgs/nope.png"
    model, data, recipe = make_world(rows, "yi_vl")
    out = run_vlft("data", "dump", recipe, check=False)
    assert out.returncode == 1 and "sample 0" in out.stderr and "imgs/nope.png" in out.stderr, out.stderr


def test_dataset_list_and_preview():
    model, data, recipe = make_world(demo_rows(), "yi_vl")
    with open(os.path.join(data, "dataset_info.json")) as f:
        info = json.load(f)
    info["again"] = dict(info["demo"])
    with open(os.path.join(data, "dataset_info.json"), "w") as f:
        json.dump(info, f)
    text = open(recipe).read().replace("dataset: demo", "dataset: demo, again")
    with open(recipe, "w") as f:
        f.write(text)
    got = dump(recipe)
    assert len(got) == 6 and got[:3] == got[3:]
    out = run_vlft("data", "preview", recipe, "--n", "2").stdout
    assert out.count("training example") == 2 and "### Human:" in out and "input_ids:" in out and "labels:" in out
    assert "There is one red circle at the top left on a white background." in out


def test_val_size_split_matches_datasets_train_test_split():
    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                          {"role": "assistant", "content": f"Answer {i}."}], "images": []} for i in range(37)]
    for val_size, seed in ((0.1, 42), (0.3, 7), (5, 42)):
        model, data, recipe = make_world(rows, "vicuna", extra_recipe=f"val_size: {val_size}\nseed: {seed}\n")
        got = dump(recipe)
        tok = RefTokenizer(model, [])
        expected = [reference_example(r["messages"], "", [], "vicuna", tok, 2048)[0] for r in rows]
        n_test = int(val_size) if val_size > 1 else math.ceil(val_size * len(rows))
        perm = np.random.default_rng(seed).permutation(len(rows))
        want_eval = [expected[i] for i in perm[:n_test]]
        want_train = [expected[i] for i in perm[n_test:]]
        assert [s["input_ids"] for s in got if s["split"] == "eval"] == want_eval
        assert [s["input_ids"] for s in got if s["split"] == "train"] == want_train


def test_alpaca_format_and_max_samples():
    rows = [{"instruction": "Describe <image>", "input": "briefly", "output": "A red star.", "system": "",
             "history": [["Hi", "Hello!"]], "images": ["imgs/0.png"]},
            {"instruction": "Count.", "input": "<image>", "output": "Five.", "images": ["imgs/1.png"]},
            {"instruction": "No answer here", "input": "", "output": None},
            {"instruction": "Never read", "output": "x"}]
    model, data, recipe = make_world(rows, "llava", fmt="alpaca", extra_recipe="max_samples: 3\n")
    out = run_vlft("data", "dump", recipe)
    got = [json.loads(line) for line in out.stdout.splitlines()]
    assert "dropped 1 of 3" in out.stderr, out.stderr
    tok = RefTokenizer(model, [])
    assert len(got) == 2  # row 2 has no answer (dropped), row 3 is past max_samples
    first = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
             {"role": "user", "content": "Describe <image>\nbriefly"}, {"role": "assistant", "content": "A red star."}]
    second = [{"role": "user", "content": "Count.\n<image>"}, {"role": "assistant", "content": "Five."}]
    for sample, messages in zip(got, (first, second)):
        ids, labels = reference_example(messages, "", ["x"], "llava", tok, 2048)
        assert sample["input_ids"] == ids and sample["labels"] == labels


def test_sharegpt_without_system_tag_drops_system_turns():
    """With "tags" given, unnamed tags are None (LLaMA-Factory's DatasetAttr):
    a leading system message then breaks the role order and the row is dropped."""
    rows = demo_rows()
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
    model, data, recipe = make_world(rows, "yi_vl", columns={"columns": {"messages": "messages", "images": "images"},
                                                              "tags": tags})
    out = run_vlft("data", "dump", recipe)
    assert len(out.stdout.splitlines()) == 2 and "dropped 1 of 3" in out.stderr


def test_eval_dataset_is_the_eval_list():
    model, data, recipe = make_world(demo_rows(), "llava", extra_recipe="eval_dataset: held_out\n")
    with open(os.path.join(data, "dataset_info.json")) as f:
        info = json.load(f)
    info["held_out"] = dict(info["demo"], file_name="held_out.jsonl")
    with open(os.path.join(data, "dataset_info.json"), "w") as f:
        json.dump(info, f)
    held_out = demo_rows()[::-1]
    with open(os.path.join(data, "held_out.jsonl"), "w") as f:
        f.write("\n".join(json.dumps(r, ensure_ascii=False) for r in held_out) + "\n")
    got = dump(recipe)
    tok = RefTokenizer(model, [])
    evals = [s for s in got if s["split"] == "eval"]
    assert len(evals) == 3 and len(got) == 6
    for sample, row in zip(evals, held_out):
        messages, system = row["messages"], ""
        if messages[0]["role"] == "system":
            system, messages = messages[0]["content"], messages[1:]
        assert sample["input_ids"] == reference_example(messages, system, row["images"], "llava", tok, 2048)[0]
    with open(recipe, "a") as f:
        f.write("val_size: 0.1\n")
    out = run_vlft("data", "dump", recipe, check=False)
    assert out.returncode == 1 and "eval_dataset" in out.stderr, out.stderr
