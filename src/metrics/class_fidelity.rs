//! Class fidelity of generated images: do samples show the class they were asked for?
//!
//! - On `builtin:shapes`, the analytic classifier of [`crate::metrics::shape_classifier`]
//!   names each sample's class: accuracy per class and overall, and how many samples showed
//!   no recognisable shape.
//! - On any other labelled dataset, per-class FID (the "intra-FID" of class-conditional GAN
//!   papers): the samples of class c against that class's real images, beside the FID of all
//!   samples against all real images, with the number of images each used.

use anyhow::{bail, Result};
use candle_core::Tensor;
use image::RgbImage;
use serde::Serialize;

use crate::metrics::fid::{frechet_distance, FeatureStats};
use crate::metrics::shape_classifier::classify;

/// One class's row of a class-accuracy report.
#[derive(Debug, Clone, Serialize)]
pub struct ClassAccuracy {
    pub class: String,
    pub images: usize,
    /// Samples classified as this class.
    pub correct: usize,
    pub accuracy: f64,
    /// Samples with no recognisable shape.
    pub unrecognised: usize,
}

/// Accuracy of the analytic shapes classifier on samples labelled with the class asked for.
#[derive(Debug, Clone, Serialize)]
pub struct AccuracyReport {
    pub images: usize,
    pub accuracy: f64,
    /// Mean of the per-class accuracies (equal weight per class).
    pub mean_class_accuracy: f64,
    pub unrecognised: usize,
    pub per_class: Vec<ClassAccuracy>,
}

/// Scores `(image, asked class)` pairs with the shapes classifier; `names` are the class names.
pub fn shapes_accuracy(samples: &[(RgbImage, u32)], names: &[String]) -> AccuracyReport {
    let mut rows: Vec<ClassAccuracy> = names
        .iter()
        .map(|n| ClassAccuracy {
            class: n.clone(),
            images: 0,
            correct: 0,
            accuracy: 0.0,
            unrecognised: 0,
        })
        .collect();
    for (img, want) in samples {
        let row = &mut rows[*want as usize];
        row.images += 1;
        match classify(img).class {
            Some(c) if c == *want => row.correct += 1,
            None => row.unrecognised += 1,
            Some(_) => {}
        }
    }
    rows.retain(|r| r.images > 0);
    for r in &mut rows {
        r.accuracy = r.correct as f64 / r.images as f64;
    }
    let images: usize = rows.iter().map(|r| r.images).sum();
    AccuracyReport {
        images,
        accuracy: rows.iter().map(|r| r.correct).sum::<usize>() as f64 / images.max(1) as f64,
        mean_class_accuracy: rows.iter().map(|r| r.accuracy).sum::<f64>()
            / rows.len().max(1) as f64,
        unrecognised: rows.iter().map(|r| r.unrecognised).sum(),
        per_class: rows,
    }
}

/// One class's row of a per-class FID report.
#[derive(Debug, Clone, Serialize)]
pub struct ClassFid {
    pub class: String,
    /// `None` where the class has fewer than two samples or two real images.
    pub fid: Option<f64>,
    pub images: usize,
    pub real_images: usize,
}

/// FID of all samples against all real images, and per class.
#[derive(Debug, Clone, Serialize)]
pub struct FidReport {
    pub fid: f64,
    pub images: usize,
    pub real_images: usize,
    /// Mean of the per-class FIDs that could be computed.
    pub mean_class_fid: f64,
    pub per_class: Vec<ClassFid>,
}

/// The rows of `features` `[N, D]` whose label is `class`.
fn rows_of(features: &Tensor, labels: &[u32], class: u32) -> Result<Tensor> {
    let idx: Vec<u32> = (0..labels.len() as u32)
        .filter(|&i| labels[i as usize] == class)
        .collect();
    Ok(features.index_select(&Tensor::new(idx.as_slice(), features.device())?, 0)?)
}

/// Per-class and overall FID from Inception features of samples and of real images, each with
/// its labels. A class needs at least two samples and two real images for its FID.
pub fn per_class_fid(
    samples: &Tensor,
    sample_labels: &[u32],
    real: &Tensor,
    real_labels: &[u32],
    names: &[String],
) -> Result<FidReport> {
    let mut per_class = Vec::new();
    for (c, name) in names.iter().enumerate() {
        let c = c as u32;
        let (n, m) = (
            sample_labels.iter().filter(|&&l| l == c).count(),
            real_labels.iter().filter(|&&l| l == c).count(),
        );
        if n == 0 {
            continue;
        }
        let fid = if n >= 2 && m >= 2 {
            Some(frechet_distance(
                &FeatureStats::from_features(&rows_of(samples, sample_labels, c)?)?,
                &FeatureStats::from_features(&rows_of(real, real_labels, c)?)?,
            )?)
        } else {
            None
        };
        per_class.push(ClassFid {
            class: name.clone(),
            fid,
            images: n,
            real_images: m,
        });
    }
    if sample_labels.len() < 2 || real_labels.len() < 2 {
        bail!(
            "FID needs at least 2 samples and 2 real images, got {} and {}",
            sample_labels.len(),
            real_labels.len()
        );
    }
    let computed: Vec<f64> = per_class.iter().filter_map(|r| r.fid).collect();
    Ok(FidReport {
        fid: frechet_distance(
            &FeatureStats::from_features(samples)?,
            &FeatureStats::from_features(real)?,
        )?,
        images: sample_labels.len(),
        real_images: real_labels.len(),
        mean_class_fid: computed.iter().sum::<f64>() / computed.len().max(1) as f64,
        per_class,
    })
}
