//! `movq encode` (images → continuous latents and code indices, one safetensors file) and
//! `movq decode` (latents or indices → images), e.g. for pipelines that produce MoVQ latents
//! themselves (Kandinsky's decoder is called on continuous latents, `force_not_quantize`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::json;

use crate::cli::{DecodeLatentsArgs, EncodeArgs};
use crate::data::image::{images_to_tensor, save_png, square_grid, tensor_to_images};
use crate::data::inputs::Inputs;
use crate::fsutil;
use crate::nn::safetensors_io;
use crate::train::runs::VqRun;

pub fn encode(a: EncodeArgs) -> Result<ExitCode> {
    if a.batch_size == 0 {
        bail!("--batch-size must be positive");
    }
    let run = VqRun::open(&a.model, &a.common.run())?;
    let (cfg, model, device) = (run.cfg, run.model, run.compute.device);
    let inputs = Inputs::open(&a.input)?;
    let side = cfg.model.resolution as u32;
    let sources: Vec<String> = (0..inputs.len()).map(|i| inputs.name(i)).collect();
    let (mut latents, mut indices) = (Vec::new(), Vec::new());
    for batch in inputs.batches(a.batch_size, side) {
        let (_, images) = batch?;
        let z = model.encode(&images_to_tensor(&images, &device)?)?;
        let q = model.quantizer().forward(&z)?;
        latents.push(z.to_device(&Device::Cpu)?);
        indices.push(q.indices.to_device(&Device::Cpu)?);
    }
    let latents = Tensor::cat(&latents, 0)?;
    let indices = Tensor::cat(&indices, 0)?;
    let meta = BTreeMap::from([("inputs".to_string(), serde_json::to_string(&sources)?)]);
    safetensors_io::write_atomic(
        &a.out,
        &[
            ("latents".to_string(), latents.clone()),
            ("indices".to_string(), indices.clone()),
        ],
        &meta,
    )?;
    println!(
        "{}",
        json!({"out": a.out.display().to_string(), "images": sources.len(),
               "latents": latents.dims(), "indices": indices.dims()})
    );
    Ok(ExitCode::SUCCESS)
}

/// Latents `[N, embed_dim, h, w]` from a `.npy` file or the `latents` tensor of a safetensors
/// file; or, when a safetensors file holds only `indices`, those.
enum Codes {
    Latents(Tensor),
    Indices(Tensor),
}

fn read_codes(path: &Path) -> Result<Codes> {
    let is_npy = path.extension().is_some_and(|e| e == "npy");
    if is_npy {
        let t = Tensor::read_npy(path)
            .with_context(|| format!("cannot read {} as a .npy array", path.display()))?;
        return Ok(Codes::Latents(t.to_dtype(DType::F32)?));
    }
    let mut t = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if let Some(l) = t.remove("latents") {
        return Ok(Codes::Latents(l.to_dtype(DType::F32)?));
    }
    if let Some(i) = t.remove("indices") {
        return Ok(Codes::Indices(i.to_dtype(DType::U32)?));
    }
    if t.len() == 1 {
        let (_, only) = t.into_iter().next().expect("one tensor");
        return Ok(Codes::Latents(only.to_dtype(DType::F32)?));
    }
    bail!(
        "{}: expected a tensor named latents or indices (found {})",
        path.display(),
        t.keys().cloned().collect::<Vec<_>>().join(", ")
    )
}

pub fn decode(a: DecodeLatentsArgs) -> Result<ExitCode> {
    let run = VqRun::open(&a.model, &a.common.run())?;
    let (cfg, model, device) = (run.cfg, run.model, run.compute.device);
    let m = &cfg.model;
    let (e, g, c) = (m.embed_dim(), m.latent_size(), m.quantizer.channels);
    let codes = read_codes(&a.latents)?;
    let (n, images) = match codes {
        Codes::Latents(l) => {
            let dims = l.dims().to_vec();
            let l = match dims.as_slice() {
                [n, ee, h, w] if *ee == e && *h == g && *w == g => l.reshape((*n, e, g, g))?,
                [ee, h, w] if *ee == e && *h == g && *w == g => l.unsqueeze(0)?,
                _ => bail!(
                    "{}: latents of shape {dims:?}; this model decodes [N, {e}, {g}, {g}]",
                    a.latents.display()
                ),
            };
            let l = l.to_device(&device)?;
            let out = if a.quantize {
                let q = model.quantizer().forward(&l)?;
                model.decode_indices(&q.indices)?
            } else {
                model.decode(&l)?
            };
            (l.dim(0)?, tensor_to_images(&out)?)
        }
        Codes::Indices(i) => {
            let dims = i.dims().to_vec();
            if dims.len() != 4 || dims[1] != c || dims[2] != g || dims[3] != g {
                bail!(
                    "{}: indices of shape {dims:?}; this model decodes [N, {c}, {g}, {g}]",
                    a.latents.display()
                );
            }
            let k = m.quantizer.codebook_size as u32;
            let max = i.max_all()?.to_scalar::<u32>()?;
            if max >= k {
                bail!(
                    "{}: code {max} is outside the codebook (K = {k})",
                    a.latents.display()
                );
            }
            let out = model.decode_indices(&i.to_device(&device)?)?;
            (dims[0], tensor_to_images(&out)?)
        }
    };
    fsutil::create_dir(&a.out)?;
    let names: Vec<String> = (0..n).map(|i| format!("{i:05}.png")).collect();
    for (img, name) in images.iter().zip(&names) {
        save_png(img, &a.out.join(name))?;
    }
    save_png(&square_grid(&images, 2), &a.out.join("grid.png"))?;
    println!(
        "{}",
        json!({"out": a.out.display().to_string(), "images": n, "quantized": a.quantize})
    );
    Ok(ExitCode::SUCCESS)
}
