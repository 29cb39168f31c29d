"""PyTorch twin of `largo bench gpt`: a nanoGPT-shaped GPT on the CPU, f32.

Model: 4 layers, n_embd 256, 8 heads, MLP 1024 with exact GELU, vocab --vocab (73), block 128,
bias, no dropout, pre-norm, learned positions, lm_head tied to wte; nanoGPT init (normal 0.02,
c_proj weights 0.02/sqrt(2*n_layer), biases 0).

Modes
  --mode train     AdamW(3e-4, betas 0.9/0.95, wd 0.1 on dim>=2 params), one seeded random batch
                   16 x 128, 25 steps; tokens/s from the median of steps 3-22, and peak RSS.
  --mode generate  batch 1, 1-token prompt, 200 greedy tokens, one token per step through a
                   per-layer KV cache. 200 positions do not fit block 128, so this mode gives wpe
                   256 rows (the per-token compute is the same; only the table is larger).
  --mode eval      --data DIR --weights W: the validation loss of `largo export`ed weights W
                   (safetensors, nanoGPT names) on the same 20 val batches as budget mode, so a
                   largo run under the same budget is measured by the same yardstick.
  --mode budget    --data DIR --minutes M: DIR holds train.bin/val.bin (little-endian u16 ids, u32
                   when meta.json says "dtype": "u32") and meta.json with "vocab_size". Trains on
                   random 16 x 128 windows for M minutes of wall time, AdamW 3e-4 with 100 linear
                   warmup steps then cosine down to 3e-5 over 1,000,000/2048 = 488 steps (a horizon
                   of one million tokens at 2048 tokens/step; the lr stays at 3e-5 past it), grad
                   clip 1.0; then reports the mean loss over 20 fixed val batches (seed 0).

Run:  python3 tools/bench_gpt.py --mode train [--threads 2] [--vocab 73]
      python3 tools/bench_gpt.py --mode generate
      python3 tools/bench_gpt.py --mode budget --data DIR --minutes 10
      python3 tools/bench_gpt.py --mode eval --data DIR --weights model.safetensors
"""
import argparse
import json
import math
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

BATCH, BLOCK = 16, 128


class Block(nn.Module):
    def __init__(self, C, n_head):
        super().__init__()
        self.n_head = n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.attn = nn.Module()
        self.attn.c_attn, self.attn.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.mlp = nn.Module()
        self.mlp.c_fc, self.mlp.c_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x, cache=None):
        """cache: None (full causal sequence) or a dict holding this layer's past k, v [B,H,T,D]."""
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, -1).transpose(1, 2)
                   for t in self.attn.c_attn(self.ln_1(x)).split(C, dim=2))
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat((cache["k"], k), 2), torch.cat((cache["v"], v), 2)
            cache["k"], cache["v"] = k, v
        # With a cache, each step feeds one token that may see every cached position.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None)
        x = x + self.attn.c_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, vocab, block=BLOCK, n_layer=4, n_head=8, C=256):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab, C), wpe=nn.Embedding(block, C),
            h=nn.ModuleList(Block(C, n_head) for _ in range(n_layer)), ln_f=nn.LayerNorm(C)))
        self.lm_head = nn.Linear(C, vocab, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif "ln_" not in name:
                nn.init.zeros_(p)

    def forward(self, idx, caches=None, pos0=0):
        pos = torch.arange(pos0, pos0 + idx.shape[1])
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for i, block in enumerate(self.transformer.h):
            x = block(x, None if caches is None else caches[i])
        return self.lm_head(self.transformer.ln_f(x))


def adamw(model, lr):
    params = list(model.parameters())  # tied weight appears once
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def loss_fn(model, x, y):
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def bench_train(args):
    model = GPT(args.vocab)
    opt = adamw(model, 3e-4)
    x, y = torch.randint(0, args.vocab, (2, BATCH, BLOCK))
    times = []
    for _ in range(25):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast_bf16):
            loss = loss_fn(model, x, y)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    mode = "autocast bf16" if args.autocast_bf16 else \
        f"matmul precision {torch.get_float32_matmul_precision()}"
    print(f"pytorch gpt train: {BATCH * BLOCK / statistics.median(times[3:23]):.0f} tokens/s "
          f"(median of steps 3-22, {mode})")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


@torch.inference_mode()
def bench_generate(args, n_new=200):
    model = GPT(args.vocab, block=256).eval()
    caches = [{} for _ in model.transformer.h]
    tok = torch.randint(0, args.vocab, (1, 1))
    out = []
    t0 = time.perf_counter()
    for pos in range(n_new):
        logits = model(tok, caches, pos0=pos)
        tok = logits[:, -1].argmax(-1, keepdim=True)
        out.append(tok.item())
    dt = time.perf_counter() - t0
    print(f"pytorch gpt generate: {n_new / dt:.0f} tokens/s ({n_new} tokens, batch 1, KV cache)")


def load_tokens(data):
    meta = json.loads((data / "meta.json").read_text())
    dtype = np.dtype("<u4") if meta.get("dtype") == "u32" else np.dtype("<u2")
    train, val = (torch.from_numpy(np.fromfile(data / f, dtype=dtype).astype(np.int64))
                  for f in ("train.bin", "val.bin"))
    return meta, train, val


def batch(tokens, gen):
    i = torch.randint(0, len(tokens) - BLOCK, (BATCH,), generator=gen)
    w = torch.stack([tokens[j:j + BLOCK + 1] for j in i.tolist()])
    return w[:, :-1], w[:, 1:]


def val_loss(model, val):
    """Mean loss over 20 fixed validation batches (seed 0): the yardstick of both runs."""
    model.eval()
    val_gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        return statistics.mean(loss_fn(model, *batch(val, val_gen)).item() for _ in range(20))


def bench_budget(args):
    meta, train, val = load_tokens(Path(args.data))
    lr_max, lr_min, warmup, horizon = 3e-4, 3e-5, 100, 1_000_000 // (BATCH * BLOCK)

    def lr_at(step):
        if step < warmup:
            return lr_max * (step + 1) / warmup
        progress = min(1.0, (step - warmup) / (horizon - warmup))
        return lr_min + 0.5 * (1 + math.cos(math.pi * progress)) * (lr_max - lr_min)

    model = GPT(meta["vocab_size"])
    opt = adamw(model, lr_max)
    gen = torch.Generator().manual_seed(1)
    step, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < args.minutes * 60:
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x, y = batch(train, gen)
        opt.zero_grad(set_to_none=True)
        loss_fn(model, x, y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
    print(f"pytorch val loss after {args.minutes:g} min: {val_loss(model, val):.4f} (steps {step})")


def bench_eval(args):
    from safetensors.torch import load_file
    meta, _, val = load_tokens(Path(args.data))
    model = GPT(meta["vocab_size"])
    state = load_file(args.weights)
    # A strict load: every tensor present with its shape (lm_head is tied to wte).
    model.load_state_dict(state, strict=True)
    print(f"val loss of {args.weights}: {val_loss(model, val):.4f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("train", "generate", "budget", "eval"), default="train")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--matmul-precision", choices=("highest", "medium"), default="highest",
                    help="torch.set_float32_matmul_precision (medium: bf16 matmuls on AMX CPUs)")
    ap.add_argument("--autocast-bf16", action="store_true",
                    help="train under torch.autocast('cpu', dtype=torch.bfloat16)")
    ap.add_argument("--vocab", type=int, default=73)
    ap.add_argument("--data")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--weights")
    args = ap.parse_args()
    if args.mode in ("budget", "eval") and not args.data:
        ap.error(f"--mode {args.mode} needs --data DIR")
    if args.mode == "eval" and not args.weights:
        ap.error("--mode eval needs --weights FILE")
    torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision(args.matmul_precision)
    torch.manual_seed(0)
    modes = {"train": bench_train, "generate": bench_generate, "budget": bench_budget,
             "eval": bench_eval}
    modes[args.mode](args)
