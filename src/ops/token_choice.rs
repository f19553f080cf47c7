//! One MaskGIT step's token choice: for every `[MASK]` token a sample (or the argmax) of
//! softmax(logits / temperature), truncated to the codes at least `min_p` times as likely as the
//! most likely one, and its confidence log p(choice) + noise · Gumbel (p untruncated); a known
//! token keeps its value with confidence +∞.
//!
//! One op with two kernels: on CUDA a warp per token ([`crate::gpu::token_choice`]), on the CPU
//! a loop per token (here). Both draw their Gumbel noise from the same counter-based generator
//! (splitmix64 of the seed and the element's index), so the choice depends on the seed and the
//! logits alone, on either device. Composed of candle ops (the reference, and the path with
//! `MOVQ_KERNELS=off`), the noise comes from the device's generator instead.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, D};

use crate::compute::fused_kernels;

/// The scalars of one step's choice.
#[derive(Debug, Clone, Copy)]
pub struct TokenChoice {
    /// The `[MASK]` id: only those tokens are chosen; the others keep their value.
    pub mask: u32,
    /// 1 / the sampling temperature.
    pub inv_temp: f32,
    /// The argmax instead of a sample.
    pub top1: bool,
    /// Min-p truncation: a sample is drawn among the codes whose probability is at least this
    /// fraction of the most likely code's (0: every code).
    pub min_p: f32,
    /// The weight of the Gumbel noise on the confidence.
    pub noise: f32,
    /// The random stream of this step.
    pub seed: u64,
}

/// The choice for every token of `tokens` `[B, L]` (u32) from `logits` `[B, L, K]` (f32 or
/// bf16): (tokens u32 `[B, L]`, confidence f32 `[B, L]`).
pub fn choose_tokens(
    logits: &Tensor,
    tokens: &Tensor,
    choice: &TokenChoice,
) -> Result<(Tensor, Tensor)> {
    let (b, l, k) = logits.dims3()?;
    if tokens.dims() != [b, l] || tokens.dtype() != DType::U32 {
        candle_core::bail!(
            "choose_tokens: tokens {:?} {:?} do not fit logits {:?}",
            tokens.dims(),
            tokens.dtype(),
            logits.dims()
        );
    }
    if k as u64 > 1 << 24 {
        candle_core::bail!("choose_tokens: {k} codes (at most 2^24)");
    }
    let dev = logits.device();
    if !fused_kernels(dev) || !matches!(logits.dtype(), DType::F32 | DType::BF16) {
        return composed(logits, tokens, choice);
    }
    // the kernels take any batch stride (the logits of a longer sequence, narrowed) but rows of
    // K contiguous values, one after the other
    let logits = match logits.stride() {
        [_, s1, 1] if *s1 == k => logits.clone(),
        _ => logits.contiguous()?,
    };
    let out = logits.apply_op2_no_bwd(&tokens.contiguous()?, &Choose(*choice))?;
    Ok((out.get(1)?.to_dtype(DType::U32)?, out.get(0)?))
}

/// A uniform draw in (0, 1) from the counter `i` of stream `seed` (splitmix64's finaliser; 24
/// bits, never 0 or 1), as the CUDA kernel draws it.
fn uniform(seed: u64, i: u64) -> f32 {
    let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 40) as f32 + 0.5) * (1.0 / 16_777_216.0)
}

fn gumbel(seed: u64, i: u64) -> f32 {
    -(-uniform(seed, i).ln()).ln()
}

/// `(logits, tokens)` → `[2, B, L]` f32: the confidences, then the chosen tokens (as f32; ids
/// below 2²⁴).
struct Choose(TokenChoice);

impl Choose {
    /// The choice for row `r` (token `r` of the batch) from its logits `z`: (confidence, token).
    fn row(&self, r: usize, z: impl Fn(usize) -> f32, k: usize, current: u32) -> (f32, f32) {
        let c = &self.0;
        if current != c.mask {
            return (f32::INFINITY, current as f32);
        }
        let base = r as u64 * k as u64;
        let mz = (0..k).fold(f32::NEG_INFINITY, |m, j| m.max(z(j) * c.inv_temp));
        let cut = mz + c.min_p.ln();
        // the perturbed maximum that picks the token, and the softmax's sum
        let (mut best, mut pick, mut s) = (f32::NEG_INFINITY, 0usize, 0f32);
        for j in 0..k {
            let v = z(j) * c.inv_temp;
            s += (v - mz).exp();
            let p = if c.top1 {
                v
            } else if v < cut {
                continue;
            } else {
                v + gumbel(c.seed, base + j as u64)
            };
            if p > best {
                best = p;
                pick = j;
            }
        }
        let mut conf = z(pick) * c.inv_temp - mz - s.ln();
        if c.noise != 0.0 {
            conf += c.noise * gumbel(!c.seed, r as u64);
        }
        (conf, pick as f32)
    }
}

impl CustomOp2 for Choose {
    fn name(&self) -> &'static str {
        "movq-choose-tokens"
    }

    fn cpu_fwd(
        &self,
        logits: &CpuStorage,
        ll: &Layout,
        tokens: &CpuStorage,
        tl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, l, k) = ll.shape().dims3()?;
        let (start, batch_stride) = (ll.start_offset(), ll.stride()[0]);
        let tokens = match (tokens, tl.contiguous_offsets()) {
            (CpuStorage::U32(t), Some((a, e))) => &t[a..e],
            _ => candle_core::bail!("choose_tokens: the tokens must be contiguous u32"),
        };
        let rows = b * l;
        let mut out = vec![0f32; 2 * rows];
        let offset = |r: usize| start + (r / l) * batch_stride + (r % l) * k;
        for r in 0..rows {
            let (conf, tok) = match logits {
                CpuStorage::F32(z) => self.row(r, |j| z[offset(r) + j], k, tokens[r]),
                CpuStorage::BF16(z) => self.row(r, |j| z[offset(r) + j].to_f32(), k, tokens[r]),
                _ => candle_core::bail!("choose_tokens: the logits must be f32 or bf16"),
            };
            out[r] = conf;
            out[rows + r] = tok;
        }
        Ok((CpuStorage::F32(out), Shape::from((2, b, l))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        logits: &candle_core::CudaStorage,
        ll: &Layout,
        tokens: &candle_core::CudaStorage,
        tl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::gpu::token_choice::launch(logits, ll, tokens, tl, &self.0)
    }
}

/// [`choose_tokens`] composed of candle ops, with random draws from the device's generator.
pub fn composed(logits: &Tensor, tokens: &Tensor, c: &TokenChoice) -> Result<(Tensor, Tensor)> {
    let device = tokens.device();
    let dims = tokens.dims();
    let unknown = tokens.eq(&Tensor::full(c.mask, dims, device)?)?;
    let scaled = (logits.to_dtype(DType::F32)? * c.inv_temp as f64)?;
    let sampled = if c.top1 {
        scaled.argmax(D::Minus1)?
    } else {
        // codes under the min-p cut lose the draw: their perturbed value is −∞
        let cut = scaled
            .max_keepdim(D::Minus1)?
            .affine(1.0, (c.min_p as f64).ln())?
            .broadcast_as(scaled.shape())?;
        let perturbed = (&scaled + gumbel_tensor(scaled.dims(), device)?)?;
        let lost = Tensor::full(f32::NEG_INFINITY, scaled.shape(), device)?;
        scaled
            .ge(&cut)?
            .where_cond(&perturbed, &lost)?
            .argmax(D::Minus1)?
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

/// Standard Gumbel noise of `shape` from the device's generator.
fn gumbel_tensor(shape: &[usize], device: &candle_core::Device) -> Result<Tensor> {
    let u = Tensor::rand(0f32, 1f32, shape, device)?.clamp(1e-20f32, 1.0 - 1e-7)?;
    u.log()?.neg()?.log()?.neg()
}
