#!/usr/bin/env python3
"""One image of per-class sample grids, one column per class, from the folders `movq sample`
wrote (or the tar `scripts/gpu-run.sh fashion` brings back: CLASS/sample-NNNN.png).

usage: python3 scripts/class_grid.py SAMPLES_DIR_OR_TAR OUT.png [--rows 8] [--scale 2]
       [--classes t-shirt,trouser,...]   (default: the folders, sorted)
needs: Pillow
"""
import argparse
import io
import os
import tarfile

from PIL import Image


def load(src):
    """{class: [PIL images in name order]} from a folder of class folders or a tar of them."""
    out = {}
    if os.path.isdir(src):
        for c in sorted(os.listdir(src)):
            d = os.path.join(src, c)
            if os.path.isdir(d):
                out[c] = [Image.open(os.path.join(d, f)).convert("RGB")
                          for f in sorted(os.listdir(d)) if f.endswith(".png")]
    else:
        with tarfile.open(src) as t:
            for m in sorted(t.getmembers(), key=lambda m: m.name):
                if m.isfile() and m.name.endswith(".png"):
                    c = os.path.dirname(m.name)
                    out.setdefault(c, []).append(Image.open(io.BytesIO(t.extractfile(m).read())).convert("RGB"))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--classes", default="")
    a = ap.parse_args()
    images = load(a.src)
    classes = a.classes.split(",") if a.classes else sorted(images)
    w, h = images[classes[0]][0].size
    pad = 2
    grid = Image.new("RGB", (len(classes) * (w + pad) + pad, a.rows * (h + pad) + pad), "white")
    for x, c in enumerate(classes):
        for y, img in enumerate(images[c][:a.rows]):
            grid.paste(img, (pad + x * (w + pad), pad + y * (h + pad)))
    grid = grid.resize((grid.width * a.scale, grid.height * a.scale), Image.NEAREST)
    grid.save(a.out)
    print(a.out, "classes:", ", ".join(classes))


if __name__ == "__main__":
    main()
