//! The token cache: the dataset encoded once by the frozen stage-1 model.
//!
//! Stored in the stage-2 run as `tokens.safetensors` (`tokens` `[N, L]` u32, `labels` `[N]` u32,
//! `val` `[N]` u8) with a fingerprint of the data, the stage-1 checkpoint and the options; it is
//! reused while the fingerprint matches and rebuilt otherwise. With flips on, each training image
//! is encoded a second time mirrored.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use indicatif::ProgressBar;

use crate::data::image::images_to_tensor;
use crate::data::loader::load_eval;
use crate::data::Dataset;
use crate::nn::safetensors_io;
use crate::rng::{mix, mix_iter};
use crate::transformer::tokens::TokenLayout;
use crate::vq::MoVq;

/// Encoded sequences with their conditioning ids and split.
#[derive(Debug, Clone, Default)]
pub struct TokenCache {
    pub tokens: Vec<Vec<u32>>,
    /// Class id, or the layout's "no class" id.
    pub labels: Vec<u32>,
    pub is_val: Vec<bool>,
}

impl TokenCache {
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Row indices of the training or validation split.
    pub fn rows(&self, val: bool) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.is_val[i] == val).collect()
    }
}

/// What the cache depends on.
pub struct CacheKey<'a> {
    pub dataset: &'a Dataset,
    pub vq_checkpoint: &'a Path,
    pub side: u32,
    pub flip: bool,
    pub val_fraction: f64,
}

impl CacheKey<'_> {
    pub fn fingerprint(&self) -> Result<String> {
        let ckpt = std::fs::read(self.vq_checkpoint)
            .with_context(|| format!("cannot read {}", self.vq_checkpoint.display()))?;
        let ckpt_hash = mix_iter(
            ckpt.chunks(8)
                .map(|c| c.iter().fold(0u64, |a, &b| (a << 8) | b as u64)),
        );
        Ok(format!(
            "{:016x}",
            mix(&[
                self.dataset.fingerprint(),
                ckpt_hash,
                self.side as u64,
                self.flip as u64,
                self.val_fraction.to_bits()
            ])
        ))
    }
}

/// Loads the cache at `path` when its fingerprint matches, else encodes the dataset and writes it.
pub fn load_or_build(
    path: &Path,
    key: &CacheKey,
    vq: &MoVq,
    layout: &TokenLayout,
    workers: usize,
    device: &Device,
) -> Result<TokenCache> {
    let fingerprint = key.fingerprint()?;
    if path.is_file() {
        let (t, meta) = safetensors_io::read(path, &Device::Cpu)?;
        if meta.get("fingerprint") == Some(&fingerprint) {
            let get = |n: &str| {
                t.get(n)
                    .with_context(|| format!("{} has no `{n}`", path.display()))
            };
            let tokens: Vec<Vec<u32>> = get("tokens")?.to_vec2()?;
            if tokens.first().is_some_and(|r| r.len() == layout.seq_len()) {
                eprintln!(
                    "token cache: reusing {} ({} sequences)",
                    path.display(),
                    tokens.len()
                );
                return Ok(TokenCache {
                    tokens,
                    labels: get("labels")?.to_vec1()?,
                    is_val: get("val")?
                        .to_vec1::<u8>()?
                        .into_iter()
                        .map(|v| v == 1)
                        .collect(),
                });
            }
        }
        eprintln!(
            "token cache: the data or the stage-1 model changed; rebuilding {}",
            path.display()
        );
    }
    let cache = encode(key, vq, layout, workers, device)?;
    let n = cache.len();
    let flat: Vec<u32> = cache.tokens.iter().flatten().copied().collect();
    let tensors = vec![
        (
            "tokens".to_string(),
            Tensor::from_vec(flat, (n, layout.seq_len()), &Device::Cpu)?,
        ),
        (
            "labels".to_string(),
            Tensor::new(cache.labels.as_slice(), &Device::Cpu)?,
        ),
        (
            "val".to_string(),
            Tensor::from_vec(
                cache.is_val.iter().map(|&v| v as u8).collect::<Vec<_>>(),
                n,
                &Device::Cpu,
            )?,
        ),
    ];
    safetensors_io::write_atomic(
        path,
        &tensors,
        &BTreeMap::from([("fingerprint".to_string(), fingerprint)]),
    )?;
    Ok(cache)
}

fn encode(
    key: &CacheKey,
    vq: &MoVq,
    layout: &TokenLayout,
    workers: usize,
    device: &Device,
) -> Result<TokenCache> {
    let ds = key.dataset;
    let (train, val) = ds.split(key.val_fraction);
    let mut items: Vec<(usize, bool)> = train
        .iter()
        .map(|&i| (i, false))
        .chain(val.iter().map(|&i| (i, true)))
        .collect();
    items.sort_unstable();
    let mut cache = TokenCache::default();
    let bar = ProgressBar::new(items.len() as u64).with_message("encoding the dataset");
    for chunk in items.chunks(32) {
        let ids: Vec<usize> = chunk.iter().map(|c| c.0).collect();
        let (kept, images) = load_eval(ds, &ids, key.side, workers)?;
        if images.is_empty() {
            continue;
        }
        let x = images_to_tensor(&images, device)?;
        let mut views = vec![(x.clone(), false)];
        if key.flip {
            views.push((x.flip(&[3])?, true));
        }
        for (view, flipped) in views {
            let q = vq.quantizer().forward(&vq.encode(&view)?)?;
            for (row, &item) in layout.to_sequences(&q.indices)?.into_iter().zip(&kept) {
                let is_val = val.binary_search(&item).is_ok();
                if flipped && is_val {
                    continue;
                }
                cache.tokens.push(row);
                cache
                    .labels
                    .push(ds.label(item).unwrap_or(layout.no_class()));
                cache.is_val.push(is_val);
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    anyhow::ensure!(
        !cache.is_empty(),
        "no image of the dataset could be encoded"
    );
    Ok(cache)
}
