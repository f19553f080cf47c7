//! `movq import diffusers`: a diffusers VQModel (spatial norm, e.g. the Kandinsky 2.x MoVQ)
//! checkpoint → a movq stage-1 run directory (config + step-0 weights), usable by `reconstruct`,
//! `eval`, `compare`, `encode`, `decode` and as the tokenizer of `train-transformer`.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context, Result};
use candle_core::{DType, Device};

use crate::cli::{ImportArgs, ImportSource};
use crate::config::RunConfig;
use crate::nn::params::{is_buffer, ParamStore};
use crate::train::RunDir;
use crate::vq::diffusers::{map_tensors, vq_config};
use crate::vq::MoVq;

pub fn run(a: ImportArgs) -> Result<ExitCode> {
    let ImportSource::Diffusers {
        weights,
        config,
        out,
        resolution,
    } = a.source;
    let text = std::fs::read_to_string(&config)
        .with_context(|| format!("cannot read {}", config.display()))?;
    let mut json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", config.display()))?;
    if let (Some(r), Some(obj)) = (resolution, json.as_object_mut()) {
        obj.insert("sample_size".into(), r.into());
    }
    let model_cfg = vq_config(&json).with_context(|| format!("in {}", config.display()))?;
    // training sections from the Kandinsky preset, the shape from the checkpoint's config
    let mut run_cfg = RunConfig::resolve("kandinsky-movq")?;
    run_cfg.model = model_cfg;
    run_cfg.validate()?;
    let store = ParamStore::new(0, &Device::Cpu);
    MoVq::new(&run_cfg.model, &store)?;
    let all = store.tensors();
    let wanted: Vec<(String, Vec<usize>)> = all
        .iter()
        .filter(|(n, _)| !is_buffer(n))
        .map(|(n, t)| (n.clone(), t.dims().to_vec()))
        .collect();
    let source: BTreeMap<String, candle_core::Tensor> =
        candle_core::safetensors::load(&weights, &Device::Cpu)
            .with_context(|| format!("cannot read {}", weights.display()))?
            .into_iter()
            .map(|(n, t)| Ok((n, t.to_dtype(DType::F32)?)))
            .collect::<Result<_>>()?;
    let levels = run_cfg.model.ch_mult.len();
    let mut tensors: BTreeMap<String, candle_core::Tensor> = map_tensors(&wanted, levels, source)
        .with_context(|| format!("{}", weights.display()))?
        .into_iter()
        .collect();
    // movq's own buffers (codebook usage statistics) start fresh
    for (name, t) in all.iter().filter(|(n, _)| is_buffer(n)) {
        tensors.insert(name.clone(), t.copy()?);
    }
    store.load_tensors(&tensors, &weights.display().to_string())?;
    let run = RunDir::create(&out, &run_cfg.to_json())?;
    let ckpt = run.save_checkpoint(0, &store.tensors(), &[], 0)?;
    eprintln!(
        "imported {} parameters ({} tensors) from {} into {} ({})",
        store.num_parameters(),
        wanted.len(),
        weights.display(),
        out.display(),
        ckpt.model.display()
    );
    Ok(ExitCode::SUCCESS)
}
