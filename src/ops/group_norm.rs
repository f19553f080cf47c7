//! GroupNorm (+ SpatialNorm modulation) (+ SiLU): `silu?((GroupNorm(x)·γ + β)·scale↑ + shift↑)`.
//!
//! One fused kernel each way on CUDA ([`crate::gpu::group_norm`]) and on the CPU
//! ([`crate::cpu::group_norm`]) for f32 (and bf16 on CUDA); otherwise, and as the kernels'
//! reference, composed of candle ops.

use candle_core::{DType, Result, Tensor, D};

use crate::compute::fused_kernels;

/// `x` `[B, C, ...]`, `gamma`, `beta` `[C]`; `modulation` (scale, shift) `[B, C, h, w]` with
/// `h | H`, `w | W`, broadcast over each `H/h × W/w` block (SpatialNorm). Statistics in f32; the
/// result has `x`'s dtype.
pub fn group_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
    modulation: Option<(&Tensor, &Tensor)>,
    silu: bool,
) -> Result<Tensor> {
    let dev = x.device();
    let gpu = cfg!(feature = "cuda") && dev.is_cuda();
    let cpu = dev.is_cpu() && x.dtype() == DType::F32;
    if fused_kernels(dev) && x.rank() == 4 && (gpu || cpu) {
        let packed = pack(x, gamma, beta, groups, modulation)?;
        #[cfg(feature = "cuda")]
        if gpu {
            return crate::gpu::group_norm::forward(x, packed, groups, eps, silu);
        }
        return crate::cpu::group_norm::forward(x, packed, groups, eps, silu);
    }
    // composed of candle ops
    let dt = x.dtype();
    let shape = x.dims().to_vec();
    let (b, c) = (shape[0], shape[1]);
    if groups == 0 || !c.is_multiple_of(groups) {
        candle_core::bail!("GroupNorm: {c} channels do not split into {groups} groups");
    }
    let n = x.elem_count() / (b * groups);
    let normed = standardize(&x.reshape((b, groups, n))?, eps)?;
    let mut wdims = vec![1; shape.len()];
    wdims[1] = c;
    let mut y = normed
        .reshape(shape)?
        .broadcast_mul(&gamma.reshape(wdims.clone())?)?
        .broadcast_add(&beta.reshape(wdims)?)?
        .to_dtype(dt)?;
    if let Some((scale, shift)) = modulation {
        y = modulate(&y, scale, shift)?;
    }
    if silu {
        y = y.silu()?;
    }
    Ok(y)
}

/// What the fused kernels take: `x`'s sizes `(B, C, H, W)`, the modulation's resolution
/// (0 × 0 without), and every parameter packed in one f32 vector `[γ][β][scale][shift]` (one
/// input for candle, whose gradient it routes back through the concatenation).
pub struct Packed {
    pub dims: (usize, usize, usize, usize),
    pub latent: (usize, usize),
    pub params: Tensor,
}

/// Checks the arguments of [`group_norm`] and packs them for a fused kernel.
pub fn pack(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    modulation: Option<(&Tensor, &Tensor)>,
) -> Result<Packed> {
    let (b, c, h, w) = x.dims4()?;
    if groups == 0 || !c.is_multiple_of(groups) {
        candle_core::bail!("GroupNorm: {c} channels do not split into {groups} groups");
    }
    let flat = |t: &Tensor| t.to_dtype(DType::F32)?.flatten_all();
    let mut parts = vec![flat(gamma)?, flat(beta)?];
    let mut latent = (0, 0);
    if let Some((scale, shift)) = modulation {
        let (sb, sc, sh, sw) = scale.dims4()?;
        if (sb, sc) != (b, c) || shift.dims() != scale.dims() {
            candle_core::bail!(
                "SpatialNorm: scale {:?} and shift {:?} do not fit x {:?}",
                scale.dims(),
                shift.dims(),
                x.dims()
            );
        }
        if sh == 0 || sw == 0 || !h.is_multiple_of(sh) || !w.is_multiple_of(sw) {
            candle_core::bail!("SpatialNorm: {sh}×{sw} does not divide {h}×{w}");
        }
        latent = (sh, sw);
        parts.push(flat(scale)?);
        parts.push(flat(shift)?);
    }
    Ok(Packed {
        dims: (b, c, h, w),
        latent,
        params: Tensor::cat(&parts, 0)?,
    })
}

/// `(x − mean) / √(var + eps)` over the last dimension, in f32 (population variance), composed
/// of differentiable ops.
pub fn standardize(x: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let n = x.dim(D::Minus1)? as f64;
    let mean = (x.sum_keepdim(D::Minus1)? / n)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = (xc.sqr()?.sum_keepdim(D::Minus1)? / n)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)
}

/// `y · scale↑ + shift↑` with `scale`, `shift` `[B, C, h, w]` broadcast over each `H/h × W/w`
/// block of `y` `[B, C, H, W]` (nearest-neighbour upsampling without materialising it).
fn modulate(y: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = y.dims4()?;
    let (_, _, zh, zw) = scale.dims4()?;
    let blocks = |t: &Tensor| t.reshape((b, c, zh, 1, zw, 1));
    y.reshape((b, c, zh, h / zh, zw, w / zw))?
        .broadcast_mul(&blocks(scale)?)?
        .broadcast_add(&blocks(shift)?)?
        .reshape((b, c, h, w))
}
