"""Tokenizer parity: vlft's ids for >= 10,000 generated strings equal those of
independent references, in one long-lived process per side.

- tokenizer.model: Debian's python3-sentencepiece (SentencePieceProcessor).
- tokenizer.json: Hugging Face tokenizers in pure JS (@huggingface/tokenizers
  from npm, installed into tests/npm/node_modules by tools/install-deps.sh or
  on first use here).
- slow LlamaTokenizer (legacy): added tokens split out leftmost-longest, each
  other piece through sentencepiece (restated below).
Decoding round-trips where the tokenizer is lossless.
"""
import json
import os
import shutil
import subprocess
import sys

import sentencepiece as spm

from tokenizer_strings import make_strings
from vlft_testing import ROOT, VLFT, tempdir

DATA = os.path.join(ROOT, "tests", "data", "tokenizers")
NPM = os.path.join(ROOT, "tests", "npm")
N_STRINGS = 10000


def ensure_npm_reference():
    if not os.path.isdir(os.path.join(NPM, "node_modules", "@huggingface", "tokenizers")):
        assert shutil.which("npm"), "npm is required for the tokenizer.json reference (tools/install-deps.sh)"
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NPM, check=True, capture_output=True)


def parse_output(text):
    rows = []
    for line in text.split("\n")[:-1]:
        ids, decoded = line.split("\t", 1)
        rows.append(([int(x) for x in ids.split()], json.loads(decoded)))
    return rows


def run_lines(command, strings):
    data = "".join(json.dumps(s) + "\n" for s in strings)
    result = subprocess.run(command, input=data, capture_output=True, text=True)
    assert result.returncode == 0, f"{command} failed: {result.stderr[-2000:]}"
    rows = parse_output(result.stdout)
    assert len(rows) == len(strings), f"{command}: {len(rows)} rows for {len(strings)} strings"
    return rows


def vlft_rows(args, strings):
    return run_lines([VLFT, "_tokenize", *args], strings)


def js_rows(model_dir, strings):
    ensure_npm_reference()
    return run_lines(["node", os.path.join(NPM, "hf_encode.mjs"), model_dir], strings)


def compare(name, strings, got, want, check_decode=True):
    mismatches = [i for i in range(len(strings)) if got[i][0] != want[i][0]]
    if mismatches:
        i = mismatches[0]
        raise AssertionError(f"{name}: {len(mismatches)} of {len(strings)} strings differ; first {strings[i]!r}:\n"
                             f"  vlft {got[i][0]}\n  reference {want[i][0]}")
    if check_decode:
        # The JS reference decodes byte-fallback runs with TextDecoder, which drops
        # a U+FEFF (BOM) that Rust tokenizers keeps; compare without it.
        bad = [i for i in range(len(strings)) if got[i][1].replace("\ufeff", "") != want[i][1].replace("\ufeff", "")]
        assert not bad, f"{name}: decode differs for {strings[bad[0]]!r}: {got[bad[0]][1]!r} vs {want[bad[0]][1]!r}"
    print(f"  {name}: {len(strings)} strings, 0 mismatches")


def sp_rows(model_file, strings):
    sp = spm.SentencePieceProcessor(model_file=model_file)
    rows = []
    for s in strings:
        ids = sp.encode(s)
        rows.append((ids, sp.decode(ids)))
    return rows


def split_added(text, added):
    """transformers' Trie.split: leftmost match, longest at that position."""
    out, pos = [], 0
    while pos < len(text):
        best = None
        for i in range(pos, len(text)):
            cands = [a for a in added if text.startswith(a, i)]
            if cands:
                best = (i, max(cands, key=len))
                break
        if best is None:
            out.append((text[pos:], False))
            break
        i, tok = best
        if i > pos:
            out.append((text[pos:i], False))
        out.append((tok, True))
        pos = i + len(tok)
    return out


def slow_reference(model_dir, strings):
    sp = spm.SentencePieceProcessor(model_file=os.path.join(model_dir, "tokenizer.model"))
    with open(os.path.join(model_dir, "tokenizer_config.json")) as f:
        config = json.load(f)
    added = {v["content"]: int(k) for k, v in config.get("added_tokens_decoder", {}).items()}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        if isinstance(config.get(key), str):
            added.setdefault(config[key], sp.piece_to_id(config[key]))
    for tok in config.get("additional_special_tokens", []):
        added.setdefault(tok, sp.piece_to_id(tok) if sp.piece_to_id(tok) != sp.unk_id() else max(added.values()) + 1)
    rows = []
    for s in strings:
        ids = []
        for text, is_added in split_added(s, list(added)):
            ids += [added[text]] if is_added else sp.encode(text)
        rows.append((ids, None))
    return rows


def specials_for(model):
    return ["<image>", "<|startoftext|>", "<|endoftext|>", "<unk>"] if model == "yi_like" else \
        ["<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]


def test_sentencepiece_model_parity():
    for model in ("yi_like", "llama_like"):
        strings = make_strings(N_STRINGS, specials_for(model), seed=11)
        path = os.path.join(DATA, model, "tokenizer.model")
        got = vlft_rows(["--sp", path], strings)
        want = sp_rows(path, strings)
        compare(f"{model} tokenizer.model vs sentencepiece", strings, got, want)
        # identity normalizer, no whitespace squeezing: decode(encode(s)) == s
        lossless = [i for i, s in enumerate(strings) if "\r" not in s]
        bad = [i for i in lossless if got[i][1] != strings[i]]
        assert not bad, f"{model}: round trip fails for {strings[bad[0]]!r} -> {got[bad[0]][1]!r}"


def test_tokenizer_json_parity():
    for model in ("yi_like", "llama_like"):
        strings = make_strings(N_STRINGS, specials_for(model), seed=12)
        model_dir = os.path.join(DATA, model)
        got = vlft_rows(["--dir", model_dir], strings)
        want = js_rows(model_dir, strings)
        compare(f"{model} tokenizer.json vs @huggingface/tokenizers", strings, got, want)


def test_yi_like_fast_round_trip():
    strings = make_strings(2000, specials_for("yi_like"), seed=13)
    got = vlft_rows(["--dir", os.path.join(DATA, "yi_like")], strings)
    bad = [i for i, s in enumerate(strings) if got[i][1] != s]
    assert not bad, f"round trip fails for {strings[bad[0]]!r} -> {got[bad[0]][1]!r}"


def test_slow_tokenizer_parity():
    for model in ("yi_like", "llama_like"):
        strings = make_strings(5000, specials_for(model), seed=14)
        model_dir = os.path.join(DATA, model)
        got = vlft_rows(["--dir", model_dir, "--slow"], strings)
        want = slow_reference(model_dir, strings)
        compare(f"{model} slow LlamaTokenizer vs sentencepiece + added-token split", strings, got, want,
                check_decode=False)


def test_fast_converted_from_model_parity():
    """Only tokenizer.model in the folder: the fast tokenizer is LlamaConverter's
    (legacy: Prepend + Replace), which is what llama_like/tokenizer.json holds."""
    tmp = tempdir()
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(os.path.join(DATA, "llama_like", name), tmp)
    strings = make_strings(3000, specials_for("llama_like"), seed=15)
    got = vlft_rows(["--dir", tmp], strings)
    want = js_rows(os.path.join(DATA, "llama_like"), strings)
    compare("llama_like converted from tokenizer.model vs @huggingface/tokenizers", strings, got, want)


def test_add_prefix_space_false_rebuilds_from_the_model():
    """add_prefix_space in tokenizer_config.json makes LlamaTokenizerFast
    convert from the .model even beside a tokenizer.json: with False, the
    converter's normalizer is Replace only (no Prepend) and its decoder has no
    Strip. The reference is that tokenizer.json, run by the JS library."""
    tmp, ref = tempdir(), tempdir()
    for name in ("tokenizer.model", "tokenizer.json"):
        shutil.copy(os.path.join(DATA, "llama_like", name), tmp)
    with open(os.path.join(DATA, "llama_like", "tokenizer_config.json")) as f:
        config = json.load(f)
    config["add_prefix_space"] = False
    with open(os.path.join(tmp, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(DATA, "llama_like", "tokenizer.json")) as f:
        tok = json.load(f)
    tok["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Replace", "pattern": {"String": " "},
                                                              "content": "\u2581"}]}
    tok["decoder"]["decoders"] = [d for d in tok["decoder"]["decoders"] if d["type"] != "Strip"]
    with open(os.path.join(ref, "tokenizer.json"), "w") as f:
        json.dump(tok, f, ensure_ascii=False)
    strings = make_strings(2000, specials_for("llama_like"), seed=18)
    compare("add_prefix_space=false (converted) vs @huggingface/tokenizers", strings,
            vlft_rows(["--dir", tmp], strings), js_rows(ref, strings))


def test_metaspace_pre_tokenizer_parity():
    """Non-legacy style tokenizer.json files: a Metaspace pre-tokenizer (every
    prepend_scheme, split on and off) instead of the Prepend/Replace
    normalizers, checked against the JS reference."""
    with open(os.path.join(DATA, "llama_like", "tokenizer.json")) as f:
        tok = json.load(f)
    strings = make_strings(600, specials_for("llama_like"), seed=16)
    for scheme in ("first", "always", "never"):
        for split in (True, False):
            tmp = tempdir()
            metaspace = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme, "split": split}
            tok["normalizer"] = None
            tok["pre_tokenizer"] = metaspace
            tok["decoder"] = metaspace
            with open(os.path.join(tmp, "tokenizer.json"), "w") as f:
                json.dump(tok, f, ensure_ascii=False)
            # With prepend_scheme "never" the JS decoder still drops a leading
            # space, where Rust tokenizers' Metaspace decoder keeps every one;
            # ids are compared for all schemes, decoded text where they agree.
            compare(f"Metaspace({scheme}, split={split}) tokenizer.json vs @huggingface/tokenizers", strings,
                    vlft_rows(["--dir", tmp], strings), js_rows(tmp, strings), check_decode=scheme != "never")


def test_remove_extra_whitespaces_parity():
    """SentencePiece's whitespace squeezing, on a model trained here with it on."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import make_tokenizer_fixtures as fixtures
    tmp = tempdir()
    fixtures.train(tmp, fixtures.corpus_lines(seed=3)[:3000], 600, add_dummy_prefix=True,
                   remove_extra_whitespaces=True, split_digits=False)
    path = os.path.join(tmp, "tokenizer.model")
    strings = make_strings(5000, [], seed=17)
    compare("remove_extra_whitespaces model vs sentencepiece", strings, vlft_rows(["--sp", path], strings),
            sp_rows(path, strings))
