"""llama.cpp's prompt-processing and decode speed on a GGUF file, measured as `aiaas bench` does.

Uses llama.cpp through llama-cpp-python (pip install llama-cpp-python==0.3.36, which builds
llama.cpp from source), so no separate llama.cpp checkout is needed:

    python3 bench/llama_cpp_bench.py MODEL.gguf [PROMPT_TOKENS] [GEN_TOKENS] [REPETITIONS]

pp: one batched pass over PROMPT_TOKENS pseudo-random tokens; tg: GEN_TOKENS single-token passes.
"""
import random
import statistics
import sys
import time

from llama_cpp import Llama


def main():
    path = sys.argv[1]
    n_prompt = int(sys.argv[2]) if len(sys.argv) > 2 else 512
    n_gen = int(sys.argv[3]) if len(sys.argv) > 3 else 128
    reps = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    llm = Llama(model_path=path, n_ctx=n_prompt + n_gen + 16, n_threads=2, n_threads_batch=2,
                n_batch=n_prompt, verbose=False)
    rng = random.Random(1)
    vocab = llm.n_vocab()
    prompt = [rng.randrange(vocab) for _ in range(n_prompt)]
    pp, tg = [], []
    for _ in range(reps):
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        pp.append(n_prompt / (time.perf_counter() - start))
        llm.reset()
        llm.eval(prompt[:1])
        start = time.perf_counter()
        for i in range(n_gen):
            llm.eval([prompt[i % n_prompt]])
        tg.append(n_gen / (time.perf_counter() - start))
    spread = lambda xs: f"{statistics.mean(xs):.2f} ± {statistics.pstdev(xs):.2f}"
    print(f"| pp{n_prompt} | {spread(pp)} |")
    print(f"| tg{n_gen} | {spread(tg)} |")


if __name__ == "__main__":
    main()
