//! `movq reconstruct --mask-ratio R`: masked-token reconstruction by the stage-2 model (the
//! paper's appendix): hide ⌈R·h·w⌉ random positions in each channel of an image's tokens, then
//! complete them (a) top-1 in one step and (b) randomly in `--steps` steps, continuing the schedule
//! from the masked fraction. With a comma-separated list of ratios, the output follows the paper's
//! figure A.1.

use std::process::ExitCode;

use anyhow::{bail, Result};
use image::{Rgb, RgbImage};
use serde_json::{json, Value};

use crate::cli::ReconstructArgs;
use crate::data::classes::resolve_class;
use crate::data::image::{grid, images_to_tensor, save_png, tensor_to_images};
use crate::data::inputs::output_names;
use crate::data::inputs::Inputs;
use crate::data::label::{captioned, upscale};
use crate::device;
use crate::fsutil;
use crate::metrics::{mean_scores, pair_scores, PairScores};
use crate::rng::{rng_for, Stream};
use crate::train::runs::TransformerRun;
use crate::transformer::maskgit::complete;
use crate::transformer::masking::{hidden_per_channel, per_channel_mask};
use crate::transformer::TokenLayout;

/// Parses `--mask-ratio`: one ratio or a comma-separated list, each in [0, 1].
pub fn parse_ratios(spec: &str) -> Result<Vec<f64>> {
    spec.split(',')
        .map(|s| match s.trim().parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
            _ => bail!(
                "--mask-ratio {spec}: each ratio must be a number from 0 to 1, got {:?}",
                s.trim()
            ),
        })
        .collect()
}

/// The input image with each latent cell greyed in proportion to the channels hidden there.
fn masked_view(img: &RgbImage, mask: &[bool], layout: &TokenLayout) -> RgbImage {
    let cell = img.width() as usize / layout.w;
    let mut out = img.clone();
    for (x, y, px) in out.enumerate_pixels_mut() {
        let pos = (y as usize / cell) * layout.w + x as usize / cell;
        let hidden = (0..layout.channels)
            .filter(|&c| mask[layout.index(pos, c)])
            .count();
        let f = hidden as f32 / layout.channels as f32;
        *px = Rgb(px
            .0
            .map(|v| (v as f32 * (1.0 - f) + 128.0 * f).round() as u8));
    }
    out
}

fn scores_json(s: &PairScores) -> Value {
    json!({"psnr": if s.psnr.is_finite() { json!(s.psnr) } else { Value::Null }, "ssim": s.ssim})
}

/// Decodes token rows one at a time (so equal rows decode to identical pixels).
fn decode(tr: &TransformerRun, rows: &[Vec<u32>]) -> Result<Vec<RgbImage>> {
    let dev = tr.compute.device.clone();
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let idx = tr
            .model
            .layout()
            .to_indices(std::slice::from_ref(row), &dev)?;
        out.extend(tensor_to_images(&tr.vq.decode_indices(&idx)?)?);
    }
    Ok(out)
}

/// One image at one ratio.
struct Completion {
    masked: RgbImage,
    top1: RgbImage,
    random: Vec<RgbImage>,
    hidden: usize,
    top1_vs_original: PairScores,
    /// LPIPS of each random completion against the top-1 one (empty without LPIPS weights).
    random_vs_top1_lpips: Vec<f64>,
    random_vs_top1: Vec<PairScores>,
    random_vs_original: Vec<PairScores>,
}

/// `reconstruct --mask-ratio R[,R…]`.
/// Smallest tile side of the figure of several ratios.
const FIGURE_TILE: u32 = 96;

pub fn run(a: &ReconstructArgs) -> Result<ExitCode> {
    let spec = a.mask_ratio.as_deref().unwrap_or("1");
    let ratios: &[f64] = &parse_ratios(spec)?;
    if !crate::train::runs::is_transformer_run(&a.model) {
        bail!(
            "--mask-ratio {spec}: masked-token reconstruction needs a stage-2 run (from `movq train-transformer`), and {} is a stage-1 run",
            a.model.display()
        );
    }
    if a.steps == 0 || a.samples == 0 {
        bail!("--steps and --samples must be positive");
    }
    let random_opts = a.decode.options(a.steps, false)?;
    let top1_opts = a.decode.options(1, true)?;
    let tr = TransformerRun::open(&a.model, &a.common.run())?;
    let device = tr.compute.device.clone();
    let layout = *tr.model.layout();
    let cond = resolve_class(a.class.as_deref(), &tr.cfg.classes)?;
    let seed = a.common.seed.unwrap_or(0);
    let side = tr.vq_cfg.model.resolution as u32;
    let inputs = Inputs::open(&a.input)?;
    let sources: Vec<String> = (0..inputs.len()).map(|i| inputs.name(i)).collect();
    let names = output_names(&sources);
    fsutil::create_dir(&a.out)?;
    let grey = RgbImage::from_pixel(side, side, Rgb([128, 128, 128]));
    let mut records = Vec::new();
    let mut per_ratio: Vec<Vec<PairScores>> = vec![Vec::new(); ratios.len()];
    // LPIPS between each random completion and the top-1 one, as in the paper's table
    let lpips_net = a.lpips.load(&device)?;
    let mut per_ratio_lpips: Vec<Vec<f64>> = vec![Vec::new(); ratios.len()];
    let mut all_rows: Vec<Vec<RgbImage>> = Vec::new();
    for i in 0..inputs.len() {
        let original = inputs.load(i, side)?;
        let q = tr.vq.quantizer().forward(
            &tr.vq
                .encode(&images_to_tensor(std::slice::from_ref(&original), &device)?)?,
        )?;
        let tokens = layout.to_sequences(&q.indices)?.remove(0);
        let stage1 = decode(&tr, std::slice::from_ref(&tokens))?.remove(0);
        let mut done = Vec::with_capacity(ratios.len());
        for (j, &ratio) in ratios.iter().enumerate() {
            let hidden = hidden_per_channel(&layout, ratio);
            let mask = per_channel_mask(
                &layout,
                hidden,
                &mut rng_for(seed, Stream::Sample, &[i as u64, j as u64, 0]),
            );
            let masked_row: Vec<u32> = tokens
                .iter()
                .zip(&mask)
                .map(|(&t, &m)| if m { layout.mask_id() } else { t })
                .collect();
            let mut top1 = vec![masked_row.clone()];
            complete(
                &tr.model,
                &mut top1,
                &[cond],
                &top1_opts,
                &mut rng_for(seed, Stream::Sample, &[i as u64, j as u64, 1]),
                &device,
            )?;
            let mut random = vec![masked_row; a.samples];
            complete(
                &tr.model,
                &mut random,
                &vec![cond; a.samples],
                &random_opts,
                &mut rng_for(seed, Stream::Sample, &[i as u64, j as u64, 2]),
                &device,
            )?;
            let top1 = decode(&tr, &top1)?.remove(0);
            let random = decode(&tr, &random)?;
            let random_vs_top1: Vec<PairScores> =
                random.iter().map(|r| pair_scores(&top1, r)).collect();
            per_ratio[j].extend(random_vs_top1.iter().copied());
            let random_vs_top1_lpips = match &lpips_net {
                Some(net) => random
                    .iter()
                    .map(|r| crate::metrics::lpips::image_distance(net, &top1, r, &device))
                    .collect::<Result<Vec<_>>>()?,
                None => Vec::new(),
            };
            per_ratio_lpips[j].extend(random_vs_top1_lpips.iter().copied());
            done.push(Completion {
                masked: masked_view(&original, &mask, &layout),
                top1_vs_original: pair_scores(&original, &top1),
                random_vs_original: random.iter().map(|r| pair_scores(&original, r)).collect(),
                random_vs_top1,
                random_vs_top1_lpips,
                top1,
                random,
                hidden,
            });
        }
        records.push(json!({
            "input": sources[i],
            "output": names[i],
            "stage1_vs_original": scores_json(&pair_scores(&original, &stage1)),
            "ratios": ratios.iter().zip(&done).map(|(r, c)| json!({
                "mask_ratio": r,
                "masked_per_channel": c.hidden,
                "visible_per_channel": layout.positions() - c.hidden,
                "top1_vs_original": scores_json(&c.top1_vs_original),
                "random_vs_top1": c.random_vs_top1.iter().map(scores_json).collect::<Vec<_>>(),
                "random_vs_top1_lpips": c.random_vs_top1_lpips,
                "random_vs_original": c.random_vs_original.iter().map(scores_json).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }));
        let rows: Vec<Vec<RgbImage>> = if let [c] = done.as_slice() {
            let mut row = vec![
                original.clone(),
                stage1.clone(),
                c.masked.clone(),
                c.top1.clone(),
            ];
            row.extend(c.random.iter().cloned());
            vec![row]
        } else {
            // Figure A.1: original over stage-1 reconstruction, then per ratio masked / top-1 /
            // random; tiles at 96 px or more, each column captioned (its mask ratio and the
            // visible tokens per channel)
            let big = |img: &RgbImage| upscale(img, FIGURE_TILE);
            let mut masked = vec![captioned(&big(&original), "input\n ")];
            let mut top1 = vec![big(&stage1)];
            let mut random = vec![big(&grey)];
            for (c, r) in done.iter().zip(ratios) {
                let visible = layout.positions() - c.hidden;
                let label = format!("{r:.2}\n{visible}/{}", layout.positions());
                masked.push(captioned(&big(&c.masked), &label));
                top1.push(big(&c.top1));
                random.push(big(&c.random[0]));
            }
            vec![masked, top1, random]
        };
        save_png(&grid(&rows, 2), &a.out.join(&names[i]))?;
        all_rows.extend(rows);
    }
    save_png(&grid(&all_rows, 2), &a.out.join("grid.png"))?;
    let mean_lpips = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let table: Vec<Value> = ratios
        .iter()
        .zip(&per_ratio)
        .zip(&per_ratio_lpips)
        .map(|((&r, s), l)| {
            let m = mean_scores(s);
            let hidden = hidden_per_channel(&layout, r);
            json!({"mask_ratio": r, "masked_per_channel": hidden, "visible_per_channel": layout.positions() - hidden,
                   "random_vs_top1": scores_json(&m), "random_vs_top1_lpips": mean_lpips(l)})
        })
        .collect();
    let mut report = json!({
        "model": a.model.display().to_string(),
        "checkpoint_step": tr.checkpoint.step,
        "mask_ratios": ratios,
        "steps": a.steps,
        "samples": a.samples,
        "seed": seed,
        "table": table,
        "images": records,
    });
    if let [r] = ratios {
        let hidden = hidden_per_channel(&layout, *r);
        report["masked_per_channel"] = json!(hidden);
        report["visible_per_channel"] = json!(layout.positions() - hidden);
    }
    fsutil::write_atomic(
        &a.out.join("metrics.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    println!(
        "mask_ratio  visible/channel  SSIM(random, top-1)  PSNR(random, top-1)  LPIPS(random, top-1)"
    );
    for ((&r, s), l) in ratios.iter().zip(&per_ratio).zip(&per_ratio_lpips) {
        let m = mean_scores(s);
        println!(
            "{r:>10.3}  {:>15}  {:>19.4}  {:>19.3}  {:>20}",
            layout.positions() - hidden_per_channel(&layout, r),
            m.ssim,
            m.psnr,
            mean_lpips(l).map_or("-".to_string(), |v| format!("{v:.4}"))
        );
    }
    eprintln!(
        "masked reconstruction of {} images on {} → {}",
        inputs.len(),
        device::describe(&device),
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
