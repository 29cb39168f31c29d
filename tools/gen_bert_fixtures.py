"""Generate sentence-transformers reference embeddings for largo's BERT / MiniLM tests.

Writes crates/largo/tests/fixtures/minilm.json:
    {
      "model": "all-MiniLM-L6-v2",
      "max_seq_length": 256,
      "normalize": true,            # modules.json declares a Normalize module
      "pooling": {...},             # 1_Pooling/config.json, verbatim (mean pooling)
      "sentences": [
        {"text": ..., "input_ids": [...], "embedding": [384 floats]}, ...
      ],
      "first_hidden": [[384 floats] x seq]   # token_embeddings of sentences[0]
    }

`input_ids` are exactly what sentence-transformers feeds the transformer
(`model.tokenize([text])["input_ids"][0]`: [CLS] ... [SEP], truncated to
max_seq_length). `embedding` is `model.encode(texts, batch_size=8,
normalize_embeddings=False)`: the full module pipeline (Transformer -> mean Pooling
-> Normalize when modules.json declares it), rounded to 7 significant digits.
`first_hidden` is the transformer's last hidden state for the first sentence,
rounded to 6 significant digits (for debugging a mismatch layer by layer).

Run from the repository root:
    python3 tools/gen_bert_fixtures.py [--model ../shared/models/all-MiniLM-L6-v2]
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch

OUT = Path("crates/largo/tests/fixtures/minilm.json")

LONG_WORDS = (
    "the quick brown fox jumps over the lazy dog while seventeen philosophers debate "
    "whether unbelievably complicated tokenization algorithms, such as WordPiece, "
    "really preserve meaning; meanwhile 3.14159 apples, naïve café owners and "
    "Zürich-based cryptographers compute SHA-256 hashes at 12:45pm on 2024-02-29"
).split()


def long_text(n_words=300):
    """Deterministic ~300-word text of varied words (well over 256 word-pieces)."""
    return " ".join(LONG_WORDS[(i * 7) % len(LONG_WORDS)] for i in range(n_words))


SENTENCES = [
    "This is a test sentence.",                       # first: short, its hidden state is stored
    "The cat sat on the mat.",
    "Crème brûlée à Noël, s'il vous plaît!",
    "Die Straße ist groß und weiß.",
    "我喜欢学习机器学习和自然语言处理。",
    "東京は日本の首都です。今日はいい天気ですね。",
    "안녕하세요, 만나서 반갑습니다.",
    "I love pizza 🍕 and coffee ☕️ 😀👍🏽",
    "مرحبا بالعالم، كيف حالك اليوم؟",
    "ThIs SeNtEnCe Has MiXeD CaSe, and... punctuation?! (yes) [really] {ok}",
    "In 2023, 1,234,567 people paid $89.99 for 3.5 GB at 10:30am; ID #A-42/7.",
    "   \t \n  ",
    "",
    "hello",
    "!!!???...,,,;;;:::---",
    long_text(300),
    "Unbelievable hyperparameterization of antidisestablishmentarianism.",
    "HTTP://EXAMPLE.COM/path?query=1&x=y is a URL, and e-mail me at foo.bar@example.org",
    "Γειά σου Κόσμε! Привет, мир! Ça va? Ñandú, señor.",
    "She said, \"don't\" — it's the children's toys' box… isn't it?",
    "tab\tseparated\twords and  double  spaces   here",
    "A man is playing a guitar.",
    "Mathematics: ∑ x² ≤ ∞ and α→β, ½ + ¼ = ¾.",
    "零一二三四五六七八九十 百千万",
]


def sig(x, digits):
    return float(f"{float(x):.{digits - 1}e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="../shared/models/all-MiniLM-L6-v2")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()

    torch.set_num_threads(2)
    from sentence_transformers import SentenceTransformer

    model_dir = Path(args.model)
    model = SentenceTransformer(str(model_dir), device="cpu")
    model.eval()
    modules = json.loads((model_dir / "modules.json").read_text())
    normalize = any(m["type"].endswith(".Normalize") for m in modules)
    pooling_cfg = model_dir / "1_Pooling" / "config.json"
    pooling = json.loads(pooling_cfg.read_text()) if pooling_cfg.exists() else None
    max_seq = model.max_seq_length

    emb = model.encode(SENTENCES, batch_size=8, normalize_embeddings=False, convert_to_numpy=True)
    assert emb.shape == (len(SENTENCES), 384), emb.shape

    records = []
    for text, e in zip(SENTENCES, emb):
        ids = model.tokenize([text])["input_ids"][0].tolist()
        assert len(ids) <= max_seq
        records.append({"text": text, "input_ids": ids, "embedding": [sig(v, 7) for v in e]})

    with torch.no_grad():
        feats = model.tokenize([SENTENCES[0]])
        hidden = model[0](dict(feats))["token_embeddings"][0]
    first_hidden = [[sig(v, 6) for v in row] for row in hidden.tolist()]

    doc = {"model": model_dir.name, "max_seq_length": max_seq, "normalize": normalize,
           "pooling": pooling, "sentences": records, "first_hidden": first_hidden}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")

    print(f"wrote {out} ({out.stat().st_size} bytes): {len(records)} sentences, "
          f"normalize={normalize}, max_seq_length={max_seq}, first_hidden {list(hidden.shape)}")
    for r, e in zip(records, emb):
        print(f"  {len(r['input_ids']):4d} ids  |e|={np.linalg.norm(e):.6f}  {r['text'][:50]!r}")


if __name__ == "__main__":
    main()
