#!/usr/bin/env bash
# largo next to PyTorch in one run, both at the same thread count (default 2).
# Needs: cargo build --release; pip install torch.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${THREADS:-2}
L=./target/release/largo
echo "== MLP training (784-128-10, AdamW, batch 64, $T threads)"
$L --threads "$T" bench mlp
python3 tools/bench_mlp.py --threads "$T"
echo
echo "== GEMM f32"
$L --threads "$T" bench gemm
python3 tools/bench_gemm.py --threads "$T"
