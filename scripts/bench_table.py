#!/usr/bin/env python3
"""Side-by-side table of `movq bench` and the PyTorch reference (`torch_reference.py`) from one
run on the same GPU: movq's JSON lines and the reference's results.jsonl, matched by workload,
precision and batch, with the ratio movq / PyTorch (throughput), movq's MFU (the reference's FLOP count per item over
the bf16 matmul peak measured in the same run) and both peak memories.

usage: python3 scripts/bench_table.py MOVQ.jsonl TORCH_RESULTS.jsonl  (markdown on stdout)

The reference's results.jsonl holds its eager sections and its compile_* sections (torch.compile),
all from the same call as movq's lines.

A PyTorch figure missing from the run (strict-fp32 stage-1 jobs spend 25-160 s each in cuDNN's
autotuner, more than a 10-minute device call leaves) falls back to the reference's own anchor
run on an H200 (2026-11-28, ../shared/CUDA.md), marked ‡.
"""
import json
import sys

# movq (workload, config, batch) -> how the reference names the same job: eager section, mode,
# a text its config contains (None: any), the compiled job's config text (None: no compiled job)
MATCH = [
    (("vq-train", "ffhq-256", 16), "a2", "train", None, "A2 ", "stage-1 paper preset (f16, 16×16×4, K 1024) train step"),
    (("vq-infer", "ffhq-256", 64), "a2", "infer", None, "A2 ", "stage-1 paper preset encode+quantize+decode"),
    (("vq-train", "kandinsky-movq", 16), "a1", "train", None, "A1 ", "Kandinsky-shape (f8) train step"),
    (("vq-infer", "kandinsky-movq", 64), "a1", "infer", None, "A1 ", "Kandinsky-shape encode+quantize+decode"),
    (("vq-decode", "ffhq-256", 64), "b", "decode", "grid16x16x4", None, "paper-preset decoder from 16×16×4 tokens"),
    (("tr-train", "16x16x4", 64), "b", "train", "seq 1024+1", "seq 1024+1", "transformer 24×768 train, 1024+1 tokens"),
    (("tr-train", "16x16x1", 64), "b", "train", "seq 256+1", "seq 256+1", "transformer 24×768 train, 256+1 tokens"),
    (("tr-sample", "16x16x4", 64), "b", "sample", "seq 1024+1", "seq 1024+1", "12-step sampling, 1024 tokens"),
    (("tr-sample", "16x16x1", 256), "b", "sample", "seq 256+1", "seq 256+1", "12-step sampling, 256 tokens"),
    (("vq-train", "fashion-32", 64), "small", "train", "fashion-32", "SMALL ", "small: fashion-32 stage-1 train step"),
    (("vq-infer", "fashion-32", 256), "small", "infer", "fashion-32", "SMALL ", "small: fashion-32 encode+quantize+decode"),
    (("tr-train", "8x8x2", 128), "small", "train", "seq 128+1", "seq 128+1", "small: transformer 8×256 train, 128+1 tokens"),
    (("tr-sample", "8x8x2", 256), "small", "sample", "seq 128+1", "seq 128+1", "small: 12-step sampling, 128 tokens"),
]


# The reference's anchor run (PyTorch 2.11, one H200), strict fp32: throughput by movq workload.
ANCHOR_FP32 = {
    ("vq-train", "ffhq-256", 16): 24.6,
    ("vq-infer", "ffhq-256", 64): 69.4,
    ("vq-train", "kandinsky-movq", 16): 20.2,
    ("vq-infer", "kandinsky-movq", 64): 49.5,
    ("vq-decode", "ffhq-256", 64): 95.5,
    ("tr-train", "16x16x4", 64): 30601,
    ("tr-train", "16x16x1", 64): 37765,
    ("tr-sample", "16x16x4", 64): 7.83,
    ("tr-sample", "16x16x1", 256): 38.9,
}


def load(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def find(rows, section, mode, prec, batch, tag):
    return next((r for r in rows if r.get("section") == section and r.get("mode") == mode
                 and r.get("prec") == prec and r.get("batch") == batch
                 and (tag is None or tag in r.get("config", ""))), None)


def main():
    movq = load(sys.argv[1])
    torch = load(sys.argv[2]) if len(sys.argv) > 2 else []
    peak = next((r["tflops"] for r in torch if r.get("section") == "ceil" and r.get("prec") == "bf16"
                 and r.get("status") == "ok"), None)
    if peak:
        print(f"bf16 matmul peak measured in this run: {peak:.0f} TFLOP/s (MFU is against it)\n")
    # memory: movq's pool high-water mark of memory in use (what torch.cuda.max_memory_allocated
    # counts) / the device's memory in use (pool reserve, workspaces); PyTorch's allocated peak
    print("| workload | B | prec | movq | PyTorch eager | torch.compile | movq / eager | movq / compile "
          "| movq MFU | compile MFU | movq peak GiB (allocated / in use) | eager / compile peak GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (kind, cfg, batch), section, mode, tag, ctag, label in MATCH:
        for prec in ("f32", "bf16"):
            m = next((r for r in movq if (r.get("workload"), r.get("config"), r.get("batch"), r.get("prec"))
                      == (kind, cfg, batch, prec)), None)
            tprec = "fp32" if prec == "f32" else "bf16"
            t = find(torch, section, mode, tprec, batch, tag)
            c = find(torch, "compile", mode + "+compile", tprec, batch, ctag) if ctag else None
            flops = next((r["flops_per_item"] for r in torch if r.get("section") == section
                          and r.get("mode") == mode and r.get("batch") == batch and r.get("flops_per_item")
                          and (tag is None or tag in r.get("config", ""))), None)
            mark = ""
            if (t is None or t.get("status") != "ok") and prec == "f32" and (kind, cfg, batch) in ANCHOR_FP32:
                t = {"status": "ok", "throughput": ANCHOR_FP32[(kind, cfg, batch)]}
                mark = "‡"
            if m is None:  # rows of the precisions movq ran
                continue
            unit = {"tr-train": "tok/s", "tr-sample": "grids/s"}.get(kind, "img/s")

            def fmt(r, mk=""):
                if r is None:
                    return "—"
                if r.get("status") != "ok":
                    return r.get("status", "?")
                micro = f" (micro-batch {r['micro_batch']})" if r.get("micro_batch") else ""
                return f"{r['throughput']:,.1f} {unit}{micro}{mk}"

            def ok(r):
                return r is not None and r.get("status") == "ok"

            def ratio(a, b, mk=""):
                return f"{a['throughput'] / b['throughput']:.3f}×{mk}" if ok(a) and ok(b) else "—"

            def mfu(r):
                return f"{r['throughput'] * flops / (peak * 1e12):.3f}" if ok(r) and flops and peak else "—"

            mp = f"{m['peak_mem_gib']:.1f}" if m and m.get("peak_mem_gib") is not None else "—"
            if m and m.get("peak_alloc_gib") is not None:
                mp = f"{m['peak_alloc_gib']:.1f} / {mp}"
            tp = " / ".join(f"{r['peak_mem_steady_gib']:.1f}" if r and r.get("peak_mem_steady_gib") is not None
                            else "—" for r in (t, c))
            print(f"| {label} | {batch} | {prec} | {fmt(m)} | {fmt(t, mark)} | {fmt(c)} | {ratio(m, t, mark)} "
                  f"| {ratio(m, c)} | {mfu(m)} | {mfu(c)} | {mp} | {tp} |")


if __name__ == "__main__":
    main()
