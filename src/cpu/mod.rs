//! CPU kernels behind candle custom ops, forward and backward: convolution as matrix products
//! over unfolded windows, and fused GroupNorm (+ SpatialNorm modulation) (+ SiLU). MaskGIT's
//! token choice has its CPU kernel beside its CUDA one, in [`crate::ops::token_choice`].
//! [`crate::ops`] decides when they run; each is tested against the composed ops it replaces
//! (`tests/integration/kernels.rs`).

pub mod conv;
pub mod group_norm;
