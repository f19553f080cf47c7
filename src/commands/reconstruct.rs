//! `movq reconstruct`: encode → quantize → decode images with a trained stage-1 model.

use std::process::ExitCode;

use anyhow::{bail, Result};
use indicatif::ProgressBar;
use serde_json::json;

use crate::cli::ReconstructArgs;
use crate::data::image::{grid, save_png};
use crate::data::inputs::output_names;
use crate::data::inputs::Inputs;
use crate::device;
use crate::fsutil;
use crate::metrics::reconstruction::{Extras, Reconstruction};
use crate::train::runs::VqRun;

/// Stage-1 reconstruction (`reconstruct` without `--mask-ratio`; with it, see `masked`).
pub fn run(a: ReconstructArgs) -> Result<ExitCode> {
    if a.batch_size == 0 {
        bail!("--batch-size must be positive");
    }
    // a stage-2 run reconstructs with the stage-1 model it holds
    let run = VqRun::open(&a.model, &a.common.run())?;
    let (cfg, model, ckpt, device) = (run.cfg, run.model, run.checkpoint, run.compute.device);
    let inputs = Inputs::open(&a.input)?;
    let sources: Vec<String> = (0..inputs.len()).map(|i| inputs.name(i)).collect();
    let names = output_names(&sources);
    fsutil::create_dir(&a.out)?;
    let side = cfg.model.resolution as u32;
    let mut metrics = Reconstruction::new(&model, Extras::default());
    let mut rows = Vec::new();
    let mut records = Vec::new();
    let bar = ProgressBar::new(inputs.len() as u64);
    for batch in inputs.batches(a.batch_size, side) {
        let (range, originals) = batch?;
        let recs = metrics.add(&model, &originals, &[], &device)?;
        for ((orig, (rec, s)), i) in originals.iter().zip(recs).zip(range.clone()) {
            save_png(&rec, &a.out.join(&names[i]))?;
            records.push(json!({
                "input": sources[i],
                "output": names[i],
                "psnr": s.psnr,
                "ssim": s.ssim,
            }));
            rows.push(vec![orig.clone(), rec]);
        }
        bar.inc(range.len() as u64);
    }
    bar.finish_and_clear();
    save_png(&grid(&rows, 2), &a.out.join("grid.png"))?;
    let mean = metrics.report()?;
    let report = json!({
        "model": a.model.display().to_string(),
        "checkpoint_step": ckpt.step,
        "resolution": side,
        "images": records,
        "mean": { "psnr": mean.psnr, "ssim": mean.ssim },
        "codebook": mean.codebook,
    });
    fsutil::write_atomic(
        &a.out.join("metrics.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    println!(
        "{}",
        json!({ "out": a.out.display().to_string(), "images": mean.images, "psnr": mean.psnr, "ssim": mean.ssim })
    );
    eprintln!(
        "reconstructed {} images on {} → {}",
        mean.images,
        device::describe(&device),
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
