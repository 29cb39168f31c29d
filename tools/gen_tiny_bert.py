"""Generate a tiny, randomly initialised BERT as sentence-transformers model directories.

CI has no network and no large models, so largo's BERT + pooling + tokenizer path is
checked against sentence-transformers on this ~30K-parameter model instead. Writes
crates/largo/tests/fixtures/tiny-bert/:

    mean/      tokenizer + BertModel (model.safetensors, float32) + mean Pooling +
               Normalize, max_seq_length 16 (so long inputs are truncated)
    cls-max/   same weights and tokenizer, Pooling cls + max + mean_sqrt_len_tokens
               (concatenated, 96 dims), no Normalize, max_seq_length 64, weights stored
               as pytorch_model.bin (torch.save of the state_dict; no model.safetensors)
    f16/       like mean/ but model.safetensors holds float16 tensors (config.json says
               "dtype": "float16"); its reference embeddings are computed with those f16
               weights cast back to float32
    reference.json
        {"sentences": [12 texts],
         "<dir>": {"max_seq_length": int, "normalize": bool, "pooling": [modes],
                   "input_ids": [[...] per sentence, [CLS] .. [SEP], padding removed],
                   "embeddings": [[...] per sentence, 8 significant digits]}, ...}

The tokenizer is a BERT-style WordPiece (BertNormalizer lowercase, BertPreTokenizer,
TemplateProcessing "[CLS] $A [SEP]", 300 tokens) trained with the `tokenizers` library on
the first 200 KB of data/shakespeare/*.txt. The BertModel is
BertConfig(hidden 32, 2 layers, 4 heads, intermediate 64, 64 positions, gelu) from
torch.manual_seed(0), then every parameter gets N(0, 0.1) noise so LayerNorm weights /
biases and all biases are non-trivial.

The on-disk layout is the classic sentence-transformers one that Hub models use (and
that largo reads): modules.json with `sentence_transformers.models.*` types,
1_Pooling/config.json with `pooling_mode_*` booleans, sentence_bert_config.json with
`max_seq_length`; sentence-transformers >= 5 loads it too. Reference embeddings are
`SentenceTransformer(dir).encode(texts, batch_size=4)` on the directory as written.

Run from the repository root (CPU, deterministic):
    python3 tools/gen_tiny_bert.py
"""
import copy
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)

from safetensors.torch import load_file  # noqa: E402
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import BertConfig, BertModel, BertTokenizerFast  # noqa: E402

OUT = Path("crates/largo/tests/fixtures/tiny-bert")
CORPUS = "data/shakespeare/*.txt"
CORPUS_BYTES = 200_000
VOCAB_SIZE = 300
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
HIDDEN = 32

LONG = (
    "Once more unto the breach, dear friends, once more; or close the wall up with our "
    "English dead. In peace there's nothing so becomes a man as modest stillness and "
    "humility: but when the blast of war blows in our ears, then imitate the action of "
    "the tiger; stiffen the sinews, summon up the blood, disguise fair nature."
)
assert 55 <= len(LONG.split()) <= 65, len(LONG.split())

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "To be, or not to be, that is the question.",
    "Crème brûlée à Noël, s'il vous plaît! Ça coûte 5€.",
    "",
    "   \t \n  ",
    LONG,
    "Wait... what?! (Yes) [really] {ok} -- \"quoted\" & 'single'; a/b\\c #1 @home ~x",
    "東京は日本の首都です。 Привет, мир! 😀👍🏽 naïve Zürich",
    "In 1603, 42 kings paid 3.14159 crowns; 1,234,567 at 12:45 on 2024-02-29.",
    "ThIs SeNtEnCe Has MiXeD CaSe AND SHOUTING",
    "Now is the winter of our discontent made glorious summer by this sun of York.",
    "tab\tseparated\u00a0nbsp\u200bzero\u200dwidth\u0007bell end",
]
assert len(SENTENCES) == 12

# (dir name, pooling modes in sentence-transformers' concatenation order, normalize, max_seq_length)
VARIANTS = [
    ("mean", ("mean",), True, 16),
    ("cls-max", ("cls", "max", "mean_sqrt_len_tokens"), False, 64),
    ("f16", ("mean",), True, 16),
]

LEGACY_POOLING_KEYS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}


def write_json(path, obj, indent=2):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


def corpus_text():
    text = ""
    for f in sorted(glob.glob(CORPUS)):
        text += Path(f).read_text(encoding="utf-8", errors="replace") + "\n"
        if len(text) >= CORPUS_BYTES:
            break
    if not text:
        raise SystemExit(f"no corpus at {CORPUS} (run from the repository root)")
    return text[:CORPUS_BYTES]


def train_tokenizer():
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=VOCAB_SIZE - 10,  # + "##0".."##9" below
        min_frequency=2,
        special_tokens=SPECIALS,
        initial_alphabet=list("0123456789"),  # so numbers are word pieces, not all [UNK]
        limit_alphabet=100,
        continuing_subword_prefix="##",
    )
    lines = [l for l in corpus_text().splitlines() if l.strip()]
    tok.train_from_iterator(lines, trainer=trainer)
    # The trainer numbers its alphabet and equal-count merges in hash-map order, which
    # changes from run to run (the token *set* does not). WordPiece matching only looks
    # tokens up, so renumber canonically: specials, then characters, then ##characters,
    # then longer pieces, each group sorted.
    # The corpus has almost no digits: add them as continuation pieces too, so numbers
    # split into digits rather than becoming [UNK].
    learned = [t for t in tok.get_vocab() if t not in SPECIALS]
    learned += [f"##{d}" for d in "0123456789" if f"##{d}" not in learned]

    def key(t):
        body = t[2:] if t.startswith("##") else t
        return (len(body) > 1, t.startswith("##"), t)

    vocab = {t: i for i, t in enumerate(SPECIALS + sorted(learned, key=key))}
    tok.model = models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    assert [tok.token_to_id(s) for s in SPECIALS] == [0, 1, 2, 3, 4]
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    return tok


def save_tokenizer(tok, d):
    """tokenizer.json + vocab.txt + tokenizer_config.json + special_tokens_map.json."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    tok.save(str(d / "tokenizer.json"))
    vocab = tok.get_vocab()
    ids = sorted(vocab.values())
    assert ids == list(range(len(ids))), "vocab ids must be dense"
    by_id = {i: t for t, i in vocab.items()}
    (d / "vocab.txt").write_text("".join(by_id[i] + "\n" for i in ids), encoding="utf-8")
    write_json(
        d / "tokenizer_config.json",
        {
            "clean_up_tokenization_spaces": True,
            "cls_token": "[CLS]",
            "do_basic_tokenize": True,
            "do_lower_case": True,
            "mask_token": "[MASK]",
            "model_max_length": 64,  # the model's limit; sentence_bert_config.json may lower it
            "never_split": None,
            "pad_token": "[PAD]",
            "sep_token": "[SEP]",
            "strip_accents": None,
            "tokenize_chinese_chars": True,
            "tokenizer_class": "BertTokenizer",
            "unk_token": "[UNK]",
        },
    )
    write_json(
        d / "special_tokens_map.json",
        {
            "cls_token": "[CLS]",
            "mask_token": "[MASK]",
            "pad_token": "[PAD]",
            "sep_token": "[SEP]",
            "unk_token": "[UNK]",
        },
    )


def make_model(vocab_size):
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
    )
    model = BertModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def write_st_modules(d, modes, normalize, max_seq_length):
    d = Path(d)
    mods = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        mods.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (d / "2_Normalize").mkdir(exist_ok=True)
        # sentence-transformers >= 6 writes this file; older versions write an empty folder.
        write_json(
            d / "2_Normalize" / "config.json",
            {"module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"},
            indent=4,
        )
    write_json(d / "modules.json", mods)
    pool = {"word_embedding_dimension": HIDDEN}
    for mode, key in LEGACY_POOLING_KEYS.items():
        pool[key] = mode in modes
    pool["include_prompt"] = True
    write_json(d / "1_Pooling" / "config.json", pool, indent=4)
    write_json(d / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False}, indent=4)
    import sentence_transformers
    import transformers

    write_json(
        d / "config_sentence_transformers.json",
        {
            "__version__": {
                "sentence_transformers": sentence_transformers.__version__,
                "transformers": transformers.__version__,
                "pytorch": torch.__version__.split("+")[0],
            },
            "prompts": {},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )


def build_dirs(tok, model):
    # Let transformers + sentence-transformers do a native round trip first (sanity: the
    # pieces fit together), then write the classic layout by hand.
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Normalize, Pooling, Transformer

    with tempfile.TemporaryDirectory() as tmp:
        hf = Path(tmp) / "hf"
        fast = BertTokenizerFast(
            tokenizer_object=tok,
            unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
            mask_token="[MASK]", do_lower_case=True, model_max_length=64,
        )
        fast.save_pretrained(hf)
        model.save_pretrained(hf, safe_serialization=True)
        st = SentenceTransformer(modules=[Transformer(str(hf), max_seq_length=16), Pooling(HIDDEN, "mean"), Normalize()])
        st.save(str(Path(tmp) / "st"))
        native = sorted(str(p.relative_to(Path(tmp) / "st")) for p in (Path(tmp) / "st").rglob("*"))
        print("sentence-transformers' own save:", native)

    if OUT.exists():
        shutil.rmtree(OUT)
    for name, modes, normalize, msl in VARIANTS:
        d = OUT / name
        d.mkdir(parents=True)
        save_tokenizer(tok, d)
        if name == "f16":
            m16 = copy.deepcopy(model).half()
            m16.save_pretrained(d, safe_serialization=True)  # config.json says dtype float16
        else:
            model.save_pretrained(d, safe_serialization=True)
        if name == "cls-max":
            sd = {k: v.detach().clone().contiguous() for k, v in load_file(str(d / "model.safetensors")).items()}
            torch.save(sd, d / "pytorch_model.bin")
            (d / "model.safetensors").unlink()
        write_st_modules(d, modes, normalize, msl)
        for junk in ("README.md", "generation_config.json"):
            if (d / junk).exists():
                (d / junk).unlink()


def load_st(d):
    from sentence_transformers import SentenceTransformer

    m = SentenceTransformer(str(d), device="cpu")
    return m.float().eval()  # f16/: compute with the f16 weights cast back to float32


def st_reference(d):
    m = load_st(d)
    feats = m.tokenize(SENTENCES)
    ids = [
        row[mask.bool()].tolist()
        for row, mask in zip(feats["input_ids"], feats["attention_mask"])
    ]
    with torch.no_grad():
        emb = m.encode(SENTENCES, batch_size=4, convert_to_numpy=True)
    return m, ids, emb.astype(np.float32)


def round8(x):
    return [float(f"{v:.8g}") for v in x]


def manual_embeddings(d, ids, modes, normalize):
    """Independent check: HF BertModel + hand-written pooling, one unpadded sentence at a time."""
    model = BertModel.from_pretrained(str(d), dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for row in ids:
            t = torch.tensor([row])
            h = model(input_ids=t, attention_mask=torch.ones_like(t)).last_hidden_state[0]
            parts = []
            for mode in modes:
                if mode == "cls":
                    parts.append(h[0])
                elif mode == "max":
                    parts.append(h.max(0).values)
                elif mode == "mean":
                    parts.append(h.mean(0))
                elif mode == "mean_sqrt_len_tokens":
                    parts.append(h.sum(0) / np.sqrt(h.shape[0]))
            v = torch.cat(parts)
            if normalize:
                v = v / v.norm().clamp(min=1e-12)
            out.append(v.numpy())
    return np.stack(out)


def main():
    tok = train_tokenizer()
    print(f"vocab: {tok.get_vocab_size()} tokens")
    model = make_model(tok.get_vocab_size())
    print(f"params: {sum(p.numel() for p in model.parameters())}")
    build_dirs(tok, model)

    ref = {"sentences": SENTENCES}
    for name, modes, normalize, msl in VARIANTS:
        m, ids, emb = st_reference(OUT / name)
        assert m.max_seq_length == msl, (name, m.max_seq_length)
        assert emb.shape == (len(SENTENCES), HIDDEN * len(modes)), emb.shape
        assert all(len(r) <= msl for r in ids)
        ref[name] = {
            "max_seq_length": msl,
            "normalize": normalize,
            "pooling": list(modes),
            "input_ids": ids,
            "embeddings": [round8(r) for r in emb],
        }
    # compact: one sentence per line would still be big; keep it single-line JSON
    (OUT / "reference.json").write_text(json.dumps(ref, ensure_ascii=False) + "\n", encoding="utf-8")
    for p in OUT.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    verify()


def verify():
    from transformers import AutoTokenizer

    ref = json.loads((OUT / "reference.json").read_text(encoding="utf-8"))
    assert ref["sentences"] == SENTENCES
    worst = 0.0
    for name, modes, normalize, msl in VARIANTS:
        d = OUT / name
        r = ref[name]
        want = np.array(r["embeddings"], dtype=np.float64)
        # 1. sentence-transformers reload
        m, ids, emb = st_reference(d)
        assert ids == r["input_ids"], name
        diff = float(np.abs(emb - want).max())
        # 2. hand-written BERT + pooling on unpadded sequences
        man = manual_embeddings(d, r["input_ids"], modes, normalize)
        diff_manual = float(np.abs(man - want).max())
        # 3. the bare tokenizers library (what largo uses), truncated like largo
        tk = Tokenizer.from_file(str(d / "tokenizer.json"))
        tk.enable_truncation(max_length=msl)
        tk_ids = [e.ids for e in tk.encode_batch(SENTENCES)]
        assert tk_ids == r["input_ids"], (name, tk_ids, r["input_ids"])
        # 4. transformers' BertTokenizerFast / AutoTokenizer load the folder
        for cls in (BertTokenizerFast, AutoTokenizer):
            t = cls.from_pretrained(str(d))
            got = t(SENTENCES, truncation=True, max_length=msl)["input_ids"]
            assert got == r["input_ids"], (name, cls.__name__)
        print(f"{name:8s} dim {want.shape[1]:3d}  max|st reload - ref| = {diff:.2e}  "
              f"max|manual - ref| = {diff_manual:.2e}")
        assert diff < 1e-6, (name, diff)
        assert diff_manual < 1e-5, (name, diff_manual)
        worst = max(worst, diff)
    lens = [len(x) for x in ref["mean"]["input_ids"]]
    full = [len(x) for x in ref["cls-max"]["input_ids"]]
    assert max(lens) == 16 and max(full) > 16, (lens, full)
    unk = sum(x.count(1) for x in ref["cls-max"]["input_ids"])
    d16 = np.abs(np.array(ref["f16"]["embeddings"]) - np.array(ref["mean"]["embeddings"])).max()
    print(f"token counts mean/: {lens}")
    print(f"token counts cls-max/: {full}  ([UNK]s: {unk})")
    print(f"max|f16 - mean| = {d16:.2e} (nonzero: f16 rounding of the weights)")
    assert d16 > 0
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"total {total} bytes")
    assert total < 400_000, total
    print(f"OK: worst reload diff {worst:.2e}")


if __name__ == "__main__":
    main()
