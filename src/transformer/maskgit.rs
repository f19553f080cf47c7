//! MaskGIT parallel decoding.
//!
//! For t = 0..T−1: predict every masked token (sampled from softmax(logits / temperature), or the
//! argmax with `top1`); score each by `log p(sampled) + choice_temperature·(1 − (t+1)/T)·Gumbel`
//! (known tokens never change); keep all but the `n_t` lowest-scoring, which are masked again, with
//! `n_t` from [`masked_counts`]. A partly masked start continues the schedule from its masked
//! fraction.

use candle_core::{Device, Result, Tensor};
use rand::Rng;

use crate::transformer::model::MaskTransformer;
use crate::transformer::schedule::{masked_counts, MaskSchedule};

#[derive(Debug, Clone)]
pub struct SamplerOptions {
    pub steps: usize,
    pub temperature: f64,
    pub choice_temperature: f64,
    pub schedule: MaskSchedule,
    /// Argmax instead of sampling; also drops the Gumbel noise of the confidence, so the result
    /// depends on the model alone.
    pub top1: bool,
    pub cfg_scale: f64,
}

/// A standard Gumbel draw.
fn gumbel(rng: &mut impl Rng) -> f64 {
    let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    -(-u.ln()).ln()
}

/// Sampled token and its log-probability for one row of logits.
fn pick(logits: &[f32], temperature: f64, top1: bool, rng: &mut impl Rng) -> (u32, f64) {
    let t = if top1 { 1.0 } else { temperature.max(1e-6) };
    let scaled: Vec<f64> = logits.iter().map(|&z| z as f64 / t).collect();
    let max = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + scaled.iter().map(|z| (z - max).exp()).sum::<f64>().ln();
    let choice = if top1 {
        scaled
            .iter()
            .enumerate()
            .fold(
                (0, f64::NEG_INFINITY),
                |b, (i, &z)| if z > b.1 { (i, z) } else { b },
            )
            .0
    } else {
        scaled
            .iter()
            .enumerate()
            .map(|(i, &z)| (i, z + gumbel(rng)))
            .fold(
                (0, f64::NEG_INFINITY),
                |b, (i, z)| if z > b.1 { (i, z) } else { b },
            )
            .0
    };
    (choice as u32, scaled[choice] - lse)
}

/// Completes every `[MASK]` (`mask_id`) of `rows` in place, conditioned on `cond` (one id per row).
pub fn complete(
    model: &MaskTransformer,
    rows: &mut [Vec<u32>],
    cond: &[u32],
    opts: &SamplerOptions,
    rng: &mut impl Rng,
    device: &Device,
) -> Result<()> {
    let layout = *model.layout();
    let (l, k, mask_id) = (layout.seq_len(), layout.codebook_size, layout.mask_id());
    let per_row: Vec<Vec<usize>> = rows
        .iter()
        .map(|r| {
            let masked = r.iter().filter(|&&t| t == mask_id).count();
            masked_counts(l, masked, opts.steps, opts.schedule)
        })
        .collect();
    // counts[t][b]: tokens of row b still masked after step t
    let counts: Vec<Vec<usize>> = (0..opts.steps)
        .map(|t| per_row.iter().map(|c| c[t]).collect())
        .collect();
    let cond_t = Tensor::new(cond, device)?;
    for (t, step_counts) in counts.iter().enumerate() {
        if rows.iter().all(|r| !r.contains(&mask_id)) {
            break;
        }
        let flat: Vec<u32> = rows.iter().flatten().copied().collect();
        let tokens = Tensor::from_vec(flat, (rows.len(), l), device)?;
        let logits: Vec<f32> = model
            .guided_logits(&tokens, &cond_t, opts.cfg_scale)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1()?;
        let noise = if opts.top1 {
            0.0
        } else {
            opts.choice_temperature * (1.0 - (t + 1) as f64 / opts.steps as f64)
        };
        for (b, row) in rows.iter_mut().enumerate() {
            let mut candidates: Vec<(f64, usize, u32)> = Vec::new();
            for (i, &current) in row.iter().enumerate() {
                if current != mask_id {
                    continue;
                }
                let base = (b * l + i) * k;
                let (tok, logp) = pick(&logits[base..base + k], opts.temperature, opts.top1, rng);
                let conf = if noise > 0.0 {
                    logp + noise * gumbel(rng)
                } else {
                    logp
                };
                candidates.push((conf, i, tok));
            }
            // The n lowest-confidence predictions stay masked; the rest are revealed.
            candidates.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let n = step_counts[b].min(candidates.len());
            for &(_, i, tok) in &candidates[n..] {
                row[i] = tok;
            }
        }
    }
    Ok(())
}
