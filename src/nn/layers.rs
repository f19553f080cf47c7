//! Plain layers with PyTorch's default initialisation (uniform ±1/√fan_in).
//!
//! Every layer follows the dtype of its input: the weights stay f32 (the master copy that the
//! optimizer updates) and are cast to the input's dtype for the convolution or matmul, so a
//! network runs in bf16 simply by casting its input (see [`crate::nn::precision`]). The casts
//! are differentiable, so gradients reach the f32 weights. Normalizations compute their
//! statistics in f32 whatever the input dtype.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Conv2dConfig, Init, VarBuilder};

use crate::nn::conv::conv2d_gemm;
use crate::profile;

/// PyTorch's default initialisation for a layer with `fan_in` inputs: uniform ±1/√fan_in.
fn default_init(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// `MOVQ_CONV=candle` routes every convolution through candle's own `conv2d` (for comparison)
/// instead of cuDNN ([`crate::gpu::cudnn_conv2d`], `cudnn` builds) or [`conv2d_gemm`].
fn candle_conv() -> bool {
    static CANDLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CANDLE.get_or_init(|| std::env::var("MOVQ_CONV").is_ok_and(|v| v == "candle"))
}

/// A 2-D convolution computed in its input's dtype: through cuDNN on the GPU in a `cudnn` build,
/// else stride-1 convolutions as matrix products ([`conv2d_gemm`]) and strided ones through
/// candle.
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
        let dt = x.dtype();
        let c = self.cfg;
        let w = self.weight.to_dtype(dt)?;
        let k = w.dim(2)?;
        let plain = c.stride == 1 && c.dilation == 1 && c.groups == 1 && c.padding < k;
        if c.dilation == 1 && c.groups == 1 && !candle_conv() {
            // cuDNN, the bias added in the same graph node
            if let Some(y) =
                crate::gpu::cudnn_conv2d(x, &w, self.bias.as_ref(), c.padding, c.stride)?
            {
                return Ok(y);
            }
        }
        if c.dilation == 1 && c.groups == 1 && !candle_conv() && crate::nn::cpu_conv::supports(x) {
            // the CPU's unfolded-window convolution, the bias added in the same pass
            return crate::nn::cpu_conv::conv2d(x, &w, self.bias.as_ref(), c.padding, c.stride);
        }
        let y = if plain && !candle_conv() {
            conv2d_gemm(x, &w, c.padding)?
        } else {
            x.conv2d(&w, c.padding, c.stride, c.dilation, c.groups)?
        };
        match &self.bias {
            None => Ok(y),
            Some(b) => match crate::gpu::fused_channel_bias(&y, b)? {
                Some(y) => Ok(y),
                None => {
                    let n = b.dim(0)?;
                    y.broadcast_add(&b.to_dtype(dt)?.reshape((1, n, 1, 1))?)
                }
            },
        }
    }
}

/// The rows of `table` `[V, D]` at `ids` (u32, any shape) → `ids`' shape + `[D]`: an embedding
/// lookup, through the gather kernel on the GPU (its gradient by an atomic scatter-add, where
/// candle's `index_add` walks every id per column).
pub fn embed(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let flat = ids.flatten_all()?;
    let rows = match crate::gpu::fused_gather_rows(table, &flat)? {
        Some(rows) => rows,
        None => table.index_select(&flat, 0)?,
    };
    let mut dims = ids.dims().to_vec();
    dims.push(table.dim(1)?);
    rows.reshape(dims)
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
    /// last) when given.
    fn forward_act(&self, x: &Tensor, gelu: bool, residual: Option<&Tensor>) -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        let (out, inp) = self.weight.dims2()?;
        let rows = x.elem_count() / inp;
        let w = self.weight.to_dtype(x.dtype())?;
        let x = x.reshape((rows, inp))?;
        let residual = residual.map(|r| r.reshape((rows, out))).transpose()?;
        let fused = match (&residual, &self.bias) {
            (Some(r), Some(b)) if !gelu => crate::gpu::fused_linear_residual(&x, &w, b, r)?,
            _ => None,
        };
        let y = match (fused, residual) {
            (Some(y), _) => y,
            (None, Some(r)) => (r + self.rows_forward(&x, &w, gelu)?)?,
            (None, None) => self.rows_forward(&x, &w, gelu)?,
        };
        *dims
            .last_mut()
            .expect("a linear layer's input has a last dimension") = out;
        y.reshape(dims)
    }

    /// `act(x Wᵀ + b)` for `x` `[rows, in]` and `w` the weight in `x`'s dtype: on the GPU the
    /// bias goes in place onto the matmul's output (no pre-bias tensor kept for the backward
    /// pass) or, with GELU, bias and activation run as one kernel.
    fn rows_forward(&self, x: &Tensor, w: &Tensor, gelu: bool) -> Result<Tensor> {
        let act = |y: Tensor| if gelu { y.gelu_erf() } else { Ok(y) };
        let Some(b) = &self.bias else {
            return act(x.matmul(&w.t()?)?);
        };
        if !gelu {
            if let Some(y) = crate::gpu::fused_linear(x, w, b)? {
                return Ok(y);
            }
        }
        let y = x.matmul(&w.t()?)?;
        match crate::gpu::fused_bias_act(&y, b, gelu)? {
            Some(y) => Ok(y),
            None => act(y.broadcast_add(&b.to_dtype(y.dtype())?)?),
        }
    }
}

/// `(x − mean) / √(var + eps)` over the last dimension, in f32 (population variance), composed
/// of differentiable ops (GroupNorm's rows; the reference for the fused LayerNorm's gradient).
pub fn standardize(x: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let n = x.dim(D::Minus1)? as f64;
    let mean = (x.sum_keepdim(D::Minus1)? / n)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = (xc.sqr()?.sum_keepdim(D::Minus1)? / n)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)
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
    /// `silu`. One fused kernel on the GPU ([`crate::gpu::fused_group_norm`]), composed ops
    /// elsewhere.
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
                let (w, b) = (&self.weight, &self.bias);
                let fused =
                    crate::gpu::fused_group_norm(x, w, b, self.groups, self.eps, modulation, silu)?;
                if let Some(y) = fused {
                    return Ok(y);
                }
                if crate::nn::cpu_group_norm::supports(x) {
                    return crate::nn::cpu_group_norm::group_norm(
                        x,
                        w,
                        b,
                        self.groups,
                        self.eps,
                        modulation,
                        silu,
                    );
                }
                let y = self.forward_inner(x)?;
                let y = match modulation {
                    None => y,
                    Some((scale, shift)) => modulate(&y, scale, shift)?,
                };
                if silu {
                    y.silu()
                } else {
                    Ok(y)
                }
            },
        )
    }

    fn forward_inner(&self, x: &Tensor) -> Result<Tensor> {
        let dt = x.dtype();
        let shape = x.dims().to_vec();
        let (b, c) = (shape[0], shape[1]);
        if !c.is_multiple_of(self.groups) {
            candle_core::bail!(
                "GroupNorm: {c} channels do not split into {} groups",
                self.groups
            );
        }
        let n = x.elem_count() / (b * self.groups);
        let normed = standardize(&x.reshape((b, self.groups, n))?, self.eps)?;
        let mut wdims = vec![1; shape.len()];
        wdims[1] = c;
        normed
            .reshape(shape)?
            .broadcast_mul(&self.weight.reshape(wdims.clone())?)?
            .broadcast_add(&self.bias.reshape(wdims)?)?
            .to_dtype(dt)
    }
}

/// `y · scale↑ + shift↑` with `scale`, `shift` `[B, C, h, w]` broadcast over each `H/h × W/w`
/// block of `y` `[B, C, H, W]` (nearest-neighbour upsampling without materialising it).
fn modulate(y: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = y.dims4()?;
    let (_, _, zh, zw) = scale.dims4()?;
    let blocks = |t: &Tensor| t.reshape((b, c, zh, 1, zw, 1));
    y.reshape((b, c, zh, h / zh, zw, w / zw))?
        .broadcast_mul(&blocks(scale)?)?
        .broadcast_add(&blocks(shift)?)?
        .reshape((b, c, h, w))
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
    /// candle's fused `ops::layer_norm` kernel with a backward pass of our own
    /// ([`crate::nn::standardize`]; candle's has none), then the affine in f32.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        profile::scope(|| "layer_norm".into(), x.device(), || self.forward_inner(x))
    }
}

impl LayerNorm {
    fn forward_inner(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = crate::gpu::fused_layer_norm(x, &self.weight, &self.bias, self.eps)? {
            return Ok(y);
        }
        let dt = x.dtype();
        crate::nn::standardize::standardize_last_dim(x, self.eps)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?
            .to_dtype(dt)
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
