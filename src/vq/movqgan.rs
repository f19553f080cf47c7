//! The original MoVQGAN checkpoints (PyTorch Lightning `.ckpt`, e.g. ai-forever's 67M / 102M /
//! 270M models, and the Kandinsky 2.x MoVQ before its diffusers conversion): their state dict
//! uses taming-transformers' names, which are movq's own (`encoder.down.i.block.j…`,
//! `decoder.up.i…` in the same order, `mid.block_1`, `attn_1`, SpatialNorm's `norm_layer`,
//! `conv_y`, `conv_b`, attention `q`/`k`/`v`/`proj_out` as 1×1 convolutions,
//! `quantize.embedding.weight`). The checkpoint carries no model config: the shape is read off
//! the tensors.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context, Result};

use crate::config::VqConfig;
use crate::vq::foreign::single_codebook;

/// Tensors a Lightning checkpoint holds for training only (discriminator, perceptual network).
pub fn is_training_only(name: &str) -> bool {
    name.starts_with("loss.")
}

/// The indices `i` of the names `{prefix}{i}.…`.
fn indices(shapes: &BTreeMap<String, Vec<usize>>, prefix: &str) -> BTreeSet<usize> {
    shapes
        .keys()
        .filter_map(|n| n.strip_prefix(prefix)?.split('.').next()?.parse().ok())
        .collect()
}

/// The stage-1 shape the tensors describe, for images of side `resolution` and GroupNorms of
/// `norm_groups` groups (not recorded in the tensors; 32 in MoVQGAN and Kandinsky).
pub fn vq_config(
    shapes: &BTreeMap<String, Vec<usize>>,
    resolution: usize,
    norm_groups: usize,
) -> Result<VqConfig> {
    let dims = |name: &str| -> Result<&Vec<usize>> {
        shapes.get(name).with_context(|| {
            format!("no tensor {name}: not a MoVQGAN / taming-transformers checkpoint")
        })
    };
    let conv_in = dims("encoder.conv_in.weight")?;
    if conv_in.len() != 4 || conv_in[1] != 3 {
        bail!("encoder.conv_in.weight {conv_in:?}: movq models take RGB images");
    }
    let ch = conv_in[0];
    let levels = indices(shapes, "encoder.down.").len();
    if levels == 0 {
        bail!("no encoder.down.* tensors: not a MoVQGAN / taming-transformers checkpoint");
    }
    let num_res_blocks = indices(shapes, "encoder.down.0.block.").len();
    let mut ch_mult = Vec::with_capacity(levels);
    let mut attn_resolutions = Vec::new();
    for i in 0..levels {
        let width = dims(&format!("encoder.down.{i}.block.0.conv1.weight"))?[0];
        if width % ch != 0 {
            bail!("encoder.down.{i} is {width} wide, not a multiple of conv_in's {ch}");
        }
        ch_mult.push(width / ch);
        let enc = shapes.contains_key(&format!("encoder.down.{i}.attn.0.q.weight"));
        let dec = shapes.contains_key(&format!("decoder.up.{i}.attn.0.q.weight"));
        if enc != dec {
            bail!("attention at level {i} in the encoder but not in the decoder (or the reverse) is not supported");
        }
        if enc {
            attn_resolutions.push(resolution >> i);
        }
    }
    let z_channels = dims("encoder.conv_out.weight")?[0];
    let codebook = dims("quantize.embedding.weight")?;
    let (codebook_size, code_dim) = match codebook[..] {
        [k, d] => (k, d),
        _ => bail!("quantize.embedding.weight {codebook:?}: expected [codes, dim]"),
    };
    let cfg = VqConfig {
        resolution,
        ch,
        ch_mult,
        num_res_blocks,
        attn_resolutions,
        z_channels,
        norm_groups,
        spatial_norm_groups: None,
        decoder_norm: Default::default(),
        image_channels: None,
        quantizer: single_codebook(codebook_size, code_dim),
    };
    cfg.validate()
        .context("the checkpoint describes a model movq cannot build")?;
    Ok(cfg)
}
