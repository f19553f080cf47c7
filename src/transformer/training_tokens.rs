//! The token sequences a stage-2 run trains on: its dataset encoded once by the run's frozen
//! tokenizer (cached in `RUN/tokens.safetensors` until the data or the tokenizer changes),
//! split into training and validation rows.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Result};

use crate::config::TransformerRunConfig;
use crate::data::Dataset;
use crate::train::runs::VqRun;
use crate::transformer::cache::{load_or_build, CacheKey};
use crate::transformer::stage::{TokenBatch, TokenLoader};
use crate::transformer::TokenLayout;

pub struct TrainingTokens {
    train: Vec<usize>,
    val_count: usize,
    /// The first `train.val_images` validation sequences (training ones when the split has
    /// none).
    pub val: TokenBatch,
    tokens: Arc<Vec<Vec<u32>>>,
    labels: Arc<Vec<u32>>,
}

impl TrainingTokens {
    /// Encodes `ds` (`--data spec`) with `vq` into the cache at `cache` (or reuses it); fails
    /// when no sequence is left for training.
    pub fn encode(
        ds: &Dataset,
        spec: &str,
        vq: &VqRun,
        cfg: &TransformerRunConfig,
        cache: &Path,
    ) -> Result<Self> {
        let layout = TokenLayout::of(&vq.cfg.model, cfg.classes.len());
        let side = vq.cfg.model.resolution as u32;
        let key = CacheKey {
            dataset: ds,
            vq_checkpoint: &vq.checkpoint.model,
            side,
            flip: cfg.flip(),
            val_fraction: cfg.data.val_fraction,
        };
        let workers = cfg.data.worker_threads();
        let cache = load_or_build(cache, &key, &vq.model, &layout, workers, &vq.compute.device)?;
        let train = cache.rows(false);
        if train.is_empty() {
            bail!("--data {spec}: no sequence left for training after the validation split");
        }
        let mut val_rows = cache.rows(true);
        let val_count = val_rows.len();
        if val_rows.is_empty() {
            val_rows = train.clone();
        }
        val_rows.truncate(cfg.transformer.train.val_images.max(1));
        let val = TokenBatch {
            tokens: val_rows.iter().map(|&i| cache.tokens[i].clone()).collect(),
            labels: val_rows.iter().map(|&i| cache.labels[i]).collect(),
        };
        Ok(Self {
            train,
            val_count,
            val,
            tokens: Arc::new(cache.tokens),
            labels: Arc::new(cache.labels),
        })
    }

    /// Batches of `batch` training sequences (the rows in `rows` of each: one rank's shard) in
    /// the order of `seed`: a loader from the step it is given on.
    pub fn loader(
        &self,
        batch: usize,
        seed: u64,
        rows: std::ops::Range<usize>,
    ) -> impl FnOnce(usize) -> TokenLoader + 'static {
        let (train, tokens, labels) =
            (self.train.clone(), self.tokens.clone(), self.labels.clone());
        move |start| TokenLoader::new(train, tokens, labels, batch, seed, start).with_rows(rows)
    }

    /// "N training / M validation sequences".
    pub fn describe(&self) -> String {
        format!(
            "{} training / {} validation sequences",
            self.train.len(),
            self.val_count
        )
    }
}
