"""Reference embedding throughput for bench/embeddings.sh: sentences/s at each batch size with
sentence-transformers (PyTorch) and onnxruntime, on the same sentences, model and thread count.

    python3 bench/embeddings_reference.py MODEL_FOLDER SENTENCES_FILE THREADS BATCH[,BATCH...]

Needs: pip install sentence-transformers torch onnxruntime onnx onnxscript
onnxruntime runs the model exported from the same weights to ONNX (float32, dynamic batch and
sequence axes), fed by the model's own tokenizer padding each batch to its longest input: the
usual way to serve it. Prints Markdown rows `| engine | batch | sentences/s |`.
"""
import os
import sys
import tempfile
import time

folder, sentences_file, threads, batches = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
batches = [int(b) for b in batches.split(",")]
os.environ["OMP_NUM_THREADS"] = str(threads)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

torch.set_num_threads(threads)
sentences = [line for line in open(sentences_file, encoding="utf-8").read().splitlines() if line.strip()]
model = SentenceTransformer(folder, device="cpu")


def rate(run, batch):
    run(sentences[:64], 32)  # warm-up, untimed
    started = time.perf_counter()
    run(sentences, batch)
    return len(sentences) / (time.perf_counter() - started)


def sentence_transformers(texts, batch):
    model.encode(texts, batch_size=batch, convert_to_numpy=True)


class HiddenStates(torch.nn.Module):
    """The transformer with keyword inputs, returning only the token vectors."""

    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.transformer(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state


# Export the same weights to ONNX once.
transformer = HiddenStates(model[0].auto_model.eval())
tokenizer = model.tokenizer
onnx_path = os.path.join(tempfile.mkdtemp(), "model.onnx")
example = tokenizer(["an example", "another example sentence"], padding=True, return_tensors="pt")
torch.onnx.export(
    transformer,
    (example["input_ids"], example["attention_mask"], example["token_type_ids"]),
    onnx_path,
    input_names=["input_ids", "attention_mask", "token_type_ids"],
    output_names=["last_hidden_state"],
    dynamic_axes={name: {0: "batch", 1: "sequence"} for name in
                  ["input_ids", "attention_mask", "token_type_ids", "last_hidden_state"]},
    opset_version=17,
    dynamo=False,
)
options = ort.SessionOptions()
options.intra_op_num_threads = threads
options.inter_op_num_threads = 1
session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])


def onnxruntime(texts, batch):
    for i in range(0, len(texts), batch):
        encoded = tokenizer(texts[i:i + batch], padding=True, truncation=True,
                            max_length=model.max_seq_length, return_tensors="np")
        inputs = {k: encoded[k].astype(np.int64) for k in ["input_ids", "attention_mask", "token_type_ids"]}
        hidden = session.run(None, inputs)[0]
        mask = inputs["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


for name, run in [("sentence-transformers", sentence_transformers), ("onnxruntime", onnxruntime)]:
    for batch in batches:
        print(f"| {name} | {batch} | {rate(run, batch):.2f} |", flush=True)
