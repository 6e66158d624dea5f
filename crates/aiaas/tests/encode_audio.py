"""Writes one speech clip in the containers and codecs users upload, for the speech API test:
FLAC (24-bit, 44.1 kHz stereo), OGG/Vorbis (44.1 kHz stereo), MP3 (48 kHz stereo), WAV of
unsigned 8-bit (16 kHz mono), of floats (22.05 kHz stereo). Uses soundfile (libsndfile).

    python3 encode_audio.py CLIP.wav OUT_FOLDER
"""
import sys

import numpy as np
import soundfile as sf

clip, out = sys.argv[1], sys.argv[2]
data, rate = sf.read(clip, dtype="float32")


def at(new_rate, channels):
    """The clip at another rate (linear interpolation) and channel count."""
    times = np.arange(int(len(data) * new_rate / rate)) * rate / new_rate
    mono = np.interp(times, np.arange(len(data)), data).astype(np.float32)
    return mono if channels == 1 else np.stack([mono, 0.8 * mono], axis=1)


sf.write(f"{out}/clip.flac", at(44100, 2), 44100, subtype="PCM_24")
sf.write(f"{out}/clip.ogg", at(44100, 2), 44100, format="OGG", subtype="VORBIS")
sf.write(f"{out}/clip.mp3", at(48000, 2), 48000, format="MP3", subtype="MPEG_LAYER_III")
sf.write(f"{out}/clip-u8.wav", data, rate, subtype="PCM_U8")
sf.write(f"{out}/clip-float.wav", at(22050, 2), 22050, subtype="FLOAT")
