#!/usr/bin/env bash
# Issue 3's budget comparison: the same GPT (4 layers, d 256, 8 heads, block 128, tied head),
# the same prepared Shakespeare, batch 16 × 128, AdamW 3e-4 (0.9, 0.95), weight decay 0.1 on
# matrices, clipping 1.0, 100 warmup steps then cosine to 3e-5 over 488 steps — trained for
# MINUTES of wall time by largo, then by PyTorch (tools/bench_gpt.py --mode budget), one after
# the other on THREADS threads. Both are measured on the same 20 validation batches: largo's
# model is exported to safetensors and evaluated by the PyTorch script. PRECISION=medium trains
# largo with bf16 products (`--matmul-precision medium`); PyTorch stays f32.
#   MINUTES=10 THREADS=2 [PRECISION=highest] tools/bench_gpt_budget.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-10}
THREADS=${THREADS:-2}
PRECISION=${PRECISION:-highest}
OUT=${OUT:-$(mktemp -d /tmp/largo-budget.XXXXXX)}
cargo build --release -q -p largo-cli
L=target/release/largo
$L prepare text --input data/shakespeare --tokenizer char --val-fraction 0.1 --out "$OUT/data"
echo "== largo, $MINUTES min on $THREADS threads, matmul precision $PRECISION"
$L --threads "$THREADS" --matmul-precision "$PRECISION" train --no-progress \
  --set data.path="$OUT/data" --set run.out_dir="$OUT/runs" --set run.name=budget \
  --set train.max_steps=1000000 --set train.max_minutes="$MINUTES" --set train.eval_every=0 \
  --set train.log_every=100 --set train.clip_grad_norm=1.0 \
  --set optim.lr=3e-4 --set optim.beta1=0.9 --set optim.beta2=0.95 --set optim.weight_decay=0.1 \
  --set optim.no_decay_1d=true \
  --set schedule.kind=cosine --set schedule.warmup_steps=100 --set schedule.min_lr=3e-5 \
  --set schedule.decay_steps=488 2>&1 | grep -E "stopped at|parameters" || true
$L export --model "$OUT/runs/budget/model" --out "$OUT/largo.safetensors"
python3 tools/bench_gpt.py --mode eval --threads "$THREADS" --data "$OUT/data" --weights "$OUT/largo.safetensors"
echo "== PyTorch, $MINUTES min on $THREADS threads"
python3 tools/bench_gpt.py --mode budget --threads "$THREADS" --data "$OUT/data" --minutes "$MINUTES"
