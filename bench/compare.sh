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
# ROUNDS=N (default 1): N rounds of ours then theirs, each round's ratios printed, then the
# median of each ratio over the rounds: on a shared host whose speed swings within minutes, the
# median of side-by-side rounds is steadier than any single round.
rounds="${ROUNDS:-1}"
echo "model: $name ($file), 2 threads, $rounds round(s)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
all_ratios=""
for round in $(seq "$rounds"); do
    echo "# round $round"
    echo "## aiaas"
    ours=$("$bin" bench "$file" --prompt-tokens "$pp" --gen-tokens "$tg" | grep '^| [pt][pg]')
    echo "$ours"
    echo "## llama.cpp (llama-cpp-python 0.3.36)"
    theirs=$(python3 bench/llama_cpp_bench.py "$file" "$pp" "$tg")
    echo "$theirs"
    echo "## ratio (aiaas / llama.cpp)"
    ratios=$(paste <(echo "$ours") <(echo "$theirs") | awk -F'|' '{ printf "| %s | %.2fx |\n", $2, $3 / $6 }')
    echo "$ratios"
    all_ratios+="$ratios"$'\n'
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$rounds" -gt 1 ]; then
    echo "## median ratio over $rounds rounds"
    # Lines "| test | 1.23x |": the test's values sorted, then the middle one (or the mean of
    # the middle two).
    ratio_lines=$(echo "$all_ratios" | awk -F'|' 'NF > 2 { t = $2; v = $3; gsub(/ /, "", t); gsub(/[ x]/, "", v); print t, v }')
    for test in $(echo "$ratio_lines" | cut -d' ' -f1 | sort -u); do
        values=$(echo "$ratio_lines" | awk -v t="$test" '$1 == t { print $2 }' | sort -n)
        median=$(echo "$values" | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }')
        echo "| $test | ${median}x (of $(echo $values)) |"
    done
fi
