#!/usr/bin/env bash
# Image classification speed, ours and onnxruntime side by side in one run on the same
# EfficientNet-Lite0 weights and thread count, in images per second on prepared 224×224 images
# (decoding and resizing left out on both sides), with their ratios and the machine's load:
#   ROUNDS=N bash bench/image_classification.sh [THREADS] [REPETITIONS] [BATCHES]
# Needs: a release build (cargo build --release) and `pip install numpy onnx onnxruntime` (set
# PYTHON to the interpreter that has them).
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-2}"
repetitions="${2:-3}"
batches="${3:-1,16}"
python="${PYTHON:-python3}"
bin="${CARGO_TARGET_DIR:-target}/release/aiaas"
cache="${AIAAS_CACHE:-$HOME/.cache/aiaas}"
"$bin" models fetch efficientnet-lite0 --cache-only >/dev/null
checkpoint="$cache/models/efficientnet-lite0/efficientnet-lite0-57934424.pth"
echo "model: efficientnet-lite0 ($checkpoint), $threads threads, $repetitions repetitions"
# ROUNDS=N (default 1): N rounds of ours and theirs, each round's table printed, then the
# median ratio per batch size: on a shared host whose speed swings within minutes, the median
# of side-by-side rounds is steadier than any single round.
rounds="${ROUNDS:-1}"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
all_ratios=""
for round in $(seq "$rounds"); do
    echo "# round $round"
    run_ours() {
        RAYON_NUM_THREADS="$threads" "$bin" bench "$checkpoint" --batch-sizes "$batches" \
            --repetitions "$repetitions" | grep '^| [0-9]'
    }
    run_theirs() {
        "$python" bench/efficientnet_onnx.py "$checkpoint" "$threads" "$repetitions" "$batches"
    }
    # Ours first in odd rounds, theirs first in even ones: neither always runs on the heels
    # of the other's load.
    if [ $((round % 2)) -eq 1 ]; then
        ours=$(run_ours)
        theirs=$(run_theirs)
    else
        theirs=$(run_theirs)
        ours=$(run_ours)
    fi
    echo "| batch | aiaas images/s | onnxruntime images/s | aiaas / onnxruntime |"
    echo "| ----- | -------------- | -------------------- | ------------------- |"
    table=$(join -t'|' -j2 <(echo "$ours" | sort -t'|' -k2,2) <(echo "$theirs" | sort -t'|' -k2,2) |
      awk -F'|' '{ ours = $3 + 0; theirs = $6 + 0;
        printf "| %s | %.1f | %.1f | %.2fx |\n", $1, ours, theirs, ours / theirs }')
    echo "$table"
    all_ratios+="$table"$'\n'
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$rounds" -gt 1 ]; then
    echo "## median ratio over $rounds rounds"
    # Lines "| batch | ours | theirs | 1.23x |": each batch size's ratios sorted, the middle one
    # (or the mean of the middle two).
    for batch in $(echo "$all_ratios" | awk -F'|' 'NF > 4 { gsub(/ /, "", $2); print $2 }' | sort -nu); do
        values=$(echo "$all_ratios" | awk -F'|' -v b="$batch" 'NF > 4 { t = $2; v = $5; gsub(/ /, "", t); gsub(/[ x]/, "", v); if (t == b) print v }' | sort -n)
        median=$(echo "$values" | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }')
        echo "| batch $batch | ${median}x (of $(echo $values)) |"
    done
fi
