"""PyTorch twin of `largo train --config configs/mnist-mlp.toml`.

Ports largo's RNG (xoshiro256++ seeded by SplitMix64, crates/largo/src/rng.rs) so that the
initial weights, the train/validation split and the batch order are identical to largo's.

Run from the repository root:
    python3 tools/torch_mnist_mlp.py                 # defaults match configs/mnist-mlp.toml
    python3 tools/torch_mnist_mlp.py --hidden 256,128 --epochs 5
    python3 tools/torch_mnist_mlp.py --selftest      # first 3 next_u64 of Rng.new(42)
"""
import argparse
import gzip
import math
import struct
import time
from pathlib import Path

import torch
import torch.nn.functional as F

MASK = (1 << 64) - 1
INIT, SPLIT, SHUFFLE = 1, 2, 1000


def rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & MASK


def splitmix64(x):
    """Returns (new state, output)."""
    x = (x + 0x9E3779B97F4A7C15) & MASK
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return x, z ^ (z >> 31)


class Rng:
    def __init__(self, seed):
        x, self.s = seed & MASK, []
        for _ in range(4):
            x, z = splitmix64(x)
            self.s.append(z)

    @classmethod
    def for_stream(cls, seed, stream):
        return cls(seed ^ ((stream * 0xD1B54A32D192ED03) & MASK))

    def next_u64(self):
        s = self.s
        result = (rotl((s[0] + s[3]) & MASK, 23) + s[0]) & MASK
        t = (s[1] << 17) & MASK
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return result

    def uniform_tensor(self, n):
        """n draws of uniform() as float32: (next_u64 >> 40) * 2^-24, exact in f32."""
        ints = torch.tensor([self.next_u64() >> 40 for _ in range(n)], dtype=torch.float32)
        return ints * (1.0 / (1 << 24))

    def below(self, n):
        return self.next_u64() % n

    def shuffle(self, xs):
        for i in range(len(xs) - 1, 0, -1):
            j = self.below(i + 1)
            xs[i], xs[j] = xs[j], xs[i]


def rust_round(x):
    """f64::round: half away from zero (x >= 0 here)."""
    r = math.floor(x)
    return int(r + 1 if x - r >= 0.5 else r)


def read_idx(path):
    raw = gzip.open(path, "rb").read()
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    return torch.frombuffer(bytearray(raw[4 + 4 * ndim:]), dtype=torch.uint8).reshape(dims)


def load_data(data_dir, seed, val_fraction):
    images = read_idx(Path(data_dir) / "train-images-idx3-ubyte.gz").reshape(-1, 784)
    labels = read_idx(Path(data_dir) / "train-labels-idx1-ubyte.gz").long()
    n = images.shape[0]
    perm = list(range(n))
    Rng.for_stream(seed, SPLIT).shuffle(perm)
    n_val = rust_round(n * val_fraction)
    val, train = torch.tensor(perm[:n_val]), torch.tensor(perm[n_val:])
    px = images.double() / 255.0
    mean = px[train].mean().item()
    std = px[train].std(unbiased=False).item()
    x = ((px - mean) / std).float()
    return x[train], labels[train], x[val], labels[val]


class MLP(torch.nn.Module):
    """Linear layers fc1, fc2, ... with ReLU between them (largo's parameter names)."""

    def __init__(self, sizes):
        super().__init__()
        self.fcs = [torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
        for i, fc in enumerate(self.fcs):
            self.add_module(f"fc{i + 1}", fc)

    def forward(self, x):
        for fc in self.fcs[:-1]:
            x = F.relu(fc(x))
        return self.fcs[-1](x)


def build_model(sizes, seed):
    """largo's init: U(-b, b), b = 1/sqrt(fan_in) in f32, drawn in order fc1.weight, fc1.bias, ..."""
    model = MLP(sizes)
    rng = Rng.for_stream(seed, INIT)
    with torch.no_grad():
        for fc in model.fcs:
            bound = 1.0 / torch.tensor(float(fc.in_features), dtype=torch.float32).sqrt()
            for p in (fc.weight, fc.bias):
                p.copy_(((2 * rng.uniform_tensor(p.numel()) - 1) * bound).reshape(p.shape))
    return model


def lr_at(step, args, total_steps):
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, total_steps - args.warmup_steps)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model, x, y):
    logits = model(x)
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/mnist")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr", type=float, default=0.0)
    ap.add_argument("--warmup-steps", type=int, default=0)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--hidden", default="128", help="comma-separated hidden sizes")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--selftest", action="store_true", help="print first 3 next_u64 of Rng.new(42)")
    args = ap.parse_args()

    if args.selftest:
        rng = Rng(42)
        for _ in range(3):
            print(rng.next_u64())
        return

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    x_tr, y_tr, x_val, y_val = load_data(args.data, args.seed, args.val_fraction)
    model = build_model([784] + [int(h) for h in args.hidden.split(",")] + [10], args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=args.weight_decay)
    n, bs = len(x_tr), args.batch_size
    total_steps = args.epochs * math.ceil(n / bs)
    step = 0
    for epoch in range(args.epochs):
        order = list(range(n))
        Rng.for_stream(args.seed, SHUFFLE + epoch).shuffle(order)
        order = torch.tensor(order)
        loss_sum = 0.0
        for i in range(0, n, bs):
            idx = order[i:i + bs]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, args, total_steps)
            opt.zero_grad()
            loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)  # train_loss = per-sample mean over the epoch
            step += 1
        val_loss, val_acc = evaluate(model, x_val, y_val)
        print(f"epoch {epoch} train_loss {loss_sum / n:.4f} val_loss {val_loss:.4f} val_acc {val_acc:.4f}",
              flush=True)
    print(f"final val_acc {100 * val_acc:.2f} ({time.perf_counter() - start:.1f} s wall, "
          f"{args.threads} threads)")


if __name__ == "__main__":
    main()
