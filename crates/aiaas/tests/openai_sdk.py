"""Drives the server with the official `openai` package, exactly as an application would."""
import os

import openai
from openai import OpenAI

client = OpenAI()  # OPENAI_BASE_URL and OPENAI_API_KEY come from the environment
chat_model, base_model = os.environ["CHAT_MODEL"], os.environ["BASE_MODEL"]

models = [m.id for m in client.models.list()]
assert chat_model in models and base_model in models, models
assert client.models.retrieve(chat_model).id == chat_model

messages = [{"role": "system", "content": "You are brief."},
            {"role": "user", "content": "Write a Python function that returns the square of a number."}]
reply = client.chat.completions.create(model=chat_model, messages=messages, max_tokens=10, temperature=0)
assert reply.choices[0].finish_reason == "length", reply
assert reply.usage.completion_tokens == 10, reply.usage
text = reply.choices[0].message.content
assert text, reply

stream = client.chat.completions.create(model=chat_model, messages=messages, max_tokens=10, temperature=0,
                                        stream=True, stream_options={"include_usage": True})
pieces, usage, finish = [], None, None
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage
    for choice in chunk.choices:
        pieces.append(choice.delta.content or "")
        finish = choice.finish_reason or finish
assert "".join(pieces) == text, (pieces, text)
assert finish == "length" and usage.completion_tokens == 10, (finish, usage)

completion = client.completions.create(model=base_model, prompt="The quick brown fox", max_tokens=8,
                                       temperature=0)
assert completion.choices[0].text.startswith(" jumps over the lazy dog."), completion

embedding_model = os.environ["EMBEDDING_MODEL"]
# The SDK asks for base64 by default and decodes it itself.
sentences = ["This is an example sentence", "Each sentence is converted"]
embedded = client.embeddings.create(model=embedding_model, input=sentences)
assert [d.index for d in embedded.data] == [0, 1], embedded
first = embedded.data[0].embedding
assert len(first) == 384 and abs(sum(v * v for v in first) - 1) < 1e-4, len(first)
# all-MiniLM-L6-v2's published vector for this sentence (sentence-transformers), to the
# precision of bf16 products (the cosine bound itself is checked by the reference test).
published = [0.0677, 0.0635, 0.0487]
assert all(abs(v - p) < 1e-3 for v, p in zip(first[:3], published)), first[:3]
assert embedded.usage.prompt_tokens == 13, embedded.usage
as_floats = client.embeddings.create(model=embedding_model, input=sentences[0], encoding_format="float")
assert as_floats.data[0].embedding == first

try:
    client.chat.completions.create(model="no-such-model", messages=messages)
    raise AssertionError("expected a 404")
except openai.NotFoundError as e:
    assert e.code == "model_not_found", e

try:
    OpenAI(api_key="wrong").models.list()
    raise AssertionError("expected a 401")
except openai.AuthenticationError as e:
    assert e.status_code == 401

# The Files API: upload, describe, list, download, delete.
payload = b'{"custom_id": "1", "body": {"input": "hello"}}\n' * 1000
uploaded = client.files.create(file=("requests.jsonl", payload), purpose="batch")
assert uploaded.bytes == len(payload) and uploaded.filename == "requests.jsonl", uploaded
assert client.files.retrieve(uploaded.id).purpose == "batch"
assert uploaded.id in [f.id for f in client.files.list()]
assert client.files.content(uploaded.id).content == payload
assert client.files.delete(uploaded.id).deleted
try:
    client.files.retrieve(uploaded.id)
    raise AssertionError("expected a 404 after deletion")
except openai.NotFoundError:
    pass

# Speech to text: the SDK's multipart upload, in three response formats.
speech_model, clip, clip_text = os.environ["SPEECH_MODEL"], os.environ["SPEECH_CLIP"], os.environ["SPEECH_TEXT"]
with open(clip, "rb") as audio:
    transcript = client.audio.transcriptions.create(model=speech_model, file=audio)
assert transcript.text == clip_text, transcript
with open(clip, "rb") as audio:
    verbose = client.audio.transcriptions.create(model=speech_model, file=audio, language="en",
                                                 response_format="verbose_json", temperature=0)
assert verbose.text == clip_text and verbose.duration > 3, verbose
assert verbose.segments[0].start == 0 and verbose.segments[0].text.strip() == clip_text, verbose
with open(clip, "rb") as audio:
    subtitles = client.audio.transcriptions.create(model=speech_model, file=audio, response_format="srt")
assert subtitles.startswith("1\n00:00:00,000 --> ") and clip_text in subtitles, subtitles

print("all openai SDK checks passed")
