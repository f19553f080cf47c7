//! Helpers shared by the commands: loading a trained model, interrupt handling, input images.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::Device;

use crate::config::RunConfig;
use crate::data::folder::ImageFolder;
use crate::nn::params::ParamStore;
use crate::train::run_dir::Checkpoint;
use crate::train::RunDir;
use crate::vq::MoVq;

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

/// The image files named by `--input`: one file, or every image under a folder.
pub fn input_images(input: &Path) -> Result<Vec<PathBuf>> {
    if input.is_file() {
        Ok(vec![input.to_path_buf()])
    } else if input.is_dir() {
        Ok(ImageFolder::scan(input)?
            .items
            .into_iter()
            .map(|i| i.path)
            .collect())
    } else {
        anyhow::bail!("--input {}: no such file or folder", input.display())
    }
}

/// Output file names from input paths: the file stem, made unique.
pub fn output_names(paths: &[PathBuf]) -> Vec<String> {
    let mut used = std::collections::HashSet::new();
    paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let stem = p.file_stem().map_or_else(
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
