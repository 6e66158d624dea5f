#!/usr/bin/env bash
# Ours and llama.cpp side by side on the same GGUF file, in one run, with the machine's load.
#   bash bench/compare.sh [CATALOG_NAME] [PROMPT_TOKENS] [GEN_TOKENS]
# Needs: a release build (cargo build --release) and llama-cpp-python (see llama_cpp_bench.py).
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:-smollm2-135m-instruct}"
pp="${2:-512}"
tg="${3:-128}"
bin="${CARGO_TARGET_DIR:-target}/release/aiaas"
"$bin" models fetch "$name" --cache-only >/dev/null
file=$(ls "${AIAAS_CACHE:-$HOME/.cache/aiaas}/models/$name/"*.gguf)
echo "model: $name ($file), 2 threads"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "## aiaas"
ours=$("$bin" bench "$file" --prompt-tokens "$pp" --gen-tokens "$tg" | grep '^| [pt][pg]')
echo "$ours"
echo "## llama.cpp (llama-cpp-python 0.3.36)"
theirs=$(python3 bench/llama_cpp_bench.py "$file" "$pp" "$tg")
echo "$theirs"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "## ratio (aiaas / llama.cpp)"
paste <(echo "$ours") <(echo "$theirs") | awk -F'|' '{ printf "| %s | %.2fx |\n", $2, $3 / $6 }'
