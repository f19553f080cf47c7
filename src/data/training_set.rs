//! The images a stage-1 run trains on: the dataset behind `--data`, its training / validation
//! split, the validation images decoded once, and the training batches of each rank.

use std::ops::Range;
use std::sync::Arc;

use anyhow::{bail, Result};
use image::RgbImage;

use crate::config::RunConfig;
use crate::data::loader::{load_eval, spawn_train_loader, LoaderOptions, TrainLoader};
use crate::data::Dataset;

pub struct TrainingSet {
    ds: Arc<Dataset>,
    spec: String,
    train: Vec<usize>,
    val: Vec<usize>,
    /// The first `train.val_images` validation images (training images when the split has
    /// none), at the model's resolution.
    pub val_images: Vec<RgbImage>,
}

impl TrainingSet {
    /// Opens `spec` for the model of `cfg`. A new run's model follows its data
    /// (`model.image_channels` from the images when the config does not say); an older run's
    /// config without the field is RGB. Fails, before anything is written, when no image is
    /// left for training or no validation image decodes.
    pub fn open(spec: &str, cfg: &mut RunConfig, resuming: bool) -> Result<Self> {
        let side = cfg.model.resolution as u32;
        let ds = Dataset::open(spec, cfg.seed)?.with_cache(side, cfg.data.cache_mib);
        if cfg.model.image_channels.is_none() {
            let grey = !resuming && ds.greyscale();
            cfg.model.image_channels = Some(if grey { 1 } else { 3 });
        }
        let (train, val) = ds.split(cfg.data.val_fraction);
        if train.is_empty() {
            bail!("--data {spec}: no image left for training after the validation split");
        }
        let pick: Vec<usize> = if val.is_empty() { &train } else { &val }
            .iter()
            .copied()
            .take(cfg.train.val_images.max(1))
            .collect();
        let (_, val_images) = load_eval(&ds, &pick, side, cfg.data.worker_threads())?;
        if val_images.is_empty() {
            bail!("--data {spec}: none of the validation images could be decoded");
        }
        Ok(Self {
            ds: Arc::new(ds),
            spec: spec.to_string(),
            train,
            val,
            val_images,
        })
    }

    /// Training batches of `cfg.train.batch_size` images (the batch rows in `rows` of each: one
    /// rank's shard), decoded and augmented by background threads: a loader from the step it
    /// is given on.
    pub fn loader(
        &self,
        cfg: &RunConfig,
        rows: Range<usize>,
    ) -> impl FnOnce(usize) -> Result<TrainLoader> + 'static {
        let opts = LoaderOptions {
            batch_size: cfg.train.batch_size,
            side: cfg.model.resolution as u32,
            flip: cfg.data.flip,
            workers: cfg.data.worker_threads(),
            prefetch: cfg.data.prefetch,
            seed: cfg.seed,
            rows: Some(rows),
        };
        let (ds, items) = (self.ds.clone(), self.train.clone());
        move |start| spawn_train_loader(ds, items, opts, start)
    }

    /// "N training / M validation images (K unreadable skipped), C classes".
    pub fn describe(&self) -> String {
        let skipped = match self.ds.skipped() {
            0 => String::new(),
            n => format!(" ({n} unreadable skipped)"),
        };
        format!(
            "{} training / {} validation images{skipped}, {} classes",
            self.train.len(),
            self.val.len(),
            self.ds.classes().len()
        )
    }

    /// Warns about the images that failed to decode during training (each was replaced).
    pub fn warn_failures(&self) {
        if self.ds.failures() > 0 {
            eprintln!(
                "warning: {} images of {} failed to decode during training and were replaced",
                self.ds.failures(),
                self.spec
            );
        }
    }
}
