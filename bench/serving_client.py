"""Concurrent streaming clients against an OpenAI-compatible server: aggregate tokens/s and
time to first token.

    python3 bench/serving_client.py BASE_URL MODEL CLIENTS REQUESTS_PER_CLIENT MAX_TOKENS [KEY]

Each client sends its requests one after the other to /v1/completions (greedy, streamed); every
prompt differs from its first words, so no server can answer from a cached prompt. Prints one
JSON line: clients, requests, completion tokens, wall seconds, aggregate tokens/s, TTFT p50/p99.
Standard library only.
"""
import http.client
import json
import statistics
import sys
import threading
import time
import urllib.parse

SUBJECTS = ["a lighthouse keeper", "a robot gardener", "two rival bakers", "a lost dragon",
            "a ship's cat", "an old clockmaker", "a young astronaut", "a haunted library"]


def prompt(client, request):
    subject = SUBJECTS[(client + request) % len(SUBJECTS)]
    return (f"Story number {client * 100 + request}. Write a long, detailed story about {subject}, "
            f"with names, places and dialogue. Once upon a time,")


def one_request(url, key, model, text, max_tokens):
    """Returns (time to first token, completion tokens)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    body = json.dumps({"model": model, "prompt": text, "max_tokens": max_tokens,
                       "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}})
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    started = time.perf_counter()
    conn.request("POST", "/v1/completions", body, headers)
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:300]!r}")
    first, chunks, usage = None, 0, None
    for line in response:
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        event = json.loads(data)
        if event.get("usage"):
            usage = event["usage"]["completion_tokens"]
        if event.get("choices") and event["choices"][0].get("text"):
            chunks += 1
            if first is None:
                first = time.perf_counter() - started
    conn.close()
    return first, usage if usage is not None else chunks


def main():
    url, model = sys.argv[1], sys.argv[2]
    clients, per_client, max_tokens = (int(v) for v in sys.argv[3:6])
    key = sys.argv[6] if len(sys.argv) > 6 else None
    results, errors = [], []

    def client(c):
        for r in range(per_client):
            try:
                results.append(one_request(url, key, model, prompt(c, r), max_tokens))
            except Exception as e:  # reported below: a failed request spoils the run
                errors.append(repr(e))

    one_request(url, key, model, "Warm up.", 4)
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        sys.exit(f"{len(errors)} requests failed, e.g. {errors[0]}")
    ttfts = sorted(r[0] for r in results if r[0] is not None)
    tokens = sum(r[1] for r in results)
    p99 = ttfts[min(len(ttfts) - 1, round(0.99 * (len(ttfts) - 1)))]
    print(json.dumps({"clients": clients, "requests": len(results), "tokens": tokens,
                      "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 1),
                      "ttft_p50_s": round(statistics.median(ttfts), 3),
                      "ttft_p99_s": round(p99, 3)}))


if __name__ == "__main__":
    main()
