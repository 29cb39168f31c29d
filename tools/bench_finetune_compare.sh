#!/usr/bin/env bash
# `largo bench finetune` against PEFT + transformers (tools/bench_finetune.py) on one model,
# same threads, same batch: largo on the file's own (quantised) weights and on f32
# (--dequantize), PEFT on f32; without gradient checkpointing, then with it. ROUNDS repeats
# the whole sequence (interleaved); SECONDS is each measurement's timed part.
#
#   tools/bench_finetune_compare.sh MODEL.gguf [THREADS]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
largo=${LARGO:-$here/target/release/largo}
model=$1
threads=${2:-2}
seconds=${SECONDS_PER:-60}
rounds=${ROUNDS:-1}
grep -m1 "model name" /proc/cpuinfo
for round in $(seq "$rounds"); do
  for ckpt in "" "--checkpointing"; do
    echo "## round $round ${ckpt:-(no checkpointing)}"
    "$largo" --threads "$threads" bench finetune --model "$model" --finetune-seconds "$seconds" $ckpt --json
    "$largo" --threads "$threads" bench finetune --model "$model" --finetune-seconds "$seconds" $ckpt --json --dequantize
    python3 "$here/tools/bench_finetune.py" --model "$model" --threads "$threads" \
      --seconds "$((seconds * 3 / 2))" $ckpt 2>/dev/null
  done
done
