"""Generate PyTorch reference fixtures for largo's transformer tests.

Writes crates/largo/tests/fixtures/transformer.safetensors with
    attn.*        attention core (no projections), masks none/causal/padding/causal_padding
    rope.*        rotary embedding, rotate-half convention (HF Llama)
    sinusoidal.pe sinusoidal position table (PyTorch transformer tutorial)
    gpt.*         tiny nanoGPT (pre-norm, exact GELU, tied head): params, logits, loss, grads
    gpt_train.*   losses of 10 AdamW steps (nanoGPT param groups) on the same batch
    seed.*        tiny nn.TransformerEncoder LM (post-norm, ReLU): params, logits, loss, grads,
                  and logits with a key-padding mask

Run from the repository root:
    python3 tools/gen_transformer_fixtures.py

Conventions as in gen_fixtures.py: values are drawn in float32, the math runs in float64,
everything is stored as F32 (ids/targets as I64). Key-padding masks are F32, 1.0 = padded key.
"""
import math
import sys
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_fixtures import OUT, f64, randn, save_safetensors  # noqa: E402


def attention(qkv, n_head, causal=False, key_padding=None):
    """softmax(q k^T / sqrt(D) + mask) v per head; qkv [B,T,3C] -> y [B,T,C]."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    D = C // n_head
    q, k, v = (t.view(B, T, n_head, D).transpose(1, 2) for t in qkv.split(C, dim=2))  # [B,H,T,D]
    att = q @ k.transpose(-2, -1) / math.sqrt(D)
    if causal:
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    if key_padding is not None:
        att = att.masked_fill(key_padding.bool()[:, None, None, :], float("-inf"))
    y = att.softmax(-1) @ v
    return y.transpose(1, 2).reshape(B, T, C)


def sinusoidal(max_len, d):
    pos = torch.arange(max_len, dtype=f64)[:, None]
    div = torch.exp(torch.arange(0, d, 2, dtype=f64) * (-math.log(10000.0) / d))
    pe = torch.zeros(max_len, d, dtype=f64)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe


def attn_fixtures(fx):
    B, T, C, H = 2, 5, 8, 2
    qkv, dy = randn(B, T, 3 * C), randn(B, T, C).detach()
    key_padding = torch.zeros(B, T, dtype=f64)
    key_padding[0, -2:] = 1.0
    fx.update({"attn.qkv": qkv, "attn.dy": dy, "attn.key_padding": key_padding})
    for name, causal, pad in [("none", False, None), ("causal", True, None),
                              ("padding", False, key_padding), ("causal_padding", True, key_padding)]:
        x = qkv.detach().clone().requires_grad_()
        y = attention(x, H, causal, pad)
        y.backward(dy)
        fx[f"attn.{name}.y"], fx[f"attn.{name}.dqkv"] = y, x.grad


def rope_fixtures(fx):
    B, H, T, D = 2, 2, 5, 4
    x, dy = randn(B, H, T, D), randn(B, H, T, D).detach()
    inv_freq = 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=f64) / D))
    freqs = torch.outer(torch.arange(T, dtype=f64), inv_freq)
    emb = torch.cat((freqs, freqs), -1)
    rotate_half = torch.cat((-x[..., D // 2:], x[..., :D // 2]), -1)
    y = x * emb.cos() + rotate_half * emb.sin()
    y.backward(dy)
    fx.update({"rope.x": x, "rope.dy": dy, "rope.y": y, "rope.dx": x.grad})


# ---- tiny nanoGPT, written over a {name: tensor} dict with nanoGPT's state_dict names ----

def gpt_init(V, block, n_layer, C):
    shapes = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (block, C)}
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        shapes.update({p + "ln_1.weight": (C,), p + "ln_1.bias": (C,),
                       p + "attn.c_attn.weight": (3 * C, C), p + "attn.c_attn.bias": (3 * C,),
                       p + "attn.c_proj.weight": (C, C), p + "attn.c_proj.bias": (C,),
                       p + "ln_2.weight": (C,), p + "ln_2.bias": (C,),
                       p + "mlp.c_fc.weight": (4 * C, C), p + "mlp.c_fc.bias": (4 * C,),
                       p + "mlp.c_proj.weight": (C, 4 * C), p + "mlp.c_proj.bias": (C,)})
    shapes.update({"transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,)})
    return {n: init_param(n, s) for n, s in shapes.items()}


def init_param(name, shape):
    """0.3*randn, except LayerNorm weights 1 + 0.1*randn; drawn in f32, held in f64."""
    is_ln_weight = name.endswith(".weight") and any(k in name for k in ("ln_", "norm"))
    t = 1 + 0.1 * torch.randn(*shape) if is_ln_weight else 0.3 * torch.randn(*shape)
    return t.to(torch.float32).to(f64).requires_grad_()


def gpt_forward(P, idx, n_layer, n_head):
    T = idx.shape[1]
    C = P["transformer.wte.weight"].shape[1]
    x = F.embedding(idx, P["transformer.wte.weight"]) + P["transformer.wpe.weight"][:T]
    ln = lambda x, n: F.layer_norm(x, (C,), P[n + ".weight"], P[n + ".bias"], eps=1e-5)  # noqa: E731
    lin = lambda x, n: F.linear(x, P[n + ".weight"], P[n + ".bias"])  # noqa: E731
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        x = x + lin(attention(lin(ln(x, p + "ln_1"), p + "attn.c_attn"), n_head, causal=True), p + "attn.c_proj")
        x = x + lin(F.gelu(lin(ln(x, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj")
    x = ln(x, "transformer.ln_f")
    return F.linear(x, P["transformer.wte.weight"])  # tied lm_head


def gpt_fixtures(fx):
    V, block, n_layer, n_head, C = 11, 8, 2, 2, 8
    P = gpt_init(V, block, n_layer, C)
    idx, targets = torch.randint(0, V, (2, block)), torch.randint(0, V, (2, block))
    targets[0, 3] = -100
    logits = gpt_forward(P, idx, n_layer, n_head)
    loss = F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-100)
    loss.backward()
    fx.update({"gpt.idx": idx, "gpt.targets": targets, "gpt.logits": logits, "gpt.loss": loss.reshape(1)})
    for name, p in P.items():
        fx[f"gpt.param.{name}"], fx[f"gpt.grad.{name}"] = p, p.grad

    P = {n: p.detach().clone().requires_grad_() for n, p in P.items()}
    groups = [{"params": [p for p in P.values() if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in P.values() if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = F.cross_entropy(gpt_forward(P, idx, n_layer, n_head).view(-1, V), targets.view(-1),
                               ignore_index=-100)
        loss.backward()
        losses.append(loss.item())
        opt.step()
    fx["gpt_train.losses"] = torch.tensor(losses, dtype=f64)


# ---- the nn.TransformerEncoder LM (PyTorch tutorial shape), done right ----

class EncoderLM(nn.Module):
    def __init__(self, V, d, nhead, d_hid, nlayers, max_len=64, dropout=0.0):
        super().__init__()
        self.d = d
        self.embedding = nn.Embedding(V, d)
        self.register_buffer("pe", sinusoidal(max_len, d))
        layer = nn.TransformerEncoderLayer(d, nhead, d_hid, dropout=dropout, batch_first=True)
        self.transformer_encoder = nn.TransformerEncoder(layer, nlayers, enable_nested_tensor=False)
        self.decoder = nn.Linear(d, V)

    def forward(self, src, key_padding=None):
        T = src.shape[1]
        x = self.embedding(src) * math.sqrt(self.d) + self.pe[:T]
        mask = nn.Transformer.generate_square_subsequent_mask(T, dtype=x.dtype)
        x = self.transformer_encoder(x, mask=mask, src_key_padding_mask=key_padding)
        return self.decoder(x)


def seed_fixtures(fx):
    V, T = 11, 6
    model = EncoderLM(V, d=8, nhead=2, d_hid=16, nlayers=2).double().train()  # train(): no fast path
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(init_param(name, p.shape))
    src, targets = torch.randint(0, V, (2, T)), torch.randint(0, V, (2, T))
    logits = model(src)
    loss = F.cross_entropy(logits.view(-1, V), targets.view(-1))
    loss.backward()
    fx.update({"seed.src": src, "seed.targets": targets, "seed.logits": logits, "seed.loss": loss.reshape(1)})
    for name, p in model.named_parameters():
        fx[f"seed.param.{name}"], fx[f"seed.grad.{name}"] = p, p.grad

    key_padding = torch.zeros(2, T, dtype=f64)
    key_padding[0, -2:] = 1.0
    fx["seed.key_padding"] = key_padding
    with warnings.catch_warnings():  # bool padding mask next to a float causal mask: PyTorch converts it
        warnings.simplefilter("ignore", UserWarning)
        fx["seed.pad.logits"] = model(src, key_padding=key_padding.bool())


if __name__ == "__main__":
    torch.manual_seed(0)
    fx = {"sinusoidal.pe": sinusoidal(10, 8)}
    for make in (attn_fixtures, rope_fixtures, gpt_fixtures, seed_fixtures):
        make(fx)
    save_safetensors(OUT / "transformer.safetensors", fx)
