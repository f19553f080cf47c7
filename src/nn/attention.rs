//! Single-head spatial self-attention over the pixels of a feature map (VQGAN's AttnBlock).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::layers::{conv1x1, Conv2d};
use crate::nn::spatial_norm::{Norm, NormKind};
use crate::ops::softmax::softmax_last_dim;

#[derive(Debug, Clone)]
pub struct AttnBlock {
    norm: Norm,
    q: Conv2d,
    k: Conv2d,
    v: Conv2d,
    proj_out: Conv2d,
    channels: usize,
}

impl AttnBlock {
    pub fn new(channels: usize, norm: NormKind, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: norm.build(channels, vb.pp("norm"))?,
            q: conv1x1(channels, channels, vb.pp("q"))?,
            k: conv1x1(channels, channels, vb.pp("k"))?,
            v: conv1x1(channels, channels, vb.pp("v"))?,
            proj_out: conv1x1(channels, channels, vb.pp("proj_out"))?,
            channels,
        })
    }

    /// `x`: `[B, C, H, W]` → same shape, `x + proj_out(attention(norm(x)))`.
    pub fn forward(&self, x: &Tensor, zq: Option<&Tensor>) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let hn = self.norm.forward(x, zq)?;
        let q = self
            .q
            .forward(&hn)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?; // [B, HW, C]
        let k = self.k.forward(&hn)?.reshape((b, c, h * w))?; // [B, C, HW]
        let v = self
            .v
            .forward(&hn)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?; // [B, HW, C]
        let scale = 1.0 / (self.channels as f64).sqrt();
        let attn = crate::profile::scope(
            || "attention matmuls".into(),
            x.device(),
            || q.contiguous()?.matmul(&k.contiguous()?)? * scale,
        )?; // [B, HW, HW]
        let attn = softmax_last_dim(&attn)?;
        let out = attn.matmul(&v.contiguous()?)?; // [B, HW, C]
        let out = out.transpose(1, 2)?.reshape((b, c, h, w))?;
        x.add(&self.proj_out.forward(&out)?)
    }
}
