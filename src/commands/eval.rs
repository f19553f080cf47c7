//! `movq eval`: reconstruction metrics over a folder.

use std::process::ExitCode;

use anyhow::{bail, Result};
use indicatif::ProgressBar;
use serde_json::json;

use crate::cli::EvalArgs;
use crate::data::loader::load_eval;
use crate::data::Dataset;
use crate::device;
use crate::metrics::fid::{load_inception, stats_of_source};
use crate::metrics::reconstruction::{Extras, Reconstruction};
use crate::train::runs::VqRun;

pub fn run(a: EvalArgs) -> Result<ExitCode> {
    if a.batch_size == 0 {
        bail!("--batch-size must be positive");
    }
    let run = VqRun::open(&a.model, &a.common.run())?;
    let (cfg, model, ckpt, device) = (run.cfg, run.model, run.checkpoint, run.compute.device);
    let ds = Dataset::open(&a.data, a.common.seed.unwrap_or(cfg.seed))?;
    let side = cfg.model.resolution as u32;
    let n = a.limit.map_or(ds.len(), |l| l.min(ds.len()));
    // the Inception network and reference statistics first: a missing file fails fast
    let fid_ref = match &a.fid_ref {
        Some(src) => {
            let net = load_inception(a.inception_weights.as_deref(), &device)?;
            let stats = stats_of_source(src, &net, None, a.batch_size)?;
            Some((net, stats))
        }
        None => None,
    };
    let lpips = a.lpips.load(&device)?;
    let mut metrics = Reconstruction::new(
        &model,
        Extras {
            lpips: lpips.as_ref(),
            fid: fid_ref.as_ref().map(|(net, stats)| (net, stats)),
            shapes: ds.is_builtin_shapes(),
        },
    );
    let workers = cfg.data.worker_threads();
    let bar = ProgressBar::new(n as u64);
    let items: Vec<usize> = (0..n).collect();
    for chunk in items.chunks(a.batch_size) {
        let (loaded, images) = load_eval(&ds, chunk, side, workers)?;
        if !images.is_empty() {
            let labels: Vec<Option<u32>> = loaded.iter().map(|&i| ds.label(i)).collect();
            metrics.add(&model, &images, &labels, &device)?;
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if metrics.is_empty() {
        bail!("--data {}: none of the images could be decoded", a.data);
    }
    let r = metrics.report()?;
    if a.json {
        let mut out = serde_json::to_value(&r)?;
        out["model"] = json!(a.model.display().to_string());
        out["checkpoint_step"] = json!(ckpt.step);
        out["data"] = json!(a.data);
        out["fid_ref"] = json!(a.fid_ref);
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("images              {}", r.images);
        println!("psnr                {:.3} dB", r.psnr);
        println!("ssim                {:.4}", r.ssim);
        if let Some(l) = r.lpips {
            println!("lpips               {l:.4}");
        }
        if let Some(f) = r.rfid {
            println!("rfid                {f:.3}");
        }
        if let Some(a) = r.class_accuracy {
            println!("class accuracy      {a:.4}");
        }
        let cb = &r.codebook;
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
