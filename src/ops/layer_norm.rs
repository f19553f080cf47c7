//! LayerNorm over the last dimension: statistics in f32, the result in the input's dtype.
//!
//! On CUDA one kernel each way ([`crate::gpu::layer_norm`]); elsewhere candle's fused forward
//! kernel with a backward pass of movq's own ([`crate::ops::standardize`]), then the affine.

#[cfg(feature = "cuda")]
use candle_core::DType;
use candle_core::{Result, Tensor};

use crate::compute::fused_kernels;

/// `(x − mean) / √(var + ε) · w + b` over the last dimension of `x`.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if fused_kernels(x.device())
        && x.device().is_cuda()
        && matches!(x.dtype(), DType::F32 | DType::BF16)
    {
        return crate::gpu::layer_norm::layer_norm(x, w, b, eps);
    }
    let _ = fused_kernels;
    let dt = x.dtype();
    crate::ops::standardize::standardize_last_dim(x, eps)?
        .broadcast_mul(w)?
        .broadcast_add(b)?
        .to_dtype(dt)
}
