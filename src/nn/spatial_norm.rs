//! SpatialNorm: the MoVQ decoder's spatially conditional normalization.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::layers::{conv1x1, group_norm, Conv2d, GroupNorm};
use crate::nn::resample::upsample_nearest;

/// `SpatialNorm(f, zq) = GroupNorm(f) · conv_y(zq↑) + conv_b(zq↑)` where `zq↑` is the quantized
/// latent (before `post_quant_conv`) resized to `f`'s height and width by nearest neighbour and
/// `conv_y`, `conv_b` are 1×1 convolutions `embed_dim → channels(f)`. The GroupNorm keeps its own
/// affine weights, as in the Kandinsky 2.x MoVQ decoder.
#[derive(Debug, Clone)]
pub struct SpatialNorm {
    norm_layer: GroupNorm,
    conv_y: Conv2d,
    conv_b: Conv2d,
}

impl SpatialNorm {
    pub fn new(channels: usize, zq_channels: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm_layer: group_norm(groups, channels, vb.pp("norm_layer"))?,
            conv_y: conv1x1(zq_channels, channels, vb.pp("conv_y"))?,
            conv_b: conv1x1(zq_channels, channels, vb.pp("conv_b"))?,
        })
    }

    /// `f`: `[B, C, H, W]`, `zq`: `[B, embed_dim, h, w]`.
    ///
    /// A 1×1 convolution commutes with nearest-neighbour upsampling, so when `H, W` are
    /// multiples of `h, w` the scale and shift are computed at the latent's resolution and
    /// broadcast over each `H/h × W/w` block: the same values, without materialising the
    /// upsampled latent or running the convolutions at full resolution.
    pub fn forward(&self, f: &Tensor, zq: &Tensor) -> Result<Tensor> {
        self.forward_act(f, zq, false)
    }

    /// [`Self::forward`] followed by SiLU when `silu` (one fused kernel on the GPU).
    pub fn forward_act(&self, f: &Tensor, zq: &Tensor, silu: bool) -> Result<Tensor> {
        let (_, _, h, w) = f.dims4()?;
        let (_, _, zh, zw) = zq.dims4()?;
        let zq = if h.is_multiple_of(zh) && w.is_multiple_of(zw) {
            zq.clone()
        } else {
            resize_nearest(zq, h, w)?
        };
        let scale = self.conv_y.forward(&zq)?;
        let shift = self.conv_b.forward(&zq)?;
        self.norm_layer
            .forward_modulated(f, Some((&scale, &shift)), silu)
    }
}

/// Nearest-neighbour resize to `h × w` (identity when the size already matches).
pub fn resize_nearest(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, xh, xw) = x.dims4()?;
    if (xh, xw) == (h, w) {
        Ok(x.clone())
    } else if h.is_multiple_of(xh) && w.is_multiple_of(xw) && h / xh == w / xw {
        upsample_nearest(x, h / xh)
    } else {
        x.upsample_nearest2d(h, w)
    }
}

/// The normalization used by a block: plain GroupNorm (encoder) or SpatialNorm (decoder).
#[derive(Debug, Clone)]
pub enum Norm {
    Group(GroupNorm),
    Spatial(SpatialNorm),
}

/// How a network's normalizations are built.
#[derive(Debug, Clone, Copy)]
pub enum NormKind {
    Group { groups: usize },
    Spatial { groups: usize, zq_channels: usize },
}

impl NormKind {
    pub fn build(self, channels: usize, vb: VarBuilder) -> Result<Norm> {
        Ok(match self {
            NormKind::Group { groups } => Norm::Group(group_norm(groups, channels, vb)?),
            NormKind::Spatial {
                groups,
                zq_channels,
            } => Norm::Spatial(SpatialNorm::new(channels, zq_channels, groups, vb)?),
        })
    }
}

impl Norm {
    /// `zq` is required by SpatialNorm and ignored by GroupNorm.
    pub fn forward(&self, x: &Tensor, zq: Option<&Tensor>) -> Result<Tensor> {
        self.forward_act(x, zq, false)
    }

    /// The normalization followed by SiLU (one fused kernel on the GPU).
    pub fn forward_silu(&self, x: &Tensor, zq: Option<&Tensor>) -> Result<Tensor> {
        self.forward_act(x, zq, true)
    }

    fn forward_act(&self, x: &Tensor, zq: Option<&Tensor>, silu: bool) -> Result<Tensor> {
        match (self, zq) {
            (Norm::Group(n), _) => n.forward_modulated(x, None, silu),
            (Norm::Spatial(n), Some(zq)) => n.forward_act(x, zq, silu),
            (Norm::Spatial(_), None) => {
                candle_core::bail!("SpatialNorm needs the quantized latent zq")
            }
        }
    }
}
