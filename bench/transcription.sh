#!/usr/bin/env bash
# Speech recognition speed, ours and faster-whisper (CTranslate2, float32 and int8) side by side
# in one run on the same clips and thread count, as real-time factors (audio seconds per second)
# and their ratios, with the machine's load:
#   bash bench/transcription.sh [CATALOG_NAME] [THREADS] [REPETITIONS]
# Needs: a release build (cargo build --release), the test clips (bash scripts/fetch-test-audio)
# and `pip install faster-whisper==1.2.1` (set PYTHON to the interpreter that has it).
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:-whisper-tiny.en}"
threads="${2:-2}"
repetitions="${3:-3}"
python="${PYTHON:-python3}"
bin="${CARGO_TARGET_DIR:-target}/release/aiaas"
cache="${AIAAS_CACHE:-$HOME/.cache/aiaas}"
clips="$cache/testdata/librivox"
bash scripts/fetch-test-audio
"$bin" models fetch "$name" --cache-only >/dev/null
folder="$cache/models/$name"
echo "model: $name ($folder), clips: $clips, $threads threads, $repetitions repetitions"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
ours=$(RAYON_NUM_THREADS="$threads" "$bin" bench "$folder" --audio "$clips" \
    --repetitions "$repetitions" | grep '^| aiaas')
theirs=$("$python" bench/whisper_reference.py "$folder" "$clips" "$threads" "$repetitions" 2>/dev/null)
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| engine | real-time factor | aiaas / engine |"
echo "| ------ | ---------------- | -------------- |"
printf '%s\n%s\n' "$ours" "$theirs" | awk -F'|' '
    { engine = $2; sub(/^ +/, "", engine); sub(/ +$/, "", engine); rate = $3 + 0 }
    NR == 1 { ours = rate }
    { printf "| %s | %.1f | %.2fx |\n", engine, rate, ours / rate }'
