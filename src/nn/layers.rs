//! Plain layers with PyTorch's default initialisation (uniform ±1/√fan_in).
//!
//! Every layer follows the dtype of its input: the weights stay f32 (the master copy that the
//! optimizer updates) and are cast to the input's dtype for the convolution or matmul, so a
//! network runs in bf16 simply by casting its input (see [`crate::nn::precision`]). The casts
//! are differentiable, so gradients reach the f32 weights. Normalizations compute their
//! statistics in f32 whatever the input dtype.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, Init, VarBuilder};

use crate::ops::linear::{linear_rows, Act};
use crate::profile;

/// PyTorch's default initialisation for a layer with `fan_in` inputs: uniform ±1/√fan_in.
fn default_init(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// A 2-D convolution computed in its input's dtype ([`crate::ops::conv`]).
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    cfg: Conv2dConfig,
}

impl Conv2d {
    pub fn new(weight: Tensor, bias: Option<Tensor>, cfg: Conv2dConfig) -> Self {
        Self { weight, bias, cfg }
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let name = || {
            let (_, cin, h, _) = x.dims4().unwrap_or_default();
            let k = self.weight.dim(2).unwrap_or(0);
            format!("conv {k}x{k}/{} {cin}ch {h}px", self.cfg.stride)
        };
        profile::scope(name, x.device(), || self.forward_inner(x))
    }
}

impl Conv2d {
    fn forward_inner(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.cfg;
        if c.dilation != 1 || c.groups != 1 {
            candle_core::bail!("convolutions are undilated and ungrouped");
        }
        let w = self.weight.to_dtype(x.dtype())?;
        crate::ops::conv::conv2d(x, &w, self.bias.as_ref(), c.padding, c.stride)
    }
}

/// `y = x·Wᵀ + b` over the last dimension, computed in its input's dtype.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// The weight `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias `[out]`, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The layer for inference: its parameters detached from the graph and the weight cast to
    /// `dtype` once (the matmul then uses it as it is, instead of casting it at every call).
    pub fn for_inference(&self, dtype: DType) -> Result<Self> {
        Ok(Self {
            weight: self.weight.detach().to_dtype(dtype)?,
            bias: self.bias.as_ref().map(Tensor::detach),
        })
    }

    /// `residual + x Wᵀ + b`: where no backward pass can reach any of them (inference), bias
    /// and residual go onto the matmul's output in place in one pass on the GPU.
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let name = || {
            format!(
                "linear {}x{} + residual",
                self.weight.dim(1).unwrap_or(0),
                self.weight.dim(0).unwrap_or(0)
            )
        };
        profile::scope(name, x.device(), || {
            self.forward_act(x, false, Some(residual))
        })
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let name = || {
            format!(
                "linear {}x{}",
                self.weight.dim(1).unwrap_or(0),
                self.weight.dim(0).unwrap_or(0)
            )
        };
        profile::scope(name, x.device(), || self.forward_inner(x))
    }
}

impl Linear {
    /// `gelu(x Wᵀ + b)` (the exact GELU), bias and activation fused on the GPU.
    pub fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        let name = || {
            format!(
                "linear {}x{} + gelu",
                self.weight.dim(1).unwrap_or(0),
                self.weight.dim(0).unwrap_or(0)
            )
        };
        profile::scope(name, x.device(), || self.forward_act(x, true, None))
    }

    fn forward_inner(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, false, None)
    }

    /// `act(x Wᵀ + b)` over the last dimension of `x`, plus `residual` (`x`'s shape with `out`
    /// last) when given ([`crate::ops::linear`]).
    fn forward_act(&self, x: &Tensor, gelu: bool, residual: Option<&Tensor>) -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        let (out, inp) = self.weight.dims2()?;
        let rows = x.elem_count() / inp;
        let w = self.weight.to_dtype(x.dtype())?;
        let x = x.reshape((rows, inp))?;
        let residual = residual.map(|r| r.reshape((rows, out))).transpose()?;
        let act = if gelu { Act::Gelu } else { Act::None };
        let y = linear_rows(&x, &w, self.bias.as_ref(), act, residual.as_ref())?;
        *dims
            .last_mut()
            .expect("a linear layer's input has a last dimension") = out;
        y.reshape(dims)
    }
}

/// GroupNorm over `[B, C, ...]`: statistics in f32, affine in f32, result in the input's dtype.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_modulated(x, None, false)
    }
}

impl GroupNorm {
    /// `silu?(GroupNorm(x) · scale↑ + shift↑)`: with `modulation` (scale, shift) `[B, C, h, w]`,
    /// `h | H`, `w | W`, broadcast over each `H/h × W/w` block (SpatialNorm), and SiLU when
    /// `silu` ([`crate::ops::group_norm`]).
    pub fn forward_modulated(
        &self,
        x: &Tensor,
        modulation: Option<(&Tensor, &Tensor)>,
        silu: bool,
    ) -> Result<Tensor> {
        profile::scope(
            || "group_norm".into(),
            x.device(),
            || {
                crate::ops::group_norm::group_norm(
                    x,
                    &self.weight,
                    &self.bias,
                    self.groups,
                    self.eps,
                    modulation,
                    silu,
                )
            },
        )
    }
}

/// LayerNorm over the last dimension: computed in f32, result in the input's dtype.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    pub fn new(weight: Tensor, bias: Tensor, eps: f32) -> Self {
        Self { weight, bias, eps }
    }

    /// The scale, the shift (`[D]` each) and ε.
    pub fn parts(&self) -> (&Tensor, &Tensor, f32) {
        (&self.weight, &self.bias, self.eps)
    }

    /// The layer with its parameters detached from the graph (inference).
    pub fn detached(&self) -> Self {
        Self::new(self.weight.detach(), self.bias.detach(), self.eps)
    }
}

impl Module for LayerNorm {
    /// [`crate::ops::layer_norm`].
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        profile::scope(|| "layer_norm".into(), x.device(), || self.forward_inner(x))
    }
}

impl LayerNorm {
    fn forward_inner(&self, x: &Tensor) -> Result<Tensor> {
        crate::ops::layer_norm::layer_norm(x, &self.weight, &self.bias, self.eps)
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

/// GroupNorm with eps 1e-6 and its own affine weights (ones / zeros).
pub fn group_norm(groups: usize, channels: usize, vb: VarBuilder) -> Result<GroupNorm> {
    if groups == 0 || !channels.is_multiple_of(groups) {
        candle_core::bail!("GroupNorm: {channels} channels do not split into {groups} groups");
    }
    Ok(GroupNorm {
        weight: vb.get_with_hints(channels, "weight", Init::Const(1.0))?,
        bias: vb.get_with_hints(channels, "bias", Init::Const(0.0))?,
        groups,
        eps: 1e-6,
    })
}
