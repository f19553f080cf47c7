//! `movq reconstruct`: encode → quantize → decode images with a trained stage-1 model.

use std::process::ExitCode;

use anyhow::{bail, Result};
use indicatif::ProgressBar;
use serde_json::json;

use crate::cli::ReconstructArgs;
use crate::commands::common::{compute_dtype, is_transformer_run, load_vq, output_names};
use crate::commands::masked;
use crate::data::image::{grid, images_to_tensor, save_png, tensor_to_images};
use crate::data::inputs::Inputs;
use crate::device;
use crate::fsutil;
use crate::metrics::{mean_scores, pair_scores, CodebookStats};

pub fn run(a: ReconstructArgs) -> Result<ExitCode> {
    if let Some(spec) = &a.mask_ratio {
        let ratios = masked::parse_ratios(spec)?;
        if !is_transformer_run(&a.model) {
            bail!(
                "--mask-ratio {spec}: masked-token reconstruction needs a stage-2 run (from `movq train-transformer`), and {} is a stage-1 run",
                a.model.display()
            );
        }
        return masked::run(&a, &ratios);
    }
    if a.batch_size == 0 {
        bail!("--batch-size must be positive");
    }
    let device = device::select(&a.common.device)?;
    // A stage-2 run reconstructs with the stage-1 model it holds.
    let vq_path = if is_transformer_run(&a.model) {
        a.model.join("vq")
    } else {
        a.model.clone()
    };
    let (cfg, model, ckpt) = load_vq(&vq_path, &device)?;
    let model = model.with_dtype(compute_dtype(&a.common, &cfg.train, &device));
    let inputs = Inputs::open(&a.input)?;
    let sources: Vec<String> = (0..inputs.len()).map(|i| inputs.name(i)).collect();
    let names = output_names(&sources);
    fsutil::create_dir(&a.out)?;
    let side = cfg.model.resolution as u32;
    let q = &cfg.model.quantizer;
    let mut stats = CodebookStats::new(q.channels, q.codebook_size);
    let mut rows = Vec::new();
    let mut records = Vec::new();
    let mut scores = Vec::new();
    let bar = ProgressBar::new(inputs.len() as u64);
    for batch in inputs.batches(a.batch_size, side) {
        let (range, originals) = batch?;
        let x = images_to_tensor(&originals, &device)?;
        let (xrec, qo) = model.reconstruct(&x)?;
        stats.add(&qo.indices)?;
        for ((orig, rec), (path, name)) in originals
            .iter()
            .zip(tensor_to_images(&xrec)?)
            .zip(range.clone().map(|i| (&sources[i], &names[i])))
        {
            save_png(&rec, &a.out.join(name))?;
            let s = pair_scores(orig, &rec);
            records.push(json!({
                "input": path,
                "output": name,
                "psnr": s.psnr,
                "ssim": s.ssim,
            }));
            scores.push(s);
            rows.push(vec![orig.clone(), rec]);
        }
        bar.inc(range.len() as u64);
    }
    bar.finish_and_clear();
    save_png(&grid(&rows, 2), &a.out.join("grid.png"))?;
    let mean = mean_scores(&scores);
    let report = json!({
        "model": a.model.display().to_string(),
        "checkpoint_step": ckpt.step,
        "resolution": side,
        "images": records,
        "mean": { "psnr": mean.psnr, "ssim": mean.ssim },
        "codebook": stats.report(),
    });
    fsutil::write_atomic(
        &a.out.join("metrics.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    println!(
        "{}",
        json!({ "out": a.out.display().to_string(), "images": scores.len(), "psnr": mean.psnr, "ssim": mean.ssim })
    );
    eprintln!(
        "reconstructed {} images on {} → {}",
        scores.len(),
        device::describe(&device),
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
