//! `movq bench`: throughput and peak GPU memory on the workloads of the PyTorch reference
//! benchmark (same shapes and batch sizes), one JSON line per figure and a table at the end.
//! Two sections: the reference's large models (`--section reference`) and the small models a
//! user trains first (`--section small`: the `fashion-32` preset's tokenizer and transformer).
//!
//! Each figure: a warm-up call (two when the first is fast; sampling warms up with one decoding
//! step of the same shapes, as the reference does), then timed calls (each ending with a device
//! synchronisation) until `--min-iters` calls and `--target-seconds` have passed, or
//! 20 calls, or 20 s; the median call is reported.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use rand::Rng;
use serde_json::json;

use super::failure;
use crate::cli::{BenchArgs, BenchSection};
use crate::compute::{set_tf32, Precision};
use crate::config::{OptimizerKind, RunConfig, TransformerConfig, TransformerSection};
use crate::data::loader::ImageBatch;
use crate::device::{self, PeakMemory};
use crate::nn::params::ParamStore;
use crate::rng::{rng_for, Stream};
use crate::train::{Stage, StepContext};
use crate::transformer::maskgit::{step_counts, steps_on_device, SamplerOptions};
use crate::transformer::stage::{TokenBatch, TransformerStage};
use crate::transformer::{MaskTransformer, TokenLayout};
use crate::vq::stage::VqStage;
use crate::vq::MoVq;

/// One measured workload.
#[derive(Debug, Clone)]
struct Workload {
    /// `vq-train`, `vq-infer`, `vq-decode`, `tr-train` or `tr-sample`.
    kind: &'static str,
    /// Stage-1 preset (vq-*) or token layout (tr-*).
    config: String,
    batch: usize,
}

/// The small section's token layout, as workloads name it (the `fashion-32` preset's 8×8 grid
/// of 2 channels; [`token_layout`] takes it from the preset).
const SMALL_LAYOUT: &str = "8x8x2";
/// The small section's stage-1 preset.
const SMALL_PRESET: &str = "fashion-32";

/// The reference script's workloads, then the small section (or a tiny stand-in for each with
/// `smoke`).
fn workloads(smoke: bool) -> Vec<Workload> {
    let w = |kind, config: &str, batch| Workload {
        kind,
        config: config.to_string(),
        batch,
    };
    if smoke {
        return vec![
            w("vq-train", "tiny", 2),
            w("vq-infer", "tiny", 4),
            w("vq-decode", "tiny", 4),
            w("tr-train", "16x16x4", 2),
            w("tr-sample", "16x16x4", 2),
            w("vq-train", SMALL_PRESET, 2),
            w("tr-train", SMALL_LAYOUT, 2),
            w("tr-sample", SMALL_LAYOUT, 2),
        ];
    }
    vec![
        w("vq-train", "ffhq-256", 16),
        w("vq-infer", "ffhq-256", 64),
        w("vq-train", "kandinsky-movq", 16),
        w("vq-infer", "kandinsky-movq", 64),
        w("vq-decode", "ffhq-256", 64),
        w("tr-train", "16x16x4", 64),
        w("tr-train", "16x16x1", 64),
        w("tr-sample", "16x16x4", 64),
        w("tr-sample", "16x16x1", 256),
        w("vq-train", SMALL_PRESET, 64),
        w("vq-infer", SMALL_PRESET, 256),
        w("tr-train", SMALL_LAYOUT, 128),
        w("tr-sample", SMALL_LAYOUT, 256),
    ]
}

impl Workload {
    /// The small section: the `fashion-32` preset's models.
    fn is_small(&self) -> bool {
        self.config == SMALL_PRESET || self.config == SMALL_LAYOUT
    }
}

/// The transformer section a tr-* workload trains: the small preset's own (8 × 256), or the
/// reference's MaskGIT-base.
fn transformer_section(w: &Workload, smoke: bool) -> Result<TransformerSection> {
    let preset = if w.is_small() { SMALL_PRESET } else { "tiny" };
    let mut section = RunConfig::resolve(preset)?
        .transformer
        .with_context(|| format!("the {preset} preset has a transformer section"))?;
    if !w.is_small() {
        section.model = transformer_config(smoke);
    }
    Ok(section)
}

/// The reference transformer: 24 layers, width 768, 16 heads, MLP 3072 (2 × 64 with `smoke`).
fn transformer_config(smoke: bool) -> TransformerConfig {
    if smoke {
        TransformerConfig {
            layers: 2,
            width: 64,
            heads: 4,
            mlp: 128,
        }
    } else {
        TransformerConfig {
            layers: 24,
            width: 768,
            heads: 16,
            mlp: 3072,
        }
    }
}

/// `16x16x4` → a layout of 1024 codes, 1000 classes; the small section's layout is the
/// `fashion-32` preset's tokens (8×8×2 of 512 codes) for Fashion-MNIST's 10 classes.
fn token_layout(spec: &str) -> Result<TokenLayout> {
    if spec == SMALL_LAYOUT {
        return Ok(TokenLayout::of(
            &RunConfig::resolve(SMALL_PRESET)?.model,
            10,
        ));
    }
    let dims: Vec<usize> = spec
        .split('x')
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("token layout {spec}: expected HxWxC"))?;
    let [h, w, channels] = dims[..] else {
        bail!("token layout {spec}: expected HxWxC");
    };
    Ok(TokenLayout {
        h,
        w,
        channels,
        codebook_size: 1024,
        n_classes: 1000,
    })
}

/// Median seconds per call of `f(i, warm_up)`, after warm-up; every call ends with a device
/// sync. `warm_up` is true for the untimed calls (a workload may make those cheaper).
fn time_calls(
    device: &Device,
    a: &BenchArgs,
    mut f: impl FnMut(usize, bool) -> Result<()>,
) -> Result<(f64, usize)> {
    let t = Instant::now();
    f(0, true)?;
    device.synchronize()?;
    if t.elapsed().as_secs_f64() < 3.0 {
        f(1, true)?;
        device.synchronize()?;
    }
    let mut times = Vec::new();
    let mut total = 0.0;
    for i in 2.. {
        let t = Instant::now();
        f(i, false)?;
        device.synchronize()?;
        let dt = t.elapsed().as_secs_f64();
        times.push(dt);
        total += dt;
        let n = times.len();
        if n >= 20 || (n >= a.min_iters && total >= a.target_seconds) || total >= 20.0 {
            break;
        }
    }
    let n = times.len();
    times.sort_by(f64::total_cmp);
    Ok((times[n / 2], n))
}

fn random_images(batch: usize, side: usize, seed: u64) -> ImageBatch {
    let mut rng = rng_for(seed, Stream::Data, &[]);
    ImageBatch {
        pixels: (0..batch * 3 * side * side)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect(),
        labels: vec![None; batch],
        side,
    }
}

fn random_tokens(layout: &TokenLayout, batch: usize, seed: u64) -> TokenBatch {
    let mut rng = rng_for(seed, Stream::Data, &[1]);
    TokenBatch {
        tokens: (0..batch)
            .map(|_| {
                (0..layout.seq_len())
                    .map(|_| rng.random_range(0..layout.codebook_size as u32))
                    .collect()
            })
            .collect(),
        labels: (0..batch)
            .map(|_| rng.random_range(0..layout.n_classes as u32))
            .collect(),
    }
}

fn step_ctx(i: usize) -> StepContext {
    StepContext {
        step: i,
        lr: 1e-4,
        rng: rng_for(0, Stream::Step, &[i as u64]),
    }
}

/// Runs one workload; returns (seconds per call, timed calls, items per call, unit).
fn run_workload(
    w: &Workload,
    precision: Precision,
    micro_batch: Option<usize>,
    device: &Device,
    a: &BenchArgs,
) -> Result<(f64, usize, usize, &'static str)> {
    let dtype = precision.compute_dtype(device);
    match w.kind {
        "vq-train" => {
            // The reference's loss: L1 + codebook/commitment; the large models with AdamW
            // (0.5, 0.9), decay 0.01; the small one with its preset's Adam and clipping at 1.
            let mut cfg = RunConfig::resolve(&w.config)?;
            cfg.loss.discriminator = None;
            cfg.loss.perceptual_weight = 0.0;
            cfg.model.quantizer.restart_dead_codes = None;
            if !w.is_small() {
                cfg.train.optimizer = OptimizerKind::AdamW;
                cfg.train.betas = (0.5, 0.9);
                cfg.train.weight_decay = 0.01;
                cfg.train.grad_clip = None;
            }
            cfg.train.precision = precision;
            let mut stage = VqStage::new(
                &cfg,
                0,
                &crate::compute::Compute::from_config(device, &cfg.train),
                vec![],
                None,
            )?;
            let side = cfg.model.resolution;
            let batches = [
                random_images(w.batch, side, 1),
                random_images(w.batch, side, 2),
            ];
            let (s, n) = time_calls(device, a, |i, _| {
                stage.train_step(batches[i % 2].clone(), step_ctx(i))?;
                Ok(())
            })?;
            Ok((s, n, w.batch, "img/s"))
        }
        "vq-infer" | "vq-decode" => {
            let cfg = RunConfig::resolve(&w.config)?;
            let store = ParamStore::frozen(0, device);
            let model = MoVq::new(&cfg.model, &store)?.with_dtype(dtype);
            let side = cfg.model.resolution;
            let inputs = [1, 2]
                .map(|s| random_images(w.batch, side, s).tensor(device))
                .into_iter()
                .collect::<Result<Vec<_>>>()?;
            let q = &cfg.model.quantizer;
            let g = cfg.model.latent_size();
            let indices = (0..2)
                .map(|s| {
                    let n = w.batch * q.channels * g * g;
                    let mut rng = rng_for(s, Stream::Data, &[2]);
                    let v: Vec<u32> = (0..n)
                        .map(|_| rng.random_range(0..q.codebook_size as u32))
                        .collect();
                    Tensor::from_vec(v, (w.batch, q.channels, g, g), device)
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let decode_only = w.kind == "vq-decode";
            let (s, n) = time_calls(device, a, |i, _| {
                if decode_only {
                    model.decode_indices(&indices[i % 2])?;
                } else {
                    // encode → quantize → decode, as the reference's inference figure
                    let z = model.encode(&inputs[i % 2])?;
                    let q = model.quantizer().forward(&z)?;
                    model.decode(&q.zq)?;
                }
                Ok(())
            })?;
            Ok((s, n, w.batch, "img/s"))
        }
        "tr-train" => {
            // The reference's loss: cross-entropy on the masked tokens, AdamW (0.9, 0.96),
            // decay 0.045; the small transformer clips at 1 as its preset does.
            let layout = token_layout(&w.config)?;
            let mut section = transformer_section(w, a.smoke)?;
            section.label_smoothing = 0.0;
            section.class_dropout = 0.0;
            section.micro_batch = micro_batch;
            let t = &mut section.train;
            t.optimizer = OptimizerKind::AdamW;
            t.betas = (0.9, 0.96);
            t.weight_decay = 0.045;
            t.grad_clip = if w.is_small() { Some(1.0) } else { None };
            t.precision = precision;
            let batches = [
                random_tokens(&layout, w.batch, 1),
                random_tokens(&layout, w.batch, 2),
            ];
            let mut stage = TransformerStage::new(
                &section,
                layout,
                0,
                &crate::compute::Compute::from_config(device, &section.train),
                batches[0].clone(),
            )?;
            let (s, n) = time_calls(device, a, |i, _| {
                stage.train_step(batches[i % 2].clone(), step_ctx(i))?;
                Ok(())
            })?;
            Ok((s, n, w.batch * (layout.seq_len() + 1), "tok/s"))
        }
        "tr-sample" => {
            let layout = token_layout(&w.config)?;
            let store = ParamStore::frozen(0, device);
            let section = transformer_section(w, a.smoke)?;
            let model = MaskTransformer::new(&section.model, layout, store.var_builder())?
                .with_dtype(dtype);
            let opts = SamplerOptions::maskgit(12);
            let rows = vec![vec![layout.mask_id(); layout.seq_len()]; w.batch];
            let counts = step_counts(&rows, layout.mask_id(), layout.seq_len(), &opts);
            let start = Tensor::full(layout.mask_id(), (w.batch, layout.seq_len()), device)?;
            let conds = [1, 2]
                .map(|s| {
                    let labels = random_tokens(&layout, w.batch, s).labels;
                    Tensor::new(labels.as_slice(), device)
                })
                .into_iter()
                .collect::<candle_core::Result<Vec<_>>>()?;
            let (s, n) = time_calls(device, a, |i, warm_up| {
                let steps = if warm_up { &counts[..1] } else { &counts[..] };
                steps_on_device(&model, start.clone(), &conds[i % 2], &opts, steps, i as u64)?;
                Ok(())
            })?;
            Ok((s, n, w.batch, "grids/s"))
        }
        other => bail!("unknown workload {other}"),
    }
}

fn parse_list<T>(s: &str, what: &str, parse: impl Fn(&str) -> Option<T>) -> Result<Vec<T>> {
    s.split(',')
        .map(|x| parse(x.trim()).with_context(|| format!("--{what}: unknown value {x}")))
        .collect()
}

pub fn run(a: BenchArgs) -> Result<ExitCode> {
    let device = device::select(&a.common.device)?;
    set_tf32(a.common.tf32);
    let precisions = parse_list(&a.precisions, "precisions", |p| match p {
        "f32" => Some(Precision::F32),
        "bf16" => Some(Precision::Bf16),
        _ => None,
    })?;
    let selected: Vec<Workload> = workloads(a.smoke)
        .into_iter()
        .filter(|w| match a.section {
            BenchSection::All => true,
            BenchSection::Reference => !w.is_small(),
            BenchSection::Small => w.is_small(),
        })
        .filter(|w| match a.only.as_deref() {
            None => true,
            Some(filter) => format!("{} {} {}", w.kind, w.config, w.batch).contains(filter),
        })
        .collect();
    let mut out = match &a.out {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("cannot open {}", p.display()))?,
        ),
        None => None,
    };
    eprintln!("bench on {}", device::describe(&device));
    let baseline = device::memory_in_use(&device);
    let mut rows = Vec::new();
    for w in &selected {
        for &p in &precisions {
            if p == Precision::Bf16 && !device.is_cuda() {
                continue;
            }
            // each workload starts from an empty pool (the pool keeps freed memory); what is
            // still allocated then (cached workspaces of earlier workloads) is not its own
            device::trim_memory_pool(&device)?;
            let mut held = device::allocated(&device);
            let mut probe = PeakMemory::start(&device);
            let mut micro = None;
            let mut result = run_workload(w, p, micro, &device, &a);
            // A transformer batch that does not fit runs again in micro-batches (a quarter,
            // then halved until they fit): the same optimizer step, gradients added up.
            let oom = |r: &Result<_>| matches!(r, Err(e) if failure::is_out_of_gpu_memory(e));
            while w.kind == "tr-train" && oom(&result) && micro.unwrap_or(w.batch) > 1 {
                micro = Some(match micro {
                    None => (w.batch / 4).max(1),
                    Some(m) => m / 2,
                });
                if let Some(pm) = probe.take() {
                    pm.finish();
                }
                device::trim_memory_pool(&device)?;
                held = device::allocated(&device);
                probe = PeakMemory::start(&device);
                result = run_workload(w, p, micro, &device, &a);
            }
            let peak = probe.map(|pm| pm.finish());
            let allocated = device::peak_allocated(&device)
                .map(|b| b.saturating_sub(held.unwrap_or(0)) as f64 / 2f64.powi(30));
            let rec = match result {
                Ok((secs, iters, items, unit)) => {
                    let peak_gib = match (peak, baseline) {
                        (Some(pk), Some(b)) => Some(pk.saturating_sub(b) as f64 / 2f64.powi(30)),
                        _ => None,
                    };
                    json!({"workload": w.kind, "config": w.config, "batch": w.batch,
                        "prec": p.to_string(), "status": "ok", "unit": unit,
                        "throughput": items as f64 / secs, "median_ms": secs * 1e3,
                        "iters": iters, "peak_mem_gib": peak_gib,
                        "peak_alloc_gib": allocated, "micro_batch": micro,
                        "device": device::describe(&device)})
                }
                Err(e) => {
                    let first = format!("{e:#}").lines().next().unwrap_or("").to_string();
                    let status = if failure::is_out_of_gpu_memory(&e) {
                        "oom"
                    } else {
                        "error"
                    };
                    json!({"workload": w.kind, "config": w.config, "batch": w.batch,
                        "prec": p.to_string(), "status": status, "error": first,
                        "micro_batch": micro})
                }
            };
            if crate::profile::enabled() {
                print_profile(&rec);
            }
            println!("{rec}");
            if let Some(f) = out.as_mut() {
                writeln!(f, "{rec}")?;
            }
            rows.push(rec);
        }
    }
    eprintln!(
        "\n{:<10} {:<16} {:>5} {:<5} {:>14} {:<8} {:>10} {:>9} {:>9}",
        "workload",
        "config",
        "B",
        "prec",
        "throughput",
        "unit",
        "median ms",
        "peak GiB",
        "alloc GiB"
    );
    for r in &rows {
        if r["status"] == "ok" {
            eprintln!(
                "{:<10} {:<16} {:>5} {:<5} {:>14.1} {:<8} {:>10.1} {:>9} {:>9}",
                r["workload"].as_str().unwrap_or(""),
                r["config"].as_str().unwrap_or(""),
                r["batch"],
                r["prec"].as_str().unwrap_or(""),
                r["throughput"].as_f64().unwrap_or(0.0),
                r["unit"].as_str().unwrap_or(""),
                r["median_ms"].as_f64().unwrap_or(0.0),
                r["peak_mem_gib"]
                    .as_f64()
                    .map_or("-".to_string(), |g| format!("{g:.2}")),
                r["peak_alloc_gib"]
                    .as_f64()
                    .map_or("-".to_string(), |g| format!("{g:.2}")),
            );
        } else {
            eprintln!(
                "{:<10} {:<16} {:>5} {:<5} {}",
                r["workload"].as_str().unwrap_or(""),
                r["config"].as_str().unwrap_or(""),
                r["batch"],
                r["prec"].as_str().unwrap_or(""),
                r["error"].as_str().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where the profiled calls' time went (MOVQ_PROFILE=1), as shares of the measured total.
fn print_profile(rec: &serde_json::Value) {
    let totals = crate::profile::take();
    let sum: f64 = totals.iter().map(|t| t.1).sum();
    eprintln!(
        "profile {} {} B{} {} (synchronised per op):",
        rec["workload"].as_str().unwrap_or(""),
        rec["config"].as_str().unwrap_or(""),
        rec["batch"],
        rec["prec"].as_str().unwrap_or("")
    );
    for (name, secs, calls) in totals.iter().take(15) {
        eprintln!(
            "  {:>5.1}%  {:>9.1} ms  {:>6} calls  {name}",
            100.0 * secs / sum.max(1e-12),
            secs * 1e3,
            calls
        );
    }
}
