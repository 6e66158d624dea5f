"""Peak resident memory of a running aiaas server while SEQUENCES clients each hold a sequence
of about TOKENS tokens (a long prompt plus a few generated tokens), read from its /metrics
(`process_resident_memory_bytes`) every 0.2 s.

    python3 bench/kv_memory.py BASE_URL MODEL KEY [SEQUENCES] [TOKENS]

Start the server with the model preloaded first (see README, "Benchmarks").
Standard library only.
"""
import json
import re
import sys
import threading
import time
import urllib.request

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from serving_client import one_request  # noqa: E402

GENERATED = 16


def resident_bytes(url):
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    match = re.search(r"^process_resident_memory_bytes (\S+)$", text, re.M)
    return float(match.group(1))


def main():
    url, model, key = sys.argv[1:4]
    sequences = int(sys.argv[4]) if len(sys.argv) > 4 else 16
    tokens = int(sys.argv[5]) if len(sys.argv) > 5 else 1024
    # About one token per word of this text, for these tokenizers; the server's usage says.
    words = ("the river ran past the old mill and the children watched the boats go by "
             "while the miller counted sacks of flour ").split()
    before = resident_bytes(url)
    peak, done = before, threading.Event()

    def watch():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, resident_bytes(url))
            time.sleep(0.2)

    def client(c):
        body = f"Sequence {c}: " + " ".join(words[i % len(words)] for i in range(tokens - GENERATED - 40))
        one_request(url, key, model, body, GENERATED)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(sequences)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    watcher.join()
    print(json.dumps({"sequences": sequences, "tokens_each": tokens,
                      "rss_before_mb": round(before / 2**20, 1), "rss_peak_mb": round(peak / 2**20, 1),
                      "seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
