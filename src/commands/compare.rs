//! `movq compare A B`: PSNR, SSIM and LPIPS of two same-sized images, as JSON on stdout.

use std::process::ExitCode;

use anyhow::{bail, Result};
use serde_json::json;

use crate::cli::CompareArgs;
use crate::data::image::open_rgb;
use crate::metrics::{pair_scores, ssim};

pub fn run(a: CompareArgs) -> Result<ExitCode> {
    let img_a = open_rgb(&a.a)?;
    let img_b = open_rgb(&a.b)?;
    if img_a.dimensions() != img_b.dimensions() {
        bail!(
            "cannot compare {} ({}×{}) with {} ({}×{}): the images differ in size",
            a.a.display(),
            img_a.width(),
            img_a.height(),
            a.b.display(),
            img_b.width(),
            img_b.height()
        );
    }
    if img_a.width().min(img_a.height()) < ssim::MIN_SIDE {
        bail!(
            "{}: SSIM needs images of at least 11×11 pixels",
            a.a.display()
        );
    }
    let s = pair_scores(&img_a, &img_b);
    let device = crate::device::select(&a.device)?;
    let lpips = match a.lpips.load(&device)? {
        Some(net) => json!(crate::metrics::lpips::image_distance(
            &net, &img_a, &img_b, &device
        )?),
        None => json!(null),
    };
    let out = json!({
        "a": a.a.display().to_string(),
        "b": a.b.display().to_string(),
        "psnr": if s.psnr.is_finite() { json!(s.psnr) } else { json!(null) },
        "ssim": s.ssim,
        "lpips": lpips,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}
