//! CUDA kernels behind candle custom ops with forward and backward passes: fused GroupNorm /
//! SpatialNorm / SiLU, multi-head attention, the transformer's block stack, LayerNorm, bias (+
//! GELU) (+ residual), embedding gather, MaskGIT's token choice and the Adam step (the `cuda`
//! feature; kernels compiled by `build.rs` with nvcc), and cuDNN convolutions (the `cudnn`
//! feature). [`crate::ops`] decides when they run; the CPU build compiles none of it but
//! [`side_grads`]. Every kernel has a test against the composed candle ops on the GPU
//! (`tests/integration/gpu_kernels.rs`).

/// The `cpu_fwd` of a custom op that runs on CUDA only, for `CustomOp1`/`2`/`3` (by the number
/// of inputs): an error saying that `$what` runs on CUDA only.
#[cfg(feature = "cuda")]
macro_rules! cuda_only {
    (1, $what:expr) => {
        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            candle_core::bail!("{} run on CUDA only", $what)
        }
    };
    (2, $what:expr) => {
        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            candle_core::bail!("{} run on CUDA only", $what)
        }
    };
    (3, $what:expr) => {
        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            candle_core::bail!("{} run on CUDA only", $what)
        }
    };
}

#[cfg(feature = "cuda")]
pub mod adam;
#[cfg(feature = "cuda")]
pub mod attention;
#[cfg(feature = "cuda")]
pub mod bias;
#[cfg(feature = "cuda")]
pub mod block;
#[cfg(feature = "cudnn")]
pub mod conv;
#[cfg(feature = "cuda")]
pub mod embedding;
#[cfg(feature = "cuda")]
pub mod group_norm;
#[cfg(feature = "cuda")]
pub mod layer_norm;
#[cfg(feature = "cuda")]
mod rows;
pub mod side_grads;
#[cfg(feature = "cuda")]
pub mod token_choice;
