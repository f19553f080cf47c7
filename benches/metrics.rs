//! CPU cost of the metrics' linear algebra: one Fréchet distance between two 2,048-d Inception
//! feature distributions (what `movq fid`, `eval --fid-ref` and every per-class FID of
//! `eval-samples` compute), from statistics of random features, for two large sets and for two
//! sets smaller than the feature dimension. One JSON line per figure.
//!
//! `cargo bench --bench metrics` (set `MOVQ_BENCH_ITERS` to change the number of timed runs).

mod common;

use anyhow::Result;
use candle_core::{Device, Tensor};
use common::{iterations, median_time};
use movq::metrics::fid::{frechet_distance, FeatureStats};
use movq::rng::{rng_for, Stream};
use rand::Rng;
use serde_json::json;

/// Statistics of `n` random `d`-dimensional features (a full-rank covariance when `n > d`).
fn stats(n: usize, d: usize, seed: u64) -> Result<FeatureStats> {
    let mut rng = rng_for(seed, Stream::Data, &[]);
    let mut uniform =
        |len: usize| -> Vec<f32> { (0..len).map(|_| rng.random_range(-1.0..1.0)).collect() };
    let f = Tensor::from_vec(uniform(n * d), (n, d), &Device::Cpu)?;
    // correlated features, like a network's: mix the columns
    let mix = (Tensor::from_vec(uniform(d * d), (d, d), &Device::Cpu)? / (d as f64).sqrt())?;
    FeatureStats::from_features(&f.matmul(&mix)?.relu()?)
}

fn main() -> Result<()> {
    movq::compute::configure_cpu_threads(1);
    let iters = iterations().min(3);
    let d = 2048;
    // two large sets (full-rank covariances), then one class of `eval-samples` (1,000 images a
    // side, fewer than the dimensions)
    for (na, nb) in [(3000, 3000), (1000, 1000)] {
        let (a, b) = (stats(na, d, 1)?, stats(nb, d, 2)?);
        let secs = median_time(iters, |_| frechet_distance(&a, &b).map(|_| ()))?;
        println!(
            "{}",
            json!({"bench": "frechet_distance", "dims": d, "images": [na, nb], "seconds": secs})
        );
    }
    Ok(())
}
