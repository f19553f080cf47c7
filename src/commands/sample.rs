//! `movq sample`: MaskGIT generation with a trained stage-2 run.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Result};
use indicatif::ProgressBar;
use serde_json::json;

use crate::cli::{DecodeArgs, SampleArgs};
use crate::data::classes::resolve_class;
use crate::data::image::{grid, save_png, square_grid, tensor_to_images};
use crate::device;
use crate::fsutil;
use crate::rng::{rng_for, Stream};
use crate::train::runs::TransformerRun;
use crate::transformer::maskgit::{complete, SamplerOptions};
use crate::transformer::refine::Refinement;
use image::RgbImage;

/// Samples per class shown in the grid of `--class all`.
const GRID_COLUMNS: usize = 16;

impl DecodeArgs {
    /// Sampler options for `steps` steps.
    pub fn options(&self, steps: usize, top1: bool) -> Result<SamplerOptions> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            bail!(
                "--temperature must be a positive number, got {}",
                self.temperature
            );
        }
        if !(self.choice_temperature >= 0.0 && self.choice_temperature.is_finite()) {
            bail!(
                "--choice-temperature must be ≥ 0, got {}",
                self.choice_temperature
            );
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            bail!("--min-p must be from 0 to 1, got {}", self.min_p);
        }
        if !self.cfg_scale.is_finite() {
            bail!("--cfg-scale must be a number, got {}", self.cfg_scale);
        }
        if !(self.refine_fraction > 0.0 && self.refine_fraction <= 1.0) {
            bail!(
                "--refine-fraction must be above 0 and at most 1, got {}",
                self.refine_fraction
            );
        }
        Ok(SamplerOptions {
            steps,
            temperature: self.temperature,
            choice_temperature: self.choice_temperature,
            min_p: self.min_p,
            schedule: self.schedule.into(),
            top1,
            cfg_scale: self.cfg_scale,
            cfg_schedule: self.cfg_schedule.into(),
            order: self.order.into(),
            refine: Refinement {
                rounds: self.refine,
                fraction: self.refine_fraction,
            },
        })
    }
}

/// `--class all` (unless the model has a class named "all"): every class in turn.
fn wants_every_class(spec: Option<&str>, classes: &[String]) -> bool {
    spec == Some("all") && !classes.iter().any(|c| c == "all")
}

/// Generates `num` images of conditioning id `cond` into `out` (`sample-NNNN.png`), batch `b`
/// drawing from the seed's stream for batch `b` (the same for every class).
fn sample_into(
    tr: &TransformerRun,
    cond: u32,
    a: &SampleArgs,
    opts: &SamplerOptions,
    device: &candle_core::Device,
    out: &Path,
    bar: &ProgressBar,
) -> Result<Vec<RgbImage>> {
    let layout = *tr.model.layout();
    let seed = a.common.seed.unwrap_or(0);
    fsutil::create_dir(out)?;
    let mut images = Vec::with_capacity(a.num);
    for (bi, start) in (0..a.num).step_by(a.batch_size).enumerate() {
        let n = a.batch_size.min(a.num - start);
        let mut rows = vec![vec![layout.mask_id(); layout.seq_len()]; n];
        let mut rng = rng_for(seed, Stream::Sample, &[bi as u64]);
        complete(&tr.model, &mut rows, &vec![cond; n], opts, &mut rng, device)?;
        let decoded = tensor_to_images(&tr.vq.decode_indices(&layout.to_indices(&rows, device)?)?)?;
        for (k, img) in decoded.into_iter().enumerate() {
            save_png(&img, &out.join(format!("sample-{:04}.png", start + k)))?;
            images.push(img);
        }
        bar.inc(n as u64);
    }
    Ok(images)
}

pub fn run(a: SampleArgs) -> Result<ExitCode> {
    for (flag, v) in [
        ("--steps", a.steps),
        ("--num", a.num),
        ("--batch-size", a.batch_size),
    ] {
        if v == 0 {
            bail!("{flag} must be positive");
        }
    }
    let opts = a.decode.options(a.steps, a.top1)?;
    let tr = TransformerRun::open(&a.model, &a.common.run())?;
    let device = tr.compute.device.clone();
    let classes = tr.cfg.classes.clone();
    let seed = a.common.seed.unwrap_or(0);
    let every = wants_every_class(a.class.as_deref(), &classes);
    let conds: Vec<u32> = if every {
        if classes.is_empty() {
            bail!("--class all: this model is unconditional (it was trained without classes)");
        }
        (0..classes.len() as u32).collect()
    } else {
        vec![resolve_class(a.class.as_deref(), &classes)?]
    };
    let bar = ProgressBar::new((a.num * conds.len()) as u64);
    let grid_img = if every {
        // one subfolder per class; the grid has a row per class
        let mut rows = Vec::with_capacity(conds.len());
        for &c in &conds {
            let images = sample_into(
                &tr,
                c,
                &a,
                &opts,
                &device,
                &a.out.join(&classes[c as usize]),
                &bar,
            )?;
            rows.push(images.into_iter().take(GRID_COLUMNS).collect());
        }
        grid(&rows, 2)
    } else {
        square_grid(
            &sample_into(&tr, conds[0], &a, &opts, &device, &a.out, &bar)?,
            2,
        )
    };
    bar.finish_and_clear();
    save_png(&grid_img, &a.out.join("grid.png"))?;
    let class = if every {
        Some("all".to_string())
    } else {
        classes.get(conds[0] as usize).cloned()
    };
    println!(
        "{}",
        json!({"out": a.out.display().to_string(), "num": a.num, "steps": a.steps, "class": class, "seed": seed})
    );
    eprintln!(
        "sampled {} images with {} steps on {} → {}",
        a.num * conds.len(),
        a.steps,
        device::describe(&device),
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
