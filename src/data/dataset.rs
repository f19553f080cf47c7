//! A dataset: an image folder or a built-in set, with labels, a deterministic train/val split
//! and an optional in-memory cache of resized images.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{bail, Result};
use image::RgbImage;

use crate::data::folder::ImageFolder;
use crate::data::idx::IdxSet;
use crate::data::shapes::{self, Shapes};
use crate::data::source::ImageSource;
use crate::rng::mix;

/// A file's identity for fingerprints: a hash of its path, its size and its modification time.
pub(crate) fn file_words(path: &Path) -> [u64; 3] {
    let name = mix(&path
        .to_string_lossy()
        .bytes()
        .map(u64::from)
        .collect::<Vec<_>>());
    let meta = std::fs::metadata(path).ok();
    let size = meta.as_ref().map_or(0, |m| m.len());
    let mtime = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    [name, size, mtime]
}

pub struct Dataset {
    source: Box<dyn ImageSource>,
    classes: Vec<String>,
    /// Resized images by index, filled on first use when caching is on.
    cache: Option<(u32, Vec<OnceLock<Arc<RgbImage>>>)>,
    /// Items that failed to decode at load time (reported once each).
    failed: Mutex<Vec<usize>>,
}

impl Dataset {
    /// Whether `spec` names a data set by prefix (`idx:…`, `builtin:…`) rather than a path.
    pub fn is_spec(spec: &str) -> bool {
        spec.starts_with("idx:") || spec.starts_with("builtin:")
    }

    /// Opens `spec`: `builtin:shapes` (optionally `builtin:shapes:N` images), `idx:PATH` (see
    /// [`IdxSet::open`]) or a folder.
    pub fn open(spec: &str, seed: u64) -> Result<Self> {
        let source: Box<dyn ImageSource> = if let Some(rest) = spec.strip_prefix("idx:") {
            Box::new(IdxSet::open(rest)?)
        } else if let Some(rest) = spec.strip_prefix("builtin:") {
            let mut parts = rest.split(':');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("shapes"), None, None) => Box::new(Shapes { count: shapes::DEFAULT_COUNT, seed }),
                (Some("shapes"), Some(n), None) => match n.parse::<usize>() {
                    Ok(count) if count > 0 => Box::new(Shapes { count, seed }),
                    _ => bail!("--data {spec}: the image count must be a positive integer, got {n:?}"),
                },
                _ => bail!("--data {spec}: unknown built-in dataset (available: builtin:shapes, builtin:shapes:N)"),
            }
        } else {
            Box::new(ImageFolder::scan(Path::new(spec))?)
        };
        Ok(Self {
            classes: source.classes(),
            source,
            cache: None,
            failed: Mutex::new(Vec::new()),
        })
    }

    /// Keeps images resized to `side` in memory when the whole set fits in `budget_mib`.
    pub fn with_cache(mut self, side: u32, budget_mib: usize) -> Self {
        // Non-square photos keep some margin for the crop; assume 1.5× the square size.
        let bytes = self.len() as f64 * (side as f64).powi(2) * 3.0 * 1.5;
        if self.source.cacheable() && bytes <= budget_mib as f64 * 1048576.0 {
            self.cache = Some((side, (0..self.len()).map(|_| OnceLock::new()).collect()));
        }
        self
    }

    pub fn len(&self) -> usize {
        self.source.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every image is greyscale (IDX sets, folders of greyscale files): a new model of
    /// this data reads and writes one channel.
    pub fn greyscale(&self) -> bool {
        self.source.greyscale()
    }

    /// Whether this is `builtin:shapes`, whose images an analytic classifier can label.
    pub fn is_builtin_shapes(&self) -> bool {
        self.source.analytic_classes()
    }

    /// Class names (empty for unlabelled folders).
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    pub fn label(&self, i: usize) -> Option<u32> {
        self.source.label(i)
    }

    /// A stable name for item `i` (its path, or `shapes/NNNNNN`).
    pub fn name(&self, i: usize) -> String {
        self.source.name(i)
    }

    /// A hash of what the dataset holds: names, and for folders each file's size and
    /// modification time, so that a changed image changes the fingerprint.
    pub fn fingerprint(&self) -> u64 {
        mix(&self.source.fingerprint())
    }

    /// Files skipped at scan time.
    pub fn skipped(&self) -> usize {
        self.source.skipped()
    }

    /// Image `i` with its shorter side resized to `side`.
    pub fn load_resized(&self, i: usize, side: u32) -> Result<Arc<RgbImage>> {
        let load = || -> Result<Arc<RgbImage>> { Ok(Arc::new(self.source.load_resized(i, side)?)) };
        match &self.cache {
            Some((s, slots)) if *s == side => {
                if let Some(img) = slots[i].get() {
                    return Ok(img.clone());
                }
                let img = load()?;
                Ok(slots[i].get_or_init(|| img).clone())
            }
            _ => load(),
        }
    }

    /// Image `i` at its own size (folders), 32×32 (IDX sets) or 256×256 (built-in shapes).
    pub fn load_native(&self, i: usize) -> Result<RgbImage> {
        self.source.load_native(i)
    }

    /// Records a load failure; returns true the first time for that item (to report it once).
    pub fn note_failure(&self, i: usize) -> bool {
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if failed.contains(&i) {
            false
        } else {
            failed.push(i);
            true
        }
    }

    /// Number of items that failed to decode so far.
    pub fn failures(&self) -> usize {
        self.failed.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Deterministic split by a hash of each item's name: about `val_fraction` of the items go
    /// to validation (at least one when the fraction is positive and there are two or more).
    pub fn split(&self, val_fraction: f64) -> (Vec<usize>, Vec<usize>) {
        let n = self.len();
        let mut keyed: Vec<(u64, usize)> = (0..n)
            .map(|i| {
                (
                    mix(&self.name(i).bytes().map(u64::from).collect::<Vec<_>>()),
                    i,
                )
            })
            .collect();
        keyed.sort_unstable();
        let mut n_val = (n as f64 * val_fraction).round() as usize;
        if val_fraction > 0.0 && n >= 2 {
            n_val = n_val.max(1);
        }
        let mut val: Vec<usize> = keyed[..n_val].iter().map(|&(_, i)| i).collect();
        let mut train: Vec<usize> = keyed[n_val..].iter().map(|&(_, i)| i).collect();
        val.sort_unstable();
        train.sort_unstable();
        (train, val)
    }
}
