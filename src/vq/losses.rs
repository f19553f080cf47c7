//! Stage-1 loss terms.

use candle_core::{Result, Tensor};

use crate::config::ReconstructionLoss;

/// Pixel reconstruction loss (mean over all elements).
pub fn reconstruction(x: &Tensor, xrec: &Tensor, kind: ReconstructionLoss) -> Result<Tensor> {
    let diff = (x - xrec)?;
    match kind {
        ReconstructionLoss::L1 => diff.abs()?.mean_all(),
        ReconstructionLoss::L2 => diff.sqr()?.mean_all(),
    }
}

/// Hinge loss of the critic: `½·(mean relu(1 − D(real)) + mean relu(1 + D(fake)))`.
pub fn hinge_d_loss(logits_real: &Tensor, logits_fake: &Tensor) -> Result<Tensor> {
    let real = (1.0 - logits_real)?.relu()?.mean_all()?;
    let fake = (logits_fake + 1.0)?.relu()?.mean_all()?;
    (real + fake)? * 0.5
}

/// The generator's adversarial loss: `−mean D(fake)`.
pub fn generator_loss(logits_fake: &Tensor) -> Result<Tensor> {
    logits_fake.mean_all()?.neg()
}

/// VQGAN's adaptive weight: `‖∇_last L_rec‖ / (‖∇_last L_gan‖ + 1e-4)`, clamped to [0, 1e4].
pub fn adaptive_weight(rec_grad_norm: f64, gan_grad_norm: f64) -> f64 {
    (rec_grad_norm / (gan_grad_norm + 1e-4)).clamp(0.0, 1e4)
}

/// A perceptual distance usable as a training loss (LPIPS fills this slot).
/// The LPIPS-VGG weights the perceptual term of `cfg` needs (`None` without the term); an
/// error, before anything is written, says how to get them when they are missing.
pub fn perceptual_weights(
    cfg: &crate::config::RunConfig,
) -> anyhow::Result<Option<std::path::PathBuf>> {
    use crate::metrics::lpips::{locate, missing_note, Backbone};
    use anyhow::Context;
    if cfg.loss.perceptual_weight <= 0.0 {
        return Ok(None);
    }
    let weight = cfg.loss.perceptual_weight;
    locate(None, Backbone::Vgg)?
        .with_context(|| {
            format!(
                "loss.perceptual_weight is {weight} but {}; or set loss.perceptual_weight to 0",
                missing_note(Backbone::Vgg)
            )
        })
        .map(Some)
}

/// The perceptual network of [`perceptual_weights`] on `device` (`None` without the term).
pub fn load_perceptual(
    weights: Option<&std::path::Path>,
    device: &candle_core::Device,
) -> anyhow::Result<Option<Box<dyn PerceptualLoss>>> {
    Ok(match weights {
        Some(path) => Some(Box::new(crate::metrics::lpips::Lpips::load(path, device)?)),
        None => None,
    })
}

pub trait PerceptualLoss {
    /// Mean perceptual distance between two image batches in [-1, 1], differentiable in `xrec`.
    fn loss(&self, x: &Tensor, xrec: &Tensor) -> Result<Tensor>;
}

impl PerceptualLoss for crate::metrics::lpips::Lpips {
    fn loss(&self, x: &Tensor, xrec: &Tensor) -> Result<Tensor> {
        self.distance(x, xrec)?.mean_all()
    }
}
