//! Which tokens are hidden: per-channel masks for training and for masked reconstruction.

use rand::seq::index::sample;
use rand::Rng;

use crate::transformer::schedule::MaskSchedule;
use crate::transformer::tokens::TokenLayout;

/// `⌈x⌉`, robust to `x` being an integer up to rounding (`0.5·256` is 128, not 129).
fn ceil(x: f64) -> usize {
    (x - 1e-9).ceil().max(0.0) as usize
}

/// Positions hidden per channel at mask ratio `ratio ∈ [0, 1]`: `⌈ratio·h·w⌉`.
pub fn hidden_per_channel(layout: &TokenLayout, ratio: f64) -> usize {
    ceil(ratio.clamp(0.0, 1.0) * layout.positions() as f64)
}

/// Training: for `r ~ U(0, 1)`, `γ(r) = cos(πr/2)` and `⌈γ·h·w⌉` positions per channel, at least 1.
pub fn training_count(layout: &TokenLayout, rng: &mut impl Rng) -> usize {
    let r: f64 = rng.random();
    hidden_per_channel(layout, MaskSchedule::Cosine.gamma(r)).max(1)
}

/// A mask over the `L` tokens that hides `count` randomly chosen spatial positions in each
/// channel independently (`true` = hidden).
pub fn per_channel_mask(layout: &TokenLayout, count: usize, rng: &mut impl Rng) -> Vec<bool> {
    let mut mask = vec![false; layout.seq_len()];
    let count = count.min(layout.positions());
    for ch in 0..layout.channels {
        for pos in sample(rng, layout.positions(), count) {
            mask[layout.index(pos, ch)] = true;
        }
    }
    mask
}
