#!/usr/bin/env python3
"""PyTorch anchor benchmark: MoVQ tokenizer (diffusers VQModel, norm_type="spatial")
and a MaskGIT-style bidirectional transformer, on one CUDA GPU.

Purpose: reference ("anchor") numbers measured in the same run as a later
Rust/candle implementation, so that candle can be reported as a ratio.

Sections (--sections, comma separated):
  ceil      bf16 / fp32 / tf32 8192^3 matmul TFLOP/s, device-to-device copy GB/s
  a1        MoVQ f=8  (Kandinsky-2.2 movq config), 256x256: infer B16/B64, train B16
  a2        MoVQ f=16 (MoVQ-paper-like, 4-channel VQ 16x16x4), same measurements
  b         MaskGIT-base (24L, d768, 16 heads, MLP 3072): train B64, 12-step sampling
            B64/B256 for a 16x16 grid (256 tokens) and a 16x16x4 grid (1024 tokens),
            plus the A2 decoder's cost to turn those token grids into images
  small     the small models a user trains first (movq's fashion-32 preset): stage 1 at 32 px
            (ch 64, mult 1,2,2, attention at 8x8, 2-channel VQ 512 x 32d) infer B256 and train
            B64 (Adam (0.5, 0.9), clipping at 1); the 8 x 256 transformer over 8x8x2 + 1 tokens
            (512 codes, 10 classes) train B128 (AdamW, clipping at 1) and 12-step sampling B256
  compile_a1, compile_a2              stage-1 inference B64 with torch.compile
  compile_a1_train, compile_a2_train  stage-1 train step B16 with torch.compile
  compile_mg_train, compile_mg_sample the transformer with torch.compile (--compile-seq 256 or
                                      1024; sampling batches --compile-sample-batches)
  compile_small                       the small section with torch.compile
            (each compile_* section runs as its own process; give it a `timeout`)
  table     print the table of everything in --out/results.jsonl

Precisions:
  fp32   strict IEEE fp32 (TF32 off for matmul and cuDNN conv)
  tf32   fp32 tensors, TF32 allowed for matmul and conv (extra, VQ only)
  bf16   torch.autocast(bfloat16), fp32 master weights (training: fp32 AdamW)
  bf16w  weights and activations cast to bf16, no autocast (inference only;
         closest to running a model with dtype=bf16 in candle)

Timing: CUDA events around each call, warm-up first, median of the timed
iterations; torch.backends.cudnn.benchmark = True (NB: with strict fp32 the
cuDNN autotuner's first call is very slow: 25-160 s per new shape set for the
VQ models on an H200; it is excluded from the timings but costs device time).
Peak memory: peak_mem_gib = torch.cuda.max_memory_allocated() over warm-up +
timed iterations (params, optimizer state, activations, and cuDNN autotuner
workspaces tried during warm-up); peak_mem_steady_gib = timed iterations only.
--deadline makes the script skip (and record as skipped) jobs once exceeded;
jobs run core-first (fp32/bf16), extras (bf16w, tf32) last.

Usage (one H200, PyTorch 2.11, diffusers 0.42.1; from the repository root):
  python3 benches/torch_reference.py --sections ceil,a1,a2,b,small --out DIR
  python3 benches/torch_reference.py --sections compile_a1 --out DIR   (and each compile_* section)
  python3 benches/torch_reference.py --sections table --out DIR
scripts/bench-gpu runs all of it beside `movq bench` and writes the joined table.
A complete run with no deadline needs roughly 15 device-minutes (about 5 of them
cuDNN autotuning in strict fp32). FLOPs are counted with
torch.utils.flop_counter.FlopCounterMode (matmul / conv / attention only;
norms, activations, interpolation, VQ nearest-neighbour search are NOT counted
except where stated), at batch 1, and divided per image / per sequence.
MFU = achieved model FLOP/s / 790e12 (dense bf16 peak measured on this H200
kind); the 'ceil' section re-measures that peak in the same run.
"""
import argparse
import contextlib
import copy
import gc
import json
import math
import os
import re
import statistics
import sys
import time
import traceback

import torch
import torch.nn as nn
import torch.nn.functional as F

PEAK_BF16 = 790e12
T_START = time.time()
ARGS = None
DEV = None
RESULTS_PATH = None


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def log(*a):
    print(f"[{time.time() - T_START:7.1f}s]", *a, flush=True)


def set_fp32_mode(mode):
    """mode: 'ieee' (strict fp32) or 'tf32'. Uses only the new (torch>=2.9) API."""
    torch.backends.cuda.matmul.fp32_precision = mode
    torch.backends.cudnn.conv.fp32_precision = mode
    torch.backends.cudnn.rnn.fp32_precision = mode


@contextlib.contextmanager
def fp32_mode_ctx(prec):
    """TF32 on only for prec == 'tf32'; wrap forward AND backward/step in this."""
    set_fp32_mode("tf32" if prec == "tf32" else "ieee")
    try:
        yield
    finally:
        set_fp32_mode("ieee")


@contextlib.contextmanager
def precision_ctx(prec):
    """fp32 mode + autocast(bf16) for prec == 'bf16'; wrap the forward pass in this."""
    with fp32_mode_ctx(prec):
        if prec == "bf16":
            with torch.autocast(DEV.type, dtype=torch.bfloat16):
                yield
        else:
            yield


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def time_call(fn):
    """Seconds for one call of fn, measured with CUDA events (perf_counter on CPU)."""
    if DEV.type == "cuda":
        s = torch.cuda.Event(enable_timing=True)
        e = torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        return s.elapsed_time(e) / 1e3
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def past_deadline():
    return ARGS.deadline > 0 and (time.time() - T_START) > ARGS.deadline


def write_record(rec):
    rec["t_wall"] = round(time.time() - T_START, 1)
    with open(RESULTS_PATH, "a") as f:
        f.write(json.dumps(rec) + "\n")


def free_memory():
    gc.collect()
    if DEV.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def measure(rec, fn, items_per_call, *, warm_fn=None, flops_per_item=None, warmup=2,
            min_iters=3, max_iters=20, target_s=2.0, cap_s=20.0):
    """Warm up, then time fn() repeatedly; write one result record.

    rec: dict of identifying fields (section, config, mode, prec, batch, unit, ...).
    items_per_call: images (or tokens) produced per fn() call, for throughput.
    warm_fn: optional cheaper warm-up callable with identical shapes (e.g. one
             sampling step instead of twelve).
    Timed loop stops at max_iters, or when >= min_iters and total >= target_s,
    or when total >= cap_s (very slow items may then have 1-2 iterations).
    """
    rec = dict(rec)
    if past_deadline():
        rec["status"] = "skipped (deadline)"
        write_record(rec)
        log("SKIP", rec.get("config"), rec.get("mode"), rec.get("prec"), rec.get("batch"))
        return rec
    free_memory()
    if DEV.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        wf = warm_fn or fn
        t0 = time.perf_counter()
        wf()
        sync()
        first = time.perf_counter() - t0
        rec["first_call_s"] = round(first, 3)
        if first < 3.0:
            for _ in range(warmup - 1):
                wf()
            sync()
        if DEV.type == "cuda":
            # peak over the timed iterations only (excludes cuDNN autotuner workspaces and
            # torch.compile work done during warm-up); peak_mem_gib below keeps warm-up too
            peak_warm = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        times = []
        while True:
            times.append(time_call(fn))
            n, tot = len(times), sum(times)
            if n >= max_iters or (n >= min_iters and tot >= target_s) or tot >= cap_s:
                break
        med = statistics.median(times)
        rec.update(
            status="ok",
            iters=len(times),
            median_ms=round(med * 1e3, 3),
            min_ms=round(min(times) * 1e3, 3),
            max_ms=round(max(times) * 1e3, 3),
            throughput=items_per_call / med,
        )
        if DEV.type == "cuda":
            steady = torch.cuda.max_memory_allocated()
            rec["peak_mem_gib"] = round(max(peak_warm, steady) / 2**30, 3)  # warm-up included
            rec["peak_mem_steady_gib"] = round(steady / 2**30, 3)  # timed iterations only
            rec["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
        if flops_per_item:
            rec["flops_per_item"] = flops_per_item
            achieved = flops_per_item * rec["throughput"]
            rec["tflops"] = round(achieved / 1e12, 2)
            rec["mfu_bf16peak"] = round(achieved / PEAK_BF16, 4)
        log("OK  ", rec.get("config"), rec.get("mode"), rec.get("prec"), "B", rec.get("batch"),
            f"{rec['throughput']:.2f} {rec.get('unit')}", f"med {rec['median_ms']} ms",
            f"peak {rec.get('peak_mem_gib')} GiB", f"iters {len(times)}")
    except torch.cuda.OutOfMemoryError as e:
        rec["status"] = "oom"
        rec["error"] = str(e)[:300]
        log("OOM ", rec.get("config"), rec.get("mode"), rec.get("prec"), rec.get("batch"))
    except Exception as e:  # noqa: BLE001
        rec["status"] = "error"
        rec["error"] = f"{type(e).__name__}: {str(e)[:400]}"
        log("ERR ", rec.get("config"), rec.get("mode"), rec.get("prec"), rec.get("batch"), rec["error"])
        traceback.print_exc()
    write_record(rec)
    free_memory()
    return rec


def count_flops(fn):
    from torch.utils.flop_counter import FlopCounterMode
    fc = FlopCounterMode(display=False)
    with fc:
        fn()
    return int(fc.get_total_flops())


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# --------------------------------------------------------------------------------------
# ceilings
# --------------------------------------------------------------------------------------
def section_ceil():
    n = 8192 if not ARGS.smoke else 512
    flops = 2 * n**3
    for prec, dt in (("bf16", torch.bfloat16), ("tf32", torch.float32), ("fp32", torch.float32)):
        a = torch.randn(n, n, device=DEV, dtype=dt)
        b = torch.randn(n, n, device=DEV, dtype=dt)
        mode = "tf32" if prec == "tf32" else "ieee"

        def mm():
            set_fp32_mode(mode)
            torch.mm(a, b)
            set_fp32_mode("ieee")

        measure(dict(section="ceil", config=f"matmul {n}^3", mode="matmul", prec=prec, batch=1,
                     unit="calls/s"), mm, 1, warmup=3, min_iters=10, max_iters=50,
                target_s=1.0, flops_per_item=flops)
        del a, b
    nbytes = (2 * 2**30) if not ARGS.smoke else 2**24
    src = torch.randn(nbytes // 4, device=DEV)
    dst = torch.empty_like(src)
    r = measure(dict(section="ceil", config="d2d copy 2GiB", mode="copy", prec="fp32", batch=1,
                     unit="copies/s"), lambda: dst.copy_(src), 1, warmup=3, min_iters=10,
                max_iters=50, target_s=0.5)
    if r.get("status") == "ok":
        r2 = dict(r)
        r2["config"] = "d2d copy 2GiB (GB/s, read+write)"
        r2["throughput"] = 2 * nbytes * r["throughput"] / 1e9
        r2["unit"] = "GB/s"
        write_record(r2)
        log(f"copy: {r2['throughput']:.0f} GB/s (read+write)")
    del src, dst


# --------------------------------------------------------------------------------------
# MoVQ (diffusers VQModel with spatial norm)
# --------------------------------------------------------------------------------------
class MultiChannelVQ(nn.Module):
    """MoVQ-style multichannel quantizer: the vq_dim-channel latent at every position
    is split into `channels` chunks of vq_dim/channels, each quantized against one
    shared codebook. forward() matches diffusers' VectorQuantizer return signature."""

    def __init__(self, n_codes, vq_dim, channels, beta=0.25):
        super().__init__()
        assert vq_dim % channels == 0
        self.c = channels
        self.d = vq_dim // channels
        self.beta = beta
        self.embedding = nn.Embedding(n_codes, self.d)
        self.embedding.weight.data.uniform_(-1.0 / n_codes, 1.0 / n_codes)

    def forward(self, z):
        B, C, H, W = z.shape
        zf = z.permute(0, 2, 3, 1).reshape(B, H, W, self.c, self.d)
        flat = zf.reshape(-1, self.d).float()
        w = self.embedding.weight.float()
        dist = flat.pow(2).sum(1, keepdim=True) - 2.0 * (flat @ w.t()) + w.pow(2).sum(1)[None, :]
        idx = dist.argmin(1)
        zq = self.embedding(idx).view(B, H, W, self.c, self.d).to(zf.dtype)
        loss = torch.mean((zq.detach() - zf) ** 2) + self.beta * torch.mean((zq - zf.detach()) ** 2)
        zq = zf + (zq - zf).detach()
        zq = zq.reshape(B, H, W, C).permute(0, 3, 1, 2).contiguous()
        return zq, loss, (None, None, idx.view(B, H * W * self.c))

    def lookup(self, idx, H, W):
        """idx: (B, H*W*c) token grid in (h, w, channel) order -> (B, c*d, H, W)."""
        B = idx.shape[0]
        return self.embedding(idx).view(B, H, W, self.c * self.d).permute(0, 3, 1, 2).contiguous()


def build_vq(name):
    from diffusers import VQModel
    s = ARGS.smoke
    if name == "a1":
        cfg = dict(
            in_channels=3, out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 3 + ("AttnDownEncoderBlock2D",),
            up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 3,
            block_out_channels=(128, 256, 256, 512) if not s else (32, 32, 64, 64),
            layers_per_block=2, latent_channels=4, num_vq_embeddings=16384, vq_embed_dim=4,
            norm_num_groups=32 if not s else 8, norm_type="spatial", sample_size=256,
        )
        m = VQModel(**cfg)
        desc = "MoVQ f8 K2.2 cfg, 32x32x4 lat, 16384 codes"
        mc = None
    elif name == "small":
        cfg = dict(
            in_channels=3, out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
            up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(64, 128, 128), layers_per_block=2, latent_channels=64,
            num_vq_embeddings=512, vq_embed_dim=64, norm_num_groups=32, norm_type="spatial",
            sample_size=32,
        )
        m = VQModel(**cfg)
        mc = 2
        m.quantize = MultiChannelVQ(512, 64, mc)
        desc = "fashion-32 f4, 8x8x2 tokens, 512 codes"
    else:
        cfg = dict(
            in_channels=3, out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4 + ("AttnDownEncoderBlock2D",),
            up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 128, 256, 256, 512) if not s else (32, 32, 32, 64, 64),
            layers_per_block=2, latent_channels=256 if not s else 64, num_vq_embeddings=1024,
            vq_embed_dim=256 if not s else 64, norm_num_groups=32 if not s else 8,
            norm_type="spatial", sample_size=256,
        )
        m = VQModel(**cfg)
        # replace the single-codebook quantizer by a 4-channel one (16x16x4 tokens, 1024 codes)
        mc = 4
        m.quantize = MultiChannelVQ(1024, cfg["vq_embed_dim"], mc)
        desc = "MoVQ f16, 16x16x256 lat, 4ch-VQ 1024x64d"
    return m.to(DEV), cfg, desc


def vq_res(name):
    """Image side of a stage-1 section: the small model works at 32 px."""
    return 32 if name == "small" else ARGS.res


def vq_optimizer(m, small):
    """The large models train with AdamW (0.5, 0.9), decay 0.01; the small one as movq's
    fashion-32 preset does: Adam (0.5, 0.9) and gradient clipping at 1 (see vq_step)."""
    if small:
        return torch.optim.Adam(m.parameters(), lr=2e-4, betas=(0.5, 0.9))
    return torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.5, 0.9), weight_decay=0.01)


def vq_step(m, opt, x, prec, small, forward=None):
    """One stage-1 train step: L1 + codebook/commitment loss, backward, optimizer.
    forward: the compiled encode-quantize-decode (default: vq_forward, eager)."""
    with fp32_mode_ctx(prec):
        with precision_ctx(prec):
            dec, commit = (forward or (lambda x: vq_forward(m, x)))(x)
            loss = F.l1_loss(dec.float(), x) + commit.float()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if small:
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()


def vq_forward(m, x):
    """encode + quantize + decode (what the inference numbers time)."""
    h = m.quant_conv(m.encoder(x))
    quant, commit, _ = m.quantize(h)
    dec = m.decoder(m.post_quant_conv(quant), quant)
    return dec, commit


def vq_decode_quant(m, quant):
    return m.decoder(m.post_quant_conv(quant), quant)


def section_vq(name):
    res = vq_res(name)
    m, cfg, desc = build_vq(name)
    P = n_params(m)
    log(f"{name}: {desc}; params {P/1e6:.2f} M")
    x1 = torch.randn(1, 3, res, res, device=DEV)
    m.eval()
    with torch.no_grad():
        lat = m.quant_conv(m.encoder(x1))
    latent_shape = tuple(lat.shape[1:])
    # FLOPs per image, fp32, batch 1
    with torch.no_grad():
        f_inf = count_flops(lambda: vq_forward(m, x1))
        f_enc = count_flops(lambda: m.quant_conv(m.encoder(x1)))
        quant = m.quantize(lat)[0]
        f_dec = count_flops(lambda: vq_decode_quant(m, quant))
    m.train()

    def train_once():
        dec, commit = vq_forward(m, x1)
        loss = F.l1_loss(dec.float(), x1) + commit
        loss.backward()

    f_train = count_flops(train_once)
    m.zero_grad(set_to_none=True)
    # nearest-neighbour search FLOPs (not seen by FlopCounterMode when done by cdist)
    n_codes = m.quantize.embedding.weight.shape[0]
    d_code = m.quantize.embedding.weight.shape[1]
    n_vecs = latent_shape[1] * latent_shape[2] * (latent_shape[0] // d_code)
    f_nn = 2 * n_vecs * n_codes * d_code
    with torch.no_grad():
        f_q_counted = count_flops(lambda: m.quantize(lat))
    if f_q_counted >= 0.5 * f_nn:  # quantizer's distance matmul already seen by the counter
        f_nn = 0
    info = dict(section=name, config=f"{name.upper()} {desc}", params=P, latent=list(latent_shape), res=res,
                flops_fwd_img=f_inf, flops_enc_img=f_enc, flops_dec_img=f_dec,
                flops_train_img=f_train, flops_vq_nn_img=f_nn)
    write_record(dict(info, mode="info", status="info"))
    log(f"{name}: latent {latent_shape}; GFLOP/img fwd {f_inf/1e9:.1f} (enc {f_enc/1e9:.1f}, "
        f"dec {f_dec/1e9:.1f}), train {f_train/1e9:.1f}; VQ NN search {f_nn/1e9:.3f}")
    del x1, lat, quant

    jobs = []
    if name == "small":
        for prec in ("fp32", "bf16"):
            jobs += [(0, "infer", prec, 256), (0, "train", prec, 64)]
        return m, info, jobs, f_inf + f_nn, f_train
    # inference
    for prec, prio in (("fp32", 0), ("bf16", 0), ("bf16w", 1), ("tf32", 1)):
        for B in ARGS.vq_infer_batches:
            jobs.append((prio, "infer", prec, B))
    for prec, prio in (("fp32", 0), ("bf16", 0), ("tf32", 1)):
        for B in ARGS.vq_train_batches:
            jobs.append((prio, "train", prec, B))
    return m, info, jobs, f_inf + f_nn, f_train


def run_vq_job(m, info, job, f_inf, f_train):
    _, mode, prec, B = job
    res = info["res"]
    small = info["section"] == "small"
    rec = dict(section=info["section"], config=info["config"], mode=mode, prec=prec, batch=B,
               unit="img/s", params=info["params"])
    if mode == "infer":
        mm = m
        dt = torch.float32
        if prec == "bf16w":
            mm = copy.deepcopy(m).to(torch.bfloat16)
            dt = torch.bfloat16
        mm.eval()
        xs = [torch.randn(B, 3, res, res, device=DEV, dtype=dt) for _ in range(2)]
        it = [0]

        def fn():
            it[0] += 1
            with torch.inference_mode(), precision_ctx(prec):
                vq_forward(mm, xs[it[0] % 2])

        measure(rec, fn, B, flops_per_item=f_inf)
        del mm, xs
    else:
        m.train()
        opt = vq_optimizer(m, small)
        xs = [torch.randn(B, 3, res, res, device=DEV) for _ in range(2)]
        it = [0]

        def fn():
            it[0] += 1
            vq_step(m, opt, xs[it[0] % 2], prec, small)

        rec["optimizer"] = ("Adam + clipping at 1" if small else "AdamW") + " (torch default impl: foreach)"
        measure(rec, fn, B, flops_per_item=f_train)
        opt.zero_grad(set_to_none=True)
        del opt, xs
        m.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------------------
# MaskGIT bidirectional transformer (own implementation)
# --------------------------------------------------------------------------------------
class Block(nn.Module):
    """Pre-norm transformer block, bidirectional SDPA attention, GELU MLP."""

    def __init__(self, d, heads, mlp):
        super().__init__()
        self.h = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, mlp)
        self.fc2 = nn.Linear(mlp, d)

    def forward(self, x):
        B, L, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.h, D // self.h).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)  # no mask: bidirectional
        x = x + self.proj(a.transpose(1, 2).reshape(B, L, D))
        x = x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return x


class MaskGIT(nn.Module):
    """Token embedding table: [0, V) codebook ids, V = [MASK], V+1+c = class c.
    Sequence = [class token] + N image tokens; logits over the V codebook ids."""

    def __init__(self, n_tokens, vocab=1024, n_classes=1000, d=768, layers=24, heads=16, mlp=3072):
        super().__init__()
        self.vocab = vocab
        self.n_classes = n_classes
        self.mask_id = vocab
        self.n_tokens = n_tokens
        self.tok = nn.Embedding(vocab + 1 + n_classes, d)
        self.pos = nn.Parameter(torch.randn(1, n_tokens + 1, d) * 0.02)
        self.blocks = nn.ModuleList([Block(d, heads, mlp) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        nn.init.normal_(self.tok.weight, std=0.02)

    def forward(self, tokens, cls):
        x = torch.cat([(cls + self.vocab + 1)[:, None], tokens], dim=1)
        h = self.tok(x) + self.pos
        for b in self.blocks:
            h = b(h)
        return self.head(self.ln_f(h[:, 1:]))


def maskgit_loss(model, tokens, cls):
    """MaskGIT training objective: cosine-schedule random masking, CE on masked positions.
    (Computed densely with a 0/1 weight to avoid a host sync from boolean indexing.)"""
    B, N = tokens.shape
    r = torch.cos(0.5 * math.pi * torch.rand(B, 1, device=tokens.device))  # mask ratio per sample
    mask = torch.rand(B, N, device=tokens.device) < r
    inp = tokens.masked_fill(mask, model.mask_id)
    logits = model(inp, cls)
    ce = F.cross_entropy(logits.float().reshape(-1, model.vocab), tokens.reshape(-1), reduction="none")
    w = mask.reshape(-1).float()
    return (ce * w).sum() / w.sum().clamp_min(1.0)


def gumbel_like(t):
    u = torch.rand_like(t, dtype=torch.float32).clamp_min_(1e-20)
    return -torch.log(-torch.log(u))


@torch.no_grad()
def maskgit_generate(model, cls, steps=12, choice_temperature=4.5, max_steps=None):
    """MaskGIT iterative decoding: start fully masked; each step sample every masked
    position (Gumbel-max, temperature 1), then re-mask the n_mask least confident newly
    sampled tokens (confidence = log p(sampled) + annealed Gumbel noise), with
    n_mask = floor(N * cos(pi/2 * (t+1)/steps)). No classifier-free guidance.
    All counts are known on the host, so the loop has no device->host syncs."""
    N = model.n_tokens
    B = cls.shape[0]
    tokens = torch.full((B, N), model.mask_id, device=cls.device, dtype=torch.long)
    n_unknown = N
    for t in range(steps if max_steps is None else max_steps):
        logits = model(tokens, cls).float()
        unknown = tokens.eq(model.mask_id)
        sampled = torch.argmax(logits + gumbel_like(logits), dim=-1)
        logp = logits.gather(-1, sampled.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        sampled = torch.where(unknown, sampled, tokens)
        ratio = (t + 1) / steps
        n_mask = int(math.floor(N * math.cos(0.5 * math.pi * ratio)))
        if t == steps - 1 or n_mask <= 0:
            tokens = sampled
            break
        n_mask = max(1, min(n_unknown - 1, n_mask))
        conf = logp + choice_temperature * (1.0 - ratio) * gumbel_like(logp)
        conf = conf.masked_fill(~unknown, float("inf"))
        kth = torch.topk(conf, n_mask, dim=-1, largest=False).values[:, -1:]
        tokens = sampled.masked_fill(conf <= kth, model.mask_id)
        n_unknown = n_mask
    return tokens


# the small section's transformer: movq's fashion-32 preset (8 x 256, 8 heads, MLP 1024) over an
# 8x8x2 grid of 512 codes, 10 classes
SMALL_MASKGIT = dict(vocab=512, n_classes=10, d=256, layers=8, heads=8, mlp=1024)
SMALL_SEQ = 8 * 8 * 2


def build_maskgit(n_tokens, small=False):
    if small:
        return MaskGIT(n_tokens, **SMALL_MASKGIT).to(DEV)
    if ARGS.smoke:
        return MaskGIT(n_tokens, d=64, layers=2, heads=4, mlp=256).to(DEV)
    return MaskGIT(n_tokens).to(DEV)


def maskgit_flops(model, N):
    """FLOPs per sequence of one forward pass and of one train step (batch 1)."""
    tok1 = torch.randint(0, model.vocab, (1, N), device=DEV)
    cls1 = torch.randint(0, model.n_classes, (1,), device=DEV)
    with torch.no_grad():
        f_fwd = count_flops(lambda: model(tok1, cls1))
    f_train = count_flops(lambda: maskgit_loss(model, tok1, cls1).backward())
    model.zero_grad(set_to_none=True)
    return f_fwd, f_train


def maskgit_with_info(section, config, N, small=False):
    """A transformer over N tokens and its info record (params, FLOPs), written to the results."""
    model = build_maskgit(N, small)
    P = n_params(model)
    f_fwd, f_train = maskgit_flops(model, N)
    info = dict(section=section, config=config, params=P, flops_fwd_seq=f_fwd,
                flops_train_seq=f_train, seq=N + 1, mode="info", status="info", clip=small)
    write_record(info)
    log(f"maskgit {config}: params {P/1e6:.2f} M, seq {N+1}, GFLOP/seq fwd {f_fwd/1e9:.2f}, "
        f"train {f_train/1e9:.2f}")
    return model, info


def section_small():
    """The small section's transformer jobs (its stage-1 jobs come from section_vq("small"))."""
    model = maskgit_with_info("small", f"MaskGIT-small 8x256 seq {SMALL_SEQ}+1", SMALL_SEQ, small=True)
    ctx = dict(models={"small": model})
    jobs = []
    for prec in ("fp32", "bf16"):
        jobs += [(0, "small", "small", "train", prec, 128), (0, "small", "small", "sample", prec, 256)]
    return ctx, jobs


def mg_train_step(model, opt, toks, clss, prec, clip):
    """One transformer train step: masked-token cross-entropy, backward, optimizer."""
    with fp32_mode_ctx(prec):
        with precision_ctx(prec):
            loss = maskgit_loss(model, toks, clss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()


def section_b(vq2):
    """MaskGIT train + sample for the 16x16 grid (256 tokens) and 16x16x4 grid (1024 tokens);
    decode cost of the same token grids through the A2 (f16 MoVQ) decoder."""
    g = ARGS.res // 16
    layouts = [("grid16x16", g * g, 1), ("grid16x16x4", g * g * 4, 4)]
    jobs = []
    models = {}
    for lname, N, _c in layouts:
        models[lname] = maskgit_with_info("b", f"MaskGIT-base seq {N}+1 ({lname})", N)
        for prec, prio in (("fp32", 0), ("bf16", 0)):
            jobs.append((prio, "b", lname, "train", prec, ARGS.mg_train_batch))
        for prec, prio in (("fp32", 0), ("bf16", 0), ("bf16w", 1)):
            for B in ARGS.mg_sample_batches:
                # the slowest item (fp32, 1024 tokens, B256: ~30 s) goes after the other prio-0 jobs
                p = 0.5 if (prec == "fp32" and N > 256 and B > 64) else prio
                jobs.append((p, "b", lname, "sample", prec, B))
        for prec, prio in (("fp32", 0), ("bf16", 0), ("bf16w", 1)):
            for B in ARGS.mg_sample_batches:
                jobs.append((prio + (1 if lname == "grid16x16" else 0), "b", lname, "decode", prec, B))
    # decode FLOPs of the A2 decoder (per image), from each token layout
    single_emb = nn.Embedding(1024, vq2.quantize.c * vq2.quantize.d).to(DEV)
    dec_flops = {}
    with torch.no_grad():
        for lname, N, c in layouts:
            t1 = torch.randint(0, 1024, (1, N), device=DEV)
            dec_flops[lname] = count_flops(lambda: decode_tokens(vq2, single_emb, t1, c))
    write_record(dict(section="b", config="A2 decoder from tokens", mode="info", status="info",
                      flops_dec_img=dec_flops))
    log(f"A2 decode-from-tokens GFLOP/img: { {k: round(v/1e9, 1) for k, v in dec_flops.items()} }")
    ctx = dict(models=models, single_emb=single_emb, dec_flops=dec_flops, vq2=vq2)
    return ctx, jobs


def decode_tokens(vq2, single_emb, tokens, c):
    g = ARGS.res // 16
    B = tokens.shape[0]
    if c == 1:
        quant = single_emb(tokens).view(B, g, g, -1).permute(0, 3, 1, 2).contiguous()
    else:
        quant = vq2.quantize.lookup(tokens, g, g)
    return vq_decode_quant(vq2, quant)


def run_b_job(ctx, job):
    _, _, lname, mode, prec, B = job
    model, info = ctx["models"][lname]
    N = info["seq"] - 1
    base = dict(section=info["section"], config=info["config"], mode=mode, prec=prec, batch=B,
                params=info["params"])
    if mode == "train":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.96), weight_decay=0.045)
        toks = [torch.randint(0, model.vocab, (B, N), device=DEV) for _ in range(2)]
        clss = [torch.randint(0, model.n_classes, (B,), device=DEV) for _ in range(2)]
        it = [0]

        def fn():
            it[0] += 1
            i = it[0] % 2
            mg_train_step(model, opt, toks[i], clss[i], prec, info["clip"])

        rec = dict(base, unit="tok/s", tokens_per_step=B * (N + 1),
                   optimizer="AdamW (torch default impl: foreach)")
        r = measure(rec, fn, B * (N + 1), flops_per_item=info["flops_train_seq"] / (N + 1))
        if r.get("status") == "ok":
            log(f"   -> {r['throughput']/(N+1):.1f} seq/s, {1e3/r['median_ms']:.2f} steps/s")
        opt.zero_grad(set_to_none=True)
        del opt
        model.zero_grad(set_to_none=True)
    elif mode == "sample":
        mm = model if prec != "bf16w" else copy.deepcopy(model).to(torch.bfloat16)
        mm.eval()
        clss = [torch.randint(0, model.n_classes, (B,), device=DEV) for _ in range(2)]
        it = [0]

        def fn(max_steps=None):
            it[0] += 1
            with torch.inference_mode(), precision_ctx(prec):
                maskgit_generate(mm, clss[it[0] % 2], steps=ARGS.steps, max_steps=max_steps)

        rec = dict(base, unit="grids/s", steps=ARGS.steps, cfg_guidance="none",
                   note="excludes VQ decode")
        measure(rec, fn, B, warm_fn=lambda: fn(max_steps=1),
                flops_per_item=ARGS.steps * info["flops_fwd_seq"])
        del mm
    else:  # decode
        vq2 = ctx["vq2"]
        c = 1 if lname == "grid16x16" else 4
        emb = ctx["single_emb"]
        if prec == "bf16w":
            vq2 = copy.deepcopy(vq2).to(torch.bfloat16)
            emb = copy.deepcopy(emb).to(torch.bfloat16)
        vq2.eval()
        toks = [torch.randint(0, 1024, (B, N), device=DEV) for _ in range(2)]
        it = [0]

        def fn():
            it[0] += 1
            with torch.inference_mode(), precision_ctx(prec):
                decode_tokens(vq2, emb, toks[it[0] % 2], c)

        rec = dict(base, config=f"A2 decoder <- {lname} tokens", unit="img/s",
                   params=n_params(vq2.decoder) + n_params(vq2.post_quant_conv))
        r = measure(rec, fn, B, flops_per_item=ctx["dec_flops"][lname])
        if r.get("status") == "oom" and B > 64:
            def fn_chunked():
                it[0] += 1
                with torch.inference_mode(), precision_ctx(prec):
                    for tk in toks[it[0] % 2].split(64):
                        decode_tokens(vq2, emb, tk, c)

            measure(dict(rec, note="decoded in chunks of 64 after OOM"), fn_chunked, B,
                    flops_per_item=ctx["dec_flops"][lname])
        del vq2, emb


# --------------------------------------------------------------------------------------
# torch.compile variants (run as their own process under `timeout`)
# --------------------------------------------------------------------------------------
def section_compile(which):
    """which: a1 / a2 / small (stage-1 inference), a1_train / a2_train (stage-1 train step),
    mg_train / mg_sample (the transformer at --compile-seq tokens), small (all four small jobs)."""
    import torch._dynamo
    torch._dynamo.config.cache_size_limit = 64
    if which in ("a1", "a2", "a1_train", "a2_train", "small"):
        compile_vq(which.split("_")[0], train=which.endswith("_train") or which == "small",
                   infer=not which.endswith("_train"))
    if which in ("mg_train", "mg_sample"):
        N = ARGS.compile_seq if not ARGS.smoke else (ARGS.res // 16) ** 2
        compile_maskgit(build_maskgit(N), N, f"MaskGIT-base seq {N}+1", which == "mg_train",
                        which == "mg_sample", ARGS.mg_train_batch, ARGS.compile_sample_batches, clip=False)
    if which == "small":
        compile_maskgit(build_maskgit(SMALL_SEQ, small=True), SMALL_SEQ,
                        f"MaskGIT-small 8x256 seq {SMALL_SEQ}+1", True, True, 128, [256], clip=True)


def compile_vq(name, train, infer):
    """Stage-1 inference (B64; B256 for the small model) and/or the train step (B16; B64),
    with encode-quantize-decode compiled by torch.compile."""
    small = name == "small"
    res = vq_res(name)
    m, cfg, desc = build_vq(name)
    x1 = torch.randn(1, 3, res, res, device=DEV)
    m.eval()
    with torch.no_grad():
        f_inf = count_flops(lambda: vq_forward(m, x1))
    m.train()
    f_train = count_flops(lambda: (F.l1_loss(vq_forward(m, x1)[0], x1)).backward())
    m.zero_grad(set_to_none=True)
    cf = torch.compile(lambda x: vq_forward(m, x))
    base = dict(section="compile", config=f"{name.upper()} {desc}", unit="img/s", params=n_params(m))
    for prec in ARGS.compile_precs:
        if infer:
            B = 256 if small else (64 if not ARGS.smoke else 2)
            xs = [torch.randn(B, 3, res, res, device=DEV) for _ in range(2)]
            it = [0]
            m.eval()

            def fn():
                it[0] += 1
                with torch.inference_mode(), precision_ctx(prec):
                    cf(xs[it[0] % 2])

            measure(dict(base, mode="infer+compile", prec=prec, batch=B), fn, B, flops_per_item=f_inf)
        if train:
            B = 64 if small else (16 if not ARGS.smoke else 2)
            xs = [torch.randn(B, 3, res, res, device=DEV) for _ in range(2)]
            it = [0]
            m.train()
            opt = vq_optimizer(m, small)

            def fn():
                it[0] += 1
                vq_step(m, opt, xs[it[0] % 2], prec, small, forward=cf)

            measure(dict(base, mode="train+compile", prec=prec, batch=B), fn, B, flops_per_item=f_train)
            del opt
            m.zero_grad(set_to_none=True)


def compile_maskgit(model, N, cfgname, train, sample, train_batch, sample_batches, clip):
    """The transformer's train step and/or 12-step sampling with the model compiled."""
    f_fwd, f_train = maskgit_flops(model, N)
    cmodel = torch.compile(model)
    base = dict(section="compile", config=cfgname, params=n_params(model))
    for prec in ARGS.compile_precs:
        if train:
            B = train_batch
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.96), weight_decay=0.045)
            toks = torch.randint(0, model.vocab, (B, N), device=DEV)
            clss = torch.randint(0, model.n_classes, (B,), device=DEV)

            def fn():
                mg_train_step(cmodel, opt, toks, clss, prec, clip)

            measure(dict(base, mode="train+compile", prec=prec, batch=B, unit="tok/s"), fn, B * (N + 1),
                    flops_per_item=f_train / (N + 1))
            del opt
            model.zero_grad(set_to_none=True)
        if sample:
            model.eval()
            for B in sample_batches:
                clss = torch.randint(0, model.n_classes, (B,), device=DEV)

                def fn(max_steps=None):
                    with torch.inference_mode(), precision_ctx(prec):
                        maskgit_generate(cmodel, clss, steps=ARGS.steps, max_steps=max_steps)

                measure(dict(base, mode="sample+compile", prec=prec, batch=B, unit="grids/s"), fn, B,
                        warm_fn=lambda: fn(max_steps=1), flops_per_item=ARGS.steps * f_fwd)


# --------------------------------------------------------------------------------------
# table
# --------------------------------------------------------------------------------------
def print_table(path):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    for r in rows:
        if r.get("section") == "env":
            print("env:", {k: v for k, v in r.items() if k not in ("section", "status", "mode", "config")})
    infos = [r for r in rows if r.get("status") == "info" and r.get("section") != "env"]
    print("\n==== model info ====")
    for r in infos:
        keys = {k: v for k, v in r.items() if k.startswith("flops") or k in ("params", "latent", "seq")}
        pretty = {}
        for k, v in keys.items():
            if k.startswith("flops"):
                if isinstance(v, dict):
                    pretty[k] = {kk: f"{vv/1e9:.1f}G" for kk, vv in v.items()}
                else:
                    pretty[k] = f"{v/1e9:.2f}G"
            elif k == "params":
                pretty[k] = f"{v/1e6:.2f}M"
            else:
                pretty[k] = v
        print(f"{r['config']}: {pretty}")
    print("\n==== results ====")
    hdr = f"{'config':58s} {'mode':14s} {'prec':5s} {'B':>4s} {'throughput':>14s} {'unit':8s} " \
          f"{'med ms':>9s} {'it':>3s} {'peakGiB':>8s} {'GF/item':>9s} {'TF/s':>7s} {'MFU':>6s}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        if r.get("status") == "info":
            continue
        if r.get("status") != "ok":
            print(f"{r.get('config','')[:58]:58s} {r.get('mode',''):14s} {r.get('prec',''):5s} "
                  f"{r.get('batch',''):>4} {r.get('status')} {r.get('error','')[:120]}")
            continue
        gf = r.get("flops_per_item")
        print(f"{r['config'][:58]:58s} {r['mode']:14s} {r['prec']:5s} {r['batch']:>4} "
              f"{r['throughput']:14.2f} {r['unit'][:8]:8s} {r.get('median_ms', 0):9.2f} {r.get('iters', 0):>3} "
              f"{r.get('peak_mem_gib', 0):8.2f} {(gf/1e9 if gf else 0):9.2f} {r.get('tflops', 0):7.1f} "
              f"{r.get('mfu_bf16peak', 0):6.3f}")


# --------------------------------------------------------------------------------------
def main():
    global ARGS, DEV, RESULTS_PATH
    ap = argparse.ArgumentParser()
    ap.add_argument("--sections", default="ceil,a1,a2,b")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/bench_out"))
    ap.add_argument("--deadline", type=float, default=0, help="seconds; skip remaining jobs after")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU/GPU for a logic check")
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--vq-infer-batches", type=str, default="16,64")
    ap.add_argument("--vq-train-batches", type=str, default="16")
    ap.add_argument("--mg-train-batch", type=int, default=64)
    ap.add_argument("--mg-sample-batches", type=str, default="64,256")
    ap.add_argument("--max-prio", type=float, default=9, help="0: only fp32/bf16 core jobs; 1: + bf16w/tf32")
    ap.add_argument("--job-filter", type=str, default="",
                    help="regex on '<a1|a2> <mode> <prec> <B>' or 'b <layout> <mode> <prec> <B>'")
    ap.add_argument("--compile-precs", type=str, default="bf16")
    ap.add_argument("--compile-seq", type=int, default=256)
    ap.add_argument("--compile-sample-batches", type=str, default="256")
    ARGS = ap.parse_args()
    ARGS.vq_infer_batches = [int(x) for x in ARGS.vq_infer_batches.split(",")]
    ARGS.vq_train_batches = [int(x) for x in ARGS.vq_train_batches.split(",")]
    ARGS.mg_sample_batches = [int(x) for x in ARGS.mg_sample_batches.split(",")]
    ARGS.compile_precs = ARGS.compile_precs.split(",")
    ARGS.compile_sample_batches = [int(x) for x in ARGS.compile_sample_batches.split(",")]
    os.makedirs(ARGS.out, exist_ok=True)
    RESULTS_PATH = os.path.join(ARGS.out, "results.jsonl")
    secs = ARGS.sections.split(",")
    if secs == ["table"]:
        print_table(RESULTS_PATH)
        return
    DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    set_fp32_mode("ieee")
    torch.manual_seed(0)
    env = dict(section="env", status="info", mode="info", config="environment", torch=torch.__version__,
               cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), python=sys.version.split()[0],
               device=torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu", argv=sys.argv[1:])
    try:
        import diffusers
        env["diffusers"] = diffusers.__version__
    except Exception as e:  # noqa: BLE001
        env["diffusers"] = f"unavailable: {e}"
    if DEV.type == "cuda":
        p = torch.cuda.get_device_properties(0)
        env["sm_count"] = p.multi_processor_count
        env["mem_gib"] = round(p.total_memory / 2**30, 1)
    log("env", env)
    write_record(env)

    if secs[0].startswith("compile_"):
        section_compile(secs[0][len("compile_"):])
        return

    if "ceil" in secs:
        section_ceil()
    vq_jobs = []
    vqs = {}
    for name in ("a1", "a2", "small"):
        if name in secs or (name == "a2" and "b" in secs):
            m, info, jobs, f_inf, f_train = section_vq(name)
            vqs[name] = (m, info, f_inf, f_train)
            if name in secs:
                vq_jobs += [(j[0], name) + j for j in jobs]
    # priority-0 jobs of every section first, extras (bf16w, tf32) afterwards
    b_ctx, b_jobs = (dict(models={}), [])
    if "b" in secs:
        b_ctx, b_jobs = section_b(vqs["a2"][0])
    if "small" in secs:
        s_ctx, s_jobs = section_small()
        b_ctx["models"].update(s_ctx["models"])
        b_jobs += s_jobs
    all_jobs = [("vq",) + j for j in vq_jobs] + [("b",) + j for j in b_jobs]
    all_jobs.sort(key=lambda j: j[1])  # stable: keeps section order within a priority
    flt = re.compile(ARGS.job_filter) if ARGS.job_filter else None
    for j in all_jobs:
        if j[1] > ARGS.max_prio:
            continue
        if flt is not None:
            key = " ".join(str(x) for x in (j[2],) + j[-3:]) if j[0] == "vq" else \
                " ".join(str(x) for x in ("b", j[3]) + j[-3:])
            if not flt.search(key):
                continue
        if j[0] == "vq":
            _, prio, name = j[:3]
            m, info, f_inf, f_train = vqs[name]
            run_vq_job(m, info, j[3:], f_inf, f_train)
        else:
            run_b_job(b_ctx, j[1:])
    log("done")


if __name__ == "__main__":
    main()
