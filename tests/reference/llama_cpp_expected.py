"""Produce the expected tokens that the real-model tests compare against, with llama.cpp.

The project never runs this; it is how the numbers in tests/reference/*.json were made:

    pip install llama-cpp-python==0.3.36 jinja2
    python3 tests/reference/llama_cpp_expected.py MODEL_ID PATH.gguf > tests/reference/MODEL_ID.json

For every prompt: the chat template of the GGUF is rendered with Python's jinja2 (for chat models),
llama.cpp tokenizes the text (add_bos as the vocabulary says, special tokens parsed), and greedy
decoding (argmax of llama.cpp's logits, no sampling) runs for 32 tokens or until end of generation.
`top2_margins` records llama.cpp's own lead of the chosen token over the runner-up at each step:
where it is tiny, llama.cpp itself picks differently between batched and token-by-token evaluation.
"""
import json
import sys

import jinja2
import numpy as np
from llama_cpp import Llama, llama_cpp

CHAT_PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "List three primary colors."},
    ],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help you today?"},
        {"role": "user", "content": "Tell me a fun fact about octopuses."},
    ],
    [{"role": "user", "content": "Write a Python function that returns the square of a number."}],
]
RAW_PROMPTS = [
    "Paris is the capital city of",
    "The three primary colors are",
    "def fibonacci(n):\n",
    "Once upon a time, in a small village,",
    "Water boils at 100 degrees Celsius because",
    "The quick brown fox",
    "import numpy as np\n\n# Compute the mean of a list\n",
    "The largest planet in our solar system is",
    "Q: What is 7 times 8?\nA:",
    "In 1492, Christopher Columbus",
]
TOKENIZE_ONLY = [
    "Hello world's  end\n\n  ok",
    "naïve café — 東京 😀!",
    "12345 + 67.89 = 68,012.89",
    "<|im_start|>user\nhi<|im_end|>",
    "\tindented\n    code();  // comment",
]
MAX_TOKENS = 32


def render(template, messages, bos, eos):
    env = jinja2.Environment(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = lambda msg: (_ for _ in ()).throw(Exception(msg))
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=True, bos_token=bos, eos_token=eos
    )


def main():
    model_id, path = sys.argv[1], sys.argv[2]
    llm = Llama(model_path=path, n_ctx=2048, n_threads=2, n_batch=512, logits_all=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    template = llm.metadata.get("tokenizer.chat_template")

    def piece(tok):
        return llm.detokenize([tok], special=True).decode("utf-8", "replace")

    def greedy(prompt_tokens):
        llm.reset()
        llm.eval(prompt_tokens)
        out, margins = [], []
        for _ in range(MAX_TOKENS):
            logits = np.array(llm.scores[llm.n_tokens - 1, :], dtype=np.float32)
            tok = int(np.argmax(logits))
            top2 = np.partition(logits, -2)[-2:]
            margins.append(round(float(top2[1] - top2[0]), 4))
            out.append(tok)
            if llama_cpp.llama_vocab_is_eog(vocab, tok):
                break
            llm.eval([tok])
        return out, margins

    cases = []
    if template:
        bos, eos = piece(llm.token_bos()), piece(llm.token_eos())
        for messages in CHAT_PROMPTS:
            text = render(template, messages, bos, eos)
            tokens = llm.tokenize(text.encode(), add_bos=True, special=True)
            out, margins = greedy(tokens)
            cases.append({"messages": messages, "text": text, "prompt_tokens": tokens,
                          "greedy_tokens": out, "top2_margins": margins})
    for text in RAW_PROMPTS:
        tokens = llm.tokenize(text.encode(), add_bos=True, special=True)
        out, margins = greedy(tokens)
        cases.append({"text": text, "prompt_tokens": tokens, "greedy_tokens": out,
                      "top2_margins": margins})
    tokenize = [{"text": t, "tokens": llm.tokenize(t.encode(), add_bos=True, special=True)}
                for t in TOKENIZE_ONLY]
    for case in cases:
        case["greedy_text"] = llm.detokenize(case["greedy_tokens"]).decode("utf-8", "replace")
    json.dump({"model": model_id, "producer": "llama-cpp-python 0.3.36, n_threads=2",
               "generate": cases, "tokenize": tokenize}, sys.stdout, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
