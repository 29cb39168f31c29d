#!/usr/bin/env bash
# Sentence embeddings, largo next to sentence-transformers, in interleaved rounds (this machine's
# speed moves by tens of per cent within seconds, so each round is one comparable pair): per
# round sentence-transformers at f32, then largo at `high` (bf16x3 on AMX: f32-level results),
# then largo at `highest` (f32), and the ratios to sentence-transformers.
# Needs: cargo build --release; pip install torch sentence-transformers.
# ROUNDS (default 3), THREADS (default 2), MINILM (default ../shared/models/all-MiniLM-L6-v2).
set -euo pipefail
cd "$(dirname "$0")/.."
T=${THREADS:-2}
M=${MINILM:-../shared/models/all-MiniLM-L6-v2}
L=./target/release/largo
rate() { grep -o 'embed: [0-9.]*' | grep -o '[0-9.]*$'; }
for r in $(seq "${ROUNDS:-3}"); do
    st_out=$(python3 tools/bench_embed.py --threads "$T" --model "$M" 2>/dev/null)
    high_out=$($L --threads "$T" --matmul-precision high bench embed --model "$M" 2>&1)
    f32_out=$($L --threads "$T" bench embed --model "$M" 2>&1)
    st=$(rate <<<"$st_out"); high=$(rate <<<"$high_out"); f32=$(rate <<<"$f32_out")
    st_rss=$(grep -o 'peak RSS: [0-9]*' <<<"$st_out" | grep -o '[0-9]*$')
    rss=$(grep -o 'peak RSS: [0-9]*' <<<"$high_out" | grep -o '[0-9]*$')
    printf 'round %s: sentence-transformers %s/s (peak RSS %s MB); largo high %s/s (%.2fx, peak RSS %s MB); largo highest %s/s (%.2fx)\n' \
        "$r" "$st" "$st_rss" "$high" "$(python3 -c "print($high / $st)")" "$rss" "$f32" "$(python3 -c "print($f32 / $st)")"
done
