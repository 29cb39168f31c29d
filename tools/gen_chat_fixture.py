"""A tiny random Llama GGUF with a tokenizer and a chat template, for `largo serve`'s chat tests.

Writes crates/largo/tests/fixtures/llama/tiny-chat.gguf: architecture `llama` (2 layers,
hidden 64, 4 query heads / 2 KV heads, ff 128, context 1024), Q8_0 matrices (the integer
kernels, as a served GGUF runs), the byte-level BPE tokenizer of
crates/largo/tests/fixtures/gguf/tiny_llama_bpe.gguf (424 tokens; BOS <|begin_of_text|>,
end of turn <|eot_id|>), and a small chat template ending each turn with <|eot_id|>.
The weights are random: the point is the server's behaviour, not the text.

Run from the repository root (gguf, numpy):
    python3 tools/gen_chat_fixture.py
"""
from pathlib import Path

import gguf
import numpy as np

SRC = Path("crates/largo/tests/fixtures/gguf/tiny_llama_bpe.gguf")
OUT = Path("crates/largo/tests/fixtures/llama/tiny-chat.gguf")
TEMPLATE = ("{{ bos_token }}{% for message in messages %}{{ message['role'] + ': ' + "
            "message['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
            "assistant: {% endif %}")
HIDDEN, HEADS, KV_HEADS, FF, LAYERS, CONTEXT = 64, 4, 2, 128, 2, 1024


def field(reader, key):
    f = reader.fields[key]
    return [f.parts[i] for i in f.data]


def main():
    src = gguf.GGUFReader(str(SRC))
    tokens = [bytes(p).decode("utf-8") for p in field(src, "tokenizer.ggml.tokens")]
    types = [int(p[0]) for p in field(src, "tokenizer.ggml.token_type")]
    merges = [bytes(p).decode("utf-8") for p in field(src, "tokenizer.ggml.merges")]
    pre = bytes(field(src, "tokenizer.ggml.pre")[0]).decode()
    vocab = len(tokens)
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(OUT), "llama")
    w.add_name("tiny-chat")
    w.add_block_count(LAYERS)
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(vocab)
    w.add_uint32("general.file_type", 7)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(int(field(src, "tokenizer.ggml.bos_token_id")[0][0]))
    w.add_eos_token_id(int(field(src, "tokenizer.ggml.eos_token_id")[0][0]))
    w.add_eot_token_id(int(field(src, "tokenizer.ggml.eot_token_id")[0][0]))
    w.add_add_bos_token(False)
    w.add_chat_template(TEMPLATE)

    def matrix(name, rows, cols):
        t = (0.3 * rng.standard_normal((rows, cols))).astype(np.float32)
        q = gguf.GGMLQuantizationType.Q8_0
        w.add_tensor(name, gguf.quants.quantize(t, q), raw_dtype=q)

    def norm(name):
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32))

    head_dim = HIDDEN // HEADS
    matrix("token_embd.weight", vocab, HIDDEN)
    for i in range(LAYERS):
        norm(f"blk.{i}.attn_norm.weight")
        matrix(f"blk.{i}.attn_q.weight", HIDDEN, HIDDEN)
        matrix(f"blk.{i}.attn_k.weight", KV_HEADS * head_dim, HIDDEN)
        matrix(f"blk.{i}.attn_v.weight", KV_HEADS * head_dim, HIDDEN)
        matrix(f"blk.{i}.attn_output.weight", HIDDEN, HIDDEN)
        norm(f"blk.{i}.ffn_norm.weight")
        matrix(f"blk.{i}.ffn_gate.weight", FF, HIDDEN)
        matrix(f"blk.{i}.ffn_up.weight", FF, HIDDEN)
        matrix(f"blk.{i}.ffn_down.weight", HIDDEN, FF)
    norm("output_norm.weight")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, vocabulary {vocab})")


if __name__ == "__main__":
    main()
