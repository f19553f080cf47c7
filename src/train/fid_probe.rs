//! FID while training (`train.fid_every` with `--fid-ref STATS`): every N steps and at the end,
//! the stage's images — stage 1 the reconstructions of its validation images (rFID), stage 2
//! `train.fid_samples` class-conditional samples (FID) — are scored against saved Inception
//! statistics and logged to `metrics.jsonl` (`"split": "fid"`) and TensorBoard.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use image::RgbImage;

use crate::config::TrainConfig;
use crate::metrics::fid::{frechet_distance, load_inception, stats_of_images, FeatureStats};
use crate::metrics::inception::FidInception;

/// Images scored by the Inception network at once.
const BATCH: usize = 50;

pub struct FidProbe {
    /// Steps between two measurements.
    pub every: usize,
    /// Samples a stage-2 measurement generates.
    pub samples: usize,
    /// The metric's name in the log: `rfid` (stage 1) or `fid` (stage 2).
    pub key: &'static str,
    net: FidInception,
    reference: FeatureStats,
}

impl std::fmt::Debug for FidProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FidProbe({} every {} steps)", self.key, self.every)
    }
}

impl FidProbe {
    /// The probe `train` asks for (none when `train.fid_every` is 0), with the reference
    /// statistics of `fid_ref` and the Inception network on `device`, checked before anything
    /// is written.
    pub fn prepare(
        train: &TrainConfig,
        fid_ref: Option<&Path>,
        key: &'static str,
        device: &Device,
    ) -> Result<Option<Self>> {
        if train.fid_every == 0 {
            if let Some(p) = fid_ref {
                bail!(
                    "--fid-ref {}: the run measures no FID (set train.fid_every)",
                    p.display()
                );
            }
            return Ok(None);
        }
        let Some(path) = fid_ref else {
            bail!(
                "train.fid_every is {}: give --fid-ref STATS, the statistics of real images (`movq fid DATA --save-stats STATS`)",
                train.fid_every
            );
        };
        let reference =
            FeatureStats::load(path).with_context(|| format!("--fid-ref {}", path.display()))?;
        let net = load_inception(None, device)?;
        Ok(Some(Self {
            every: train.fid_every,
            samples: train.fid_samples,
            key,
            net,
            reference,
        }))
    }

    /// Whether the loop measures after step `done` of `total`.
    pub fn due(&self, done: usize, total: usize) -> bool {
        done.is_multiple_of(self.every) || done == total
    }

    /// The FID of `images` against the reference.
    pub fn measure(&self, images: Vec<RgbImage>) -> Result<f64> {
        let n = images.len();
        let stats = stats_of_images(&self.net, images.into_iter().map(Ok), n, BATCH)?;
        frechet_distance(&stats, &self.reference)
    }
}
