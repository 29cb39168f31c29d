#!/usr/bin/env bash
# Embeddings throughput of `largo serve` next to sentence-transformers behind a minimal
# FastAPI/uvicorn server (tools/serve_st.py), under the same `largo bench serve` load, in one
# run: all-MiniLM-L6-v2, both servers at the same thread count, one after the other.
# Needs: cargo build --release -p largo-cli; pip install torch sentence-transformers fastapi uvicorn.
#
# Overridable: LARGO (binary), MINILM (model dir), PYTHON, THREADS (2), CLIENTS (64),
# BENCH_SECONDS (30), INPUTS (texts per request, 1), LARGO_PORT (18081), ST_PORT (18082),
# LOG_DIR (server logs; default a temporary folder).
set -euo pipefail
cd "$(dirname "$0")/.."
L=${LARGO:-./target/release/largo}
M=${MINILM:-../shared/models/all-MiniLM-L6-v2}
PY=${PYTHON:-python3}
T=${THREADS:-2}
CLIENTS=${CLIENTS:-64}
DURATION=${BENCH_SECONDS:-30}
INPUTS=${INPUTS:-1}
P1=${LARGO_PORT:-18081}
P2=${ST_PORT:-18082}
LOG_DIR=${LOG_DIR:-$(mktemp -d)}
mkdir -p "$LOG_DIR"

if [ ! -f "$M/config.json" ] || [ ! -f "$M/tokenizer.json" ]; then
    echo "error: no all-MiniLM-L6-v2 model at '$M' (a sentence-transformers directory with" \
        "config.json and tokenizer.json); set MINILM=DIR" >&2
    exit 1
fi
if [ ! -x "$L" ]; then
    echo "error: no largo binary at '$L': run 'cargo build --release -p largo-cli' or set LARGO=PATH" >&2
    exit 1
fi
if ! "$PY" -c "import fastapi, uvicorn, sentence_transformers" 2>/dev/null; then
    echo "error: $PY lacks fastapi, uvicorn or sentence-transformers: pip install fastapi uvicorn sentence-transformers" >&2
    exit 1
fi

# shellcheck source=tools/server_helpers.sh
. tools/server_helpers.sh

# One bench run against the server on $1; prints its report and leaves it in $2.
bench() {
    "$L" bench serve --url "http://127.0.0.1:$1" --server-pid "$SERVER_PID" \
        --workload embeddings --embed-model minilm --clients "$CLIENTS" \
        --seconds "$DURATION" --inputs-per-request "$INPUTS" | tee "$2"
}

requests_per_s() {
    awk '/^requests\/s:/ { print $2 }' "$1"
}

echo "== largo serve (all-MiniLM-L6-v2, $T threads)"
"$L" --threads "$T" serve --model "minilm=$M" --host 127.0.0.1 --port "$P1" \
    >"$LOG_DIR/largo.log" 2>&1 &
SERVER_PID=$!
wait_ready "$P1" "$LOG_DIR/largo.log"
bench "$P1" "$LOG_DIR/largo.txt"
stop_server
echo

echo "== sentence-transformers $("$PY" -c 'import sentence_transformers as s; print(s.__version__)') + FastAPI/uvicorn (1 worker, $T torch threads)"
"$PY" tools/serve_st.py --model "$M" --name minilm --threads "$T" --host 127.0.0.1 --port "$P2" \
    >"$LOG_DIR/st.log" 2>&1 &
SERVER_PID=$!
wait_ready "$P2" "$LOG_DIR/st.log"
bench "$P2" "$LOG_DIR/st.txt"
stop_server
echo

LARGO_RPS=$(requests_per_s "$LOG_DIR/largo.txt")
ST_RPS=$(requests_per_s "$LOG_DIR/st.txt")
awk -v a="$LARGO_RPS" -v b="$ST_RPS" -v c="$CLIENTS" -v d="$DURATION" 'BEGIN {
    printf "embeddings requests/s, %s clients, %s s: largo %.1f, sentence-transformers/FastAPI %.1f", c, d, a, b
    if (b > 0) printf ", ratio %.2fx\n", a / b; else printf ", ratio n/a\n"
}'
