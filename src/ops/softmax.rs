//! Softmax over the last dimension with a backward pass.
//!
//! candle's fused `softmax_last_dim` kernel has no backward (gradients would silently stop at
//! it), and the composed `ops::softmax` takes several passes. Here the fused kernel computes the
//! values and a custom op attaches the softmax gradient `dx = y ⊙ (g − Σ g ⊙ y)` to them.

use std::sync::Arc;

use candle_core::{DType, Result, Tensor, D};

use crate::ops::custom_grad::attach;

/// Softmax over the last dimension, computed in f32; the result has the input's dtype.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    crate::profile::scope(|| "softmax".into(), x.device(), || softmax_inner(x))
}

fn softmax_inner(x: &Tensor) -> Result<Tensor> {
    let dt = x.dtype();
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    // `y` is a fresh contiguous tensor, as the custom op's storage copy requires.
    let y = candle_nn::ops::softmax_last_dim(&x)?;
    if !x.track_op() {
        // no gradient wanted (inference): no need to attach one
        return y.to_dtype(dt);
    }
    // dx = y ⊙ (g − Σ g ⊙ y), from the saved softmax values
    let backward = Arc::new(|_: &Tensor, y: &Tensor, grad: &Tensor| {
        let dot = (grad * y)?.sum_keepdim(D::Minus1)?;
        Ok((Some(y.mul(&grad.broadcast_sub(&dot)?)?), None))
    });
    attach("softmax-last-dim", &x, &y, &y, backward)?.to_dtype(dt)
}
