//! Fréchet Inception Distance between two feature sets:
//! `‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr √(Σ₁Σ₂)`, in f64. Covariances use `N − 1` (as `numpy.cov`
//! in the reference tools). The trace of the matrix square root is `Σᵢ √λᵢ` over the eigenvalues
//! of `Σ₁Σ₂`, read from a symmetric matrix with the same non-zero eigenvalues, the smallest one
//! available: `Y Σ₁ Yᵀ` when `Σ₂ = YᵀY` comes from N ≤ D features (a class of
//! `eval-samples`), `Lᵀ Σ₂ L` when `Σ₁ = LLᵀ` has a Cholesky factor (large sets), and
//! `√Σ₁ Σ₂ √Σ₁` from an eigendecomposition otherwise. Tiny negative eigenvalues from rounding
//! count as 0.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use indicatif::ProgressBar;
use nalgebra::{DMatrix, DVector, SymmetricEigen};

use crate::data::Dataset;
use crate::metrics::cache_dir;
use crate::metrics::inception::FidInception;

/// Mean and covariance of a feature set.
#[derive(Debug, Clone)]
pub struct FeatureStats {
    pub count: usize,
    pub mean: DVector<f64>,
    pub cov: DMatrix<f64>,
    /// The centred features over `√(N − 1)` (`cov = factorᵀ · factor`), kept when N ≤ D: the
    /// low-rank form the distance uses for small sets.
    factor: Option<DMatrix<f64>>,
}

impl FeatureStats {
    /// Statistics of `features` `[N, D]` (N ≥ 2).
    pub fn from_features(features: &Tensor) -> Result<Self> {
        let (n, d) = features.dims2()?;
        if n < 2 {
            bail!("FID needs at least 2 images per set, got {n}");
        }
        let rows: Vec<f64> = features
            .to_dtype(DType::F64)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1()?;
        let x = DMatrix::from_row_slice(n, d, &rows);
        let mean = DVector::from_iterator(d, x.column_iter().map(|c| c.sum() / n as f64));
        let mut centred = x;
        for mut row in centred.row_iter_mut() {
            row -= mean.transpose();
        }
        centred /= (n as f64 - 1.0).sqrt();
        let cov = centred.transpose() * &centred;
        Ok(Self {
            count: n,
            mean,
            cov,
            factor: (n <= d).then_some(centred),
        })
    }

    /// Writes `mu` `[D]` and `sigma` `[D, D]` (f64) and `count` to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let d = self.mean.len();
        let cpu = Device::Cpu;
        let tensors = [
            (
                "mu".to_string(),
                Tensor::from_slice(self.mean.as_slice(), d, &cpu)?,
            ),
            (
                "sigma".to_string(),
                Tensor::from_slice(self.cov.transpose().as_slice(), (d, d), &cpu)?,
            ),
            (
                "count".to_string(),
                Tensor::new(&[self.count as f64], &cpu)?,
            ),
        ];
        candle_core::safetensors::save(&tensors.into_iter().collect(), path)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// The same statistics without the low-rank factor, as [`Self::load`] gives them back.
    pub fn without_factor(&self) -> Self {
        Self {
            factor: None,
            ..self.clone()
        }
    }

    pub fn load(path: &Path) -> Result<Self> {
        let t = candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("cannot read FID statistics {}", path.display()))?;
        let get = |k: &str| {
            t.get(k)
                .with_context(|| format!("{}: no tensor {k} (not FID statistics)", path.display()))
        };
        let mean: Vec<f64> = get("mu")?.to_dtype(DType::F64)?.to_vec1()?;
        let sigma = get("sigma")?.to_dtype(DType::F64)?;
        let d = mean.len();
        if sigma.dims() != [d, d] {
            bail!(
                "{}: sigma is {:?}, expected [{d}, {d}]",
                path.display(),
                sigma.dims()
            );
        }
        let rows: Vec<f64> = sigma.flatten_all()?.to_vec1()?;
        let count = get("count")?.to_dtype(DType::F64)?.to_vec1::<f64>()?[0] as usize;
        Ok(Self {
            count,
            mean: DVector::from_vec(mean),
            cov: DMatrix::from_row_slice(d, d, &rows),
            factor: None,
        })
    }
}

/// `√M` of a symmetric positive semi-definite matrix (negative rounding eigenvalues as 0).
fn sqrt_psd(m: &DMatrix<f64>) -> DMatrix<f64> {
    let eig = SymmetricEigen::new(m.clone());
    let roots = eig.eigenvalues.map(|l| l.max(0.0).sqrt());
    &eig.eigenvectors * DMatrix::from_diagonal(&roots) * eig.eigenvectors.transpose()
}

/// `tr √(Σ_a Σ_b)`: the sum of the square roots of the eigenvalues of a symmetric matrix
/// similar to `Σ_a Σ_b` (up to zero eigenvalues), the smallest of those the two sets allow.
fn trace_sqrt_product(a: &FeatureStats, b: &FeatureStats) -> f64 {
    let similar = match (&a.factor, &b.factor) {
        // XᵀX YᵀY shares its non-zero eigenvalues with M Mᵀ and Mᵀ M, M = X Yᵀ (N_a × N_b)
        (Some(x), Some(y)) => {
            let m = x * y.transpose();
            if m.nrows() <= m.ncols() {
                &m * m.transpose()
            } else {
                m.transpose() * &m
            }
        }
        // Σ YᵀY shares its non-zero eigenvalues with Y Σ Yᵀ
        (None, Some(y)) => y * &a.cov * y.transpose(),
        (Some(x), None) => x * &b.cov * x.transpose(),
        // L Lᵀ Σ_b is similar to Lᵀ Σ_b L; a singular Σ_a has no Cholesky factor
        (None, None) => match a.cov.clone().cholesky() {
            Some(c) => {
                let l = c.l();
                l.transpose() * &b.cov * &l
            }
            None => {
                let root = sqrt_psd(&a.cov);
                &root * &b.cov * &root
            }
        },
    };
    // symmetrise against rounding before the symmetric eigensolver
    let similar = (&similar + similar.transpose()) * 0.5;
    similar
        .symmetric_eigenvalues()
        .iter()
        .map(|l| l.max(0.0).sqrt())
        .sum()
}

/// The Fréchet distance between two feature distributions.
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> Result<f64> {
    if a.mean.len() != b.mean.len() {
        bail!(
            "FID of {}-d against {}-d features",
            a.mean.len(),
            b.mean.len()
        );
    }
    let diff = (&a.mean - &b.mean).norm_squared();
    Ok(diff + a.cov.trace() + b.cov.trace() - 2.0 * trace_sqrt_product(a, b))
}

/// The Inception network: `explicit`, or `fid-inception.safetensors` in the movq cache.
pub fn load_inception(explicit: Option<&Path>, device: &Device) -> Result<FidInception> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => cache_dir().join("fid-inception.safetensors"),
    };
    if !path.is_file() {
        bail!(
            "FID needs the Inception weights, not found at {} (run `bash scripts/get-weights`, or pass --inception-weights FILE)",
            path.display()
        );
    }
    FidInception::load(&path, device)
}

/// Inception features `[N, 2048]` of uint8 images, computed `batch` at a time.
pub fn features_of_images(
    net: &FidInception,
    images: impl Iterator<Item = Result<image::RgbImage>>,
    total: usize,
    batch: usize,
) -> Result<Tensor> {
    let bar = ProgressBar::new(total as u64);
    let mut features = Vec::new();
    let mut pending = Vec::with_capacity(batch);
    let mut flush = |pending: &mut Vec<image::RgbImage>| -> Result<()> {
        if !pending.is_empty() {
            features.push(net.features(pending)?.to_device(&Device::Cpu)?);
            bar.inc(pending.len() as u64);
            pending.clear();
        }
        Ok(())
    };
    for img in images {
        pending.push(img?);
        if pending.len() == batch {
            flush(&mut pending)?;
        }
    }
    flush(&mut pending)?;
    bar.finish_and_clear();
    if features.is_empty() {
        bail!("no images to compute FID statistics of");
    }
    Ok(Tensor::cat(&features, 0)?)
}

/// Inception statistics of uint8 images, computed `batch` at a time.
pub fn stats_of_images(
    net: &FidInception,
    images: impl Iterator<Item = Result<image::RgbImage>>,
    total: usize,
    batch: usize,
) -> Result<FeatureStats> {
    FeatureStats::from_features(&features_of_images(net, images, total, batch)?)
}

/// Statistics of `source`: a saved `.safetensors` statistics file, or a dataset spec.
pub fn stats_of_source(
    source: &str,
    net: &FidInception,
    limit: Option<usize>,
    batch: usize,
) -> Result<FeatureStats> {
    let path = PathBuf::from(source);
    if path.is_file() && path.extension().is_some_and(|e| e == "safetensors") {
        return FeatureStats::load(&path);
    }
    let ds = Dataset::open(source, 0)?;
    let n = limit.map_or(ds.len(), |l| l.min(ds.len()));
    stats_of_images(net, (0..n).map(|i| ds.load_native(i)), n, batch)
        .with_context(|| format!("FID statistics of {source}"))
}
