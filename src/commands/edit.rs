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

/// One edit: the input as the model sees it, what to regenerate, and how.
pub struct EditRequest {
    /// The input's evaluation view (the model's resolution).
    pub view: RgbImage,
    /// Inpainting: the mask's evaluation view (white: regenerate).
    pub mask: Option<RgbImage>,
    /// Outpainting: positions added on each side.
    pub margins: Option<Margins>,
    /// Conditioning id (a class, or "no class").
    pub cond: u32,
    pub samples: usize,
    /// Completion `k` uses seed `seed + k`.
    pub seed: u64,
    pub dilate: usize,
    pub paste: bool,
}

/// What an edit produced.
pub struct EditResult {
    /// The input on the canvas (grey where it has no pixels).
    pub input: RgbImage,
    /// The input with the regenerated region in red.
    pub overlay: RgbImage,
    pub completions: Vec<RgbImage>,
    /// The input's codes `[1, c, h, w]` and the completions' `[S, c, H, W]` (on the CPU).
    pub input_codes: Tensor,
    pub codes: Tensor,
    /// The canvas, the masked tokens, and per completion whether every known token was kept
    /// and its PSNR/SSIM outside the region.
    pub record: Value,
}

/// Runs one edit with the stage-2 run `tr`.
pub fn edit_image(
    tr: &TransformerRun,
    req: &EditRequest,
    opts: &SamplerOptions,
) -> Result<EditResult> {
    let device = tr.compute.device.clone();
    let mask_id = tr.model.layout().mask_id();
    let f = tr.vq_cfg.model.downsample_factor();
    let (rec, q) = tr
        .vq
        .reconstruct(&images_to_tensor(std::slice::from_ref(&req.view), &device)?)?;
    let reconstruction = tensor_to_images(&rec)?.remove(0);
    let original = TokenCanvas::from_indices(&q.indices)?;
    // the canvas to complete, and where the input sits in it
    let (canvas, offset) = match (&req.mask, req.margins) {
        (Some(m), None) => {
            let grey = GrayImage::from_fn(m.width(), m.height(), |x, y| {
                let p = m.get_pixel(x, y).0;
                image::Luma([p[0].max(p[1]).max(p[2])])
            });
            let positions = token_mask(&grey, f, original.h, original.w, req.dilate);
            let mut c = original.clone();
            c.forget(&positions, mask_id);
            (c, (0, 0))
        }
        (None, Some(m)) => (original.extend(m, mask_id), (m.left, m.top)),
        _ => bail!("an edit takes a mask (inpainting) or margins (outpainting), not both"),
    };
    let positions = canvas.unknown_positions(mask_id);
    let region = region_pixels(&positions, canvas.w, f);
    let place = |img: &RgbImage| {
        let mut out = RgbImage::from_pixel(region.width(), region.height(), Rgb([128, 128, 128]));
        image::imageops::replace(&mut out, img, (offset.0 * f) as i64, (offset.1 * f) as i64);
        out
    };
    let (input, rec_canvas) = (place(&req.view), place(&reconstruction));
    let overlay = overlay(&input, &region);
    let mut completions = Vec::with_capacity(req.samples);
    let mut codes = Vec::with_capacity(req.samples);
    let mut per_sample = Vec::with_capacity(req.samples);
    for k in 0..req.samples {
        let mut c = canvas.clone();
        let mut rng = rng_for(req.seed + k as u64, Stream::Sample, &[0]);
        c.fill(&tr.model, req.cond, opts, &mut rng, &device)?;
        let kept = canvas
            .tokens
            .iter()
            .zip(&c.tokens)
            .all(|(&before, &after)| before == mask_id || before == after);
        let indices = c.to_indices(&device)?;
        let mut img = tensor_to_images(&tr.vq.decode_indices(&indices)?)?.remove(0);
        if req.paste {
            img = paste(&img, &input, &region, f as u32);
        }
        let (p_rec, s_rec) = outside(&img, &rec_canvas, &region);
        let (p_in, s_in) = outside(&img, &input, &region);
        per_sample.push(json!({
            "file": format!("{k:05}.png"), "seed": req.seed + k as u64,
            "known_tokens_kept": kept,
            "psnr_outside_vs_reconstruction": finite(p_rec),
            "ssim_outside_vs_reconstruction": s_rec,
            "psnr_outside_vs_input": finite(p_in),
            "ssim_outside_vs_input": s_in,
        }));
        completions.push(img);
        codes.push(indices.to_device(&candle_core::Device::Cpu)?);
    }
    let record = json!({
        "canvas_tokens": [canvas.h, canvas.w, canvas.c],
        "masked_tokens_per_channel": positions.iter().filter(|p| **p).count(),
        "positions": canvas.h * canvas.w,
        "class": tr.cfg.classes.get(req.cond as usize),
        "steps": opts.steps,
        "samples": per_sample,
    });
    Ok(EditResult {
        input,
        overlay,
        completions,
        input_codes: original.to_indices(&candle_core::Device::Cpu)?,
        codes: Tensor::cat(&codes, 0)?,
        record,
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
    let seed = a.common.seed.unwrap_or(0);
    let mut summary = Vec::new();
    for (job, (view, mask)) in jobs.iter().zip(loaded) {
        let request = EditRequest {
            view,
            mask,
            margins: match &edit {
                Edit::Outpaint(m) => Some(*m),
                Edit::Inpaint => None,
            },
            cond,
            samples: a.samples,
            seed,
            dilate: a.dilate,
            paste: a.paste,
        };
        let result = edit_image(&tr, &request, &opts)?;
        fsutil::create_dir(&job.out)?;
        save_png(&result.input, &job.out.join("input.png"))?;
        save_png(&result.overlay, &job.out.join("mask-overlay.png"))?;
        let mut tiles = vec![
            upscale(&result.input, GRID_TILE),
            upscale(&result.overlay, GRID_TILE),
        ];
        for (k, img) in result.completions.iter().enumerate() {
            save_png(img, &job.out.join(format!("{k:05}.png")))?;
            tiles.push(upscale(img, GRID_TILE));
        }
        save_png(&grid(&[tiles], 2), &job.out.join("grid.png"))?;
        candle_core::safetensors::save(
            &[("input", result.input_codes), ("samples", result.codes)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            job.out.join("codes.safetensors"),
        )?;
        let mut record = result.record;
        record["input"] = json!(job.input.display().to_string());
        record["mask"] = json!(job.mask.as_ref().map(|m| m.display().to_string()));
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
