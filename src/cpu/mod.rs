//! CPU kernels behind candle custom ops, forward and backward: convolution as matrix products
//! over unfolded windows, and fused GroupNorm (+ SpatialNorm modulation) (+ SiLU). MaskGIT's
//! token choice has its CPU kernel beside its CUDA one, in [`crate::ops::token_choice`].
//! [`crate::ops`] decides when they run; each is tested against the composed ops it replaces
//! (`tests/integration/kernels.rs`).

pub mod conv;
pub mod group_norm;

use candle_core::{CpuStorage, Layout, Result};

/// The f32 values of a contiguous tensor's storage; errors name the kernel and the tensor.
pub(crate) fn values<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what} must be f32");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}
