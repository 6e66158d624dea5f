#!/usr/bin/env bash
# Ours and llama-server side by side over HTTP, in one run: aggregate tokens/s and time to first
# token with 1, 4, 8 and 16 concurrent streaming clients, with the machine's load.
#   LLAMA_SERVER=/path/to/llama-server bash bench/serving.sh [CATALOG_NAME] [CLIENTS] [REQUESTS_PER_CLIENT] [MAX_TOKENS]
# Needs a release build (cargo build --release) and llama-server (built from the llama.cpp source
# vendored in the llama-cpp-python 0.3.36 sdist: see README, "Benchmarks"). llama-server gets
# `--parallel N` slots for N clients (restarted for each N), 2 threads, continuous batching.
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:-smollm2-135m-instruct}"
clients="${2:-1,4,8,16}"
per_client="${3:-2}"
max_tokens="${4:-64}"
bin="${CARGO_TARGET_DIR:-target}/release/aiaas"
llama_server="${LLAMA_SERVER:-llama-server}"
python="${PYTHON:-python3}"
ctx_per_slot=1024

"$bin" models fetch "$name" --cache-only >/dev/null
file=$(ls "${AIAAS_CACHE:-$HOME/.cache/aiaas}/models/$name/"*.gguf)
home=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$home"' EXIT
export AIAAS_API_KEY=bench-key-$RANDOM$RANDOM$RANDOM
AIAAS_HOME="$home" "$bin" models import "$file" --id bench >/dev/null

wait_for() { # URL: polls until it answers 200
    for _ in $(seq 600); do
        curl -sf "$1" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "no answer from $1" >&2
    return 1
}

echo "model: $name ($file), 2 threads, $per_client requests per client, $max_tokens tokens each"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
AIAAS_HOME="$home" "$bin" serve --port 18080 --preload bench --no-default-model >"$home/ours.log" 2>&1 &
ours_pid=$!
wait_for http://127.0.0.1:18080/readyz
declare -A ours theirs
for n in ${clients//,/ }; do
    ours[$n]=$("$python" bench/serving_client.py http://127.0.0.1:18080 bench "$n" "$per_client" "$max_tokens" "$AIAAS_API_KEY")
done
kill "$ours_pid"
wait "$ours_pid" 2>/dev/null || true

for n in ${clients//,/ }; do
    "$llama_server" -m "$file" -t 2 -tb 2 --parallel "$n" -c $((n * ctx_per_slot)) --port 18081 \
        >"$home/llama.log" 2>&1 &
    llama_pid=$!
    wait_for http://127.0.0.1:18081/health
    theirs[$n]=$("$python" bench/serving_client.py http://127.0.0.1:18081 bench "$n" "$per_client" "$max_tokens")
    kill "$llama_pid"
    wait "$llama_pid" 2>/dev/null || true
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

echo "| clients | aiaas tokens/s | llama-server tokens/s | ratio | aiaas TTFT p50 / p99 (s) | llama-server TTFT p50 / p99 (s) |"
echo "|---|---|---|---|---|---|"
for n in ${clients//,/ }; do
    "$python" - "${ours[$n]}" "${theirs[$n]}" <<'EOF'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"| {a['clients']} | {a['tokens_per_s']} | {b['tokens_per_s']} | "
      f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}x | {a['ttft_p50_s']} / {a['ttft_p99_s']} | "
      f"{b['ttft_p50_s']} / {b['ttft_p99_s']} |")
EOF
done
