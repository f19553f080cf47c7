//! MaskGIT parallel decoding.
//!
//! For t = 0..T−1: predict every masked token (sampled from softmax(logits / temperature), or the
//! argmax with `top1`; `min_p` drops the codes less than that fraction as likely as the best);
//! score each by `log p(sampled) + choice_temperature·(1 − (t+1)/T)·Gumbel` (known tokens never
//! change); keep all but the `n_t` lowest-scoring, which are masked again, with `n_t` from
//! [`masked_counts`]. A partly masked start continues the schedule from its masked
//! fraction. Classifier-free guidance mixes the logits at each step's scale
//! ([`GuidanceSchedule`]). With [`TokenOrder::Halton`] the score is instead each token's fixed turn
//! ([`crate::transformer::order`]). Rounds of [`crate::transformer::refine`] may follow the last
//! step.
//!
//! The per-token choice runs where the logits are ([`choose_tokens`]: a kernel on the CPU or
//! the GPU, its noise from a seed), so logits never leave the device.

use candle_core::{DType, Device, Result, Tensor};
use rand::Rng;

use crate::ops::token_choice::{choose_tokens, TokenChoice};
use crate::transformer::guidance::GuidanceSchedule;
use crate::transformer::model::MaskTransformer;
use crate::transformer::order::{priorities, TokenOrder};
use crate::transformer::refine::{refine, Refinement};
use crate::transformer::schedule::{masked_counts, MaskSchedule};

#[derive(Debug, Clone)]
pub struct SamplerOptions {
    pub steps: usize,
    pub temperature: f64,
    pub choice_temperature: f64,
    /// Min-p truncation of each draw: only codes at least this fraction as likely as the most
    /// likely one (0: all).
    pub min_p: f64,
    pub schedule: MaskSchedule,
    /// Argmax instead of sampling; also drops the Gumbel noise of the confidence, so the result
    /// depends on the model alone.
    pub top1: bool,
    pub cfg_scale: f64,
    /// How the guidance scale runs over the steps.
    pub cfg_schedule: GuidanceSchedule,
    /// Which predictions each step keeps: the most confident, or a fixed spread-out order.
    pub order: TokenOrder,
    /// Rounds that re-predict the least likely tokens after the last step.
    pub refine: Refinement,
}

impl SamplerOptions {
    /// MaskGIT's defaults: temperature 1, choice temperature 4.5, no truncation, cosine
    /// schedule, sampling (not top-1), no guidance.
    pub fn maskgit(steps: usize) -> Self {
        Self {
            steps,
            temperature: 1.0,
            choice_temperature: 4.5,
            min_p: 0.0,
            schedule: MaskSchedule::Cosine,
            top1: false,
            cfg_scale: 0.0,
            cfg_schedule: GuidanceSchedule::Constant,
            order: TokenOrder::Confidence,
            refine: Refinement::NONE,
        }
    }
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

/// Completes every `[MASK]` (`mask_id`) of `rows` in place, conditioned on `cond` (one id per
/// row); the random choices come from a seed drawn from `rng`.
pub fn complete(
    model: &MaskTransformer,
    rows: &mut [Vec<u32>],
    cond: &[u32],
    opts: &SamplerOptions,
    rng: &mut impl Rng,
    device: &Device,
) -> Result<()> {
    let seed = rng.random();
    if !device.is_cpu() {
        // the composed choice (MOVQ_KERNELS=off) draws from the device's generator
        device.set_seed(seed)?;
    }
    complete_on_device(model, rows, cond, opts, device, seed)
}

/// [`complete`] with every step's choice made on `device`: the token grid stays on the device
/// and is read back once at the end. Random draws come from `seed`.
fn complete_on_device(
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
    let decoded = tokens.eq(mask_id)?;
    let mut tokens = steps_on_device(model, tokens, &cond_t, opts, &counts, seed)?;
    if opts.refine.rounds > 0 {
        let last = opts.steps.saturating_sub(1);
        let scale = opts.cfg_schedule.scale_at(opts.cfg_scale, last, opts.steps);
        let sampler = model.for_inference()?;
        tokens = refine(&sampler, tokens, &decoded, &cond_t, scale, &opts.refine)?;
    }
    for (row, values) in rows.iter_mut().zip(tokens.to_vec2::<u32>()?) {
        *row = values;
    }
    Ok(())
}

/// Runs the decoding steps `t = 0..counts.len()` on `tokens` `[B, L]` (on its device), step `t`
/// leaving exactly `counts[t][b]` tokens of row `b` masked; returns the new grid. The model runs
/// as [`MaskTransformer::for_inference`]; each step's choice is [`choose_tokens`] (its noise
/// from `seed`).
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
    // a fixed order ranks the masked tokens by their turn instead of the model's confidence
    let turn = match priorities(opts.order, model.layout()) {
        Some(p) => Some(Tensor::from_vec(p, (1, l), &device)?.broadcast_as((b, l))?),
        None => None,
    };
    let temp = if opts.top1 {
        1.0
    } else {
        opts.temperature.max(1e-6)
    };
    for (t, step_counts) in counts.iter().enumerate() {
        let scale = opts.cfg_schedule.scale_at(opts.cfg_scale, t, opts.steps);
        let logits = model.sampling_logits(&tokens, cond, scale)?; // [B, L, K]
        let choice = TokenChoice {
            mask: mask_id,
            inv_temp: (1.0 / temp) as f32,
            top1: opts.top1,
            min_p: opts.min_p as f32,
            noise: choice_noise(opts, t) as f32,
            seed: step_seed(seed, t),
        };
        let (predicted, conf) = choose_tokens(&logits, &tokens, &choice)?;
        let conf = match &turn {
            Some(turn) => tokens.eq(mask_id)?.where_cond(turn, &conf)?,
            None => conf,
        };
        // Known tokens (confidence +∞) rank after every newly predicted one.
        let remask = lowest_ranked(&conf, step_counts)?;
        tokens = remask.where_cond(&mask_tok, &predicted)?;
        if step_counts.iter().all(|&n| n == 0) {
            break;
        }
    }
    Ok(tokens)
}

/// A u8 `[B, L]` mask of the `counts[b]` lowest values of each row of `score` (f32 `[B, L]`;
/// ties in the order of a stable sort).
pub fn lowest_ranked(score: &Tensor, counts: &[usize]) -> Result<Tensor> {
    let (b, l) = score.dims2()?;
    let device = score.device();
    let order = score.arg_sort_last_dim(true)?; // lowest first
    let ranks = Tensor::arange(0u32, l as u32, device)?
        .to_dtype(DType::F32)?
        .broadcast_as((b, l))?
        .contiguous()?;
    let rank = Tensor::zeros((b, l), DType::F32, device)?.scatter_add(&order, &ranks, 1)?;
    let counts: Vec<f32> = counts.iter().map(|&n| n as f32).collect();
    rank.broadcast_lt(&Tensor::from_vec(counts, (b, 1), device)?)
}

/// The random stream of step `t` of a sampling run seeded with `seed`.
fn step_seed(seed: u64, t: usize) -> u64 {
    seed ^ (t as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)
}
