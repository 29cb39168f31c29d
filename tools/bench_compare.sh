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
echo "== GPT training (4 layers, d 256, 8 heads, ff 1024, batch 16 x 128, vocab 73, AdamW)"
$L --threads "$T" bench gpt
python3 tools/bench_gpt.py --mode train --threads "$T"
echo
echo "== GPT generation (batch 1, 200 tokens, KV cache)"
$L --threads "$T" bench generate
python3 tools/bench_gpt.py --mode generate --threads "$T"
echo
echo "== GEMM f32"
$L --threads "$T" bench gemm
python3 tools/bench_gemm.py --threads "$T"
echo
echo "== Sentence embeddings (all-MiniLM-L6-v2, 512 sentences of 10-60 words, batch 32)"
M=${MINILM:-../shared/models/all-MiniLM-L6-v2}
$L --threads "$T" bench embed --model "$M"
python3 tools/bench_embed.py --threads "$T" --model "$M" 2>/dev/null | grep -E "embed:|RSS"
echo
echo "== Matmul precision high: largo's bf16x3 (each f32 as two bf16, three products on AMX), f32-level"
echo "   embeddings (max |d| 2.3e-6 to sentence-transformers' f32); PyTorch at its own 'high'"
$L --threads "$T" --matmul-precision high bench embed --model "$M"
python3 tools/bench_embed.py --threads "$T" --model "$M" --matmul-precision high 2>/dev/null | grep -E "embed:|RSS"
$L --threads "$T" --matmul-precision high bench gpt
echo
echo "== Matmul precision medium: largo's bf16 products on AMX (f32 sums) next to PyTorch's own"
echo "   bf16 options (torch.set_float32_matmul_precision('medium'), and autocast for training)"
$L --threads "$T" --matmul-precision medium bench gpt
python3 tools/bench_gpt.py --mode train --threads "$T" --matmul-precision medium
python3 tools/bench_gpt.py --mode train --threads "$T" --autocast-bf16
$L --threads "$T" --matmul-precision medium bench embed --model "$M"
python3 tools/bench_embed.py --threads "$T" --model "$M" --matmul-precision medium 2>/dev/null | grep -E "embed:|RSS"
