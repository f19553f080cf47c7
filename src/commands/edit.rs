//! `movq edit`: inpainting (`--mask`), outpainting (`--extend`) and class-conditional editing
//! (`--class`) of images with a stage-2 run. The token rule and the windows of outpainting are
//! in [`crate::transformer::editing`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use image::{GrayImage, Rgb, RgbImage};
use serde_json::{json, Value};

use crate::cli::EditArgs;
use crate::data::classes::resolve_class;
use crate::data::image::{grid, images_to_tensor, open_rgb, save_png, tensor_to_images};
use crate::data::label::upscale;
use crate::data::transform::{eval_view, mask_view};
use crate::fsutil;
use crate::metrics::psnr::psnr;
use crate::metrics::ssim::ssim;
use crate::rng::{rng_for, Stream};
use crate::train::runs::{is_transformer_run, TransformerRun};
use crate::transformer::editing::{token_mask, Margins, TokenCanvas};
use crate::transformer::maskgit::SamplerOptions;

/// Tiles of the grid are enlarged (nearest) to at least this many pixels.
const GRID_TILE: u32 = 96;

/// One image to edit.
struct Job {
    input: PathBuf,
    mask: Option<PathBuf>,
    out: PathBuf,
}

/// What is regenerated: a mask, or margins around the image.
enum Edit {
    Inpaint,
    Outpaint(Margins),
}

/// The jobs of `--input`/`--mask`: one image, or a folder of images each with the mask of the
/// same file name in the mask folder (each edited into `out/<file stem>/`).
fn jobs(a: &EditArgs) -> Result<Vec<Job>> {
    let input = &a.input;
    if input.is_file() {
        if let Some(m) = &a.mask {
            if !m.is_file() {
                bail!("--mask {}: no such image file", m.display());
            }
        }
        return Ok(vec![Job {
            input: input.clone(),
            mask: a.mask.clone(),
            out: a.out.clone(),
        }]);
    }
    if !input.is_dir() {
        bail!("--input {}: no such image file or folder", input.display());
    }
    if let Some(m) = a.mask.as_ref().filter(|m| !m.is_dir()) {
        bail!(
            "--mask {}: with a folder of inputs, give the folder of their masks",
            m.display()
        );
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(input)
        .with_context(|| format!("cannot read {}", input.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("--input {}: the folder holds no image", input.display());
    }
    files
        .into_iter()
        .map(|f| {
            let name = f.file_name().context("a file without a name")?;
            let mask = match &a.mask {
                Some(dir) => {
                    let m = dir.join(name);
                    if !m.is_file() {
                        bail!(
                            "--mask {}: no mask named {} for {}",
                            dir.display(),
                            name.to_string_lossy(),
                            f.display()
                        );
                    }
                    Some(m)
                }
                None => None,
            };
            let stem = f.file_stem().unwrap_or(name).to_string_lossy().into_owned();
            Ok(Job {
                out: a.out.join(stem),
                input: f,
                mask,
            })
        })
        .collect()
}

/// PSNR and SSIM of `a` against `b` outside `region` (true: regenerated pixels): the region's
/// pixels are taken from `b` in both, so only the rest counts (PSNR exactly, SSIM up to the
/// windows that straddle the border).
fn outside(a: &RgbImage, b: &RgbImage, region: &GrayImage) -> (f64, f64) {
    let mut a2 = a.clone();
    for (x, y, m) in region.enumerate_pixels() {
        if m.0[0] > 0 {
            a2.put_pixel(x, y, *b.get_pixel(x, y));
        }
    }
    let total = (a.width() * a.height()) as f64;
    let kept = region.pixels().filter(|m| m.0[0] == 0).count() as f64;
    // PSNR over the kept pixels only: rescale the whole-image MSE (zero inside the region)
    let mse_all = 10f64.powf(-psnr(&a2, b) / 10.0) * 255.0 * 255.0;
    let p = if kept == 0.0 || mse_all == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0 * 255.0 / (mse_all * total / kept)).log10()
    };
    (p, ssim(&a2, b))
}

/// The regenerated positions (row-major `h × w`) as pixels, `f` per position.
fn region_pixels(positions: &[bool], w: usize, f: usize) -> GrayImage {
    let h = positions.len() / w;
    GrayImage::from_fn((w * f) as u32, (h * f) as u32, |x, y| {
        let p = (y as usize / f) * w + x as usize / f;
        image::Luma([if positions[p] { 255 } else { 0 }])
    })
}

/// `img` with the regenerated region tinted red.
fn overlay(img: &RgbImage, region: &GrayImage) -> RgbImage {
    RgbImage::from_fn(img.width(), img.height(), |x, y| {
        let p = img.get_pixel(x, y).0;
        if region.get_pixel(x, y).0[0] > 0 {
            Rgb([(p[0] / 2) + 128, p[1] / 2, p[2] / 2])
        } else {
            Rgb(p)
        }
    })
}

/// `generated` with `original`'s pixels outside `region`, blended over `f` pixels around it
/// (the weight of the generated pixels falls linearly with the distance to the region).
fn paste(generated: &RgbImage, original: &RgbImage, region: &GrayImage, f: u32) -> RgbImage {
    let (w, h) = generated.dimensions();
    let inside = |x: i64, y: i64| {
        x >= 0
            && y >= 0
            && x < w as i64
            && y < h as i64
            && region.get_pixel(x as u32, y as u32).0[0] > 0
    };
    RgbImage::from_fn(w, h, |x, y| {
        let (xi, yi, r) = (x as i64, y as i64, f as i64);
        // Chebyshev distance to the nearest regenerated pixel, up to f
        let d = (0..=r)
            .find(|&d| (-d..=d).any(|dy| (-d..=d).any(|dx| inside(xi + dx, yi + dy))))
            .unwrap_or(r + 1);
        let alpha = 1.0 - (d as f64 / (r + 1) as f64);
        let (g, o) = (generated.get_pixel(x, y).0, original.get_pixel(x, y).0);
        Rgb(std::array::from_fn(|c| {
            (alpha * g[c] as f64 + (1.0 - alpha) * o[c] as f64).round() as u8
        }))
    })
}

pub fn run(a: EditArgs) -> Result<ExitCode> {
    for (flag, v) in [("--steps", a.steps), ("--samples", a.samples)] {
        if v == 0 {
            bail!("{flag} must be positive");
        }
    }
    let opts: SamplerOptions = a.decode.options(a.steps, false)?;
    let kind = match (&a.mask, &a.extend) {
        (Some(_), Some(_)) => bail!(
            "--mask and --extend cannot be combined: inpaint and outpaint in two runs (the second on the first's output)"
        ),
        (None, None) => bail!("give --mask MASK (inpainting) or --extend side=pixels (outpainting)"),
        (Some(_), None) => None,
        (None, Some(spec)) => Some(spec.clone()),
    };
    if a.model.is_dir() && !is_transformer_run(&a.model) {
        bail!(
            "--model {}: edit needs a train-transformer run; this is a stage-1 run",
            a.model.display()
        );
    }
    let tr = TransformerRun::open(&a.model, &a.common.run())?;
    let cond = resolve_class(a.class.as_deref(), &tr.cfg.classes)?;
    let f = tr.vq_cfg.model.downsample_factor();
    let side = tr.vq_cfg.model.resolution as u32;
    let edit = match kind {
        None => Edit::Inpaint,
        Some(spec) => Edit::Outpaint(Margins::parse(&spec, f)?),
    };
    let jobs = jobs(&a)?;
    // every input and mask readable before anything is written
    let mut loaded = Vec::with_capacity(jobs.len());
    for job in &jobs {
        let img =
            open_rgb(&job.input).with_context(|| format!("--input {}", job.input.display()))?;
        let mask = match &job.mask {
            Some(m) => {
                let mimg = open_rgb(m).with_context(|| format!("--mask {}", m.display()))?;
                if mimg.dimensions() != img.dimensions() {
                    eprintln!(
                        "note: mask {} is {}×{}, the image {}×{}: resized to the image (nearest)",
                        m.display(),
                        mimg.width(),
                        mimg.height(),
                        img.width(),
                        img.height()
                    );
                }
                Some(mask_view(&mimg, img.width(), img.height(), side))
            }
            None => None,
        };
        loaded.push((eval_view(&img, side), mask));
    }
    let device = tr.compute.device.clone();
    let layout = *tr.model.layout();
    let mask_id = layout.mask_id();
    let seed = a.common.seed.unwrap_or(0);
    let mut summary = Vec::new();
    for (job, (view, mask)) in jobs.iter().zip(loaded) {
        fsutil::create_dir(&job.out)?;
        let (rec, q) = tr
            .vq
            .reconstruct(&images_to_tensor(std::slice::from_ref(&view), &device)?)?;
        let reconstruction = tensor_to_images(&rec)?.remove(0);
        let original = TokenCanvas::from_indices(&q.indices)?;
        // the canvas to complete, and where the input sits in it
        let (canvas, offset) = match (&edit, &mask) {
            (Edit::Inpaint, Some(m)) => {
                let grey = image::imageops::grayscale(&image::DynamicImage::ImageRgb8(
                    RgbImage::from_fn(m.width(), m.height(), |x, y| {
                        let p = m.get_pixel(x, y).0;
                        let v = p[0].max(p[1]).max(p[2]);
                        Rgb([v, v, v])
                    }),
                ));
                let positions = token_mask(&grey, f, original.h, original.w, a.dilate);
                let mut c = original.clone();
                c.forget(&positions, mask_id);
                (c, (0, 0))
            }
            (Edit::Outpaint(m), _) => (original.extend(*m, mask_id), (m.left, m.top)),
            (Edit::Inpaint, None) => unreachable!("inpainting has a mask"),
        };
        let positions = canvas.unknown_positions(mask_id);
        let region = region_pixels(&positions, canvas.w, f);
        // the input (and its reconstruction) placed on the canvas, grey where it has no pixels
        let place = |img: &RgbImage| {
            let mut out =
                RgbImage::from_pixel(region.width(), region.height(), Rgb([128, 128, 128]));
            image::imageops::replace(&mut out, img, (offset.0 * f) as i64, (offset.1 * f) as i64);
            out
        };
        let (input_canvas, rec_canvas) = (place(&view), place(&reconstruction));
        save_png(&input_canvas, &job.out.join("input.png"))?;
        let over = overlay(&input_canvas, &region);
        save_png(&over, &job.out.join("mask-overlay.png"))?;
        let mut tiles = vec![upscale(&input_canvas, GRID_TILE), upscale(&over, GRID_TILE)];
        let mut codes = Vec::with_capacity(a.samples);
        let mut per_sample = Vec::with_capacity(a.samples);
        for k in 0..a.samples {
            let mut c = canvas.clone();
            let mut rng = rng_for(seed + k as u64, Stream::Sample, &[0]);
            c.fill(&tr.model, cond, &opts, &mut rng, &device)?;
            let indices = c.to_indices(&device)?;
            let mut img = tensor_to_images(&tr.vq.decode_indices(&indices)?)?.remove(0);
            if a.paste {
                img = paste(&img, &input_canvas, &region, f as u32);
            }
            let file = format!("{k:05}.png");
            save_png(&img, &job.out.join(&file))?;
            let (p_rec, s_rec) = outside(&img, &rec_canvas, &region);
            let (p_in, s_in) = outside(&img, &input_canvas, &region);
            per_sample.push(json!({
                "file": file, "seed": seed + k as u64,
                "psnr_outside_vs_reconstruction": finite(p_rec),
                "ssim_outside_vs_reconstruction": s_rec,
                "psnr_outside_vs_input": finite(p_in),
                "ssim_outside_vs_input": s_in,
            }));
            tiles.push(upscale(&img, GRID_TILE));
            codes.push(indices.to_device(&candle_core::Device::Cpu)?);
        }
        save_png(&grid(&[tiles], 2), &job.out.join("grid.png"))?;
        let codes = Tensor::cat(&codes, 0)?;
        let input_codes = original.to_indices(&candle_core::Device::Cpu)?;
        candle_core::safetensors::save(
            &[("input", input_codes), ("samples", codes)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            job.out.join("codes.safetensors"),
        )?;
        let masked = positions.iter().filter(|p| **p).count();
        let record = json!({
            "input": job.input.display().to_string(),
            "mask": job.mask.as_ref().map(|m| m.display().to_string()),
            "canvas_tokens": [canvas.h, canvas.w, canvas.c],
            "masked_tokens_per_channel": masked,
            "positions": canvas.h * canvas.w,
            "class": tr.cfg.classes.get(cond as usize),
            "steps": a.steps,
            "samples": per_sample,
        });
        fsutil::write_atomic(
            &job.out.join("metrics.json"),
            serde_json::to_string_pretty(&record)?.as_bytes(),
        )?;
        summary.push(record);
    }
    println!(
        "{}",
        json!({"out": a.out.display().to_string(), "images": summary.len(), "samples": a.samples})
    );
    eprintln!(
        "edited {} image{} ({} completions each) → {}",
        summary.len(),
        if summary.len() == 1 { "" } else { "s" },
        a.samples,
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// JSON has no infinity: an identical image's PSNR is written as null.
fn finite(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}
