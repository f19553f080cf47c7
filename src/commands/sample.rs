//! `movq sample`: MaskGIT generation with a trained stage-2 run.

use std::process::ExitCode;

use anyhow::{bail, Result};
use indicatif::ProgressBar;
use serde_json::json;

use crate::cli::{DecodeArgs, SampleArgs};
use crate::commands::common::{load_transformer, resolve_class};
use crate::data::image::{save_png, square_grid, tensor_to_images};
use crate::device;
use crate::fsutil;
use crate::rng::{rng_for, Stream};
use crate::transformer::maskgit::{complete, SamplerOptions};

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
        if !self.cfg_scale.is_finite() {
            bail!("--cfg-scale must be a number, got {}", self.cfg_scale);
        }
        Ok(SamplerOptions {
            steps,
            temperature: self.temperature,
            choice_temperature: self.choice_temperature,
            schedule: self.schedule,
            top1,
            cfg_scale: self.cfg_scale,
        })
    }
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
    let device = device::select(&a.common.device)?;
    let tr = load_transformer(&a.model, &device)?.with_precision(&a.common);
    let layout = *tr.model.layout();
    let cond = resolve_class(a.class.as_deref(), &tr.cfg.classes)?;
    let seed = a.common.seed.unwrap_or(0);
    fsutil::create_dir(&a.out)?;
    let bar = ProgressBar::new(a.num as u64);
    let mut images = Vec::with_capacity(a.num);
    for (bi, start) in (0..a.num).step_by(a.batch_size).enumerate() {
        let n = a.batch_size.min(a.num - start);
        let mut rows = vec![vec![layout.mask_id(); layout.seq_len()]; n];
        let mut rng = rng_for(seed, Stream::Sample, &[bi as u64]);
        complete(
            &tr.model,
            &mut rows,
            &vec![cond; n],
            &opts,
            &mut rng,
            &device,
        )?;
        let decoded =
            tensor_to_images(&tr.vq.decode_indices(&layout.to_indices(&rows, &device)?)?)?;
        for (k, img) in decoded.into_iter().enumerate() {
            save_png(&img, &a.out.join(format!("sample-{:04}.png", start + k)))?;
            images.push(img);
        }
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    save_png(&square_grid(&images, 2), &a.out.join("grid.png"))?;
    let class = (cond < layout.n_classes as u32).then(|| tr.cfg.classes[cond as usize].clone());
    println!(
        "{}",
        json!({"out": a.out.display().to_string(), "num": a.num, "steps": a.steps, "class": class, "seed": seed})
    );
    eprintln!(
        "sampled {} images with {} steps on {} → {}",
        a.num,
        a.steps,
        device::describe(&device),
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
