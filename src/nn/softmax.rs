//! Softmax over the last dimension with a backward pass.
//!
//! candle's fused `softmax_last_dim` kernel has no backward (gradients would silently stop at
//! it), and the composed `ops::softmax` takes several passes. Here the fused kernel computes the
//! values and a custom op attaches the softmax gradient `dx = y ⊙ (g − Σ g ⊙ y)` to them.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, D};

/// `(x, y = softmax(x))` → `y`, whose gradient flows to `x`.
struct WithSoftmaxGrad;

impl CustomOp2 for WithSoftmaxGrad {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        y: &CpuStorage,
        l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((y.try_clone(l)?, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        y: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((y.try_clone(l)?, l.shape().clone()))
    }

    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dot = (grad * y)?.sum_keepdim(D::Minus1)?;
        Ok((Some(y.mul(&grad.broadcast_sub(&dot)?)?), None))
    }
}

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
    x.apply_op2(&y, WithSoftmaxGrad)?.to_dtype(dt)
}
