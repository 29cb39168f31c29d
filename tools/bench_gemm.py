"""Benchmark torch.matmul f32 GFLOP/s (the baseline for largo's GEMM benchmark).

Square shapes plus the real shapes of the MNIST MLP and the small GPT. For each (m, n, k),
C[m,n] = A[m,k] @ B[k,n]; reports the median of >= 10 timed runs (~0.3 s per shape)
after warm-up, as 2*m*n*k / time.

Run:  python3 tools/bench_gemm.py [--threads 2]
"""
import argparse
import statistics
import time

import torch

SHAPES = [
    ("square 512", 512, 512, 512),
    ("square 1024", 1024, 1024, 1024),
    ("square 2048", 2048, 2048, 2048),
    ("mlp fc1 fwd", 64, 128, 784),
    ("mlp fc1 dW", 128, 784, 64),
    ("gpt qkv", 2048, 768, 256),
    ("gpt mlp up", 2048, 1024, 256),
    ("gpt mlp down", 2048, 256, 1024),
    ("gpt lm-head", 2048, 73, 256),
]

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)

print(f"torch {torch.__version__}, {args.threads} threads")
print(f"{'shape':<14} {'m':>5} {'n':>5} {'k':>5} {'GFLOP/s':>9}")
for name, m, n, k in SHAPES:
    a, b = torch.randn(m, k), torch.randn(k, n)

    def run():
        t0 = time.perf_counter()
        torch.matmul(a, b)
        return time.perf_counter() - t0

    warm = [run() for _ in range(3)]
    reps = max(10, int(0.3 / min(warm)))
    t = statistics.median(run() for _ in range(reps))
    print(f"{name:<14} {m:>5} {n:>5} {k:>5} {2 * m * n * k / t / 1e9:>9.1f}")
