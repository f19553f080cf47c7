//! The MoVQ decoder: every normalization is a SpatialNorm conditioned on the quantized latent
//! (or, with `model.decoder_norm: "group"`, a plain GroupNorm as in VQGAN).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::config::{DecoderNorm, VqConfig};
use crate::nn::layers::{conv3x3, Conv2d};
use crate::nn::resample::Upsample;
use crate::nn::spatial_norm::{Norm, NormKind};
use crate::vq::encoder::MidBlock;
use crate::vq::level::LevelBlocks;

/// One resolution level: `num_res_blocks + 1` residual blocks (optional attention), upsample.
#[derive(Debug, Clone)]
struct UpLevel {
    blocks: LevelBlocks,
    upsample: Option<Upsample>,
}

#[derive(Debug, Clone)]
pub struct Decoder {
    conv_in: Conv2d,
    mid: MidBlock,
    /// Indexed by level as in the encoder (`up.0` is the full-resolution level); run in reverse.
    up: Vec<UpLevel>,
    norm_out: Norm,
    conv_out: Conv2d,
}

/// Parameter name of the decoder's last layer (for VQGAN's adaptive GAN weight).
pub const LAST_LAYER: &str = "decoder.conv_out.weight";

impl Decoder {
    pub fn new(cfg: &VqConfig, vb: VarBuilder) -> Result<Self> {
        let norm = match cfg.decoder_norm {
            DecoderNorm::Spatial => NormKind::Spatial {
                groups: cfg.decoder_norm_groups(),
                zq_channels: cfg.embed_dim(),
            },
            DecoderNorm::Group => NormKind::Group {
                groups: cfg.norm_groups,
            },
        };
        let levels = cfg.ch_mult.len();
        let mut block_in = cfg.ch * cfg.ch_mult[levels - 1];
        let mut res = cfg.latent_size();
        let conv_in = conv3x3(cfg.z_channels, block_in, vb.pp("conv_in"))?;
        let mid = MidBlock::new(block_in, norm, vb.pp("mid"))?;
        let mut up: Vec<Option<UpLevel>> = vec![None; levels];
        for i in (0..levels).rev() {
            let vb_l = vb.pp(format!("up.{i}"));
            let block_out = cfg.ch * cfg.ch_mult[i];
            let with_attn = cfg.attn_resolutions.contains(&res);
            let blocks = LevelBlocks::new(
                cfg.num_res_blocks + 1,
                block_in,
                block_out,
                norm,
                with_attn,
                &vb_l,
            )?;
            block_in = block_out;
            let upsample = if i > 0 {
                res *= 2;
                Some(Upsample::new(block_in, vb_l.pp("upsample"))?)
            } else {
                None
            };
            up[i] = Some(UpLevel { blocks, upsample });
        }
        Ok(Self {
            conv_in,
            mid,
            up: up.into_iter().flatten().collect(),
            norm_out: norm.build(block_in, vb.pp("norm_out"))?,
            conv_out: conv3x3(block_in, cfg.image_channels(), vb.pp("conv_out"))?,
        })
    }

    /// `z`: `[B, z_channels, h, w]` (after post_quant_conv), `zq`: `[B, embed_dim, h, w]` (before
    /// it) → image `[B, image_channels, h·f, w·f]`.
    pub fn forward(&self, z: &Tensor, zq: &Tensor) -> Result<Tensor> {
        let zq = Some(zq);
        let mut h = self.conv_in.forward(z)?;
        h = self.mid.forward(&h, zq)?;
        for level in self.up.iter().rev() {
            h = level.blocks.forward(&h, zq)?;
            if let Some(us) = &level.upsample {
                h = us.forward(&h)?;
            }
        }
        let h = self.norm_out.forward_silu(&h, zq)?;
        self.conv_out.forward(&h)
    }
}
