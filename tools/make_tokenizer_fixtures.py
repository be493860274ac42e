#!/usr/bin/python3
"""Trains the two small SentencePiece BPE tokenizers vlft tests against and
writes their Hugging Face tokenizer.json twins.

Run with Debian's python3 (python3-sentencepiece):
    /usr/bin/python3 tools/make_tokenizer_fixtures.py [OUT_DIR]
OUT_DIR defaults to tests/data/tokenizers. It writes
  yi_like/     Yi-style flags: no dummy prefix, no whitespace squeezing, split
               digits, byte fallback; <unk>=0 <|startoftext|>=1 <|endoftext|>=2,
               1000 pieces. Also tokenizer_config.json and
               special_tokens_map.json with <image> as added special token 1000:
               these are the files `vlft init-tiny` embeds.
  llama_like/  LLaMA-style flags: dummy prefix, split digits, byte fallback,
               two user-defined pieces; <unk>=0 <s>=1 </s>=2, 1500 pieces.
The corpus is generated here from a fixed seed, so reruns give the same files.
"""
import json
import os
import random
import sys
import tempfile

import sentencepiece as spm

SHAPES = ["circle", "square", "triangle", "star", "diamond"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "gray"]
COUNTS = ["one", "two", "three", "four", "five"]
NUMBER_WORDS = ["Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight"]
POSITIONS = ["left", "right", "top", "bottom", "center", "middle", "upper", "lower"]
ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "This is a chat between an inquisitive human and an AI assistant.",
    "Assume the role of the AI assistant. Read all the images carefully, and respond to the human's questions.",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "Fine-tuning a vision language model needs data, a template and a tokenizer.",
    "Machine learning models learn patterns from examples and generalise to new inputs.",
    "Please describe the picture in detail, including colours, shapes and their positions.",
    "We went to the market on Monday and bought apples, bread, milk and cheese.",
    "It was raining all afternoon, so the children stayed inside and played games.",
    "Human: Hello! How are you today?\nAssistant: I am fine, thank you. How can I help?",
    "USER: What is in this image? ASSISTANT: A photo of a cat sitting on a chair.",
    "### Human: Describe the image.\n### Assistant: It shows a dog in a park.",
    "### Instruction:\nSummarise the text.\n\n### Response:\nThe text is about training.",
]
CHINESE = [
    "这是一个好奇的人类和一个人工智能助手之间的对话。",
    "假设你扮演这个AI助手的角色。仔细阅读所有的图像，并对人类的问题做出信息丰富、有帮助、详细的和礼貌的回答。",
    "图片中有一个红色的圆形和两个蓝色的正方形。",
    "今天天气很好，我们去公园散步。",
    "机器学习模型从数据中学习规律。",
    "请描述这张图片的内容。",
    "我喜欢吃苹果和香蕉。",
    "北京是中国的首都，上海是最大的城市。",
]


def demo_sentence(rng):
    shape, colour, count, pos = rng.choice(SHAPES), rng.choice(COLOURS), rng.choice(COUNTS), rng.choice(POSITIONS)
    templates = [
        f"What shape is in the image? There is {count} {colour} {shape} at the {pos} on a white background.",
        f"How many {shape}s are there? {count.capitalize()}.",
        f"What colour is the {shape}? It is {colour}.",
        f"Where is the {colour} {shape}? It is in the {pos} of the picture.",
        f"The picture shows {count} {colour} {shape}s near the {pos} {rng.choice(POSITIONS)} corner.",
        f"Is there a {shape} in the {rng.choice(POSITIONS)} part of the image? Yes, a {colour} one.",
        f"<image>Describe the image. There are {rng.randint(1, 5)} shapes on a {colour} background.",
    ]
    # The question / answer shapes of `vlft demo-data` (src/vision/demo_data.c).
    cap = colour.capitalize()
    number = rng.choice(NUMBER_WORDS)
    place = rng.choice(["At the top left.", "At the top.", "At the top right.", "On the left.", "In the center.",
                        "On the right.", "At the bottom left.", "At the bottom.", "At the bottom right."])
    templates += [
        f"<image>What shape is in the picture? A {colour} {shape}.",
        f"Where is the {shape}? {place}",
        f"What colour is the background? {cap}.",
        f"What colour is the {shape}? {cap}.",
        f"What colour are the {shape}s? {cap}.",
        f"<image>How many {shape}s are there? {number}.",
        f"What shapes are in the picture? {number} {colour} {shape}s.",
        f"<image><image>Which picture has more {shape}s? The {rng.choice(['first', 'second'])} one.",
        f"How many {shape}s are in the {rng.choice(['first', 'second'])} picture? {number}.",
        f"How many {shape}s are there in both pictures together? {number}.",
    ]
    return rng.choice(templates)


def corpus_lines(seed):
    rng = random.Random(seed)
    lines = []
    for _ in range(9000):
        lines.append(demo_sentence(rng))
    for _ in range(40):
        lines.extend(ENGLISH)
    for _ in range(25):
        lines.extend(CHINESE)
    for _ in range(800):
        numbers = " ".join(str(rng.randint(0, 10 ** rng.randint(1, 6))) for _ in range(rng.randint(1, 5)))
        lines.append(f"In {rng.randint(1900, 2030)} there were {numbers} items, about {rng.random() * 100:.2f} percent.")
    for _ in range(300):
        indent = rng.choice(["", "    ", "\t", "        "])
        lines.append(f"{indent}def f(x): return x * {rng.randint(0, 99)}  # comment")
    rng.shuffle(lines)
    return lines


def train(out_dir, lines, vocab_size, **flags):
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        prefix = os.path.join(tmp, "m")
        spm.SentencePieceTrainer.train(
            input=corpus, model_prefix=prefix, model_type="bpe", vocab_size=vocab_size,
            character_coverage=0.9995, byte_fallback=True, normalization_rule_name="identity",
            num_threads=1, max_sentence_length=8192, minloglevel=2, **flags)
        with open(prefix + ".model", "rb") as f:
            model = f.read()
    with open(os.path.join(out_dir, "tokenizer.model"), "wb") as f:
        f.write(model)
    return spm.SentencePieceProcessor(model_file=os.path.join(out_dir, "tokenizer.model"))


def added(token_id, content, special):
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


def merges_by_score(sp):
    """The merges a Hugging Face BPE needs to reproduce SentencePiece's
    score-ordered merging: every split of a piece into two pieces, ordered by
    the piece's score (high first), ties by the ids of the halves."""
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    scored = []
    for i in range(sp.get_piece_size()):
        piece = sp.id_to_piece(i)
        local = []
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                local.append((left, right, sp.get_score(i)))
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        scored.extend(local)
    scored.sort(key=lambda m: m[2], reverse=True)
    return [[left, right] for left, right, _ in scored]


def tokenizer_json(sp, added_tokens, dummy_prefix):
    normalizers = []
    if dummy_prefix:
        normalizers.append({"type": "Prepend", "prepend": "\u2581"})
    normalizers.append({"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"})
    decoders = [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"}]
    if dummy_prefix:
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added_tokens,
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {}},
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": None, "unk_token": sp.id_to_piece(sp.unk_id()),
                  "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
                  "byte_fallback": True, "ignore_merges": False,
                  "vocab": {sp.id_to_piece(i): i for i in range(sp.get_piece_size())},
                  "merges": merges_by_score(sp)},
    }


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")


def config_entry(token):
    return {"content": token["content"], "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": token["special"]}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "data", "tokenizers")
    lines = corpus_lines(seed=20250301)

    yi_dir = os.path.join(out, "yi_like")
    sp = train(yi_dir, lines, 1000, add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=True,
               unk_id=0, bos_id=1, eos_id=2, pad_id=-1, unk_piece="<unk>", bos_piece="<|startoftext|>",
               eos_piece="<|endoftext|>", allow_whitespace_only_pieces=True)
    assert sp.get_piece_size() == 1000
    yi_added = [added(0, "<unk>", True), added(1, "<|startoftext|>", True), added(2, "<|endoftext|>", True),
                added(1000, "<image>", True)]
    write_json(os.path.join(yi_dir, "tokenizer.json"), tokenizer_json(sp, yi_added, dummy_prefix=False))
    write_json(os.path.join(yi_dir, "tokenizer_config.json"), {
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": {str(t["id"]): config_entry(t) for t in yi_added},
        "additional_special_tokens": ["<image>"],
        "bos_token": "<|startoftext|>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "legacy": True,
        "model_max_length": 4096,
        "pad_token": "<unk>",
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    })
    write_json(os.path.join(yi_dir, "special_tokens_map.json"), {
        "additional_special_tokens": ["<image>"], "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<unk>", "unk_token": "<unk>"})

    llama_dir = os.path.join(out, "llama_like")
    sp = train(llama_dir, lines, 1500, add_dummy_prefix=True, remove_extra_whitespaces=False, split_digits=True,
               unk_id=0, bos_id=1, eos_id=2, pad_id=-1, user_defined_symbols="<|im_start|>,<|im_end|>")
    llama_added = [added(0, "<unk>", True), added(1, "<s>", True), added(2, "</s>", True),
                   added(3, "<|im_start|>", False), added(4, "<|im_end|>", False)]
    write_json(os.path.join(llama_dir, "tokenizer.json"), tokenizer_json(sp, llama_added, dummy_prefix=True))
    write_json(os.path.join(llama_dir, "tokenizer_config.json"), {
        "add_bos_token": True, "add_eos_token": False,
        "added_tokens_decoder": {str(t["id"]): config_entry(t) for t in llama_added[:3]},
        "bos_token": "<s>", "eos_token": "</s>", "legacy": True, "pad_token": None, "unk_token": "<unk>",
        "tokenizer_class": "LlamaTokenizer", "clean_up_tokenization_spaces": False, "sp_model_kwargs": {}})


if __name__ == "__main__":
    main()
