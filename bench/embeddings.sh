#!/usr/bin/env bash
# Embedding throughput, ours and the references side by side in one run, with the machine's load:
#   bash bench/embeddings.sh [CATALOG_NAME] [BATCHES] [THREADS]
# Needs: a release build (cargo build --release) and, for the references,
#   pip install sentence-transformers torch onnxruntime onnx onnxscript
# (set PYTHON to the interpreter that has them).
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:-all-minilm-l6-v2}"
batches="${2:-1,32,256}"
threads="${3:-2}"
python="${PYTHON:-python3}"
bin="${CARGO_TARGET_DIR:-target}/release/aiaas"
sentences=bench/data/sentences.txt
"$bin" models fetch "$name" --cache-only >/dev/null
folder="${AIAAS_CACHE:-$HOME/.cache/aiaas}/models/$name"
echo "model: $name ($folder), $(wc -l < "$sentences") sentences from $sentences, $threads threads"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
ours=$(RAYON_NUM_THREADS="$threads" "$bin" bench "$folder" --sentences "$sentences" \
    --batch-sizes "$batches" --repetitions 1 | grep '^| [0-9]' | awk -F'|' '{ printf "| aiaas | %d | %.2f |\n", $2, $3 }')
theirs=$("$python" bench/embeddings_reference.py "$folder" "$sentences" "$threads" "$batches" 2>/dev/null)
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| engine | batch | sentences/s | aiaas / engine |"
echo "| ------ | ----- | ----------- | -------------- |"
printf '%s\n%s\n' "$ours" "$theirs" | awk -F'|' '
    { engine = $2; gsub(/ /, "", engine); batch = $3 + 0; rate = $4 + 0 }
    engine == "aiaas" { ours[batch] = rate }
    { rows[NR] = engine; batches[NR] = batch; rates[NR] = rate }
    END { for (i = 1; i <= NR; i++)
            printf "| %s | %d | %.1f | %.2fx |\n", rows[i], batches[i], rates[i], ours[batches[i]] / rates[i] }'
