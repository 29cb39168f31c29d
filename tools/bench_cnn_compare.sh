#!/usr/bin/env bash
# CNN training and inference speed of largo next to PyTorch, same CPU, same threads, one case at
# a time (each in its own process, so each peak RSS is its own), largo then PyTorch per case:
# PyTorch's MNIST example net (batch 64), ResNet-18 at 32×32 and at 224×224 (batch 16).
# Needs: cargo build --release -p largo-cli; pip install torch torchvision.
#
# Overridable: LARGO (binary), PYTHON, THREADS (2), SECONDS_PER (timed seconds per
# measurement, 10), CASES (default: all three).
set -euo pipefail
cd "$(dirname "$0")/.."
L=${LARGO:-./target/release/largo}
PY=${PYTHON:-python3}
T=${THREADS:-2}
S=${SECONDS_PER:-10}
CASES=${CASES:-mnist_net resnet18_32 resnet18_224}

if [ ! -x "$L" ]; then
    echo "error: no largo binary at '$L': run 'cargo build --release -p largo-cli' or set LARGO=PATH" >&2
    exit 1
fi
if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
    echo "error: $PY lacks torch or torchvision: pip install torch torchvision" >&2
    exit 1
fi

grep -m1 "model name" /proc/cpuinfo || true
echo "case           largo train/s  torch train/s  ratio  largo infer/s  torch infer/s  ratio  largo RSS  torch RSS"
for c in $CASES; do
    l=$("$L" --threads "$T" bench cnn --case "$c" --cnn-seconds "$S")
    p=$("$PY" tools/bench_cnn.py --case "$c" --threads "$T" --seconds "$S")
    lt=$(sed -E 's/.*train ([0-9.]+) samples.*/\1/' <<<"$l")
    li=$(sed -E 's/.*inference ([0-9.]+) images.*/\1/' <<<"$l")
    lr=$(sed -E 's/.*peak RSS ([0-9.]+) MB.*/\1/' <<<"$l")
    read -r pt pi pr < <("$PY" -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["train_samples_per_s"], d["infer_images_per_s"], d["peak_rss_mb"])' "$p")
    awk -v c="$c" -v lt="$lt" -v pt="$pt" -v li="$li" -v pi="$pi" -v lr="$lr" -v pr="$pr" 'BEGIN {
        printf "%-13s  %13.1f  %13.1f  %5.2f  %13.1f  %13.1f  %5.2f  %6.0f MB  %6.0f MB\n",
            c, lt, pt, lt / pt, li, pi, li / pi, lr, pr }'
done
