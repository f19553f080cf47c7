//! The VQGAN residual block: norm → SiLU → conv3x3, twice, with a 1×1 shortcut when the width
//! changes.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::layers::{conv1x1, conv3x3, Conv2d};
use crate::nn::spatial_norm::{Norm, NormKind};

#[derive(Debug, Clone)]
pub struct ResnetBlock {
    norm1: Norm,
    conv1: Conv2d,
    norm2: Norm,
    conv2: Conv2d,
    nin_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    pub fn new(in_ch: usize, out_ch: usize, norm: NormKind, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: norm.build(in_ch, vb.pp("norm1"))?,
            conv1: conv3x3(in_ch, out_ch, vb.pp("conv1"))?,
            norm2: norm.build(out_ch, vb.pp("norm2"))?,
            conv2: conv3x3(out_ch, out_ch, vb.pp("conv2"))?,
            nin_shortcut: if in_ch != out_ch {
                Some(conv1x1(in_ch, out_ch, vb.pp("nin_shortcut"))?)
            } else {
                None
            },
        })
    }

    /// `x`: `[B, in, H, W]` → `[B, out, H, W]`; `zq` for SpatialNorm blocks.
    pub fn forward(&self, x: &Tensor, zq: Option<&Tensor>) -> Result<Tensor> {
        let h = self.norm1.forward_silu(x, zq)?;
        let h = self.conv1.forward(&h)?;
        let h = self.norm2.forward_silu(&h, zq)?;
        let h = self.conv2.forward(&h)?;
        match &self.nin_shortcut {
            Some(s) => s.forward(x)?.add(&h),
            None => x.add(&h),
        }
    }
}
