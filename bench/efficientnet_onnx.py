"""onnxruntime on EfficientNet-Lite0, the reference of `bench/image_classification.sh`.

Builds a float32 ONNX graph (Conv with batch norm folded, Clip for ReLU6, Add, GlobalAveragePool,
Gemm; TF-"same" padding written out) from the same legacy PyTorch checkpoint the server reads,
checks it on PIL's prepared crop of the test photo (`tests/reference/efficientnet-lite0-input.png`:
class 652 first), then times `InferenceSession.run` at each batch size on prepared 224x224
images, with the given thread count. Prints `| batch | images/s |` rows.

    python bench/efficientnet_onnx.py CHECKPOINT.pth THREADS REPETITIONS BATCH[,BATCH...]
Needs: pip install numpy onnx onnxruntime pillow
"""
import collections
import pickle
import struct
import sys
import time

import numpy as np
import onnx
from PIL import Image
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

STORAGE_TYPES = {"FloatStorage": np.float32, "LongStorage": np.int64}


class Storage:
    def __init__(self, kind, key):
        self.kind, self.key = kind, key


class Tensor:
    def __init__(self, storage, offset, shape, stride):
        self.storage, self.offset, self.shape, self.stride = storage, offset, tuple(shape), tuple(stride)


class CheckpointUnpickler(pickle.Unpickler):
    """Only what a state dict of the legacy format holds."""

    def __init__(self, file, storages):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module, name):
        if name == "_rebuild_tensor_v2":
            return lambda storage, offset, shape, stride, *rest: Tensor(storage, offset, shape, stride)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if name.endswith("Storage"):
            return name
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

    def persistent_load(self, pid):
        kind, key = pid[1], pid[2]
        return self.storages.setdefault(key, Storage(kind, key))


def load_checkpoint(path):
    with open(path, "rb") as f:
        for _ in range(3):  # magic number, protocol version, system info
            pickle.load(f)
        storages = {}
        state = CheckpointUnpickler(f, storages).load()
        data = {}
        for key in pickle.load(f):
            dtype = np.dtype(STORAGE_TYPES[storages[key].kind])
            (count,) = struct.unpack("<q", f.read(8))
            data[key] = np.frombuffer(f.read(count * dtype.itemsize), dtype)
    weights = {}
    for name, t in state.items():
        values = data[t.storage.key][t.offset:]
        strides = [s * values.itemsize for s in t.stride]
        weights[name] = np.lib.stride_tricks.as_strided(values, t.shape, strides).astype(np.float32)
    return weights


STRIDES = {0: 1, 1: 2, 3: 2, 5: 2, 11: 2}
CROP = __file__.rsplit("/", 2)[0] + "/tests/reference/efficientnet-lite0-input.png"


def build_graph(w):
    nodes, inits = [], []
    size = [224]

    def const(name, array):
        inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv(x, prefix, weight, bn, stride=1, groups=1, relu6=True):
        k = weight.shape[-1]
        scale = w[bn + ".weight"] / np.sqrt(w[bn + ".running_var"] + 1e-3)
        bias = w[bn + ".bias"] - w[bn + ".running_mean"] * scale
        folded = weight * scale[:, None, None, None]
        out_size = -(-size[0] // stride)
        pad = max((out_size - 1) * stride + k - size[0], 0)
        pads = [pad // 2, pad // 2, pad - pad // 2, pad - pad // 2]
        size[0] = out_size
        y = prefix + ".out"
        nodes.append(helper.make_node("Conv", [x, const(prefix + ".w", folded), const(prefix + ".b", bias)], [y],
                                      strides=[stride, stride], pads=pads, group=groups))
        if relu6:
            nodes.append(helper.make_node("Clip", [y, const(prefix + ".lo", np.array(0.0)),
                                                   const(prefix + ".hi", np.array(6.0))], [y + ".r"]))
            y += ".r"
        return y

    x = conv("image", "stem", w["_conv_stem.weight"], "_bn0", stride=2)
    channels = w["_conv_stem.weight"].shape[0]
    for b in range(16):
        p = f"_blocks.{b}."
        inp = x
        if p + "_expand_conv.weight" in w:
            x = conv(x, p + "expand", w[p + "_expand_conv.weight"], p + "_bn0")
        dw = w[p + "_depthwise_conv.weight"]
        stride = STRIDES.get(b, 1)
        x = conv(x, p + "dw", dw, p + "_bn1", stride=stride, groups=dw.shape[0])
        project = w[p + "_project_conv.weight"]
        x = conv(x, p + "project", project, p + "_bn2", relu6=False)
        if stride == 1 and project.shape[0] == channels:
            nodes.append(helper.make_node("Add", [x, inp], [p + "sum"]))
            x = p + "sum"
        channels = project.shape[0]
    x = conv(x, "head", w["_conv_head.weight"], "_bn1")
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["features"]))
    nodes.append(helper.make_node("Gemm", ["features", const("fc.w", w["_fc.weight"]), const("fc.b", w["_fc.bias"])],
                                  ["logits"], transB=1))
    graph = helper.make_graph(nodes, "efficientnet_lite0",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 224, 224])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


def main():
    checkpoint, threads, repetitions, batches = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    model = build_graph(load_checkpoint(checkpoint))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    crop = np.asarray(Image.open(CROP).convert("RGB"), np.float32) / 255
    image = ((crop - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).astype(np.float32)
    image = image.transpose(2, 0, 1)[None]
    (logits,) = session.run(None, {"image": image})
    assert int(logits[0].argmax()) == 652, logits[0].argmax()
    for batch in (int(b) for b in batches.split(",")):
        inputs = np.repeat(image, batch, axis=0)
        session.run(None, {"image": inputs})
        passes = -(-64 // batch)
        rates = []
        for _ in range(repetitions):
            start = time.perf_counter()
            for _ in range(passes):
                session.run(None, {"image": inputs})
            rates.append(passes * batch / (time.perf_counter() - start))
        mean = sum(rates) / len(rates)
        print(f"| {batch} | {mean:.2f} |")


main()
