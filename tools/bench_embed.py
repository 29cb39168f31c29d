"""Sentence-embedding throughput of sentence-transformers, measured as `largo bench embed` does.

Recipe (shared with `largo bench embed`; keep the two identical):
  1. Sentences: read every data/shakespeare/*.txt in sorted filename order, concatenate the
     texts with no separator (the files do not end in a newline, so the last word of one file
     and the first word of the next join into one word), split on Unicode whitespace (Python
     str.split() / Rust str::split_whitespace) into words. For i in 0..N (N = --sentences, default 512):
         L     = 10 + (i * 37) % 51                 # 10..60 words
         start = (i * 7919) % (len(words) - 61)
         sentence_i = " ".join(words[start:start + L])
  2. Model: --model (default ../shared/models/all-MiniLM-L6-v2), on CPU, with
     torch.set_num_threads(--threads, default 2) and
     torch.set_float32_matmul_precision(--matmul-precision, default highest; `largo
     --matmul-precision` takes the same names).
  3. Warm-up: one model.encode over the first 64 sentences.
  4. Timing: model.encode(sentences, batch_size=--batch (default 32)) over all N sentences,
     repeated --repeat (default 3) times; the best (shortest) wall time counts.
  5. Report exactly:
         sentence-transformers embed: {N / best_seconds:.1f} sentences/s
         peak RSS: {ru_maxrss in MB} MB

Run from the repository root:
    python3 tools/bench_embed.py [--sentences 512] [--batch 32] [--threads 2] [--repeat 3]
                                 [--matmul-precision highest|high|medium]
"""
import argparse
import resource
import sys
import time
from pathlib import Path


def build_sentences(data_dir, n):
    text = "".join(p.read_text(encoding="utf-8") for p in sorted(Path(data_dir).glob("*.txt")))
    words = text.split()
    out = []
    for i in range(n):
        length = 10 + (i * 37) % 51
        start = (i * 7919) % (len(words) - 61)
        out.append(" ".join(words[start:start + length]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="../shared/models/all-MiniLM-L6-v2")
    ap.add_argument("--data", default="data/shakespeare")
    ap.add_argument("--sentences", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--matmul-precision", choices=("highest", "high", "medium"), default="highest",
                    help="torch.set_float32_matmul_precision (medium: bf16 matmuls on AMX CPUs)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision(args.matmul_precision)
    from sentence_transformers import SentenceTransformer

    sentences = build_sentences(args.data, args.sentences)
    model = SentenceTransformer(args.model, device="cpu")
    model.eval()

    model.encode(sentences[:64], batch_size=args.batch)  # warm-up
    best = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        model.encode(sentences, batch_size=args.batch)
        best = min(best, time.perf_counter() - t0)

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    rss_mb = rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024
    print(f"sentence-transformers embed: {len(sentences) / best:.1f} sentences/s")
    print(f"peak RSS: {rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
