# Shell functions the server benchmarks share (sourced by tools/bench_serve_compare.sh and
# tools/bench_serve_chat_compare.sh): one server at a time, its pid in SERVER_PID, stopped on
# exit whatever happens.

SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

# Waits until the server answers /health (model loaded, socket bound), or fails if it died.
wait_ready() {
    local port=$1 log=$2
    for _ in $(seq 1 600); do
        if curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1; then
            return 0
        fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "error: the server on port $port exited; its log ($log):" >&2
            cat "$log" >&2
            exit 1
        fi
        sleep 0.2
    done
    echo "error: the server on port $port did not become ready in 120 s; log: $log" >&2
    exit 1
}

stop_server() {
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" || true
    SERVER_PID=
}
