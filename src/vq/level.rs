//! The residual blocks of one resolution level, each optionally followed by self-attention.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::attention::AttnBlock;
use crate::nn::resnet::ResnetBlock;
use crate::nn::spatial_norm::NormKind;

/// `block.{j}` (and `attn.{j}` after it when the level has attention), under the level's path.
#[derive(Debug, Clone)]
pub struct LevelBlocks {
    block: Vec<ResnetBlock>,
    attn: Vec<AttnBlock>,
}

impl LevelBlocks {
    /// `n` blocks `in_ch → out_ch` (the first changes the width, the others keep it).
    pub fn new(
        n: usize,
        in_ch: usize,
        out_ch: usize,
        norm: NormKind,
        with_attn: bool,
        vb: &VarBuilder,
    ) -> Result<Self> {
        let mut block = Vec::with_capacity(n);
        let mut attn = Vec::new();
        for j in 0..n {
            let cin = if j == 0 { in_ch } else { out_ch };
            block.push(ResnetBlock::new(
                cin,
                out_ch,
                norm,
                vb.pp(format!("block.{j}")),
            )?);
            if with_attn {
                attn.push(AttnBlock::new(out_ch, norm, vb.pp(format!("attn.{j}")))?);
            }
        }
        Ok(Self { block, attn })
    }

    pub fn forward(&self, x: &Tensor, zq: Option<&Tensor>) -> Result<Tensor> {
        let mut h = x.clone();
        for (j, block) in self.block.iter().enumerate() {
            h = block.forward(&h, zq)?;
            if let Some(attn) = self.attn.get(j) {
                h = attn.forward(&h, zq)?;
            }
        }
        Ok(h)
    }
}
