//! diffusers' `VQModel` with `norm_type="spatial"` (the Kandinsky 2.x MoVQ) mapped onto movq's
//! stage-1 model: its config onto a [`VqConfig`], its tensor names onto movq's.
//!
//! The layouts are the same network: diffusers' `down_blocks.i.resnets.j` / `attentions.j` /
//! `downsamplers.0` are movq's `down.i.block.j` / `attn.j` / `downsample`; its up blocks come in
//! reversed order (`up_blocks.k` is movq's `up.{levels−1−k}`); the mid blocks'
//! `resnets.0`, `attentions.0`, `resnets.1` are `block_1`, `attn_1`, `block_2`; attention
//! projections are Linear layers (`to_q`, `to_k`, `to_v`, `to_out.0`) where movq has 1×1
//! convolutions (`q`, `k`, `v`, `proj_out`), with the same weights viewed `[O, I, 1, 1]`; the
//! decoder attentions' `spatial_norm` is movq's `norm`.

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::config::VqConfig;
use crate::vq::foreign::single_codebook;

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The stage-1 shape a diffusers `config.json` describes; an error names the field movq cannot
/// express.
pub fn vq_config(cfg: &Value) -> Result<VqConfig> {
    let field = |k: &str| {
        cfg.get(k)
            .with_context(|| format!("config.json: no field {k}"))
    };
    let usize_of = |k: &str| -> Result<usize> {
        field(k)?
            .as_u64()
            .map(|v| v as usize)
            .with_context(|| format!("config.json: {k} must be a positive integer"))
    };
    let str_of = |k: &str| -> Result<String> {
        Ok(field(k)?
            .as_str()
            .with_context(|| format!("config.json: {k} must be a string"))?
            .to_string())
    };
    let list_of = |k: &str| -> Result<Vec<Value>> {
        Ok(field(k)?
            .as_array()
            .with_context(|| format!("config.json: {k} must be a list"))?
            .clone())
    };
    if let Some(class) = cfg.get("_class_name").and_then(Value::as_str) {
        if class != "VQModel" {
            bail!(
                "config.json: _class_name is {class}; movq imports diffusers VQModel checkpoints"
            );
        }
    }
    for (k, want) in [("in_channels", 3), ("out_channels", 3)] {
        if usize_of(k)? != want {
            bail!(
                "config.json: {k} is {}, movq models have {want}",
                usize_of(k)?
            );
        }
    }
    if str_of("act_fn")? != "silu" {
        bail!(
            "config.json: act_fn {:?} is not supported (only silu)",
            str_of("act_fn")?
        );
    }
    let norm = cfg
        .get("norm_type")
        .and_then(Value::as_str)
        .unwrap_or("group");
    if norm != "spatial" {
        bail!("config.json: norm_type {norm:?}: movq's decoder is spatially modulated (MoVQ); only norm_type \"spatial\" imports");
    }
    if cfg.get("mid_block_add_attention").and_then(Value::as_bool) == Some(false) {
        bail!("config.json: mid_block_add_attention false is not supported (movq's mid blocks have attention)");
    }
    if cfg.get("lookup_from_codebook").and_then(Value::as_bool) == Some(true) {
        bail!("config.json: lookup_from_codebook true is not supported");
    }
    let widths: Vec<usize> = list_of("block_out_channels")?
        .iter()
        .map(|v| v.as_u64().map(|x| x as usize))
        .collect::<Option<_>>()
        .context("config.json: block_out_channels must be positive integers")?;
    let levels = widths.len();
    if levels == 0 || widths.contains(&0) {
        bail!("config.json: block_out_channels must be positive integers");
    }
    let down: Vec<String> = list_of("down_block_types")?
        .iter()
        .map(|v| v.as_str().unwrap_or("").to_string())
        .collect();
    let up: Vec<String> = list_of("up_block_types")?
        .iter()
        .map(|v| v.as_str().unwrap_or("").to_string())
        .collect();
    if down.len() != levels || up.len() != levels {
        bail!(
            "config.json: {} down and {} up block types for {levels} block_out_channels",
            down.len(),
            up.len()
        );
    }
    let resolution = match field("sample_size")? {
        Value::Array(v) if v.len() == 2 && v[0] == v[1] => v[0].as_u64().unwrap_or(0) as usize,
        v => v.as_u64().unwrap_or(0) as usize,
    };
    if resolution == 0 {
        bail!("config.json: sample_size must be a positive integer (square images)");
    }
    let mut attn_resolutions = Vec::new();
    for (i, (d, u)) in down.iter().zip(up.iter().rev()).enumerate() {
        let attn = match d.as_str() {
            "DownEncoderBlock2D" => false,
            "AttnDownEncoderBlock2D" => true,
            other => bail!("config.json: down_block_types[{i}] {other:?} is not supported"),
        };
        let up_attn = match u.as_str() {
            "UpDecoderBlock2D" => false,
            "AttnUpDecoderBlock2D" => true,
            other => bail!(
                "config.json: up_block_types[{}] {other:?} is not supported",
                levels - 1 - i
            ),
        };
        if attn != up_attn {
            bail!("config.json: attention at level {i} in the encoder but not in the decoder (or the reverse) is not supported");
        }
        if attn {
            attn_resolutions.push(resolution >> i);
        }
    }
    let ch = widths.iter().copied().fold(0, gcd);
    let latent = usize_of("latent_channels")?;
    let code_dim = match cfg.get("vq_embed_dim") {
        Some(Value::Null) | None => latent,
        Some(v) => v
            .as_u64()
            .context("config.json: vq_embed_dim must be a positive integer")?
            as usize,
    };
    let cfg = VqConfig {
        resolution,
        ch,
        ch_mult: widths.iter().map(|w| w / ch).collect(),
        num_res_blocks: usize_of("layers_per_block")?,
        attn_resolutions,
        z_channels: latent,
        norm_groups: usize_of("norm_num_groups")?,
        // diffusers' SpatialNorm hard-codes 32 groups whatever norm_num_groups says
        spatial_norm_groups: Some(32),
        decoder_norm: Default::default(),
        image_channels: None,
        quantizer: single_codebook(usize_of("num_vq_embeddings")?, code_dim),
    };
    cfg.validate()
        .context("config.json describes a model movq cannot build")?;
    Ok(cfg)
}

/// The diffusers name of movq parameter `name` (for a model with `levels` resolution levels).
pub fn diffusers_name(name: &str, levels: usize) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    let mut out: Vec<String> = Vec::with_capacity(parts.len() + 2);
    let mut i = 0;
    let decoder = parts.first() == Some(&"decoder");
    while i < parts.len() {
        let p = parts[i];
        let next = parts.get(i + 1).copied();
        match (p, next) {
            ("down", Some(l)) => {
                out.push(format!("down_blocks.{l}"));
                i += 2;
                continue;
            }
            ("up", Some(l)) => {
                let l: usize = l.parse().unwrap_or(0);
                out.push(format!("up_blocks.{}", levels - 1 - l));
                i += 2;
                continue;
            }
            ("block", Some(j)) => {
                out.push(format!("resnets.{j}"));
                i += 2;
                continue;
            }
            ("attn", Some(j)) => {
                out.push(format!("attentions.{j}"));
                i += 2;
                continue;
            }
            ("mid", _) => out.push("mid_block".into()),
            ("block_1", _) => out.push("resnets.0".into()),
            ("block_2", _) => out.push("resnets.1".into()),
            ("attn_1", _) => out.push("attentions.0".into()),
            ("downsample", _) => out.push("downsamplers.0".into()),
            ("upsample", _) => out.push("upsamplers.0".into()),
            ("norm_out", _) => out.push("conv_norm_out".into()),
            ("nin_shortcut", _) => out.push("conv_shortcut".into()),
            ("q", _) => out.push("to_q".into()),
            ("k", _) => out.push("to_k".into()),
            ("v", _) => out.push("to_v".into()),
            ("proj_out", _) => out.push("to_out.0".into()),
            ("norm", _) => out.push(
                if decoder {
                    "spatial_norm"
                } else {
                    "group_norm"
                }
                .into(),
            ),
            (other, _) => out.push(other.into()),
        }
        i += 1;
    }
    out.join(".")
}
