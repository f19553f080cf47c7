//! Stage-1 CPU throughput: images/s of encode+quantize+decode and of one training step, for
//! `tiny.json` and a 64-px base-width model. Median of several timed runs after a warm-up; one
//! JSON line per figure on stdout.
//!
//! `cargo bench --bench stage1` (set `MOVQ_BENCH_ITERS` to change the number of timed runs).

mod common;

use anyhow::Result;
use candle_core::Device;
use common::{iterations, median_time};
use movq::config::RunConfig;
use movq::data::image::push_chw;
use movq::data::loader::ImageBatch;
use movq::data::Dataset;
use movq::rng::{rng_for, Stream};
use movq::train::{Stage, StepContext};
use movq::vq::stage::VqStage;
use serde_json::json;

fn batch(side: u32, n: usize) -> Result<ImageBatch> {
    let ds = Dataset::open(&format!("builtin:shapes:{n}"), 0)?;
    let mut pixels = Vec::new();
    for i in 0..n {
        push_chw(ds.load_resized(i, side)?.as_ref(), &mut pixels);
    }
    Ok(ImageBatch {
        pixels,
        labels: vec![None; n],
        side: side as usize,
    })
}

fn bench(name: &str, cfg: &RunConfig, batch_size: usize, iters: usize) -> Result<()> {
    let dev = Device::Cpu;
    let side = cfg.model.resolution as u32;
    let b = batch(side, batch_size)?;
    let mut stage = VqStage::new(
        cfg,
        0,
        &movq::compute::Compute::from_config(&dev, &cfg.train),
        vec![],
        None,
    )?;
    let x = b.tensor(&dev)?;
    let report = |kind: &str, secs: f64| {
        println!(
            "{}",
            json!({"bench": kind, "config": name, "batch": batch_size, "resolution": side,
                   "images_per_s": batch_size as f64 / secs, "median_ms": secs * 1e3, "device": "cpu"})
        );
    };
    report(
        "stage1_inference",
        median_time(iters, |_| {
            let (y, _) = stage.model().forward(&x)?;
            y.sum_all()?.to_scalar::<f32>()?;
            Ok(())
        })?,
    );
    report(
        "stage1_train_step",
        median_time(iters, |i| {
            let ctx = StepContext {
                step: i,
                lr: 1e-4,
                rng: rng_for(0, Stream::Step, &[i as u64]),
            };
            stage.train_step(b.clone(), ctx)?;
            Ok(())
        })?,
    );
    Ok(())
}

fn main() -> Result<()> {
    let iters = iterations();
    let tiny = RunConfig::resolve("tiny")?;
    bench("tiny", &tiny, 8, iters)?;
    // A 64-px model with base width 64: 3 levels (f = 4), attention at 16.
    let mut base = RunConfig::resolve("tiny")?;
    base.model.resolution = 64;
    base.model.ch = 64;
    base.model.ch_mult = vec![1, 2, 2];
    base.model.z_channels = 64;
    base.model.norm_groups = 32;
    base.model.attn_resolutions = vec![16];
    base.loss.discriminator = None;
    bench("base-64px", &base, 8, iters)?;
    Ok(())
}
