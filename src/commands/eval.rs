//! `movq eval`: reconstruction metrics over a folder.

use std::process::ExitCode;

use anyhow::{bail, Result};
use indicatif::ProgressBar;
use serde_json::json;

use crate::cli::EvalArgs;
use crate::commands::common::{compute_dtype, load_lpips, load_vq};
use crate::data::image::{images_to_tensor, tensor_to_images};
use crate::data::loader::load_eval;
use crate::data::Dataset;
use crate::device;
use crate::metrics::fid::{frechet_distance, load_inception, stats_of_source, FeatureStats};
use crate::metrics::{mean_scores, pair_scores, CodebookStats};

pub fn run(a: EvalArgs) -> Result<ExitCode> {
    if a.batch_size == 0 {
        bail!("--batch-size must be positive");
    }
    let device = device::select(&a.common.device)?;
    let (cfg, model, ckpt) = load_vq(&a.model, &device)?;
    let model = model.with_dtype(compute_dtype(&a.common, &cfg.train, &device));
    let ds = Dataset::open(&a.data, a.common.seed.unwrap_or(cfg.seed))?;
    let side = cfg.model.resolution as u32;
    let n = a.limit.map_or(ds.len(), |l| l.min(ds.len()));
    let q = &cfg.model.quantizer;
    let mut stats = CodebookStats::new(q.channels, q.codebook_size);
    // the Inception network and reference statistics first: a missing file fails fast
    let fid_ref = match &a.fid_ref {
        Some(src) => {
            let net = load_inception(a.inception_weights.as_deref(), &device)?;
            let stats = stats_of_source(src, &net, None, a.batch_size)?;
            Some((net, stats))
        }
        None => None,
    };
    let mut rec_features = Vec::new();
    let mut scores = Vec::with_capacity(n);
    let lpips_net = load_lpips(&a.lpips, &device)?;
    let mut lpips_sum = 0.0;
    let workers = cfg.data.worker_threads();
    let bar = ProgressBar::new(n as u64);
    let items: Vec<usize> = (0..n).collect();
    for chunk in items.chunks(a.batch_size) {
        let (_, images) = load_eval(&ds, chunk, side, workers)?;
        if !images.is_empty() {
            let x = images_to_tensor(&images, &device)?;
            let (xrec, qo) = model.reconstruct(&x)?;
            stats.add(&qo.indices)?;
            let recs = tensor_to_images(&xrec)?;
            if let Some((net, _)) = &fid_ref {
                rec_features.push(net.features(&recs)?.to_device(&candle_core::Device::Cpu)?);
            }
            if let Some(net) = &lpips_net {
                // on the uint8 images, like PSNR and SSIM
                let d = net.distance(&x, &images_to_tensor(&recs, &device)?)?;
                lpips_sum += d.sum_all()?.to_scalar::<f32>()? as f64;
            }
            for (orig, rec) in images.iter().zip(&recs) {
                scores.push(pair_scores(orig, rec));
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if scores.is_empty() {
        bail!("--data {}: none of the images could be decoded", a.data);
    }
    let mean = mean_scores(&scores);
    let lpips = lpips_net.as_ref().map(|_| lpips_sum / scores.len() as f64);
    let rfid = match &fid_ref {
        Some((_, reference)) => {
            let stats = FeatureStats::from_features(&candle_core::Tensor::cat(&rec_features, 0)?)?;
            Some(frechet_distance(&stats, reference)?)
        }
        None => None,
    };
    let cb = stats.report();
    if a.json {
        let out = json!({
            "model": a.model.display().to_string(),
            "checkpoint_step": ckpt.step,
            "data": a.data,
            "images": scores.len(),
            "psnr": mean.psnr,
            "ssim": mean.ssim,
            "lpips": lpips,
            "rfid": rfid,
            "fid_ref": a.fid_ref,
            "codebook": cb,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("images              {}", scores.len());
        println!("psnr                {:.3} dB", mean.psnr);
        println!("ssim                {:.4}", mean.ssim);
        if let Some(l) = lpips {
            println!("lpips               {l:.4}");
        }
        if let Some(f) = rfid {
            println!("rfid                {f:.3}");
        }
        println!("codebook usage      {:.4}", cb.usage);
        println!("perplexity          {:.2}", cb.perplexity);
        for (c, (u, p)) in cb
            .usage_per_channel
            .iter()
            .zip(&cb.perplexity_per_channel)
            .enumerate()
        {
            println!("  channel {c}: usage {u:.4}, perplexity {p:.2}");
        }
    }
    eprintln!(
        "evaluated step {} of {} on {}",
        ckpt.step,
        a.model.display(),
        device::describe(&device)
    );
    Ok(ExitCode::SUCCESS)
}
