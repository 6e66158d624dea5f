"""faster-whisper's real-time factor on a folder of WAV clips, for bench/transcription.sh:
prints `| faster-whisper COMPUTE_TYPE | factor |` for each compute type.

    pip install faster-whisper==1.2.1
    python3 bench/whisper_reference.py MODEL_FOLDER CLIPS_FOLDER THREADS REPETITIONS
"""
import glob
import os
import sys
import time
import wave

import numpy as np
from faster_whisper import WhisperModel

folder, clips_folder, threads, repetitions = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
clips = []
for path in sorted(glob.glob(os.path.join(clips_folder, "*.wav"))):
    with wave.open(path) as w:
        clips.append(np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768)
clips.sort(key=len)
seconds = sum(len(c) for c in clips) / 16000


def transcribe_all(model):
    for clip in clips:
        segments, _ = model.transcribe(clip, beam_size=1, language="en", temperature=0.0, vad_filter=False)
        list(segments)  # decoding happens as segments are read


for compute in ("float32", "int8"):
    model = WhisperModel(folder, device="cpu", compute_type=compute, cpu_threads=threads)
    transcribe_all(model)  # warm-up, untimed
    factors = []
    for _ in range(repetitions):
        started = time.perf_counter()
        transcribe_all(model)
        factors.append(seconds / (time.perf_counter() - started))
    print(f"| faster-whisper {compute} | {np.mean(factors):.2f} ± {np.std(factors):.2f} |")
