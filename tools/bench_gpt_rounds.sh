#!/usr/bin/env bash
# GPT training next to PyTorch in interleaved rounds (this machine's speed moves by tens of per
# cent within minutes, so each round is one comparable set): per round `largo bench gpt` from the
# default build, the same from an AVX2-only build with LARGO_ISA=avx2 (the kernels an AVX2-only
# CPU runs), then tools/bench_gpt.py at f32 and at `medium`; the median of each at the end.
# Needs: pip install torch. ROUNDS (default 5), THREADS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
T=${THREADS:-2}
AVX2_TARGET=${AVX2_TARGET:-target/avx2-only}
cargo build --release -q -p largo-cli
CARGO_TARGET_DIR="$AVX2_TARGET" cargo build --release -q -p largo-cli --no-default-features
rate() { grep -o 'train: [0-9]*' | grep -o '[0-9]*$'; }
declare -a a512 a2 pt ptm
for r in $(seq "${ROUNDS:-5}"); do
    a512+=("$(./target/release/largo --threads "$T" bench gpt | rate)")
    a2+=("$(LARGO_ISA=avx2 "$AVX2_TARGET/release/largo" --threads "$T" bench gpt | rate)")
    pt+=("$(python3 tools/bench_gpt.py --mode train --threads "$T" | rate)")
    ptm+=("$(python3 tools/bench_gpt.py --mode train --threads "$T" --matmul-precision medium | rate)")
    echo "round $r: largo ${a512[-1]} tokens/s, largo AVX2 ${a2[-1]}, PyTorch f32 ${pt[-1]}, PyTorch medium ${ptm[-1]}"
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
m512=$(median "${a512[@]}"); m2=$(median "${a2[@]}"); mpt=$(median "${pt[@]}"); mptm=$(median "${ptm[@]}")
echo "medians: largo $m512, largo AVX2 $m2, PyTorch f32 $mpt, PyTorch medium $mptm;" \
    "ratios to PyTorch f32: $(python3 -c "print(f'{$m512 / $mpt:.2f}x, AVX2 {$m2 / $mpt:.2f}x')")"
