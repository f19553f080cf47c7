//! Helpers shared by the commands: loading a trained model, interrupt handling, input images.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::Device;

use crate::config::RunConfig;
use crate::data::image::open_rgb;
use crate::data::transform::eval_view;
use crate::data::Dataset;
use crate::nn::params::ParamStore;
use crate::train::run_dir::Checkpoint;
use crate::train::RunDir;
use crate::vq::MoVq;
use image::RgbImage;

/// The stage-1 model of a run directory at its latest checkpoint.
pub fn load_vq(run_path: &Path, device: &Device) -> Result<(RunConfig, MoVq, Checkpoint)> {
    let run = RunDir::open(run_path)?;
    let cfg = RunConfig::parse(
        &run.read_config()?,
        &run.config_path().display().to_string(),
    )?;
    let ckpt = run.require_latest()?;
    let store = ParamStore::new(0, device);
    let model = MoVq::new(&cfg.model, &store)?;
    store
        .load_file(&ckpt.model)
        .with_context(|| format!("cannot load the model of run {}", run_path.display()))?;
    Ok((cfg, model, ckpt))
}

/// A flag set by Ctrl-C (a second Ctrl-C exits at once).
pub fn interrupt_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    ctrlc::set_handler(move || {
        if f.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted twice: exiting without a checkpoint");
            std::process::exit(super::EXIT_INTERRUPTED as i32);
        }
        eprintln!("\ninterrupt: saving a checkpoint (Ctrl-C again to exit at once)");
    })
    .context("cannot install the Ctrl-C handler")?;
    Ok(flag)
}

/// The images named by `--input`: one file, a folder (recursive) or a built-in set.
pub enum Inputs {
    File(PathBuf),
    Set(Dataset),
}

impl Inputs {
    pub fn open(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        if path.is_file() {
            Ok(Inputs::File(path.to_path_buf()))
        } else if path.is_dir() || spec.starts_with("builtin:") {
            Ok(Inputs::Set(Dataset::open(spec, 0)?))
        } else {
            anyhow::bail!("--input {spec}: no such file or folder")
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Inputs::File(_) => 1,
            Inputs::Set(ds) => ds.len(),
        }
    }

    /// A name for image `i` (its path, or the built-in item's name).
    pub fn name(&self, i: usize) -> String {
        match self {
            Inputs::File(p) => p.display().to_string(),
            Inputs::Set(ds) => ds.name(i),
        }
    }

    /// Image `i` as the model sees it: shorter side resized to `side`, centre crop.
    pub fn load(&self, i: usize, side: u32) -> Result<RgbImage> {
        Ok(match self {
            Inputs::File(p) => eval_view(&open_rgb(p)?, side),
            Inputs::Set(ds) => eval_view(ds.load_resized(i, side)?.as_ref(), side),
        })
    }
}

/// Output file names from input names: the file stem, made unique.
pub fn output_names(names: &[String]) -> Vec<String> {
    let mut used = std::collections::HashSet::new();
    names
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let stem = Path::new(p).file_stem().map_or_else(
                || format!("image-{i}"),
                |s| s.to_string_lossy().into_owned(),
            );
            let mut name = format!("{stem}.png");
            let mut k = 1;
            while !used.insert(name.clone()) {
                name = format!("{stem}-{k}.png");
                k += 1;
            }
            name
        })
        .collect()
}
