#!/usr/bin/env bash
# Streamed chat serving of `largo serve` next to llama.cpp's `llama-server`, same GGUF, same
# threads, under the same `largo bench serve --workload chat` load (64 clients, a shared
# ~300-token system prompt and a ~200-token user message each, max_tokens 128), one server
# after the other, ROUNDS times (interleaved), in one run.
# Needs: cargo build --release -p largo-cli; llama-server built from the llama.cpp sdist
# (../shared/notes/llm-anchors.md).
#
# Usage: tools/bench_serve_chat_compare.sh MODEL.gguf
# Overridable: LARGO (binary), LLAMA_SERVER (binary), THREADS (2), CLIENTS (64),
# BENCH_SECONDS (60), MAX_TOKENS (128), ROUNDS (1), KV_MB (largo --kv-cache-mb, 512),
# PARALLEL (llama-server --parallel, 16), CTX (llama-server -c, 16384), LARGO_PORT (18091),
# LLAMA_PORT (18092), LOG_DIR (server logs and reports; default a temporary folder).
set -euo pipefail
cd "$(dirname "$0")/.."
GGUF=${1:?usage: $0 MODEL.gguf}
L=${LARGO:-./target/release/largo}
LS=${LLAMA_SERVER:-llama-server}
T=${THREADS:-2}
CLIENTS=${CLIENTS:-64}
DURATION=${BENCH_SECONDS:-60}
MAX_TOKENS=${MAX_TOKENS:-128}
ROUNDS=${ROUNDS:-1}
KV_MB=${KV_MB:-512}
PARALLEL=${PARALLEL:-16}
CTX=${CTX:-16384}
P1=${LARGO_PORT:-18091}
P2=${LLAMA_PORT:-18092}
LOG_DIR=${LOG_DIR:-$(mktemp -d)}
mkdir -p "$LOG_DIR"

if [ ! -f "$GGUF" ]; then
    echo "error: no GGUF file at '$GGUF'" >&2
    exit 1
fi
if [ ! -x "$L" ]; then
    echo "error: no largo binary at '$L': run 'cargo build --release -p largo-cli' or set LARGO=PATH" >&2
    exit 1
fi
if ! command -v "$LS" >/dev/null 2>&1; then
    echo "error: no llama-server at '$LS': build it (../shared/notes/llm-anchors.md) and set LLAMA_SERVER=PATH" >&2
    exit 1
fi

# shellcheck source=tools/server_helpers.sh
. tools/server_helpers.sh

bench() {
    "$L" bench serve --url "http://127.0.0.1:$1" --server-pid "$SERVER_PID" --workload chat \
        --clients "$CLIENTS" --seconds "$DURATION" --max-tokens "$MAX_TOKENS" | tee "$2"
}

for r in $(seq 1 "$ROUNDS"); do
    echo "== round $r: largo serve ($T threads, --kv-cache-mb $KV_MB)"
    "$L" --threads "$T" serve --model "model=$GGUF" --host 127.0.0.1 --port "$P1" \
        --kv-cache-mb "$KV_MB" >"$LOG_DIR/largo-$r.log" 2>&1 &
    SERVER_PID=$!
    wait_ready "$P1" "$LOG_DIR/largo-$r.log"
    bench "$P1" "$LOG_DIR/largo-$r.txt"
    stop_server
    echo
    echo "== round $r: llama-server (-t $T --parallel $PARALLEL -c $CTX)"
    "$LS" -m "$GGUF" -t "$T" --parallel "$PARALLEL" -c "$CTX" --host 127.0.0.1 --port "$P2" \
        >"$LOG_DIR/llama-$r.log" 2>&1 &
    SERVER_PID=$!
    wait_ready "$P2" "$LOG_DIR/llama-$r.log"
    bench "$P2" "$LOG_DIR/llama-$r.txt"
    stop_server
    echo
done

tokens_per_s() { awk '$1 == "tokens/s:" { print $2 }' "$1"; }
ttft99() { awk '/^first token ms:/ { print $9 }' "$1"; }
echo "round  largo tok/s  llama-server tok/s  ratio  largo TTFT p99 ms  llama-server TTFT p99 ms"
for r in $(seq 1 "$ROUNDS"); do
    a=$(tokens_per_s "$LOG_DIR/largo-$r.txt")
    b=$(tokens_per_s "$LOG_DIR/llama-$r.txt")
    awk -v r="$r" -v a="$a" -v b="$b" -v ta="$(ttft99 "$LOG_DIR/largo-$r.txt")" \
        -v tb="$(ttft99 "$LOG_DIR/llama-$r.txt")" \
        'BEGIN { printf "%5d  %11.1f  %18.1f  %5.2f  %17.0f  %24.0f\n", r, a, b, (b > 0 ? a / b : 0), ta, tb }'
done
