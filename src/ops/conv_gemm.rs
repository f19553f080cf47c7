//! Stride-1 convolutions with a faster backward pass.
//!
//! candle 0.11 computes a convolution's input gradient with a naive `conv_transpose2d` kernel
//! (also for layers whose input needs none) and its weight gradient as a convolution with an
//! image-sized kernel. Here the forward pass is candle's `conv2d`, and the backward pass is:
//! the input gradient as an ordinary convolution of the output gradient with the flipped,
//! transposed kernel (skipped when the input needs no gradient), and the weight gradient as one
//! matrix product of the output gradient `[O, B·H·W]` with the `k²` shifted windows of the
//! padded input stacked channels first, `[k²·C, B·H·W]` (cuBLAS; f32 accumulation in bf16).
//! Only the inputs are kept for the backward pass; the stacked windows are rebuilt there.

use std::sync::Arc;

use candle_core::{Result, Tensor};

use crate::ops::custom_grad::attach;

/// `x` `[B, C, H, W]` → the `k²` shifted windows of `x` padded by `p`, channels first:
/// `[k²·C, B·Ho·Wo]`, rows ordered (ky, kx, c).
fn stacked_windows(x: &Tensor, k: usize, p: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (ho, wo) = (h + 2 * p + 1 - k, w + 2 * p + 1 - k);
    let xc = x.permute((1, 0, 2, 3))?; // [C, B, H, W] view
    if k == 1 && p == 0 {
        return xc.contiguous()?.reshape((c, b * h * w));
    }
    let xp = xc.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
    let mut windows = Vec::with_capacity(k * k);
    for ky in 0..k {
        for kx in 0..k {
            windows.push(xp.narrow(2, ky, ho)?.narrow(3, kx, wo)?);
        }
    }
    Tensor::cat(&windows, 0)?.reshape((k * k * c, b * ho * wo))
}

/// The gradients of a stride-1 convolution with padding `p` for its input (when it needs one)
/// and its weights, given the output gradient.
fn conv_backward(
    x: &Tensor,
    w: &Tensor,
    grad: &Tensor,
    p: usize,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let (o, c, k, _) = w.dims4()?;
    let need_dx = x.track_op();
    let (x, w) = (x.detach(), w.detach());
    let grad = grad.detach().contiguous()?;
    // dW = G · Xᵀ with G = grad as [O, B·Ho·Wo] and X the stacked windows
    let g = grad.permute((1, 0, 2, 3))?.contiguous()?.reshape((o, ()))?;
    let dw = g
        .matmul(&stacked_windows(&x, k, p)?.t()?)? // [O, k²·C], columns (ky, kx, c)
        .reshape((o, k, k, c))?
        .permute((0, 3, 1, 2))?
        .contiguous()?;
    // dX = grad ⋆ flip(W)ᵀ with padding k − 1 − p (skipped when x needs no gradient)
    let dx = if need_dx {
        let rev: Vec<u32> = (0..k as u32).rev().collect();
        let rev = Tensor::new(rev.as_slice(), w.device())?;
        let flipped = w
            .index_select(&rev, 2)?
            .index_select(&rev, 3)?
            .transpose(0, 1)?
            .contiguous()?; // [C, O, k, k]
        Some(grad.conv2d(&flipped, k - 1 - p, 1, 1, 1)?)
    } else {
        None
    };
    Ok((dx, Some(dw)))
}

/// Stride-1, undilated, ungrouped convolution of `x` `[B, C, H, W]` with `w` `[O, C, k, k]`
/// and zero padding `p ≤ k − 1`, with the backward pass described above.
pub fn conv2d_gemm(x: &Tensor, w: &Tensor, p: usize) -> Result<Tensor> {
    let k = w.dim(2)?;
    if p + 1 > k {
        candle_core::bail!("conv2d_gemm: padding {p} exceeds kernel size {k} − 1");
    }
    // candle's own forward (im2col + GEMM) measured faster on the H200 than the stacked form
    let y = x.detach().conv2d(&w.detach(), p, 1, 1, 1)?;
    if !x.track_op() && !w.track_op() {
        return Ok(y);
    }
    let backward =
        Arc::new(move |x: &Tensor, w: &Tensor, grad: &Tensor| conv_backward(x, w, grad, p));
    attach("conv2d", x, w, &y, backward)
}
