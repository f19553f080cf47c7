//! Batches for training (shuffled, augmented, decoded on worker threads and prefetched) and for
//! evaluation (centre crops).
//!
//! The sample at stream position `p = step·B + k` is item `perm_e[p mod n]` of epoch
//! `e = p div n`, where `perm_e` is a shuffle seeded by `(seed, e)`, and its crop and flip come
//! from a generator seeded by `(seed, e, p mod n)`. Batches are thus a pure function of the seed
//! and the step, whatever the thread count, and a resumed run sees exactly the same data.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::data::dataset::Dataset;
use crate::data::image::push_chw;
use crate::data::order::{SampleOrder, Visit};
use crate::data::transform::Crop;
use crate::rng::{rng_for, Stream};

/// A batch of images (planar, [-1, 1]) and their labels.
#[derive(Debug, Clone)]
pub struct ImageBatch {
    pub pixels: Vec<f32>,
    pub labels: Vec<Option<u32>>,
    pub side: usize,
}

impl ImageBatch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// `[B, 3, side, side]` on `device`.
    pub fn tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &self.pixels,
            (self.len(), 3, self.side, self.side),
            device,
        )?)
    }
}

#[derive(Debug, Clone)]
pub struct LoaderOptions {
    pub batch_size: usize,
    pub side: u32,
    pub flip: bool,
    pub workers: usize,
    pub prefetch: usize,
    pub seed: u64,
    /// The rows of each batch this loader produces (one rank's shard); all of them if `None`.
    pub rows: Option<std::ops::Range<usize>>,
}

/// Iterator over training batches from `start_step` on, produced by a background thread.
pub struct TrainLoader {
    rx: Receiver<Result<ImageBatch>>,
}

impl Iterator for TrainLoader {
    type Item = Result<ImageBatch>;
    fn next(&mut self) -> Option<Self::Item> {
        self.rx.recv().ok()
    }
}

/// Loads one training sample, falling back to the next items of the epoch when an image fails
/// to decode (reported once per file).
fn train_sample(
    ds: &Dataset,
    sched_items: &[usize],
    visit: Visit,
    o: &LoaderOptions,
) -> Result<(RgbImage, Option<u32>)> {
    let mut idx = visit.item;
    for attempt in 0..ds.len() {
        match ds.load_resized(idx, o.side) {
            Ok(img) => {
                let (w, h) = img.dimensions();
                let mut rng = rng_for(o.seed, Stream::Augment, &[visit.epoch, visit.slot]);
                let crop = Crop::random(w, h, o.side, o.flip, &mut rng);
                return Ok((crop.apply(&img, o.side), ds.label(idx)));
            }
            Err(err) => {
                if ds.note_failure(idx) {
                    eprintln!("warning: skipping image that failed to decode: {err:#}");
                }
                let pos = sched_items.iter().position(|&i| i == idx).unwrap_or(0);
                idx = sched_items[(pos + attempt + 1) % sched_items.len()];
            }
        }
    }
    bail!("none of the {} training images could be decoded", ds.len())
}

/// Runs `f` over `0..n` on up to `workers` threads, keeping the order of results.
fn parallel_map<T: Send>(n: usize, workers: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let workers = workers.clamp(1, n.max(1));
    if workers == 1 {
        return (0..n).map(f).collect();
    }
    let f = &f;
    let mut parts: Vec<Vec<(usize, T)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                s.spawn(move || {
                    (w..n)
                        .step_by(workers)
                        .map(|i| (i, f(i)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut all: Vec<(usize, T)> = parts.iter_mut().flat_map(std::mem::take).collect();
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, t)| t).collect()
}

/// Starts the background producer of training batches.
pub fn spawn_train_loader(
    ds: Arc<Dataset>,
    items: Vec<usize>,
    o: LoaderOptions,
    start_step: usize,
) -> Result<TrainLoader> {
    if items.is_empty() {
        bail!("the training split is empty");
    }
    let (tx, rx) = sync_channel(o.prefetch);
    std::thread::Builder::new()
        .name("movq-loader".into())
        .spawn(move || {
            let mut order = SampleOrder::new(items.clone(), o.seed);
            for step in start_step.. {
                let rows = o.rows.clone().unwrap_or(0..o.batch_size);
                let plan = order.rows(step, o.batch_size, rows);
                let samples = parallel_map(plan.len(), o.workers, |k| {
                    train_sample(&ds, &items, plan[k], &o)
                });
                let batch = samples.into_iter().collect::<Result<Vec<_>>>().map(|s| {
                    let mut pixels = Vec::with_capacity(s.len() * 3 * (o.side * o.side) as usize);
                    for (img, _) in &s {
                        push_chw(img, &mut pixels);
                    }
                    ImageBatch {
                        pixels,
                        labels: s.into_iter().map(|(_, l)| l).collect(),
                        side: o.side as usize,
                    }
                });
                let failed = batch.is_err();
                if tx.send(batch).is_err() || failed {
                    return;
                }
            }
        })?;
    Ok(TrainLoader { rx })
}

/// Centre crops of `items` at `side`, decoded on `workers` threads. Items that fail to decode
/// are reported and left out; returns the kept item indices too.
pub fn load_eval(
    ds: &Dataset,
    items: &[usize],
    side: u32,
    workers: usize,
) -> Result<(Vec<usize>, Vec<RgbImage>)> {
    let loaded = parallel_map(items.len(), workers, |k| {
        ds.load_resized(items[k], side).map(|img| {
            let (w, h) = img.dimensions();
            Crop::center(w, h, side).apply(&img, side)
        })
    });
    let mut kept = Vec::new();
    let mut images = Vec::new();
    for (k, r) in loaded.into_iter().enumerate() {
        match r {
            Ok(img) => {
                kept.push(items[k]);
                images.push(img);
            }
            Err(err) => {
                if ds.note_failure(items[k]) {
                    eprintln!("warning: skipping image that failed to decode: {err:#}");
                }
            }
        }
    }
    Ok((kept, images))
}
