//! Stage-2 CPU throughput: tokens/s of a transformer training step and images/s of 12-step
//! MaskGIT sampling (tokens only, without the stage-1 decoder), for the tiny preset's
//! transformer, the quickstart's (`shapes`) and a small base model; and the quickstart's block
//! stack alone, movq's fused node against candle's composed ops in the same run. Median of
//! several timed runs after a warm-up; one JSON line per figure.
//!
//! `cargo bench --bench stage2` (set `MOVQ_BENCH_ITERS` to change the number of timed runs).

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::{iterations, median_time};
use movq::config::{RunConfig, TransformerConfig};
use movq::gpu::side_grads::SideGrads;
use movq::ops::block::Block;
use movq::rng::{rng_for, Stream};
use movq::train::{Stage, StepContext};
use movq::transformer::maskgit::{complete, SamplerOptions};
use movq::transformer::stage::{TokenBatch, TransformerStage};
use movq::transformer::TokenLayout;
use rand::Rng;
use serde_json::json;

fn bench(
    name: &str,
    model: TransformerConfig,
    layout: TokenLayout,
    batch: usize,
    iters: usize,
) -> Result<()> {
    let mut section = RunConfig::resolve("tiny")?
        .transformer
        .expect("tiny has a transformer section");
    section.model = model;
    let mut rng = rng_for(0, Stream::Data, &[]);
    let tokens: Vec<Vec<u32>> = (0..batch)
        .map(|_| {
            (0..layout.seq_len())
                .map(|_| rng.random_range(0..layout.codebook_size as u32))
                .collect()
        })
        .collect();
    let b = TokenBatch {
        tokens,
        labels: vec![0; batch],
    };
    let mut stage = TransformerStage::new(
        &section,
        layout,
        0,
        &movq::compute::Compute::from_config(&Device::Cpu, &section.train),
        b.clone(),
    )?;
    let l = layout.seq_len();
    let secs = median_time(iters, |i| {
        let ctx = StepContext {
            step: i,
            lr: 1e-4,
            rng: rng_for(0, Stream::Step, &[i as u64]),
        };
        stage.train_step(b.clone(), ctx).map(|_| ())
    })?;
    println!(
        "{}",
        json!({"bench": "stage2_train_step", "config": name, "batch": batch, "tokens": l + 1,
        "tokens_per_s": (batch * (l + 1)) as f64 / secs, "median_ms": secs * 1e3, "device": "cpu"})
    );
    let opts = SamplerOptions::maskgit(12);
    let secs = median_time(iters, |i| {
        let mut rows = vec![vec![layout.mask_id(); l]; batch];
        complete(
            stage.model(),
            &mut rows,
            &vec![0; batch],
            &opts,
            &mut rng_for(0, Stream::Sample, &[i as u64]),
            &Device::Cpu,
        )?;
        Ok(())
    })?;
    println!(
        "{}",
        json!({"bench": "stage2_sample_12_steps", "config": name, "batch": batch, "tokens": l,
        "images_per_s": batch as f64 / secs, "median_ms": secs * 1e3, "device": "cpu"})
    );
    Ok(())
}

/// The block stack alone, forward and backward (every gradient), as movq's fused CPU node and as
/// candle's composed ops, in the same process: `batch` sequences of `tokens`.
fn blocks(
    name: &str,
    model: &TransformerConfig,
    batch: usize,
    tokens: usize,
    iters: usize,
) -> Result<()> {
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
    let ws: Vec<Block> = (0..model.layers)
        .map(|i| Block::new(model, vb.pp(format!("blocks.{i}"))))
        .collect::<candle_core::Result<_>>()?;
    let x = Var::randn(0f32, 1.0, (batch, tokens, model.width), &Device::Cpu)?;
    let r = Tensor::randn(0f32, 1.0, (batch, tokens, model.width), &Device::Cpu)?;
    let side = SideGrads::new();
    let mut ms = Vec::new();
    for fused in [false, true] {
        let secs = median_time(iters, |_| {
            let y = if fused {
                movq::cpu::block::blocks(&x, &ws, &side)?
            } else {
                movq::ops::block::composed(&x, &ws)?
            };
            let mut grads = (y * &r)?.sum_all()?.backward()?;
            side.drain_into(&mut grads)?;
            Ok(())
        })?;
        ms.push(secs * 1e3);
    }
    println!(
        "{}",
        json!({"bench": "stage2_blocks_forward_backward", "config": name, "batch": batch,
        "tokens": tokens, "composed_ms": ms[0], "fused_ms": ms[1], "speedup": ms[0] / ms[1],
        "device": "cpu"})
    );
    Ok(())
}

fn main() -> Result<()> {
    let iters = iterations();
    let tiny = RunConfig::resolve("tiny")?;
    let t = tiny
        .transformer
        .clone()
        .expect("tiny has a transformer section");
    let layout = TokenLayout {
        h: 16,
        w: 16,
        channels: 2,
        codebook_size: 32,
        n_classes: 16,
    };
    bench("tiny", t.model, layout, 16, iters)?;
    // The quickstart's: the `shapes` preset's transformer over 6×6 codes of K = 256, batch 64.
    let shapes = RunConfig::resolve("shapes")?
        .transformer
        .expect("shapes has a transformer section");
    let layout = TokenLayout {
        h: 6,
        w: 6,
        channels: 1,
        codebook_size: 256,
        n_classes: 16,
    };
    bench(
        "shapes",
        shapes.model.clone(),
        layout,
        shapes.train.batch_size,
        iters,
    )?;
    blocks(
        "shapes",
        &shapes.model,
        shapes.train.batch_size,
        layout.seq_len() + 1,
        iters,
    )?;
    // A small base model: 6 layers × 256 wide, 8 heads, over 8×8×4 tokens with K = 1024.
    let base = TransformerConfig {
        layers: 6,
        width: 256,
        heads: 8,
        mlp: 1024,
    };
    let layout = TokenLayout {
        h: 8,
        w: 8,
        channels: 4,
        codebook_size: 1024,
        n_classes: 10,
    };
    bench("base-6x256", base, layout, 16, iters)?;
    Ok(())
}
