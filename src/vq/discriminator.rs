//! PatchGAN discriminator (pix2pix / VQGAN `NLayerDiscriminator`).
//!
//! Normalization is GroupNorm rather than BatchNorm so that the critic's output for an image does
//! not depend on the rest of the batch and no running statistics need checkpointing.

use candle_core::DType;
use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::config::DiscriminatorConfig;
use crate::nn::layers::{conv2d, conv2d_no_bias, group_norm, Conv2d, GroupNorm};

#[derive(Debug, Clone)]
struct Layer {
    conv: Conv2d,
    norm: Option<GroupNorm>,
    act: bool,
}

#[derive(Debug, Clone)]
pub struct Discriminator {
    layers: Vec<Layer>,
    /// Compute dtype of the convolutions (f32 or bf16).
    dtype: DType,
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Discriminator {
    /// A critic of `image_channels`-channel images.
    pub fn new(cfg: &DiscriminatorConfig, image_channels: usize, vb: VarBuilder) -> Result<Self> {
        let stride2 = Conv2dConfig {
            stride: 2,
            padding: 1,
            ..Default::default()
        };
        let stride1 = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let ndf = cfg.ch;
        let mut layers = vec![Layer {
            conv: conv2d(image_channels, ndf, 4, stride2, vb.pp("main.0"))?,
            norm: None,
            act: true,
        }];
        let mut mult = 1;
        for n in 1..=cfg.layers {
            let prev = mult;
            mult = (1 << n).min(8);
            let (cin, cout) = (ndf * prev, ndf * mult);
            let conv_cfg = if n < cfg.layers { stride2 } else { stride1 };
            let vb_n = vb.pp(format!("main.{n}"));
            layers.push(Layer {
                conv: conv2d_no_bias(cin, cout, 4, conv_cfg, vb_n.pp("conv"))?,
                norm: Some(group_norm(gcd(32, cout), cout, vb_n.pp("norm"))?),
                act: true,
            });
        }
        layers.push(Layer {
            conv: conv2d(
                ndf * mult,
                1,
                4,
                stride1,
                vb.pp(format!("main.{}", cfg.layers + 1)),
            )?,
            norm: None,
            act: false,
        });
        Ok(Self {
            layers,
            dtype: DType::F32,
        })
    }

    /// The same network computing in `dtype` (its weights stay f32).
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// Smallest image side this discriminator accepts (it must leave at least one patch).
    pub fn min_resolution(cfg: &DiscriminatorConfig) -> usize {
        3 << cfg.layers
    }
}

impl Module for Discriminator {
    /// `[B, image_channels, H, W]` → patch logits `[B, 1, h', w']` (f32).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.to_dtype(self.dtype)?;
        for layer in &self.layers {
            h = layer.conv.forward(&h)?;
            if let Some(norm) = &layer.norm {
                h = norm.forward(&h)?;
            }
            if layer.act {
                h = candle_nn::ops::leaky_relu(&h, 0.2)?;
            }
        }
        h.to_dtype(DType::F32)
    }
}
