"""Benchmark PyTorch MLP training throughput (the baseline for largo's MLP benchmark).

MLP 784 -> 128 -> 10 with ReLU, batch 64, AdamW(lr=1e-3), cross-entropy, random data
(6400 samples, fixed seed). 20 warm-up steps, then 300 timed steps; reports samples/s
from the median step time.

Run:  python3 tools/bench_mlp.py [--threads 2]
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)

batch, n_batches = 64, 100
x = torch.randn(batch * n_batches, 784)
y = torch.randint(0, 10, (batch * n_batches,))
model = torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

times = []
for step in range(20 + 300):
    i = (step % n_batches) * batch
    xb, yb = x[i:i + batch], y[i:i + batch]
    t0 = time.perf_counter()
    opt.zero_grad()
    loss = F.cross_entropy(model(xb), yb)
    loss.backward()
    opt.step()
    if step >= 20:
        times.append(time.perf_counter() - t0)

print(f"pytorch mlp train: {batch / statistics.median(times):.0f} samples/s "
      f"(batch {batch}, {args.threads} threads)")
