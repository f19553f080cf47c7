//! The MoVQ/VQGAN encoder: image → latent `[B, z_channels, h, w]`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::config::VqConfig;
use crate::nn::attention::AttnBlock;
use crate::nn::layers::{conv3x3, Conv2d};
use crate::nn::resample::Downsample;
use crate::nn::resnet::ResnetBlock;
use crate::nn::spatial_norm::{Norm, NormKind};
use crate::vq::level::LevelBlocks;

/// One resolution level: residual blocks (optional attention after each), optional downsample.
#[derive(Debug, Clone)]
struct DownLevel {
    blocks: LevelBlocks,
    downsample: Option<Downsample>,
}

/// Middle section shared in shape by encoder and decoder: Res, Attn, Res.
#[derive(Debug, Clone)]
pub struct MidBlock {
    block_1: ResnetBlock,
    attn_1: AttnBlock,
    block_2: ResnetBlock,
}

impl MidBlock {
    pub fn new(ch: usize, norm: NormKind, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            block_1: ResnetBlock::new(ch, ch, norm, vb.pp("block_1"))?,
            attn_1: AttnBlock::new(ch, norm, vb.pp("attn_1"))?,
            block_2: ResnetBlock::new(ch, ch, norm, vb.pp("block_2"))?,
        })
    }

    pub fn forward(&self, x: &Tensor, zq: Option<&Tensor>) -> Result<Tensor> {
        let h = self.block_1.forward(x, zq)?;
        let h = self.attn_1.forward(&h, zq)?;
        self.block_2.forward(&h, zq)
    }
}

#[derive(Debug, Clone)]
pub struct Encoder {
    conv_in: Conv2d,
    down: Vec<DownLevel>,
    mid: MidBlock,
    norm_out: Norm,
    conv_out: Conv2d,
}

impl Encoder {
    pub fn new(cfg: &VqConfig, vb: VarBuilder) -> Result<Self> {
        let norm = NormKind::Group {
            groups: cfg.norm_groups,
        };
        let conv_in = conv3x3(cfg.image_channels(), cfg.ch, vb.pp("conv_in"))?;
        let mut res = cfg.resolution;
        let mut block_in = cfg.ch;
        let mut down = Vec::with_capacity(cfg.ch_mult.len());
        for (i, mult) in cfg.ch_mult.iter().enumerate() {
            let vb_l = vb.pp(format!("down.{i}"));
            let block_out = cfg.ch * mult;
            let with_attn = cfg.attn_resolutions.contains(&res);
            let blocks = LevelBlocks::new(
                cfg.num_res_blocks,
                block_in,
                block_out,
                norm,
                with_attn,
                &vb_l,
            )?;
            block_in = block_out;
            let downsample = if i + 1 < cfg.ch_mult.len() {
                res /= 2;
                Some(Downsample::new(block_in, vb_l.pp("downsample"))?)
            } else {
                None
            };
            down.push(DownLevel { blocks, downsample });
        }
        Ok(Self {
            conv_in,
            down,
            mid: MidBlock::new(block_in, norm, vb.pp("mid"))?,
            norm_out: norm.build(block_in, vb.pp("norm_out"))?,
            conv_out: conv3x3(block_in, cfg.z_channels, vb.pp("conv_out"))?,
        })
    }
}

impl Module for Encoder {
    /// `[B, image_channels, H, W]` → `[B, z_channels, H/f, W/f]`
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for level in &self.down {
            h = level.blocks.forward(&h, None)?;
            if let Some(ds) = &level.downsample {
                h = ds.forward(&h)?;
            }
        }
        let h = self.mid.forward(&h, None)?;
        let h = self.norm_out.forward_silu(&h, None)?;
        self.conv_out.forward(&h)
    }
}
