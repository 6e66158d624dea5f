#!/usr/bin/env bash
# Image classification speed, ours and onnxruntime side by side in one run on the same
# EfficientNet-Lite0 weights and thread count, in images per second on prepared 224×224 images
# (decoding and resizing left out on both sides), with their ratios and the machine's load:
#   bash bench/image_classification.sh [THREADS] [REPETITIONS] [BATCHES]
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
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
ours=$(RAYON_NUM_THREADS="$threads" "$bin" bench "$checkpoint" --batch-sizes "$batches" \
    --repetitions "$repetitions" | grep '^| [0-9]')
theirs=$("$python" bench/efficientnet_onnx.py "$checkpoint" "$threads" "$repetitions" "$batches")
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| batch | aiaas images/s | onnxruntime images/s | aiaas / onnxruntime |"
echo "| ----- | -------------- | -------------------- | ------------------- |"
join -t'|' -j2 <(echo "$ours" | sort -t'|' -k2,2) <(echo "$theirs" | sort -t'|' -k2,2) |
  awk -F'|' '{ ours = $3 + 0; theirs = $6 + 0;
    printf "| %s | %.1f | %.1f | %.2fx |\n", $1, ours, theirs, ours / theirs }'
