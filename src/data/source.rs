//! Where a data set's images come from. A new kind of source is one new type implementing
//! [`ImageSource`] and one line in [`crate::data::Dataset::open`]'s spec grammar.

use anyhow::Result;
use image::RgbImage;

/// A numbered, optionally labelled collection of images.
pub trait ImageSource: Send + Sync {
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Class names (empty for unlabelled sources).
    fn classes(&self) -> Vec<String>;

    /// The class of item `i`, if labelled.
    fn label(&self, i: usize) -> Option<u32>;

    /// A stable name for item `i` (a path, or `shapes/NNNNNN`).
    fn name(&self, i: usize) -> String;

    /// Words that change when what the source holds changes (for cache fingerprints).
    fn fingerprint(&self) -> Vec<u64>;

    /// Item `i` with its shorter side resized to `side`.
    fn load_resized(&self, i: usize, side: u32) -> Result<RgbImage>;

    /// Item `i` at the source's own size.
    fn load_native(&self, i: usize) -> Result<RgbImage>;

    /// Whether every image is greyscale.
    fn greyscale(&self) -> bool {
        false
    }

    /// Files skipped when the source was opened.
    fn skipped(&self) -> usize {
        0
    }

    /// Whether decoded images are worth caching in memory (files are; rendered ones are not).
    fn cacheable(&self) -> bool {
        false
    }

    /// Whether the analytic `builtin:shapes` classifier can label these images.
    fn analytic_classes(&self) -> bool {
        false
    }
}
