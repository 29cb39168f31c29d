#!/usr/bin/env python3
"""Reference fixtures for largo's GGUF tokenizers and chat templates.

Writes into crates/largo/tests/fixtures/gguf/:
- tokenizer_smollm.json: hard strings with the ids transformers gives for the shared SmolLM2 GGUF
  (gpt2 / smollm), its decode, its chat template and rendered conversations;
- tiny_<name>.gguf + tokenizer_<name>.json: tiny GGUFs (a small vocabulary trained here with the
  `tokenizers` library, no tensors of note) for gpt2 with pre llama-bpe, qwen2 and gpt2, and for the
  SentencePiece-style `llama` model (tokens + scores, byte fallback), with transformers' ids.

The reference is `AutoTokenizer.from_pretrained(dir, gguf_file=name)` (offline).
Run: python tools/gen_gguf_tokenizer_fixtures.py  (needs torch, transformers 5.x, gguf, tokenizers)
"""
import json
import os
import shutil
import sys
import tempfile

import gguf
import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates", "largo", "tests", "fixtures", "gguf")
SMOL_DIR = os.path.join(ROOT, "..", "shared", "models", "smollm2-135m-instruct")
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

HARD = [
    "",
    " ",
    "Hello world",
    " Hello world",
    "Hello world ",
    "   leading and trailing   ",
    "don't, can't, won't; it's John's; I'M HERE; YOU'LL; we'd; they've; 'quoted'",
    "DON'T SHOUT I'VE SAID",
    "The year 2024 had 366 days; π ≈ 3.14159265358979",
    "1234567890 12 123 1234 12345 0.5 -17 +3e-10 1,000,000",
    "phone: +1 (555) 010-9999, id=007",
    "café naïve résumé façade Ångström",
    "Zürich Straße München",
    "Ελληνικά κείμενο",
    "Русский текст, ёжик",
    "中文字符测试，你好世界！",
    "日本語のテキスト、カタカナとひらがな。",
    "한국어 텍스트 안녕하세요",
    "مرحبا بالعالم العربي",
    "שלום עולם",
    "हिन्दी पाठ",
    "ไทย ภาษา",
    "emoji 😀😃😄 🎉🎉",
    "family 👨‍👩‍👧‍👦 and flags 🇫🇷🇯🇵 and skin 👍🏽",
    "combining: e\u0301 a\u0308 n\u0303 (NFD) vs é ä ñ",
    "zero\u200bwidth\u200cjoiner\u200d and nbsp\u00a0here",
    "def f(x):\n\treturn x ** 2\n",
    "    if (a && b) { return a->c[0]; }\n",
    "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
    "for i in range(10):\n        print(i)  # comment\n",
    "<html><body class=\"x\">&amp; &lt;tag&gt;</body></html>",
    "SELECT * FROM t WHERE a='b' AND c>=10;",
    "a\n\nb\n\n\nc",
    "\n",
    "\n\n\n\n",
    "\t\t\tindented\ttabs",
    "spaces     in     between",
    "trailing newline\n",
    "   ",
    "line1\r\nline2\r\n",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "text<|im_end|>more text",
    "<|endoftext|>",
    "not special: <|im_start  |> <im_start>",
    "email me at someone@example.com or https://example.org/path?q=1&r=2#frag",
    "$100.00 €50 £30 ¥1000 ₹500",
    "Mixed: ABCdef123GHI_jkl-MNO.pqr",
    "((((()))))[[[[]]]]{{{{}}}}",
    "!!!??? ... --- ***",
    "camelCaseIdentifier snake_case_identifier SCREAMING_CASE",
    "The quick brown fox jumps over the lazy dog.",
    "It's 5 o'clock somewhere's",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math 𝐀𝐁𝐂 and ancient 𓀀",
    "x" * 40 + " " + "ab" * 20,
]

CONVERSATIONS = [
    [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What is 2+2?"},
    ],
    [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke about café owners 😀."},
    ],
    [
        {"role": "user", "content": "Only a user turn, with\nnewlines\tand tabs."},
    ],
    [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": "Two"},
        {"role": "user", "content": "Three"},
        {"role": "assistant", "content": "Four"},
    ],
]

# Extra templates, rendered by transformers' jinja environment, that exercise what real chat
# templates use: tojson, raise_exception, loop controls, namespace, string methods.
EXTRA_TEMPLATES = {
    "json_tools": (
        "{%- if messages[0]['role'] == 'system' %}{{- '<|sys|>' + messages[0]['content'] | trim + '\\n' }}{%- endif %}\n"
        "{%- for message in messages %}\n"
        "    {%- if message['role'] == 'system' %}{% continue %}{% endif %}\n"
        "    {{- '<|' + message.role + '|>' + message.content.strip() + eos_token + '\\n' }}\n"
        "    {%- if loop.index > 10 %}{% break %}{% endif %}\n"
        "{%- endfor %}\n"
        "{{- {'a': 'é<&>\\'', 'b': [1, 2.5, true, none], 'c': {'d': 'x\\ny'}} | tojson }}\n"
        "{{- messages | tojson(indent=2) }}\n"
        "{%- set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}\n"
        "{%- if add_generation_prompt %}{{ bos_token + '<|assistant|>' }}{% endif %}"
    ),
    "raises": "{% if messages|length > 1 %}{{ raise_exception('Only one message is supported') }}{% endif %}{{ messages[0].content }}",
}


def byte_level_vocab(corpus, size):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus, trainer)
    j = json.loads(tok.to_str())
    vocab = sorted(j["model"]["vocab"].items(), key=lambda kv: kv[1])
    merges = [" ".join(m) if isinstance(m, list) else m for m in j["model"]["merges"]]
    return [t for t, _ in vocab], merges


def spm_vocab(corpus, size):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=size, show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    j = json.loads(tok.to_str())
    vocab = sorted(j["model"]["vocab"].items(), key=lambda kv: kv[1])
    return [t for t, _ in vocab]


def write_gguf(path, arch, kv_tokens):
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(len(kv_tokens["tokens"]))
    w.add_tokenizer_model(kv_tokens["model"])
    if "pre" in kv_tokens:
        w.add_tokenizer_pre(kv_tokens["pre"])
    w.add_token_list(kv_tokens["tokens"])
    w.add_token_types(kv_tokens["types"])
    if "scores" in kv_tokens:
        w.add_token_scores(kv_tokens["scores"])
    if "merges" in kv_tokens:
        w.add_token_merges(kv_tokens["merges"])
    w.add_bos_token_id(kv_tokens["bos"])
    w.add_eos_token_id(kv_tokens["eos"])
    if "eot" in kv_tokens:
        w.add_eot_token_id(kv_tokens["eot"])
    if "unk" in kv_tokens:
        w.add_unk_token_id(kv_tokens["unk"])
    if "add_bos" in kv_tokens:
        w.add_add_bos_token(kv_tokens["add_bos"])
    if "add_space_prefix" in kv_tokens:
        w.add_add_space_prefix(kv_tokens["add_space_prefix"])
    if "chat_template" in kv_tokens:
        w.add_chat_template(kv_tokens["chat_template"])
    w.add_tensor("token_embd.weight", np.zeros((len(kv_tokens["tokens"]), 8), dtype=np.float32)[:1, :])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def dump(obj, path):
    """One JSON value per line for the long lists, so diffs stay readable and files small."""
    parts = []
    for key, value in obj.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            items = ",\n  ".join(json.dumps(v, ensure_ascii=False) for v in value)
            parts.append(f"{json.dumps(key)}: [\n  {items}\n ]")
        else:
            parts.append(f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n " + ",\n ".join(parts) + "\n}\n")


def reference(dir_, name, strings, vocab_size=None):
    tok = AutoTokenizer.from_pretrained(dir_, gguf_file=name)
    cases = []
    # transformers' GPT2Tokenizer registers its default unk/bos/eos `<|endoftext|>` even when the
    # vocabulary has no such token, giving it a new id past the vocabulary that no model can embed
    # (llama-bpe here). Such references are marked, and the Rust tests skip them.
    vocab_size = vocab_size or len(tok)
    for s in strings:
        with_special = tok.encode(s, add_special_tokens=True)
        without = tok.encode(s, add_special_tokens=False)
        case = {"text": s, "ids": without, "ids_special": with_special, "decode": tok.decode(without)}
        if any(i >= vocab_size for i in with_special + without):
            case["skip"] = f"transformers gives an id past the file's {vocab_size} tokens"
        cases.append(case)
    return tok, cases


def corpus():
    base = [
        "The quick brown fox jumps over the lazy dog. It's a nice day, isn't it? I'm sure they'll come.",
        "Numbers like 2024, 12345 and 3.14159 appear in text; so do 100, 1000 and 10000.",
        "def main():\n    for i in range(10):\n        print(i)\n    return 0\n",
        "Hello world! Hello there. Hello again, world.\n\n  Indented text\n\tTabbed text",
        "café résumé naïve Zürich München Straße",
        "Привет мир 你好世界 こんにちは 안녕하세요 مرحبا",
    ]
    return base * 20 + HARD


def tiny_bpe(name, pre, arch, specials, eot=None, bos=None, eos=None, add_bos=None):
    tokens, merges = byte_level_vocab(corpus(), 420)
    types = [1] * len(tokens)
    for s in specials:
        tokens.append(s)
        types.append(3)
    # a user-defined token (type 4), matched whole but not special
    tokens.append("<think>")
    types.append(4)
    ids = {t: i for i, t in enumerate(tokens)}
    kv = {
        "model": "gpt2",
        "pre": pre,
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "bos": ids[bos],
        "eos": ids[eos],
    }
    if eot is not None:
        kv["eot"] = ids[eot]
    if add_bos is not None:
        kv["add_bos"] = add_bos
    return kv


def tiny_spm():
    pieces = spm_vocab(corpus(), 360)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0] * len(tokens)
    for rank, p in enumerate(pieces):
        if p in tokens:
            continue
        tokens.append(p)
        types.append(1)
        scores.append(-float(rank))
    return {
        "model": "llama",
        "tokens": tokens,
        "types": types,
        "scores": scores,
        "bos": 1,
        "eos": 2,
        "unk": 0,
        "add_space_prefix": True,
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    smol_path = os.path.join(SMOL_DIR, SMOL_FILE)
    if os.path.exists(smol_path):
        tok, cases = reference(SMOL_DIR, SMOL_FILE, HARD, 49152)
        template = tok.chat_template
        chats = []
        for conv in CONVERSATIONS:
            for agp in (True, False):
                chats.append(
                    {
                        "messages": conv,
                        "add_generation_prompt": agp,
                        "rendered": tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=agp),
                    }
                )
        extra = []
        for tname, src in EXTRA_TEMPLATES.items():
            for conv in CONVERSATIONS:
                try:
                    rendered = tok.apply_chat_template(
                        conv, chat_template=src, tokenize=False, add_generation_prompt=True
                    )
                    err = None
                except Exception as e:  # the template's own error
                    rendered, err = None, str(e)
                extra.append({"name": tname, "template": src, "messages": conv, "rendered": rendered, "error": err})
        dump(
                {
                    "gguf": SMOL_FILE,
                    "bos_token": tok.bos_token,
                    "eos_token": tok.eos_token,
                    "cases": cases,
                    "chat_template": template,
                    "chats": chats,
                    "extra_templates": extra,
                },
                os.path.join(OUT, "tokenizer_smollm.json"),
            )
        with open(os.path.join(OUT, "smollm2_chat_template.jinja"), "w", encoding="utf-8") as f:
            f.write(template)
    else:
        print(f"skipping SmolLM2: {smol_path} not found", file=sys.stderr)

    tiny = {
        "llama_bpe": ("llama", tiny_bpe("llama_bpe", "llama-bpe", "llama", ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"], eot="<|eot_id|>", bos="<|begin_of_text|>", eos="<|end_of_text|>", add_bos=True)),
        "qwen2": ("qwen2", tiny_bpe("qwen2", "qwen2", "qwen2", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos="<|endoftext|>", eos="<|im_end|>", add_bos=False)),
        "gpt2": ("llama", tiny_bpe("gpt2", "gpt2", "llama", ["<|endoftext|>"], bos="<|endoftext|>", eos="<|endoftext|>")),
        "spm": ("llama", tiny_spm()),
    }
    for name, (arch, kv) in tiny.items():
        tmp = tempfile.mkdtemp()
        try:
            fname = f"tiny_{name}.gguf"
            path = os.path.join(tmp, fname)
            write_gguf(path, arch, kv)
            _, cases = reference(tmp, fname, HARD + ["<think>x</think>", " <s> </s> <unk>"], len(kv["tokens"]))
            shutil.copy(path, os.path.join(OUT, fname))
            dump({"gguf": fname, "cases": cases}, os.path.join(OUT, f"tokenizer_{name}.json"))
            print(name, "ok", os.path.getsize(path), "bytes")
        finally:
            shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
