"""Drives the /v2 Open Inference Protocol with Triton's own `tritonclient[http]` package,
unchanged: binary tensors (its default), JSON tensors, the classification extension."""
import os

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

url = os.environ["TRITON_URL"]  # host:port
# tritonclient writes its own headers into the dict it is given: a fresh one for every call.
def auth():
    return {"Authorization": f"Bearer {os.environ['API_KEY']}"}
image_model, g2p_model = os.environ["IMAGE_MODEL"], os.environ["G2P_MODEL"]
embedding_model, chat_model = os.environ["EMBEDDING_MODEL"], os.environ["CHAT_MODEL"]
photo = open(os.environ["PHOTO"], "rb").read()

client = httpclient.InferenceServerClient(url=url)
assert client.is_server_live()
assert client.is_server_ready()
assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
assert client.is_model_ready(image_model, headers=auth())

metadata = client.get_model_metadata(image_model, headers=auth())
assert [i["name"] for i in metadata["inputs"]] == ["image", "input"], metadata
assert metadata["outputs"][0] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 1000]}, metadata

# An encoded photo as a BYTES tensor (binary, tritonclient's default), all outputs returned.
image = httpclient.InferInput("image", [1], "BYTES")
image.set_data_from_numpy(np.array([photo], dtype=np.object_))
result = client.infer(image_model, [image], headers=auth())
probabilities = result.as_numpy("probabilities")
assert probabilities.shape == (1, 1000) and probabilities.dtype == np.float32, probabilities.shape
assert int(probabilities[0].argmax()) == 652, probabilities[0].argmax()
assert abs(float(probabilities.sum()) - 1.0) < 1e-3

# The classification extension: the top 3 as "score:index:label".
wanted = httpclient.InferRequestedOutput("probabilities", class_count=3)
top = client.infer(image_model, [image], outputs=[wanted], headers=auth()).as_numpy("probabilities")
labels = [entry.decode().split(":", 2)[2] for entry in top[0]]
assert labels == ["military uniform", "mortarboard", "academic gown"], top

# Prepared images as FP32 [N, 3, 224, 224], sent as JSON this time.
prepared = httpclient.InferInput("input", [2, 3, 224, 224], "FP32")
prepared.set_data_from_numpy(np.zeros((2, 3, 224, 224), dtype=np.float32), binary_data=False)
out = httpclient.InferRequestedOutput("probabilities", binary_data=False)
batch = client.infer(image_model, [prepared], outputs=[out], headers=auth()).as_numpy("probabilities")
assert batch.shape == (2, 1000) and np.allclose(batch[0], batch[1]), batch.shape

# A wrong shape is a 400 that tritonclient raises as an error.
wrong = httpclient.InferInput("input", [1, 3, 100, 100], "FP32")
wrong.set_data_from_numpy(np.zeros((1, 3, 100, 100), dtype=np.float32))
try:
    client.infer(image_model, [wrong], headers=auth())
    raise AssertionError("a wrong shape was accepted")
except InferenceServerException as error:
    assert "224" in str(error), error

# Grapheme to phoneme.
words = httpclient.InferInput("word", [2], "BYTES")
words.set_data_from_numpy(np.array([b"hello", b"world"], dtype=np.object_))
phonemes = client.infer(g2p_model, [words], headers=auth()).as_numpy("phonemes")
assert phonemes[0] == b"HH EH1 L OW0", phonemes

# Embeddings and text generation.
text = httpclient.InferInput("text", [2], "BYTES")
text.set_data_from_numpy(np.array([b"A cat sits.", b"Stocks fell."], dtype=np.object_))
vectors = client.infer(embedding_model, [text], headers=auth()).as_numpy("embedding")
assert vectors.shape == (2, 384) and abs(float(np.linalg.norm(vectors[0])) - 1.0) < 1e-3, vectors.shape

prompt = httpclient.InferInput("text_input", [1], "BYTES")
prompt.set_data_from_numpy(np.array([b"The capital of France is"], dtype=np.object_))
reply = client.infer(chat_model, [prompt], headers=auth(),
                     parameters={"max_tokens": 8, "temperature": 0}).as_numpy("text_output")
assert reply.shape == (1,) and reply[0], reply

# Without the key: refused.
try:
    client.get_model_metadata(image_model)
    raise AssertionError("metadata without a key")
except InferenceServerException:
    pass

print("all tritonclient checks passed")
