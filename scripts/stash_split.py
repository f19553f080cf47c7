#!/usr/bin/env python3
"""Split files too large for one device call's carry (64 MiB with the working tree) into pieces
for `scripts/gpu-run.sh stash`, one folder per back-to-back call.

  python3 scripts/stash_split.py --out gpu --sizes 20M,58M,20M \\
      ~/.cache/movq/fid-inception.safetensors ~/.cache/movq/lpips-alex.safetensors

The files are laid end to end and cut at the given sizes: folder k (gpu/stash1, gpu/stash2, …)
holds the bytes of call k as NAME.partNN pieces, appended in order on the GPU machine; the folder
holding a file's last piece also holds NAME.sha256, which the stash step checks (and then marks
NAME.ok). A folder is left out where a call carries no piece.
"""
import argparse
import hashlib
import os


def size(s):
    units = {"K": 1e3, "M": 1e6, "G": 1e9}
    return int(float(s[:-1]) * units[s[-1]]) if s[-1] in units else int(s)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu")
    ap.add_argument("--sizes", required=True, help="bytes per call, comma separated (K, M, G)")
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    budgets = [size(s) for s in a.sizes.split(",")]
    if sum(budgets) < sum(os.path.getsize(f) for f in a.files):
        raise SystemExit("the sizes add up to less than the files")
    call, room = 0, budgets[0]
    for path in a.files:
        name = os.path.basename(path)
        digest = hashlib.sha256()
        part = 0
        remaining = os.path.getsize(path)
        with open(path, "rb") as f:
            while remaining > 0:
                while room == 0:
                    call, room = call + 1, budgets[call + 1]
                chunk = f.read(min(room, remaining))
                digest.update(chunk)
                folder = os.path.join(a.out, f"stash{call + 1}")
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, f"{name}.part{part:02d}"), "wb") as p:
                    p.write(chunk)
                print(f"{folder}/{name}.part{part:02d}: {len(chunk):,} bytes")
                part += 1
                room -= len(chunk)
                remaining -= len(chunk)
        with open(os.path.join(folder, f"{name}.sha256"), "w") as s:
            s.write(f"{digest.hexdigest()}  {name}\n")


if __name__ == "__main__":
    main()
