//! Multi-head self-attention without a causal mask, from a packed projection.

use candle_core::{DType, Result, Tensor};

use crate::compute::fused_kernels;
use crate::ops::softmax::softmax_last_dim;

/// `qkv` `[B, T, 3·H·Dh]` (query, key and value of `heads` heads) → `[B, T, H·Dh]`. On CUDA one
/// fused kernel each way for bf16 and the head widths it was compiled for
/// ([`crate::gpu::attention`]); elsewhere, and as its reference, matmuls and softmax.
pub fn attention(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if fused_kernels(qkv.device()) && crate::gpu::attention::supported(qkv, heads) {
        return crate::profile::scope(
            || "attention (fused)".into(),
            qkv.device(),
            || crate::gpu::attention::attention(qkv, heads),
        );
    }
    let _ = (fused_kernels, DType::F32);
    composed(qkv, heads)
}

/// [`attention`] composed of candle ops.
pub fn composed(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, d3) = qkv.dims3()?;
    let d = d3 / 3;
    let dh = d / heads;
    let qkv = qkv
        .reshape((b, t, 3, heads, dh))?
        .permute((2, 0, 3, 1, 4))?; // [3, B, H, T, Dh]
    let q = qkv.get(0)?.contiguous()?;
    let k = qkv.get(1)?.contiguous()?;
    let v = qkv.get(2)?.contiguous()?;
    let scores = crate::profile::scope(
        || "attention matmuls".into(),
        q.device(),
        || q.matmul(&k.t()?)? * (1.0 / (dh as f64).sqrt()),
    )?; // [B, H, T, T]
    let attn = softmax_last_dim(&scores)?;
    attn.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))
}
