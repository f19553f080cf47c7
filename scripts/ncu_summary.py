#!/usr/bin/env python3
"""Where the GPU time of a training step goes, kernel by kernel, from an Nsight Compute CSV.

The CSV comes from Nsight Compute over `movq bench` (docs/gpu.md: `ncu --csv --page raw movq
bench --device cuda --only vq-train ...`; plain or .xz). Training steps are told apart by
the optimizer: a run of adam_step kernels ends a step. Prints, per step, its kernel count and
time, and for the steps asked for (default: the second of each workload, after a warm-up) the
kernels grouped by name, largest first.

    python3 scripts/ncu_summary.py steps.csv.xz [--steps 1,3] [--top 25]
"""
import argparse
import csv
import io
import lzma
from collections import defaultdict


def read_rows(path):
    opener = lzma.open if path.endswith(".xz") else open
    with opener(path, "rt", errors="replace") as f:
        lines = f.read().splitlines()
    # ncu prints its own messages (and the profiled program's output) before the header
    start = next(i for i, l in enumerate(lines) if l.startswith('"ID"'))
    rows = []
    for r in csv.DictReader(io.StringIO("\n".join(lines[start:]))):
        value = (r.get("Metric Value") or "0").replace(",", "")
        rows.append((r["Kernel Name"], float(value) / 1e6))  # ns → ms
    return rows


def split_steps(rows):
    """Kernel lists ending after each run of optimizer kernels (the last list may be no step)."""
    steps, current, in_adam = [], [], False
    for name, ms in rows:
        adam = "adam" in name
        if in_adam and not adam:
            steps.append(current)
            current = []
        current.append((name, ms))
        in_adam = adam
    if current:
        steps.append(current)
    return steps


def by_name(step, width=70):
    groups = defaultdict(lambda: [0, 0.0])
    for name, ms in step:
        key = name if len(name) <= width else name[: width - 1] + "…"
        groups[key][0] += 1
        groups[key][1] += ms
    return sorted(groups.items(), key=lambda kv: -kv[1][1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--steps", help="comma-separated step numbers to break down (from 0)")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    steps = split_steps(read_rows(a.csv))
    for i, s in enumerate(steps):
        print(f"step {i}: {len(s)} kernels, {sum(ms for _, ms in s):.1f} ms")
    wanted = [int(x) for x in a.steps.split(",")] if a.steps else [1] if len(steps) > 1 else [0]
    for i in wanted:
        if not 0 <= i < len(steps):
            raise SystemExit(f"no step {i} (there are {len(steps)})")
        total = sum(ms for _, ms in steps[i])
        print(f"\nstep {i}, {total:.1f} ms of kernel time:")
        print("| kernel | ms | share | calls |\n| --- | --- | --- | --- |")
        for name, (calls, ms) in by_name(steps[i])[: a.top]:
            print(f"| `{name}` | {ms:.2f} | {100 * ms / total:.1f} % | {calls} |")


if __name__ == "__main__":
    main()
