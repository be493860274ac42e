"""Benchmark: greedy decoding with the KV cache, vlft chat beside PyTorch, on
the mid-size LLaVA of bench/model_step.py (12-layer 768-wide LLaMA, GQA 12/4,
vocab 32000; 8-layer CLIP tower at 224 px), fp32, same thread count, same
machine, same run. The prompt is the yi_vl chat prompt of one image (256
image tokens) and a question, as vlft chat builds it.

PyTorch side: a KV-cache decode written here over the reference's weights
(tests/python/llava_reference.py), prefill then one token per step, the way
transformers' generate runs with use_cache=True; also the reference without a
cache (full recomputation per step) for a few steps, to show what the cache
buys. Both sides must produce the same greedy tokens (checked).

usage: /usr/bin/python3 bench/chat_decode.py [--threads N] [--new N] [--repeat N]
"""
import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))
sys.path.insert(0, HERE)
import llava_reference as ref  # noqa: E402
from model_step import mid_config, mid_weights  # noqa: E402
from vlft_testing import tempdir, write_safetensors  # noqa: E402

VLFT = os.environ.get("VLFT_BIN", os.path.join(HERE, "..", "build", "vlft"))
TOKENIZER = os.path.join(HERE, "..", "tests", "data", "tokenizers", "yi_like")


class TorchCachedDecoder:
    """LLaMA decode with per-layer K (after RoPE) and V caches, fp32."""

    def __init__(self, model):
        import torch
        self.torch, self.m = torch, model
        tc = model.config["text_config"]
        self.heads, self.kv = tc["num_attention_heads"], tc["num_key_value_heads"]
        self.d = tc.get("head_dim", tc["hidden_size"] // self.heads)
        self.eps, self.layers = tc["rms_norm_eps"], tc["num_hidden_layers"]
        theta = tc.get("rope_theta", 10000.0)
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, self.d, 2, dtype=torch.float64) / self.d))

    def rope(self, t, pos0):
        torch = self.torch
        n = t.shape[-2]
        angles = torch.arange(pos0, pos0 + n, dtype=torch.float64)[:, None] * self.inv_freq[None]
        emb = torch.cat([angles, angles], dim=-1)
        cos, sin = emb.cos().float(), emb.sin().float()
        half = t.shape[-1] // 2
        return t * cos + torch.cat([-t[..., half:], t[..., :half]], dim=-1) * sin

    def step(self, x, cache):
        """x [n, C] new rows; cache: list of (K, V) [kv, T, d] or None. Returns last-row logits."""
        torch, m = self.torch, self.m
        lm = "language_model.model."
        n = x.shape[0]
        pos0 = 0 if cache[0] is None else cache[0][0].shape[1]
        for i in range(self.layers):
            p = f"{lm}layers.{i}."
            h = m.rms_norm(p + "input_layernorm.weight", x, self.eps)
            q = self.rope(m.linear(p + "self_attn.q_proj", h).view(n, self.heads, self.d).transpose(0, 1), pos0)
            k = self.rope(m.linear(p + "self_attn.k_proj", h).view(n, self.kv, self.d).transpose(0, 1), pos0)
            v = m.linear(p + "self_attn.v_proj", h).view(n, self.kv, self.d).transpose(0, 1)
            if cache[i] is not None:
                k, v = torch.cat([cache[i][0], k], dim=1), torch.cat([cache[i][1], v], dim=1)
            cache[i] = (k, v)
            rep = self.heads // self.kv
            kk, vv = k.repeat_interleave(rep, dim=0), v.repeat_interleave(rep, dim=0)
            scores = (q @ kk.transpose(-1, -2)) / math.sqrt(self.d)
            if n > 1:
                T = kk.shape[1]
                visible = torch.ones(n, T, dtype=torch.bool).tril(diagonal=T - n)
                scores = scores.masked_fill(~visible, float("-inf"))
            att = (torch.softmax(scores, dim=-1) @ vv).transpose(0, 1).reshape(n, self.heads * self.d)
            x = x + m.linear(p + "self_attn.o_proj", att)
            h = m.rms_norm(p + "post_attention_layernorm.weight", x, self.eps)
            x = x + m.linear(p + "mlp.down_proj", torch.nn.functional.silu(m.linear(p + "mlp.gate_proj", h)) *
                             m.linear(p + "mlp.up_proj", h))
        x = m.rms_norm(lm + "norm.weight", x[-1:], self.eps)
        return m.linear("language_model.lm_head", x)[0]


def embed_prompt(model, ids, pixels, image_token):
    torch = __import__("torch")
    t = torch.tensor(ids, dtype=torch.long)
    x = model.w("language_model.model.embed_tokens.weight")[t]
    features = model.project(model.vision_features(torch.tensor(pixels, dtype=torch.float32)))
    return x.masked_scatter((t == image_token)[:, None].expand_as(x), features.reshape(-1, features.shape[-1]))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    import torch
    from PIL import Image
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    config = mid_config()
    config["image_token_index"] = 1000  # the yi_like tokenizer's <image>
    folder = os.path.join(tempdir(), "mid")
    os.makedirs(folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    write_safetensors(os.path.join(folder, "model.safetensors"), mid_weights(config, rng), {"format": "pt"})
    for name in os.listdir(TOKENIZER):
        shutil.copy(os.path.join(TOKENIZER, name), folder)
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
        json.dump({"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 224},
                   "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "resample": 3}, f)
    image = os.path.join(tempdir(), "image.png")
    Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(image)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads))

    model = ref.LlavaReference(folder, finetuning_type="none", dtype=torch.float32)
    decoder = TorchCachedDecoder(model)
    stop = {2, 536}
    vlft_rates, torch_rates, torch_nocache = [], [], None
    for _ in range(args.repeat):
        run = subprocess.run([VLFT, "chat", "--model", folder, "--image", image, "--print-ids", "--stats",
                              "--max-new-tokens", str(args.new), "--threads", str(args.threads),
                              "What is in this picture?"], capture_output=True, text=True, env=env)
        if run.returncode != 0:
            sys.exit(run.stderr)
        lines = dict(line.split(" ", 1) for line in run.stdout.strip().splitlines())
        prompt = [int(x) for x in lines["prompt_ids"].split()]
        vlft_out = [int(x) for x in lines["output_ids"].split()]
        stats = re.search(r"prefill (\d+) tokens .* ([0-9.]+) s, decode (\d+) tokens ([0-9.]+) s", run.stderr)
        vlft_prefill, vlft_decode_n, vlft_decode_s = float(stats.group(2)), int(stats.group(3)), float(stats.group(4))
        vlft_rates.append(vlft_decode_n / vlft_decode_s)

        pixels = np.stack([__import__("test_train_parity").clip_pixels(image, 224)])
        with torch.no_grad():
            t0 = time.perf_counter()
            x = embed_prompt(model, prompt, pixels, config["image_token_index"])
            cache = [None] * decoder.layers
            logits = decoder.step(x, cache)
            t1 = time.perf_counter()
            out = []
            for i in range(args.new):
                nxt = int(torch.argmax(logits))
                if nxt in stop:
                    break
                out.append(nxt)
                if i + 1 == args.new:
                    break
                logits = decoder.step(model.w("language_model.model.embed_tokens.weight")[[nxt]], cache)
            t2 = time.perf_counter()
        torch_prefill = t1 - t0
        torch_rates.append((len(out) - 1) / (t2 - t1) if len(out) > 1 else float("nan"))
        if torch_nocache is None:  # a few steps of full recomputation, for scale
            with torch.no_grad():
                ids = list(prompt)
                t0 = time.perf_counter()
                for nxt in out[:4]:
                    t = torch.tensor(ids, dtype=torch.long)
                    xx = model.w("language_model.model.embed_tokens.weight")[t]
                    model.language(xx[None], [[1] * len(ids)])
                    ids.append(nxt)
                torch_nocache = min(4, len(out)) / (time.perf_counter() - t0)
    same = vlft_out == out
    print(f"mid-size LLaVA (LM 12x768, GQA 12/4, vocab 32000; tower 8x768 at 224 px), fp32, {args.threads} threads; "
          f"prompt {len(prompt)} tokens (256 image), {args.new} new tokens, greedy")
    print(f"load avg (1 min): {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"same greedy tokens on both sides: {same} ({len(vlft_out)} vlft, {len(out)} torch)")
    print(f"prefill (last run)  vlft {vlft_prefill:.3f} s   torch {torch_prefill:.3f} s")
    print(f"decode tokens/s (best of {args.repeat})  vlft {max(vlft_rates):.1f}   torch KV cache {max(torch_rates):.1f}   "
          f"ratio vlft/torch = {max(vlft_rates) / max(torch_rates):.2f}x")
    print(f"torch without a cache (full recompute per token): {torch_nocache:.1f} tokens/s "
          f"(vlft cache speed-up over it {max(vlft_rates) / torch_nocache:.1f}x)")
    if not same:
        print(f"  vlft  {vlft_out}\n  torch {out}")


if __name__ == "__main__":
    main()
