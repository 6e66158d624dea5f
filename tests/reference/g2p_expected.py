"""Produce the expected pronunciations that the g2p reference test compares against, with
g2p-en's own numpy code.

The project never runs this; it is how tests/reference/g2p-en.json was made:

    python3 -m venv /tmp/g2pvenv
    /tmp/g2pvenv/bin/pip install g2p-en==2.1.0       # numpy 2.4.6, nltk 3.10.4
    /tmp/g2pvenv/bin/python tests/reference/g2p_expected.py > tests/reference/g2p-en.json

What aiaas reproduces is the neural `G2p.predict(word)` on the package's `checkpoint20.npz`,
not `G2p.__call__` (number spelling, tokenisation, part-of-speech tagging, homographs and the
CMU dictionary around it). Importing g2p_en looks for nltk's tagger and CMU dictionary and
downloads them when missing; `predict` needs neither, so before the import `nltk.data.find` is
stubbed to report them present (nothing is downloaded), and `cmudict.dict()`, which `__init__`
calls, is replaced by an empty dict. The rest of `__init__` runs unchanged: the vocabularies and
the weights are the package's.

aiaas lower-cases ASCII letters before predicting (g2p_en's `__call__` lower-cases too);
`predict` itself does not, so the script lower-cases the same way first. Every other character
reaches `predict` as it is and is read as `<unk>` there.
"""
import json
import sys

import nltk

nltk.data.find = lambda resource, *args, **kwargs: resource
import g2p_en.g2p as g2p_module  # noqa: E402  (after the stub)

g2p_module.cmudict = type("EmptyCmudict", (), {"dict": staticmethod(dict)})

WORDS = [
    # Common words, in the CMU dictionary (which `__call__` would use instead).
    "hello",
    "world",
    "the",
    "a",
    "cat",
    "knight",
    "through",
    "thought",
    "colonel",
    "yacht",
    "rhythm",
    "queue",
    "xylophone",
    "phone",
    "embedding",
    # Made-up or out-of-dictionary words: what the model is for.
    "aiaas",
    "grapheme",
    "phoneme",
    "activationist",
    "kubernetes",
    "tokenizer",
    "blorf",
    "zzzz",
    "qwrtpsdfghjklzxcvbnm",
    # Long words: the decoder's 20-step cap cuts the longest.
    "supercalifragilistic",
    "supercalifragilisticexpialidocious",
    "antidisestablishmentarianism",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "ab" * 32,  # 64 characters, aiaas's longest accepted word
    # Case: ASCII letters are read case-blind.
    "Hello",
    "HELLO",
    "I",
    # Characters outside a-z: each is one <unk>.
    "don't",
    "rock'n'roll",
    "3d",
    "r2d2",
    "2024",
    "café",
    "naïve",
    "x",
    "",
]


def ascii_lower(word):
    return "".join(c.lower() if "A" <= c <= "Z" else c for c in word)


model = g2p_module.G2p()
cases = [{"word": word, "phonemes": model.predict(ascii_lower(word))} for word in WORDS]
json.dump(
    {
        "model": "g2p-en",
        "reference": "g2p-en 2.1.0 G2p.predict (numpy 2.4.6), checkpoint20.npz, ASCII lower-cased",
        "cases": cases,
    },
    sys.stdout,
    ensure_ascii=False,
    indent=1,
)
print()
