//! `(x − mean) / √(var + eps)` over the last dimension with a backward pass, for LayerNorm.
//!
//! candle's fused `ops::layer_norm` kernel (one pass over each row, on the CPU and on CUDA) has
//! no backward; composed of differentiable ops, the same standardization takes eight kernels and
//! keeps their intermediates for autograd. Here the fused kernel computes the values and a custom
//! op attaches the gradient `dx = (g − mean(g) − x̂ ⊙ mean(g ⊙ x̂)) / σ`, with `σ` recomputed from
//! `x` in the backward pass. The kernel takes the variance as E[x²] − E[x]² in f32, fine for rows
//! of a transformer's width; GroupNorm's rows (10⁴–10⁵ values) keep the two-pass composed form.

use std::sync::Arc;

use candle_core::{DType, Result, Tensor, D};

use crate::ops::custom_grad::attach;

/// Standardizes the last dimension in f32 (population variance); the result is f32.
pub fn standardize_last_dim(x: &Tensor, eps: f32) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    let n = x.dim(D::Minus1)?;
    let ones = Tensor::ones(n, DType::F32, x.device())?;
    let zeros = Tensor::zeros(n, DType::F32, x.device())?;
    // a fresh contiguous tensor, as the custom op's storage copy requires
    let y = candle_nn::ops::layer_norm(&x, &ones, &zeros, eps)?;
    if !x.track_op() {
        // no gradient wanted (inference): no need to attach one
        return Ok(y);
    }
    let backward = Arc::new(move |x: &Tensor, y: &Tensor, grad: &Tensor| {
        let n = x.dim(D::Minus1)? as f64;
        let mean = (x.sum_keepdim(D::Minus1)? / n)?;
        let var = (x.broadcast_sub(&mean)?.sqr()?.sum_keepdim(D::Minus1)? / n)?;
        let sigma = (var + eps as f64)?.sqrt()?;
        let g_mean = (grad.sum_keepdim(D::Minus1)? / n)?;
        let gy_mean = ((grad * y)?.sum_keepdim(D::Minus1)? / n)?;
        let dx = grad
            .broadcast_sub(&g_mean)?
            .sub(&y.broadcast_mul(&gy_mean)?)?
            .broadcast_div(&sigma)?;
        Ok((Some(dx), None))
    });
    attach("standardize-last-dim", &x, &y, &y, backward)
}
