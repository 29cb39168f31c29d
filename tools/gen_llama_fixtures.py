"""Tiny random Llama-family decoders for largo's parity tests.

Writes crates/largo/tests/fixtures/llama/:
    llama/         a Hugging Face directory (config.json, model.safetensors): LlamaForCausalLM,
                   GQA (4 query heads, 2 KV heads), an untied head, rope_theta 10000
    qwen2/         Qwen2ForCausalLM: q/k/v biases, a tied head, rope_theta 1e6
    llama-f32.gguf, llama-q8_0.gguf, llama-q4_0.gguf, qwen2-f32.gguf, qwen2-q8_0.gguf:
                   the same weights as GGUF, written as llama.cpp's converter writes them
                   (GGUF names; `llama` q/k rows permuted for interleaved rotation; norms f32)
    reference.json token ids and transformers' f32 logits [T, vocab] of each HF model, and of
                   each GGUF's weights as gguf.quants dequantises them (q/k rows un-permuted)

Run from the repository root (torch, transformers, safetensors, gguf, numpy):
    python3 tools/gen_llama_fixtures.py
"""
import json
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

OUT = Path("crates/largo/tests/fixtures/llama")
COMMON = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
              rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)


def make(kind):
    torch.manual_seed({"llama": 0, "qwen2": 1}[kind])
    if kind == "llama":
        cfg = LlamaConfig(**COMMON, rope_theta=10000.0, tie_word_embeddings=False)
        model = LlamaForCausalLM(cfg)
    else:
        cfg = Qwen2Config(**COMMON, rope_theta=1e6, tie_word_embeddings=True)
        model = Qwen2ForCausalLM(cfg)
    # Random init is N(0, 0.02): scale up so the logits are far from uniform.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    return model.eval()


def permute(w, n_head):
    # llama.cpp's convert_hf_to_gguf LlamaModel.permute: half-split rows → interleaved pairs.
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def write_gguf(model, kind, qtype, path):
    cfg = model.config
    arch = kind
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_vocab_size(cfg.vocab_size)
    w.add_uint32("general.file_type", {"F32": 0, "Q8_0": 7, "Q4_0": 2}[qtype])
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
                 "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
                 "self_attn.o_proj.weight": "attn_output.weight", "self_attn.q_proj.bias": "attn_q.bias",
                 "self_attn.k_proj.bias": "attn_k.bias", "self_attn.v_proj.bias": "attn_v.bias",
                 "post_attention_layernorm.weight": "ffn_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
                 "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}
    for i in range(cfg.num_hidden_layers):
        for k, v in per_layer.items():
            names[f"model.layers.{i}.{k}"] = f"blk.{i}.{v}"
    for hf, t in sd.items():
        if hf == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        name = names[hf]
        if kind == "llama" and name.endswith("attn_q.weight"):
            t = permute(t, cfg.num_attention_heads)
        if kind == "llama" and name.endswith("attn_k.weight"):
            t = permute(t, cfg.num_key_value_heads)
        if t.ndim == 2 and qtype != "F32":
            q = getattr(gguf.GGMLQuantizationType, qtype)
            w.add_tensor(name, gguf.quants.quantize(t, q), raw_dtype=q)
        else:
            w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def unpermute(w, n_head):
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def gguf_logits(model, kind, path, ids):
    """transformers' logits with the GGUF's (dequantised) weights loaded into `model`'s shape."""
    cfg = model.config
    reader = gguf.GGUFReader(str(path))
    by_name = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reader.tensors}
    fresh = type(model)(cfg).eval()
    sd = fresh.state_dict()
    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    for name, t in by_name.items():
        t = np.asarray(t, dtype=np.float32)
        if name in names:
            hf = names[name]
        else:
            _, i, field = name.split(".", 2)
            inv = {"attn_norm.weight": "input_layernorm.weight", "attn_q.weight": "self_attn.q_proj.weight",
                   "attn_k.weight": "self_attn.k_proj.weight", "attn_v.weight": "self_attn.v_proj.weight",
                   "attn_output.weight": "self_attn.o_proj.weight", "attn_q.bias": "self_attn.q_proj.bias",
                   "attn_k.bias": "self_attn.k_proj.bias", "attn_v.bias": "self_attn.v_proj.bias",
                   "ffn_norm.weight": "post_attention_layernorm.weight", "ffn_gate.weight": "mlp.gate_proj.weight",
                   "ffn_up.weight": "mlp.up_proj.weight", "ffn_down.weight": "mlp.down_proj.weight"}[field]
            hf = f"model.layers.{i}.{inv}"
            if kind == "llama" and field == "attn_q.weight":
                t = unpermute(t, cfg.num_attention_heads)
            if kind == "llama" and field == "attn_k.weight":
                t = unpermute(t, cfg.num_key_value_heads)
        sd[hf] = torch.from_numpy(t.reshape(sd[hf].shape).copy())
    if cfg.tie_word_embeddings:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    fresh.load_state_dict(sd)
    with torch.no_grad():
        return fresh(torch.tensor([ids])).logits[0]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    ref = {}
    ids = [1, 7, 42, 3, 3, 19, 63, 0, 25, 8, 11, 50]
    for kind in ["llama", "qwen2"]:
        model = make(kind)
        model.save_pretrained(OUT / kind, safe_serialization=True)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        ref[kind] = {"ids": ids, "logits": logits.numpy().round(7).tolist()}
        for qtype in (["F32", "Q8_0", "Q4_0"] if kind == "llama" else ["F32", "Q8_0"]):
            path = OUT / f"{kind}-{qtype.lower()}.gguf"
            write_gguf(model, kind, qtype, path)
            logits = gguf_logits(model, kind, path, ids)
            ref[path.name] = {"ids": ids, "logits": logits.numpy().round(7).tolist()}
    (OUT / "reference.json").write_text(json.dumps(ref) + "\n")
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(p, p.stat().st_size)


if __name__ == "__main__":
    main()
