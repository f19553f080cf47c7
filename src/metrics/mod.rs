//! Image and codebook metrics with the fixed definitions of the specification.

pub mod class_fidelity;
pub mod codebook;
pub mod fid;
pub mod inception;
pub mod lpips;
pub mod psnr;
pub mod reconstruction;
pub mod shape_classifier;
pub mod ssim;

pub use codebook::{CodebookReport, CodebookStats};
pub use psnr::psnr;
pub use ssim::ssim;

use std::path::PathBuf;

use image::RgbImage;
use serde::Serialize;

/// PSNR and SSIM of one image pair.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct PairScores {
    pub psnr: f64,
    pub ssim: f64,
}

/// Scores `b` against reference `a` (SSIM needs at least 11×11 pixels; NaN below that).
pub fn pair_scores(a: &RgbImage, b: &RgbImage) -> PairScores {
    let (w, h) = a.dimensions();
    PairScores {
        psnr: psnr(a, b),
        ssim: if w.min(h) >= ssim::MIN_SIDE {
            ssim(a, b)
        } else {
            f64::NAN
        },
    }
}

/// Means of PSNR and SSIM over pairs.
pub fn mean_scores(scores: &[PairScores]) -> PairScores {
    let n = scores.len().max(1) as f64;
    PairScores {
        psnr: scores.iter().map(|s| s.psnr).sum::<f64>() / n,
        ssim: scores.iter().map(|s| s.ssim).sum::<f64>() / n,
    }
}

/// Where pretrained metric networks live (`scripts/get-weights` writes there): `MOVQ_CACHE`,
/// else `~/.cache/movq`.
pub fn cache_dir() -> PathBuf {
    crate::compute::switches().cache_dir.clone()
}
