//! `act(x Wᵀ + b) (+ residual)` over the last dimension.
//!
//! On CUDA the bias goes in place onto the matmul's output (no pre-bias tensor is kept for the
//! backward pass), bias and GELU run as one kernel, and at inference bias and residual go onto
//! the output in one pass ([`crate::gpu::bias`]); elsewhere, and as their reference, candle ops.

use candle_core::{DType, Result, Tensor};

use crate::compute::fused_kernels;

/// The activation after a linear layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    None,
    /// The exact (erf) GELU.
    Gelu,
}

/// Whether the CUDA kernels run for `x` (f32 or bf16 on a CUDA device, kernels on).
fn on_gpu(x: &Tensor) -> bool {
    cfg!(feature = "cuda")
        && x.device().is_cuda()
        && fused_kernels(x.device())
        && matches!(x.dtype(), DType::F32 | DType::BF16)
}

/// `act(x Wᵀ + b) (+ residual)` for `x` `[rows, in]`, `w` `[out, in]` in `x`'s dtype, `b`
/// `[out]` (f32), `residual` `[rows, out]`.
pub fn linear_rows(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    act: Act,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if on_gpu(x) {
        if let (Some(b), Some(r), Act::None) = (b, residual, act) {
            // inference only: the op has no backward pass
            if r.dtype() == x.dtype() && ![x, w, b, r].iter().any(|t| t.track_op()) {
                return crate::gpu::bias::linear_residual(x, w, b, r);
            }
        }
    }
    let y = rows(x, w, b, act)?;
    match residual {
        Some(r) => r + y,
        None => Ok(y),
    }
}

/// `act(x Wᵀ + b)` for `x` `[rows, in]`.
fn rows(x: &Tensor, w: &Tensor, b: Option<&Tensor>, act: Act) -> Result<Tensor> {
    let activate = |y: Tensor| match act {
        Act::Gelu => y.gelu_erf(),
        Act::None => Ok(y),
    };
    let Some(b) = b else {
        return activate(x.matmul(&w.t()?)?);
    };
    #[cfg(feature = "cuda")]
    if on_gpu(x) {
        return match act {
            Act::None => crate::gpu::bias::linear(x, w, b),
            Act::Gelu => crate::gpu::bias::bias_act(&x.matmul(&w.t()?)?, b, true),
        };
    }
    let _ = on_gpu;
    let y = x.matmul(&w.t()?)?;
    activate(y.broadcast_add(&b.to_dtype(y.dtype())?)?)
}

/// `x + b` over the channels of a `[B, C, H, W]` tensor: on CUDA one kernel (the gradient of `b`
/// by per-plane sums); elsewhere a broadcast add.
pub fn channel_bias(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if on_gpu(x) && x.rank() == 4 {
        return crate::gpu::bias::channel_bias(x, b);
    }
    let n = b.dim(0)?;
    x.broadcast_add(&b.to_dtype(x.dtype())?.reshape((1, n, 1, 1))?)
}
