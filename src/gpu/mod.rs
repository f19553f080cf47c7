//! GPU kernels behind candle custom ops with forward and backward passes, used on CUDA devices
//! in place of candle's composed (or slow) ops: fused GroupNorm / SpatialNorm / SiLU (the `cuda`
//! feature; kernels compiled by `build.rs` with nvcc) and cuDNN convolutions (the `cudnn`
//! feature). The CPU build has none of it; `MOVQ_KERNELS=off` turns it off on the GPU (for
//! comparison), and every op has a test against the composed candle ops on the GPU
//! (`tests/integration/gpu_kernels.rs`).

#[cfg(feature = "cudnn")]
pub mod conv;
#[cfg(feature = "cuda")]
pub mod group_norm;

use candle_core::Device;

/// Whether the kernels of this module run for tensors on `dev`: a CUDA device in a `cuda`
/// build, unless `MOVQ_KERNELS=off`.
pub fn enabled(dev: &Device) -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    cfg!(feature = "cuda")
        && dev.is_cuda()
        && !*OFF.get_or_init(|| std::env::var("MOVQ_KERNELS").is_ok_and(|v| v == "off"))
}

/// Whether convolutions run through cuDNN on `dev` (a `cudnn` build on a CUDA device).
pub fn cudnn_enabled(dev: &Device) -> bool {
    cfg!(feature = "cudnn") && enabled(dev)
}

/// `silu?(GroupNorm(x) · scale↑ + shift↑)` through the fused kernel when it runs for `x` (a
/// `[B, C, H, W]` tensor on a CUDA device, kernels on); `None` otherwise, for the caller's
/// composed ops. See [`group_norm::group_norm`] for the arguments.
pub fn fused_group_norm(
    x: &candle_core::Tensor,
    gamma: &candle_core::Tensor,
    beta: &candle_core::Tensor,
    groups: usize,
    eps: f64,
    modulation: Option<(&candle_core::Tensor, &candle_core::Tensor)>,
    silu: bool,
) -> candle_core::Result<Option<candle_core::Tensor>> {
    #[cfg(feature = "cuda")]
    if enabled(x.device()) && x.rank() == 4 {
        return group_norm::group_norm(x, gamma, beta, groups, eps, modulation, silu).map(Some);
    }
    let _ = (x, gamma, beta, groups, eps, modulation, silu);
    Ok(None)
}

/// `x ⋆ w` (zero padding `padding`, stride `stride`) through cuDNN when it runs for `x` (a `cudnn`
/// build, `x` on a CUDA device, kernels on); `None` otherwise.
pub fn cudnn_conv2d(
    x: &candle_core::Tensor,
    w: &candle_core::Tensor,
    padding: usize,
    stride: usize,
) -> candle_core::Result<Option<candle_core::Tensor>> {
    #[cfg(feature = "cudnn")]
    if cudnn_enabled(x.device()) {
        return conv::conv2d(x, w, padding, stride).map(Some);
    }
    let _ = (x, w, padding, stride);
    Ok(None)
}
