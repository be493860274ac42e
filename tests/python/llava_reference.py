"""A PyTorch LLaVA written for the tests: CLIP vision tower, Yi-VL or LLaVA
projector, LLaMA language model, LoRA, and LLaMA-Factory's choice of trainable
tensors. It reads a Hugging Face model folder with the independent reader of
vlft_testing.py and never imports vlft code.

    ref = LlavaReference(folder, finetuning_type="lora", adapter=tensors)
    out = ref.step(batch)  # {"logits", "loss", "grads": {param name: array}}

batch: dict of numpy arrays input_ids / labels / attention_mask [B, L]
(int32) and pixel_values [n, 3, S, S] (float32).
Parameter names are those vlft's ParamRef uses: the checkpoint name for fully
trained tensors, PEFT's base_model.model.<module>.lora_A.weight /
.lora_B.weight for LoRA (base_model.model.<name> for additional_target).
"""
import json
import math
import os
import re

import numpy as np
import torch
import torch.nn.functional as F

from vlft_testing import read_model_folder

IGNORE = -100


def classic_name(name):
    """Newer transformers spelling -> the classic one."""
    for new, old in (("model.language_model.", "language_model.model."), ("model.vision_tower.", "vision_tower."),
                     ("model.multi_modal_projector.", "multi_modal_projector.")):
        if name.startswith(new):
            return old + name[len(new):]
    if name == "lm_head.weight":
        return "language_model.lm_head.weight"
    return name


def activation(name):
    if name == "gelu":
        return lambda x: F.gelu(x)
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name in ("gelu_pytorch_tanh", "gelu_new"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "silu":
        return F.silu
    if name == "relu":
        return F.relu
    raise ValueError(name)


def bf16_round(t):
    """t's values rounded to bf16 (through fp32, as vlft rounds its fp32 values), in t's dtype."""
    return t.float().to(torch.bfloat16).to(t.dtype)


class Bf16Product(torch.autograd.Function):
    """y = bf16(x) @ bf16(w)^T in the reference's precision; the backward's
    products read bf16 too: dx = bf16(dy) @ bf16(w), dw = bf16(dy)^T @ bf16(x).
    What vlft's bf16 mode computes, with exact accumulation."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return bf16_round(x) @ bf16_round(w).T

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        dy = bf16_round(dy)
        dw = dy.reshape(-1, dy.shape[-1]).T @ bf16_round(x).reshape(-1, x.shape[-1])
        return dy @ bf16_round(w), dw


def split_names(text):
    return [item.strip() for item in text.split(",") if item.strip()] if text else []


class LlavaReference:
    def __init__(self, folder, finetuning_type="lora", lora_rank=8, lora_alpha=None, lora_target="all",
                 freeze_vision_tower=True, freeze_multi_modal_projector=True, freeze_language_model=False,
                 freeze_trainable_layers=2, freeze_trainable_modules="all", additional_target="",
                 adapter=None, dtype=torch.float64, bf16_products=False):
        with open(os.path.join(folder, "config.json")) as f:
            self.config = json.load(f)
        self.dtype = dtype
        # bf16_products: every weight product (Linear, lm_head, patch
        # embedding) through Bf16Product and frozen embedding rows rounded to
        # bf16: the numbers of vlft's bf16 mode in exact arithmetic.
        self.bf16_products = bf16_products
        raw = read_model_folder(folder)
        self.source_names = {classic_name(k): k for k in raw}
        self.tensors = {classic_name(k): torch.tensor(np.array(v, dtype=np.float64), dtype=dtype) for k, v in raw.items()
                        if "position_ids" not in k and "inv_freq" not in k}
        self.yivl = "multi_modal_projector.linear_4.weight" in self.tensors
        self.finetuning_type = finetuning_type
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha if lora_alpha is not None else 2 * lora_rank
        forbidden = []
        if freeze_vision_tower:
            forbidden.append("vision_tower")
        if freeze_multi_modal_projector:
            forbidden.append("multi_modal_projector")
        if freeze_language_model:
            forbidden.append("language_model")
        self.trainable = {}   # ParamRef name -> tensor (requires grad)
        self.lora = {}        # module path -> (A, B)
        names = list(self.tensors)
        if finetuning_type == "full":
            for n in names:
                if not any(f in n for f in forbidden):
                    self._train(n, self.source_names[n])
        elif finetuning_type == "freeze":
            layers = self.config["text_config"]["num_hidden_layers"]
            k = freeze_trainable_layers
            ids = range(max(0, layers - k), layers) if k > 0 else range(min(-k, layers))
            patterns = [".{}.{}".format(i, "" if m == "all" else m) for m in split_names(freeze_trainable_modules)
                        for i in ids]
            for n in names:
                if any(p in n for p in patterns) and not any(f in n for f in forbidden):
                    self._train(n, self.source_names[n])
        elif finetuning_type == "lora":
            linear = [n[:-len(".weight")] for n in names if n.endswith(".weight") and self.tensors[n].dim() == 2
                      and "embed_tokens" not in n and "position_embedding" not in n]
            targets = split_names(lora_target)
            if targets == ["all"]:
                excluded = ["lm_head", "multi_modal_projector"] + (["vision_tower"] if freeze_vision_tower else [])
                targets = sorted({m.split(".")[-1] for m in linear if not any(e in m for e in excluded)})
            for module in linear:
                if any(t in module for t in targets) and not any(f in module for f in forbidden):
                    out_features, in_features = self.tensors[module + ".weight"].shape
                    a_name = f"base_model.model.{module}.lora_A.weight"
                    b_name = f"base_model.model.{module}.lora_B.weight"
                    if adapter is not None:
                        a = torch.tensor(np.array(adapter[a_name], dtype=np.float64), dtype=dtype)
                        b = torch.tensor(np.array(adapter[b_name], dtype=np.float64), dtype=dtype)
                    else:
                        bound = 1.0 / math.sqrt(in_features)
                        a = (torch.rand(lora_rank, in_features, dtype=dtype) * 2 - 1) * bound
                        b = torch.zeros(out_features, lora_rank, dtype=dtype)
                    a.requires_grad_(True)
                    b.requires_grad_(True)
                    self.lora[module] = (a, b)
                    self.trainable[a_name] = a
                    self.trainable[b_name] = b
            for target in split_names(additional_target):
                for n in names:
                    if n.rsplit(".", 1)[0].endswith(target):
                        self._train(n, "base_model.model." + n)
        elif finetuning_type != "none":
            raise ValueError(finetuning_type)

    def _train(self, classic, param_name):
        t = self.tensors[classic]
        t.requires_grad_(True)
        self.trainable[param_name] = t

    # ----------------------------------------------------------- building blocks
    def w(self, name):
        return self.tensors[name]

    def product(self, x, w):
        """x @ w^T, through bf16 inputs when bf16_products."""
        return Bf16Product.apply(x, w) if self.bf16_products else x @ w.T

    def linear(self, module, x):
        y = self.product(x, self.w(module + ".weight"))
        if module + ".bias" in self.tensors:
            y = y + self.w(module + ".bias")
        if module in self.lora:
            a, b = self.lora[module]
            y = y + (self.lora_alpha / self.lora_rank) * ((x @ a.T) @ b.T)
        return y

    def layer_norm(self, prefix, x, eps):
        # In self.dtype: under CPU bf16 autocast a Linear's output is bf16, and
        # torch 1.13's layer_norm refuses bf16 input with fp32 weights (newer
        # torch runs autocast layer_norm in fp32, as this does).
        return F.layer_norm(x.to(self.dtype), (x.shape[-1],), self.w(prefix + ".weight"), self.w(prefix + ".bias"), eps)

    def rms_norm(self, weight, x, eps):
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.w(weight) * (x * torch.rsqrt(variance + eps))

    # ----------------------------------------------------------------- vision
    def vision_features(self, pixels):
        vc = self.config["vision_config"]
        p = "vision_tower.vision_model."
        eps = vc.get("layer_norm_eps", 1e-5)
        heads = vc["num_attention_heads"]
        act = activation(vc.get("hidden_act", "quick_gelu"))
        weight = self.w(p + "embeddings.patch_embedding.weight")
        if self.bf16_products:  # the convolution as vlft runs it: a product over flattened patches
            patches = F.unfold(pixels, vc["patch_size"], stride=vc["patch_size"]).transpose(1, 2)
            x = self.product(patches, weight.reshape(weight.shape[0], -1))
        else:
            x = F.conv2d(pixels, weight, stride=vc["patch_size"])
            x = x.flatten(2).transpose(1, 2)
        n, _, c = x.shape
        cls = self.w(p + "embeddings.class_embedding").expand(n, 1, c)
        x = torch.cat([cls, x], dim=1) + self.w(p + "embeddings.position_embedding.weight")[None]
        x = self.layer_norm(p + "pre_layrnorm", x, eps)
        hidden = [x]
        layers = vc["num_hidden_layers"]
        feature_layer = self.config.get("vision_feature_layer", -2)
        index = feature_layer if feature_layer >= 0 else layers + 1 + feature_layer
        for i in range(index):
            q = f"{p}encoder.layers.{i}."
            h = self.layer_norm(q + "layer_norm1", x, eps)
            t = x.shape[1]
            d = c // heads
            qq = self.linear(q + "self_attn.q_proj", h).view(n, t, heads, d).transpose(1, 2)
            kk = self.linear(q + "self_attn.k_proj", h).view(n, t, heads, d).transpose(1, 2)
            vv = self.linear(q + "self_attn.v_proj", h).view(n, t, heads, d).transpose(1, 2)
            att = torch.softmax((qq @ kk.transpose(-1, -2)) / math.sqrt(d), dim=-1) @ vv
            att = att.transpose(1, 2).reshape(n, t, c)
            x = x + self.linear(q + "self_attn.out_proj", att)
            h = self.layer_norm(q + "layer_norm2", x, eps)
            x = x + self.linear(q + "mlp.fc2", act(self.linear(q + "mlp.fc1", h)))
            hidden.append(x)
        features = hidden[index]
        if self.config.get("vision_feature_select_strategy", "default") == "default":
            features = features[:, 1:]
        return features

    def project(self, features):
        act = activation(self.config.get("projector_hidden_act", "gelu"))
        m = "multi_modal_projector."
        if self.yivl:
            h = self.linear(m + "linear_1", features)
            h = self.layer_norm(m + "linear_2", h, 1e-5)
            h = act(h)
            h = self.linear(m + "linear_3", h)
            return self.layer_norm(m + "linear_4", h, 1e-5)
        return self.linear(m + "linear_2", act(self.linear(m + "linear_1", features)))

    # --------------------------------------------------------------- language
    def language(self, x, mask):
        tc = self.config["text_config"]
        lm = "language_model.model."
        heads, kv = tc["num_attention_heads"], tc.get("num_key_value_heads", tc["num_attention_heads"])
        d = tc.get("head_dim", tc["hidden_size"] // heads)
        eps = tc.get("rms_norm_eps", 1e-6)
        theta = tc.get("rope_theta", 10000.0)
        b, length, _ = x.shape
        inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        angles = torch.arange(length, dtype=torch.float64)[:, None] * inv_freq[None]
        emb = torch.cat([angles, angles], dim=-1)
        cos, sin = emb.cos().to(self.dtype), emb.sin().to(self.dtype)

        def rope(t):
            half = t.shape[-1] // 2
            rotated = torch.cat([-t[..., half:], t[..., :half]], dim=-1)
            return t * cos + rotated * sin

        causal = torch.ones(length, length, dtype=torch.bool).tril()
        visible = causal[None, None] & (torch.tensor(mask) != 0)[:, None, None, :]
        for i in range(tc["num_hidden_layers"]):
            p = f"{lm}layers.{i}."
            h = self.rms_norm(p + "input_layernorm.weight", x, eps)
            q = rope(self.linear(p + "self_attn.q_proj", h).view(b, length, heads, d).transpose(1, 2))
            k = rope(self.linear(p + "self_attn.k_proj", h).view(b, length, kv, d).transpose(1, 2))
            v = self.linear(p + "self_attn.v_proj", h).view(b, length, kv, d).transpose(1, 2)
            k = k.repeat_interleave(heads // kv, dim=1)
            v = v.repeat_interleave(heads // kv, dim=1)
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
            scores = scores.masked_fill(~visible, float("-inf"))
            # Softmax in self.dtype, back to v's dtype: transformers' LLaMA
            # attention (bf16 scores under autocast take an fp32 softmax).
            att = (torch.softmax(scores, dim=-1, dtype=self.dtype).to(v.dtype) @ v).transpose(1, 2).reshape(
                b, length, heads * d)
            x = x + self.linear(p + "self_attn.o_proj", att)
            h = self.rms_norm(p + "post_attention_layernorm.weight", x, eps)
            x = x + self.linear(p + "mlp.down_proj",
                                F.silu(self.linear(p + "mlp.gate_proj", h)) * self.linear(p + "mlp.up_proj", h))
        x = self.rms_norm(lm + "norm.weight", x, eps)
        if "language_model.lm_head.weight" in self.tensors:
            return self.linear("language_model.lm_head", x)
        return self.product(x, self.w(lm + "embed_tokens.weight"))

    def forward(self, batch):
        ids = torch.tensor(batch["input_ids"], dtype=torch.long)
        table = self.w("language_model.model.embed_tokens.weight")
        x = table[ids]
        if self.bf16_products and not table.requires_grad:
            x = bf16_round(x)  # a frozen table is stored as bf16
        image = ids == self.config["image_token_index"]
        if batch.get("pixel_values") is not None and len(batch["pixel_values"]):
            features = self.project(self.vision_features(torch.tensor(batch["pixel_values"], dtype=self.dtype)))
            features = features.reshape(-1, features.shape[-1])
            assert features.shape[0] == int(image.sum()), "image tokens and features disagree"
            x = x.masked_scatter(image[..., None].expand_as(x), features)
        logits = self.language(x, batch["attention_mask"])
        labels = torch.tensor(batch["labels"], dtype=torch.long)
        shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
        shift_labels = labels[:, 1:].reshape(-1)
        loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE)
        return logits, loss

    def step(self, batch, grad_scale=1.0, autocast_bf16=False):
        """autocast_bf16: run the forward under torch.autocast("cpu", bfloat16)
        (construct with dtype=torch.float32), as LLaMA-Factory's bf16: true does."""
        for t in self.trainable.values():
            t.grad = None
        if autocast_bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits, loss = self.forward(batch)
        else:
            logits, loss = self.forward(batch)
        if self.trainable:
            (loss * grad_scale).backward()
        return {"logits": logits.detach().to(self.dtype).numpy(), "loss": float(loss),
                # A tensor the forward never reaches (a vision layer past the
                # feature layer) has no gradient; optimizers skip it.
                "grads": {n: t.grad.numpy().copy() for n, t in self.trainable.items() if t.grad is not None}}


def random_batch(config, rng, images_per_sample=(1, 1), text_lengths=((6, 9), (4, 3)), pad_id=0):
    """A right-padded batch in the layout LLaMA-Factory's collator produces:
    each sample = bos, prompt text, images (image_seq_length tokens each),
    more prompt, answer; labels ignore the prompt and images; -100 on padding."""
    image_token = config["image_token_index"]
    seq = config.get("image_seq_length") or (config["vision_config"]["image_size"] //
                                             config["vision_config"]["patch_size"]) ** 2
    vocab = config["text_config"]["vocab_size"]
    size = config["vision_config"]["image_size"]
    samples = []
    for n_images, (prompt, answer) in zip(images_per_sample, text_lengths):
        ids, labels = [1], [IGNORE]
        for _ in range(n_images):
            ids += list(rng.integers(3, image_token, size=prompt // 2)) + [image_token] * seq
        ids += list(rng.integers(3, image_token, size=prompt - prompt // 2))
        labels = [IGNORE] * len(ids)
        ans = list(rng.integers(3, image_token, size=answer)) + [2]
        ids += ans
        labels += ans
        samples.append((ids, labels))
    length = max(len(s[0]) for s in samples)
    b = len(samples)
    input_ids = np.full((b, length), pad_id, dtype=np.int32)
    labels = np.full((b, length), IGNORE, dtype=np.int32)
    mask = np.zeros((b, length), dtype=np.int32)
    for i, (ids, lab) in enumerate(samples):
        input_ids[i, :len(ids)] = ids
        labels[i, :len(lab)] = lab
        mask[i, :len(ids)] = 1
    n = sum(images_per_sample)
    pixels = rng.standard_normal((n, 3, size, size)).astype(np.float32)
    assert vocab > image_token
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask, "pixel_values": pixels}


def random_adapter(reference_or_modules, rank, rng, scale=0.05):
    """Random (non-zero) LoRA A and B for every module, under PEFT names."""
    tensors = {}
    for module, (out_features, in_features) in reference_or_modules.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = (rng.standard_normal((rank, in_features)) * scale
                                                               ).astype(np.float32)
        tensors[f"base_model.model.{module}.lora_B.weight"] = (rng.standard_normal((out_features, rank)) * scale
                                                               ).astype(np.float32)
    return tensors


def lora_shapes(reference):
    """{module: (out_features, in_features)} of a reference's LoRA modules."""
    return {m: (b.shape[0], a.shape[1]) for m, (a, b) in reference.lora.items()}


def set_adapter(reference, tensors):
    """Copies PEFT-named LoRA values into a reference model."""
    with torch.no_grad():
        for module, (a, b) in reference.lora.items():
            a.copy_(torch.tensor(tensors[f"base_model.model.{module}.lora_A.weight"], dtype=a.dtype))
            b.copy_(torch.tensor(tensors[f"base_model.model.{module}.lora_B.weight"], dtype=b.dtype))
