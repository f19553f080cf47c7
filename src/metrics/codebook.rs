//! Codebook usage (distinct codes used ÷ K) and perplexity (exp of the entropy of the code
//! histogram), per quantizer channel and overall.

use anyhow::Result;
use candle_core::Tensor;
use serde::Serialize;

/// Code histograms accumulated over batches, one per channel.
#[derive(Debug, Clone)]
pub struct CodebookStats {
    counts: Vec<Vec<u64>>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CodebookReport {
    pub usage: f64,
    pub perplexity: f64,
    pub usage_per_channel: Vec<f64>,
    pub perplexity_per_channel: Vec<f64>,
}

fn usage_and_perplexity(hist: &[u64]) -> (f64, f64) {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return (0.0, 0.0);
    }
    let used = hist.iter().filter(|&&c| c > 0).count();
    let entropy: f64 = hist
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total as f64;
            -p * p.ln()
        })
        .sum();
    (used as f64 / hist.len() as f64, entropy.exp())
}

impl CodebookStats {
    pub fn new(channels: usize, codebook_size: usize) -> Self {
        Self {
            counts: vec![vec![0; codebook_size]; channels],
        }
    }

    /// Adds indices `[B, c, h, w]`.
    pub fn add(&mut self, indices: &Tensor) -> Result<()> {
        let (b, c, h, w) = indices.dims4()?;
        anyhow::ensure!(
            c == self.counts.len(),
            "expected {} channels of indices, got {c}",
            self.counts.len()
        );
        let flat: Vec<u32> = indices
            .flatten_all()?
            .to_dtype(candle_core::DType::U32)?
            .to_vec1()?;
        let plane = h * w;
        for bi in 0..b {
            for (ci, hist) in self.counts.iter_mut().enumerate() {
                let base = (bi * c + ci) * plane;
                for &code in &flat[base..base + plane] {
                    hist[code as usize] += 1;
                }
            }
        }
        Ok(())
    }

    /// Adds a histogram directly (channel `c`).
    pub fn add_counts(&mut self, channel: usize, hist: &[u64]) {
        for (a, b) in self.counts[channel].iter_mut().zip(hist) {
            *a += b;
        }
    }

    pub fn report(&self) -> CodebookReport {
        let per: Vec<(f64, f64)> = self
            .counts
            .iter()
            .map(|h| usage_and_perplexity(h))
            .collect();
        let k = self.counts.first().map_or(0, |h| h.len());
        let overall: Vec<u64> = (0..k)
            .map(|i| self.counts.iter().map(|h| h[i]).sum())
            .collect();
        let (usage, perplexity) = usage_and_perplexity(&overall);
        CodebookReport {
            usage,
            perplexity,
            usage_per_channel: per.iter().map(|p| p.0).collect(),
            perplexity_per_channel: per.iter().map(|p| p.1).collect(),
        }
    }
}
