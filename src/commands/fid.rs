//! `movq fid A [B]`: Fréchet Inception Distance between two image sets (folders, `idx:` sets,
//! built-in sets) or saved statistics files; `--save-stats` keeps a set's statistics for reuse.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use indicatif::ProgressBar;
use serde_json::json;

use crate::cli::FidArgs;
use crate::data::Dataset;
use crate::device;
use crate::metrics::cache_dir;
use crate::metrics::fid::{frechet_distance, FeatureStats};
use crate::metrics::inception::FidInception;

/// The Inception network: `explicit`, or `fid-inception.safetensors` in the movq cache.
pub fn load_inception(explicit: Option<&Path>, device: &Device) -> Result<FidInception> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => cache_dir().join("fid-inception.safetensors"),
    };
    if !path.is_file() {
        bail!(
            "FID needs the Inception weights, not found at {} (run `bash scripts/get-weights`, or pass --inception-weights FILE)",
            path.display()
        );
    }
    FidInception::load(&path, device)
}

/// Inception statistics of uint8 images, computed `batch` at a time.
pub fn stats_of_images(
    net: &FidInception,
    images: impl Iterator<Item = Result<image::RgbImage>>,
    total: usize,
    batch: usize,
) -> Result<FeatureStats> {
    let bar = ProgressBar::new(total as u64);
    let mut features = Vec::new();
    let mut pending = Vec::with_capacity(batch);
    let mut flush = |pending: &mut Vec<image::RgbImage>| -> Result<()> {
        if !pending.is_empty() {
            features.push(net.features(pending)?.to_device(&Device::Cpu)?);
            bar.inc(pending.len() as u64);
            pending.clear();
        }
        Ok(())
    };
    for img in images {
        pending.push(img?);
        if pending.len() == batch {
            flush(&mut pending)?;
        }
    }
    flush(&mut pending)?;
    bar.finish_and_clear();
    if features.is_empty() {
        bail!("no images to compute FID statistics of");
    }
    FeatureStats::from_features(&candle_core::Tensor::cat(&features, 0)?)
}

/// Statistics of `source`: a saved `.safetensors` statistics file, or a dataset spec.
pub fn stats_of_source(
    source: &str,
    net: &FidInception,
    limit: Option<usize>,
    batch: usize,
) -> Result<FeatureStats> {
    let path = PathBuf::from(source);
    if path.is_file() && path.extension().is_some_and(|e| e == "safetensors") {
        return FeatureStats::load(&path);
    }
    let ds = Dataset::open(source, 0)?;
    let n = limit.map_or(ds.len(), |l| l.min(ds.len()));
    stats_of_images(net, (0..n).map(|i| ds.load_native(i)), n, batch)
        .with_context(|| format!("FID statistics of {source}"))
}

pub fn run(a: FidArgs) -> Result<ExitCode> {
    if a.batch_size == 0 {
        bail!("--batch-size must be positive");
    }
    if a.b.is_none() && a.save_stats.is_none() {
        bail!("give two image sets (or statistics files) to compare, or --save-stats FILE");
    }
    let device = device::select(&a.common.device)?;
    let net = load_inception(a.inception_weights.as_deref(), &device)?;
    let sa = stats_of_source(&a.a, &net, a.limit, a.batch_size)?;
    if let Some(out) = &a.save_stats {
        sa.save(out)?;
        eprintln!(
            "saved the statistics of {} images of {} to {}",
            sa.count,
            a.a,
            out.display()
        );
    }
    if let Some(b) = &a.b {
        let sb = stats_of_source(b, &net, a.limit, a.batch_size)?;
        let fid = frechet_distance(&sa, &sb)?;
        let out = json!({"fid": fid, "a": a.a, "a_images": sa.count, "b": b, "b_images": sb.count});
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(ExitCode::SUCCESS)
}
