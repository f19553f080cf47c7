//! Reconstruction metrics of a stage-1 model over a set of images, gathered batch by batch:
//! PSNR and SSIM per image, codebook usage and perplexity, and where asked LPIPS, Inception
//! features for rFID, and the analytic class accuracy on `builtin:shapes`. Used by training's
//! validation, `reconstruct` and `eval`.

use anyhow::Result;
use candle_core::{Device, Tensor};
use image::RgbImage;
use serde::Serialize;

use crate::data::image::{images_to_tensor, tensor_to_images};
use crate::metrics::codebook::{CodebookReport, CodebookStats};
use crate::metrics::fid::{frechet_distance, FeatureStats};
use crate::metrics::inception::FidInception;
use crate::metrics::lpips::Lpips;
use crate::metrics::shape_classifier::classify;
use crate::metrics::{mean_scores, pair_scores, PairScores};
use crate::vq::MoVq;

/// The optional metrics, each with what it needs.
#[derive(Default)]
pub struct Extras<'a> {
    pub lpips: Option<&'a Lpips>,
    /// rFID: the network and the reference statistics.
    pub fid: Option<(&'a FidInception, &'a FeatureStats)>,
    /// Class accuracy of the reconstructions by the `builtin:shapes` classifier.
    pub shapes: bool,
}

/// The metrics so far.
pub struct Reconstruction<'a> {
    extras: Extras<'a>,
    codebook: CodebookStats,
    scores: Vec<PairScores>,
    lpips_sum: f64,
    features: Vec<Tensor>,
    recognised: usize,
}

/// The means.
#[derive(Debug, Clone, Serialize)]
pub struct ReconstructionReport {
    pub images: usize,
    pub psnr: f64,
    pub ssim: f64,
    pub lpips: Option<f64>,
    pub rfid: Option<f64>,
    pub class_accuracy: Option<f64>,
    pub codebook: CodebookReport,
}

impl<'a> Reconstruction<'a> {
    pub fn new(model: &MoVq, extras: Extras<'a>) -> Self {
        let q = &model.config().quantizer;
        Self {
            extras,
            codebook: CodebookStats::new(q.channels, q.codebook_size),
            scores: Vec::new(),
            lpips_sum: 0.0,
            features: Vec::new(),
            recognised: 0,
        }
    }

    /// Reconstructs `originals` (their labels in `labels` when scoring class accuracy) and adds
    /// their metrics; returns the reconstructions and their PSNR/SSIM.
    pub fn add(
        &mut self,
        model: &MoVq,
        originals: &[RgbImage],
        labels: &[Option<u32>],
        device: &Device,
    ) -> Result<Vec<(RgbImage, PairScores)>> {
        let x = images_to_tensor(originals, device)?;
        let (xrec, q) = model.reconstruct(&x)?;
        self.codebook.add(&q.indices)?;
        let recs = tensor_to_images(&xrec)?;
        if let Some((net, _)) = self.extras.fid {
            self.features
                .push(net.features(&recs)?.to_device(&Device::Cpu)?);
        }
        if let Some(net) = self.extras.lpips {
            // on the uint8 images, like PSNR and SSIM
            let d = net.distance(&x, &images_to_tensor(&recs, device)?)?;
            self.lpips_sum += d.sum_all()?.to_scalar::<f32>()? as f64;
        }
        if self.extras.shapes {
            for (rec, label) in recs.iter().zip(labels) {
                self.recognised += (label.is_some() && classify(rec).class == *label) as usize;
            }
        }
        let out: Vec<(RgbImage, PairScores)> = originals
            .iter()
            .zip(recs)
            .map(|(orig, rec)| {
                let s = pair_scores(orig, &rec);
                (rec, s)
            })
            .collect();
        self.scores.extend(out.iter().map(|(_, s)| *s));
        Ok(out)
    }

    /// Images scored so far.
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    pub fn report(&self) -> Result<ReconstructionReport> {
        let n = self.scores.len().max(1) as f64;
        let mean = mean_scores(&self.scores);
        let rfid = match self.extras.fid {
            Some((_, reference)) if !self.features.is_empty() => {
                let stats = FeatureStats::from_features(&Tensor::cat(&self.features, 0)?)?;
                Some(frechet_distance(&stats, reference)?)
            }
            _ => None,
        };
        Ok(ReconstructionReport {
            images: self.scores.len(),
            psnr: mean.psnr,
            ssim: mean.ssim,
            lpips: self.extras.lpips.map(|_| self.lpips_sum / n),
            rfid,
            class_accuracy: self.extras.shapes.then(|| self.recognised as f64 / n),
            codebook: self.codebook.report(),
        })
    }
}
