//! `movq import`: weights trained elsewhere → a movq stage-1 run directory (config + step-0
//! weights), usable by `reconstruct`, `eval`, `compare`, `encode`, `decode` and as the tokenizer
//! of `train-transformer`. Sources: a diffusers VQModel with spatial norm (the Kandinsky 2.x
//! MoVQ as published in diffusers) and an original MoVQGAN Lightning checkpoint.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::cli::{ImportArgs, ImportSource};
use crate::config::{RunConfig, VqConfig};
use crate::nn::params::{is_buffer, ParamStore};
use crate::train::RunDir;
use crate::vq::foreign::map_tensors;
use crate::vq::{diffusers, movqgan, MoVq};

pub fn run(a: ImportArgs) -> Result<ExitCode> {
    match a.source {
        ImportSource::Diffusers {
            weights,
            config,
            out,
            resolution,
        } => {
            let text = std::fs::read_to_string(&config)
                .with_context(|| format!("cannot read {}", config.display()))?;
            let mut json: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not valid JSON", config.display()))?;
            if let (Some(r), Some(obj)) = (resolution, json.as_object_mut()) {
                obj.insert("sample_size".into(), r.into());
            }
            let model =
                diffusers::vq_config(&json).with_context(|| format!("in {}", config.display()))?;
            let source: BTreeMap<String, Tensor> =
                candle_core::safetensors::load(&weights, &Device::Cpu)
                    .with_context(|| format!("cannot read {}", weights.display()))?
                    .into_iter()
                    .collect();
            let levels = model.ch_mult.len();
            write_run(model, source, &weights, &out, |n| {
                diffusers::diffusers_name(n, levels)
            })
        }
        ImportSource::Movqgan {
            ckpt,
            out,
            resolution,
            norm_groups,
        } => {
            let source = read_state_dict(&ckpt)?;
            let shapes = source
                .iter()
                .map(|(n, t)| (n.clone(), t.dims().to_vec()))
                .collect();
            let model = movqgan::vq_config(&shapes, resolution, norm_groups)
                .with_context(|| format!("in {}", ckpt.display()))?;
            write_run(model, source, &ckpt, &out, str::to_string)
        }
    }
}

/// The model tensors of a PyTorch checkpoint: a Lightning `.ckpt` (its `state_dict`) or a bare
/// state dict, without the training-only ones.
fn read_state_dict(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let tensors = candle_core::pickle::read_all_with_key(path, Some("state_dict"))
        .or_else(|_| candle_core::pickle::read_all_with_key(path, None))
        .with_context(|| format!("cannot read {} as a PyTorch checkpoint", path.display()))?;
    Ok(tensors
        .into_iter()
        .filter(|(n, _)| !movqgan::is_training_only(n))
        .collect())
}

/// Builds `model`, fills it from `source` (`theirs`: a movq parameter's name there) and writes
/// the run directory `out`; the training sections come from the Kandinsky preset.
fn write_run(
    model: VqConfig,
    source: BTreeMap<String, Tensor>,
    from: &Path,
    out: &Path,
    theirs: impl Fn(&str) -> String,
) -> Result<ExitCode> {
    let mut run_cfg = RunConfig::resolve("kandinsky-movq")?;
    run_cfg.model = model;
    run_cfg.validate()?;
    let store = ParamStore::new(0, &Device::Cpu);
    MoVq::new(&run_cfg.model, &store)?;
    let all = store.tensors();
    let wanted: Vec<(String, Vec<usize>)> = all
        .iter()
        .filter(|(n, _)| !is_buffer(n))
        .map(|(n, t)| (n.clone(), t.dims().to_vec()))
        .collect();
    let source = source
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_dtype(DType::F32)?)))
        .collect::<Result<_>>()?;
    let mut tensors: BTreeMap<String, Tensor> = map_tensors(&wanted, source, theirs)
        .with_context(|| format!("{}", from.display()))?
        .into_iter()
        .collect();
    // movq's own buffers (codebook usage statistics) start fresh
    for (name, t) in all.iter().filter(|(n, _)| is_buffer(n)) {
        tensors.insert(name.clone(), t.copy()?);
    }
    store.load_tensors(&tensors, &from.display().to_string())?;
    let run = RunDir::create(out, &run_cfg.to_json())?;
    let ckpt = run.save_checkpoint(0, &store.tensors(), &[], None, 0)?;
    eprintln!(
        "imported {} parameters ({} tensors) from {} into {} ({})",
        store.num_parameters(),
        wanted.len(),
        from.display(),
        out.display(),
        ckpt.model.display()
    );
    Ok(ExitCode::SUCCESS)
}
