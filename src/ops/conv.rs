//! 2-D convolution `x ⋆ w (+ b)`, in the input's dtype.
//!
//! Where it runs: through cuDNN on CUDA (a `cudnn` build; the bias in the same graph node,
//! [`crate::gpu::conv`]); on the CPU in f32 as matrix products over unfolded windows
//! ([`crate::cpu::conv`]); elsewhere stride-1 convolutions with a faster backward pass
//! ([`crate::ops::conv_gemm`]) and strided ones through candle's `conv2d`. `MOVQ_CONV=candle`
//! sends every convolution through candle's `conv2d`, for comparison.

use candle_core::{DType, Result, Tensor};

use crate::compute::{cudnn, fused_kernels, switches};
use crate::ops::conv_gemm::conv2d_gemm;
use crate::ops::linear::channel_bias;

/// `x` `[B, C, H, W]`, `w` `[O, C, k, k]` (in `x`'s dtype), `b` `[O]`; zero padding `padding` on
/// every side, stride `stride`.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    padding: usize,
    stride: usize,
) -> Result<Tensor> {
    let dev = x.device();
    let candle = switches().candle_conv;
    #[cfg(feature = "cudnn")]
    if cudnn(dev) {
        return match b {
            Some(b) => crate::gpu::conv::conv2d_bias(x, w, b, padding, stride),
            None => crate::gpu::conv::conv2d(x, w, padding, stride),
        };
    }
    let _ = cudnn;
    if !candle && fused_kernels(dev) && dev.is_cpu() && x.dtype() == DType::F32 {
        return crate::cpu::conv::conv2d(x, w, b, padding, stride);
    }
    let k = w.dim(2)?;
    let y = if !candle && stride == 1 && padding < k {
        conv2d_gemm(x, w, padding)?
    } else {
        x.conv2d(w, padding, stride, 1, 1)?
    };
    match b {
        Some(b) => channel_bias(&y, b),
        None => Ok(y),
    }
}
