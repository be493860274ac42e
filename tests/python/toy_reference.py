"""The trainer's reference: the toy regression run of `vlft _train-toy`,
mirrored step by step with PyTorch's own training pieces (torch.optim.AdamW
with decay / no-decay groups, torch.optim.lr_scheduler.LambdaLR with
transformers' schedule lambdas, torch.nn.utils.clip_grad_norm_) and the
step arithmetic of transformers' Trainer written out independently here.

The data order comes from the libraries themselves: the val split is
numpy.random.default_rng(seed).permutation (datasets' train_test_split), each
epoch's order torch.randperm with a generator seeded seed + epoch
(accelerate's SeedableRandomSampler inside transformers' Trainer).
"""
import math
import os

import numpy as np
import torch

from vlft_testing import write_safetensors

def split(n, val_size, seed):
    """datasets' train_test_split as LLaMA-Factory calls it."""
    n_test = 0
    if val_size > 0:
        n_test = math.ceil(val_size * n) if val_size < 1 else int(val_size)
    if n_test == 0:
        return list(range(n)), []
    permutation = np.random.default_rng(seed).permutation(n).tolist()
    return permutation[n_test:], permutation[:n_test]


def shuffled(n, seed):
    """transformers' per-epoch order: accelerate's SeedableRandomSampler reseeds with seed + epoch."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def schedule_lambda(kind, warmup, total):
    """transformers/optimization.py's lambdas."""
    def fn(step):
        if kind == "constant":
            return 1.0
        if step < warmup:
            return float(step) / float(max(1, warmup))
        if kind == "constant_with_warmup":
            return 1.0
        if kind == "linear":
            return max(0.0, float(total - step) / float(max(1, total - warmup)))
        progress = float(step - warmup) / float(max(1, total - warmup))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))
    return fn


def make_toy(folder, n=40, dims=(6, 8, 3), seed=0):
    """Writes folder/toy.safetensors (data + initial params), returns its dict."""
    d, h, k = dims
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, d)).astype(np.float32)
    y = np.tanh(x @ r.standard_normal((d, k))).astype(np.float32)
    tensors = {
        "x": x, "y": y,
        "fc1.weight": (r.standard_normal((h, d)) * 0.5).astype(np.float32),
        "fc1.bias": (r.standard_normal(h) * 0.1).astype(np.float32),
        "fc2.weight": (r.standard_normal((k, h)) * 0.5).astype(np.float32),
        "fc2.bias": (r.standard_normal(k) * 0.1).astype(np.float32),
    }
    write_safetensors(os.path.join(folder, "toy.safetensors"), tensors)
    return tensors


DEFAULTS = dict(per_device_train_batch_size=4, per_device_eval_batch_size=3, gradient_accumulation_steps=2,
                learning_rate=0.05, num_train_epochs=3, lr_scheduler_type="cosine", warmup_ratio=0.2,
                weight_decay=0.1, max_grad_norm=0.5, val_size=0.1, seed=7, logging_steps=2, save_steps=4,
                adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8)


def write_recipe(folder, output_dir, name="recipe.yaml", **overrides):
    cfg = dict(DEFAULTS)
    cfg.update(overrides)
    lines = [f"model_name_or_path: {os.path.join(folder, 'toy.safetensors')}", "stage: sft", "do_train: true",
             "finetuning_type: full", "dataset: toy", "template: yi_vl", f"output_dir: {output_dir}"]
    for key, value in cfg.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        lines.append(f"{key}: {value}")
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path, cfg


def reference_run(tensors, cfg):
    """The whole run in PyTorch; returns dict with per-update records, final params, eval_loss."""
    torch.manual_seed(0)
    x = torch.from_numpy(np.array(tensors["x"]))
    y = torch.from_numpy(np.array(tensors["y"]))
    params = {name: torch.tensor(np.array(tensors[name]), requires_grad=True)
              for name in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")}

    def forward(ids):
        hidden = torch.tanh(x[ids] @ params["fc1.weight"].T + params["fc1.bias"])
        out = hidden @ params["fc2.weight"].T + params["fc2.bias"]
        return ((out - y[ids]) ** 2).mean()

    n = x.shape[0]
    train_ids, eval_ids = split(n, cfg["val_size"], cfg["seed"])
    bs, ga = cfg["per_device_train_batch_size"], cfg["gradient_accumulation_steps"]
    batches = math.ceil(len(train_ids) / bs)
    per_epoch = max(batches // ga, 1)
    if cfg.get("max_steps", 0) > 0:
        max_steps = cfg["max_steps"]
        epochs = max_steps // per_epoch + int(max_steps % per_epoch > 0)
    else:
        max_steps = math.ceil(cfg["num_train_epochs"] * per_epoch)
        epochs = math.ceil(cfg["num_train_epochs"])
    warmup = cfg.get("warmup_steps", 0) or math.ceil(cfg["warmup_ratio"] * max_steps)
    optimizer = torch.optim.AdamW(
        [{"params": [params["fc1.weight"], params["fc2.weight"]], "weight_decay": cfg["weight_decay"]},
         {"params": [params["fc1.bias"], params["fc2.bias"]], "weight_decay": 0.0}],
        lr=cfg["learning_rate"], betas=(cfg["adam_beta1"], cfg["adam_beta2"]), eps=cfg["adam_epsilon"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_lambda(cfg["lr_scheduler_type"], warmup, max_steps))
    # transformers 4.50's _inner_training_loop: the epoch is fetched in chunks of
    # `ga` micro-batches, the last chunk holding num_examples % ga (or ga) of them;
    # an update follows micro-batch `step` when (step + 1) % ga == 0 or it is the
    # epoch's last; grads are zeroed only after an update.
    updates, global_step, done = [], 0, False
    pending, pending_batches = 0.0, 0
    num_examples = len(train_ids)
    for epoch in range(epochs):
        order = shuffled(len(train_ids), cfg["seed"] + epoch)
        iterator = iter([[train_ids[i] for i in order[b * bs:(b + 1) * bs]] for b in range(batches)])
        remainder = num_examples % ga or ga
        total_updates = batches // ga + 1 - (1 if ga == 1 else 0)
        step = -1
        for update_step in range(total_updates):
            num_batches = ga if update_step != total_updates - 1 else remainder
            chunk = [batch for _, batch in zip(range(num_batches), iterator)]
            for ids in chunk:
                step += 1
                loss = forward(ids)
                (loss / ga).backward()
                pending += loss.item() / ga
                pending_batches += 1
                if (step + 1) % ga == 0 or step + 1 == batches:
                    lr = optimizer.param_groups[0]["lr"]
                    norm = torch.nn.utils.clip_grad_norm_(list(params.values()), cfg["max_grad_norm"]).item()
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                    global_step += 1
                    updates.append(dict(step=global_step, loss=pending, lr=lr, grad_norm=norm,
                                        next_lr=scheduler.get_last_lr()[0], epoch=epoch + (step + 1) / batches,
                                        micro_batches=pending_batches))
                    pending, pending_batches = 0.0, 0
                    if global_step >= max_steps:
                        done = True
                        break
            if done:
                break
        if done:
            break
    eval_loss = None
    if eval_ids:
        ebs = cfg["per_device_eval_batch_size"]
        with torch.no_grad():
            total = sum(forward(eval_ids[i:i + ebs]).item() * len(eval_ids[i:i + ebs]) for i in range(0, len(eval_ids), ebs))
        eval_loss = total / len(eval_ids)
    return dict(updates=updates, params={k: v.detach().numpy() for k, v in params.items()}, eval_loss=eval_loss,
                max_steps=max_steps, warmup=warmup, n_train=len(train_ids))
