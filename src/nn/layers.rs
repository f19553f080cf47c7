//! Plain layers with PyTorch's default initialisation (uniform ±1/√fan_in).

use candle_core::Result;
use candle_nn::{Conv2d, Conv2dConfig, GroupNorm, Init, Linear, VarBuilder};

/// PyTorch's default initialisation for a layer with `fan_in` inputs: uniform ±1/√fan_in.
fn default_init(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// A `k×k` convolution, with or without bias.
fn conv(
    in_ch: usize,
    out_ch: usize,
    k: usize,
    bias: bool,
    cfg: Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let init = default_init(in_ch * k * k);
    let w = vb.get_with_hints((out_ch, in_ch, k, k), "weight", init)?;
    let b = if bias {
        Some(vb.get_with_hints(out_ch, "bias", init)?)
    } else {
        None
    };
    Ok(Conv2d::new(w, b, cfg))
}

/// A `k×k` convolution with bias.
pub fn conv2d(
    in_ch: usize,
    out_ch: usize,
    k: usize,
    cfg: Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    conv(in_ch, out_ch, k, true, cfg, vb)
}

/// A `k×k` convolution without bias.
pub fn conv2d_no_bias(
    in_ch: usize,
    out_ch: usize,
    k: usize,
    cfg: Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    conv(in_ch, out_ch, k, false, cfg, vb)
}

/// 3×3 convolution, stride 1, padding 1.
pub fn conv3x3(in_ch: usize, out_ch: usize, vb: VarBuilder) -> Result<Conv2d> {
    conv2d(
        in_ch,
        out_ch,
        3,
        Conv2dConfig {
            padding: 1,
            ..Default::default()
        },
        vb,
    )
}

/// 1×1 convolution.
pub fn conv1x1(in_ch: usize, out_ch: usize, vb: VarBuilder) -> Result<Conv2d> {
    conv2d(in_ch, out_ch, 1, Default::default(), vb)
}

/// A linear layer with bias.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let bound = 1.0 / (in_dim as f64).sqrt();
    let init = Init::Uniform {
        lo: -bound,
        up: bound,
    };
    let w = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
    let b = vb.get_with_hints(out_dim, "bias", init)?;
    Ok(Linear::new(w, Some(b)))
}

/// GroupNorm with eps 1e-6 and its own affine weights (ones / zeros).
pub fn group_norm(groups: usize, channels: usize, vb: VarBuilder) -> Result<GroupNorm> {
    candle_nn::group_norm(groups, channels, 1e-6, vb)
}
