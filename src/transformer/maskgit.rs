//! MaskGIT parallel decoding.
//!
//! For t = 0..T−1: predict every masked token (sampled from softmax(logits / temperature), or the
//! argmax with `top1`); score each by `log p(sampled) + choice_temperature·(1 − (t+1)/T)·Gumbel`
//! (known tokens never change); keep all but the `n_t` lowest-scoring, which are masked again, with
//! `n_t` from [`masked_counts`]. A partly masked start continues the schedule from its masked
//! fraction.
//!
//! On the CPU the per-token choice runs on the host with the caller's seeded generator; on a GPU
//! it runs on the device (its own seeded generator), so logits never leave the GPU.

use candle_core::{DType, Device, Result, Tensor, D};
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

impl SamplerOptions {
    /// MaskGIT's defaults: temperature 1, choice temperature 4.5, cosine schedule, sampling
    /// (not top-1), no guidance.
    pub fn maskgit(steps: usize) -> Self {
        Self {
            steps,
            temperature: 1.0,
            choice_temperature: 4.5,
            schedule: MaskSchedule::Cosine,
            top1: false,
            cfg_scale: 0.0,
        }
    }
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

/// `counts[t][b]`: how many tokens of row `b` are still masked after step `t`.
pub fn step_counts(
    rows: &[Vec<u32>],
    mask_id: u32,
    l: usize,
    opts: &SamplerOptions,
) -> Vec<Vec<usize>> {
    let per_row: Vec<Vec<usize>> = rows
        .iter()
        .map(|r| {
            let masked = r.iter().filter(|&&t| t == mask_id).count();
            masked_counts(l, masked, opts.steps, opts.schedule)
        })
        .collect();
    (0..opts.steps)
        .map(|t| per_row.iter().map(|c| c[t]).collect())
        .collect()
}

/// The weight of the confidence's Gumbel noise at step `t`.
fn choice_noise(opts: &SamplerOptions, t: usize) -> f64 {
    if opts.top1 {
        0.0
    } else {
        opts.choice_temperature * (1.0 - (t + 1) as f64 / opts.steps as f64)
    }
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
    if device.is_cpu() {
        complete_on_host(model, rows, cond, opts, rng, device)
    } else {
        let seed = rng.random();
        device.set_seed(seed)?;
        complete_on_device(model, rows, cond, opts, device, seed)
    }
}

/// [`complete`] with the choice made on the host from `rng` (exactly reproducible).
fn complete_on_host(
    model: &MaskTransformer,
    rows: &mut [Vec<u32>],
    cond: &[u32],
    opts: &SamplerOptions,
    rng: &mut impl Rng,
    device: &Device,
) -> Result<()> {
    let layout = *model.layout();
    let (l, k, mask_id) = (layout.seq_len(), layout.codebook_size, layout.mask_id());
    let counts = step_counts(rows, mask_id, l, opts);
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
        let noise = choice_noise(opts, t);
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

/// Standard Gumbel noise of `shape` from the device's generator.
fn gumbel_tensor(shape: &[usize], device: &Device) -> Result<Tensor> {
    let u = Tensor::rand(0f32, 1f32, shape, device)?.clamp(1e-20f32, 1.0 - 1e-7)?;
    u.log()?.neg()?.log()?.neg()
}

/// [`complete`] with every step's choice made on `device`: the token grid stays on the device
/// and is read back once at the end. Random draws come from `seed` (the fused choice on CUDA)
/// or the device's generator (the tensor ops elsewhere).
pub fn complete_on_device(
    model: &MaskTransformer,
    rows: &mut [Vec<u32>],
    cond: &[u32],
    opts: &SamplerOptions,
    device: &Device,
    seed: u64,
) -> Result<()> {
    let layout = *model.layout();
    let (l, mask_id) = (layout.seq_len(), layout.mask_id());
    if !rows.iter().any(|r| r.contains(&mask_id)) {
        return Ok(());
    }
    let counts = step_counts(rows, mask_id, l, opts);
    let cond_t = Tensor::new(cond, device)?;
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    let tokens = Tensor::from_vec(flat, (rows.len(), l), device)?;
    let tokens = steps_on_device(model, tokens, &cond_t, opts, &counts, seed)?;
    for (row, values) in rows.iter_mut().zip(tokens.to_vec2::<u32>()?) {
        *row = values;
    }
    Ok(())
}

/// Runs the decoding steps `t = 0..counts.len()` on `tokens` `[B, L]` (on its device), step `t`
/// leaving exactly `counts[t][b]` tokens of row `b` masked; returns the new grid. The model runs
/// as [`MaskTransformer::for_inference`]; each step's choice is one kernel on CUDA (its noise
/// from `seed`), tensor ops elsewhere.
pub fn steps_on_device(
    model: &MaskTransformer,
    mut tokens: Tensor,
    cond: &Tensor,
    opts: &SamplerOptions,
    counts: &[Vec<usize>],
    seed: u64,
) -> Result<Tensor> {
    let model = model.for_inference()?;
    let device = tokens.device().clone();
    let (b, l) = tokens.dims2()?;
    let mask_id = model.layout().mask_id();
    let mask_tok = Tensor::full(mask_id, (b, l), &device)?;
    let ranks_src = Tensor::arange(0u32, l as u32, &device)?
        .to_dtype(DType::F32)?
        .broadcast_as((b, l))?
        .contiguous()?;
    let temp = if opts.top1 {
        1.0
    } else {
        opts.temperature.max(1e-6)
    };
    for (t, step_counts) in counts.iter().enumerate() {
        let logits = model.sampling_logits(&tokens, cond, opts.cfg_scale)?; // [B, L, K]
        let choice = crate::gpu::TokenChoice {
            mask: mask_id,
            inv_temp: (1.0 / temp) as f32,
            top1: opts.top1,
            noise: choice_noise(opts, t) as f32,
            seed: step_seed(seed, t),
        };
        let (predicted, conf) = match crate::gpu::fused_choose_tokens(&logits, &tokens, &choice)? {
            Some(chosen) => chosen,
            None => choose_with_tensor_ops(&logits, &tokens, &mask_tok, &choice)?,
        };
        // Known tokens (confidence +∞) rank after every newly predicted one.
        let order = conf.arg_sort_last_dim(true)?; // [B, L], lowest confidence first
        let rank =
            Tensor::zeros((b, l), DType::F32, &device)?.scatter_add(&order, &ranks_src, 1)?;
        let keep: Vec<f32> = step_counts.iter().map(|&n| n as f32).collect();
        let remask = rank.broadcast_lt(&Tensor::from_vec(keep, (b, 1), &device)?)?;
        tokens = remask.where_cond(&mask_tok, &predicted)?;
        if step_counts.iter().all(|&n| n == 0) {
            break;
        }
    }
    Ok(tokens)
}

/// The random stream of step `t` of a sampling run seeded with `seed`.
fn step_seed(seed: u64, t: usize) -> u64 {
    seed ^ (t as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)
}

/// [`crate::gpu::fused_choose_tokens`] composed of tensor ops (random draws from the device's
/// generator): (tokens u32 `[B, L]`, confidence f32 `[B, L]`, +∞ for known tokens).
fn choose_with_tensor_ops(
    logits: &Tensor,
    tokens: &Tensor,
    mask_tok: &Tensor,
    c: &crate::gpu::TokenChoice,
) -> Result<(Tensor, Tensor)> {
    let device = tokens.device();
    let dims = tokens.dims();
    let unknown = tokens.eq(mask_tok)?;
    let scaled = (logits.to_dtype(DType::F32)? * c.inv_temp as f64)?;
    let sampled = if c.top1 {
        scaled.argmax(D::Minus1)?
    } else {
        (&scaled + gumbel_tensor(scaled.dims(), device)?)?.argmax(D::Minus1)?
    }; // [B, L] u32
    let logp = candle_nn::ops::log_softmax(&scaled, D::Minus1)?
        .gather(&sampled.unsqueeze(2)?, 2)?
        .squeeze(2)?; // [B, L]
    let conf = if c.noise != 0.0 {
        (logp + (gumbel_tensor(dims, device)? * c.noise as f64)?)?
    } else {
        logp
    };
    let inf = Tensor::full(f32::INFINITY, dims, device)?;
    Ok((
        unknown.where_cond(&sampled, tokens)?,
        unknown.where_cond(&conf, &inf)?,
    ))
}
