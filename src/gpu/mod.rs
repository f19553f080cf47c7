//! GPU kernels behind candle custom ops with forward and backward passes, used on CUDA devices
//! in place of candle's composed (or slow) ops: fused GroupNorm / SpatialNorm / SiLU, fused
//! multi-head attention, LayerNorm, bias (+ GELU) and the Adam step (the `cuda` feature; kernels compiled by `build.rs` with nvcc) and cuDNN
//! convolutions (the `cudnn` feature). The CPU build has none of it; `MOVQ_KERNELS=off` turns it off on the GPU (for
//! comparison), and every op has a test against the composed candle ops on the GPU
//! (`tests/integration/gpu_kernels.rs`).

/// The `cpu_fwd` of a custom op that runs on CUDA only, for `CustomOp1`/`2`/`3` (by the number
/// of inputs): an error saying that `$what` runs on CUDA only.
#[cfg(feature = "cuda")]
macro_rules! cuda_only {
    (1, $what:expr) => {
        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            candle_core::bail!("{} run on CUDA only", $what)
        }
    };
    (2, $what:expr) => {
        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            candle_core::bail!("{} run on CUDA only", $what)
        }
    };
    (3, $what:expr) => {
        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            candle_core::bail!("{} run on CUDA only", $what)
        }
    };
}

#[cfg(feature = "cuda")]
pub mod adam;
#[cfg(feature = "cuda")]
pub mod attention;
#[cfg(feature = "cuda")]
pub mod bias;
#[cfg(feature = "cuda")]
pub mod block;
#[cfg(feature = "cudnn")]
pub mod conv;
#[cfg(feature = "cuda")]
pub mod embedding;
#[cfg(feature = "cuda")]
pub mod group_norm;
#[cfg(feature = "cuda")]
pub mod layer_norm;
#[cfg(feature = "cuda")]
mod rows;
#[cfg(feature = "cuda")]
pub mod token_choice;

#[cfg(feature = "cuda")]
use candle_core::DType;
use candle_core::Device;

/// Whether the kernels of this module run for tensors on `dev`: a CUDA device in a `cuda`
/// build, unless `MOVQ_KERNELS=off`.
pub fn enabled(dev: &Device) -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    cfg!(feature = "cuda")
        && dev.is_cuda()
        && !*OFF.get_or_init(|| std::env::var("MOVQ_KERNELS").is_ok_and(|v| v == "off"))
}

/// Whether convolutions run through cuDNN on `dev` (a `cudnn` build on a CUDA device).
pub fn cudnn_enabled(dev: &Device) -> bool {
    cfg!(feature = "cudnn") && enabled(dev)
}

/// `silu?(GroupNorm(x) · scale↑ + shift↑)` through the fused kernel when it runs for `x` (a
/// `[B, C, H, W]` tensor on a CUDA device, kernels on); `None` otherwise, for the caller's
/// composed ops. See [`group_norm::group_norm`] for the arguments.
pub fn fused_group_norm(
    x: &candle_core::Tensor,
    gamma: &candle_core::Tensor,
    beta: &candle_core::Tensor,
    groups: usize,
    eps: f64,
    modulation: Option<(&candle_core::Tensor, &candle_core::Tensor)>,
    silu: bool,
) -> candle_core::Result<Option<candle_core::Tensor>> {
    #[cfg(feature = "cuda")]
    if enabled(x.device()) && x.rank() == 4 {
        return group_norm::group_norm(x, gamma, beta, groups, eps, modulation, silu).map(Some);
    }
    let _ = (x, gamma, beta, groups, eps, modulation, silu);
    Ok(None)
}

/// `x ⋆ w (+ b)` (zero padding `padding`, stride `stride`, a bias per output channel) through
/// cuDNN when it runs for `x` (a `cudnn` build, `x` on a CUDA device, kernels on): with a bias,
/// one graph node that adds it in place; `None` otherwise.
pub fn cudnn_conv2d(
    x: &candle_core::Tensor,
    w: &candle_core::Tensor,
    b: Option<&candle_core::Tensor>,
    padding: usize,
    stride: usize,
) -> candle_core::Result<Option<candle_core::Tensor>> {
    #[cfg(feature = "cudnn")]
    if cudnn_enabled(x.device()) {
        return match b {
            Some(b) => conv::conv2d_bias(x, w, b, padding, stride).map(Some),
            None => conv::conv2d(x, w, padding, stride).map(Some),
        };
    }
    let _ = (x, w, b, padding, stride);
    Ok(None)
}

/// Multi-head self-attention of the packed projection `qkv` `[B, T, 3·H·Dh]` → `[B, T, H·Dh]`
/// through the fused kernel when it runs for `qkv` (bf16 on a CUDA device, kernels on, a
/// compiled head width: see [`attention::supported`]); `None` otherwise.
pub fn fused_attention(
    qkv: &candle_core::Tensor,
    heads: usize,
) -> candle_core::Result<Option<candle_core::Tensor>> {
    #[cfg(feature = "cuda")]
    if enabled(qkv.device()) && attention::supported(qkv, heads) {
        return attention::attention(qkv, heads).map(Some);
    }
    let _ = (qkv, heads);
    Ok(None)
}

/// `act(x + b)` over the last dimension (`gelu`: the exact GELU) through the fused kernel when
/// it runs for `x` (f32 or bf16 on a CUDA device, kernels on); `None` otherwise.
pub fn fused_bias_act(
    x: &candle_core::Tensor,
    b: &candle_core::Tensor,
    gelu: bool,
) -> candle_core::Result<Option<candle_core::Tensor>> {
    #[cfg(feature = "cuda")]
    if enabled(x.device()) && matches!(x.dtype(), DType::F32 | DType::BF16) {
        return bias::bias_act(x, b, gelu).map(Some);
    }
    let _ = (x, b, gelu);
    Ok(None)
}

/// `x + b` over the channels of a `[B, C, H, W]` tensor through one kernel (gradient of `b` by
/// per-plane sums) when it runs for `x` (f32 or bf16 on a CUDA device, kernels on); `None`
/// otherwise.
pub fn fused_channel_bias(
    x: &candle_core::Tensor,
    b: &candle_core::Tensor,
) -> candle_core::Result<Option<candle_core::Tensor>> {
    #[cfg(feature = "cuda")]
    if enabled(x.device()) && x.rank() == 4 && matches!(x.dtype(), DType::F32 | DType::BF16) {
        return bias::channel_bias(x, b).map(Some);
    }
    let _ = (x, b);
    Ok(None)
}

/// `table[ids]` (`table` `[V, D]` f32, `ids` `[N]` u32) with an atomic scatter-add backward pass
/// when it runs for `table` (on a CUDA device, kernels on); `None` otherwise.
pub fn fused_gather_rows(
    table: &candle_core::Tensor,
    ids: &candle_core::Tensor,
) -> candle_core::Result<Option<candle_core::Tensor>> {
    #[cfg(feature = "cuda")]
    if enabled(table.device())
        && table.dtype() == DType::F32
        && table.rank() == 2
        && ids.dtype() == DType::U32
        && ids.rank() == 1
    {
        return embedding::gather_rows(table, ids).map(Some);
    }
    let _ = (table, ids);
    Ok(None)
}

/// LayerNorm over the last dimension through the fused kernel when it runs for `x` (f32 or
/// bf16 on a CUDA device, kernels on); `None` otherwise.
pub fn fused_layer_norm(
    x: &candle_core::Tensor,
    w: &candle_core::Tensor,
    b: &candle_core::Tensor,
    eps: f32,
) -> candle_core::Result<Option<candle_core::Tensor>> {
    #[cfg(feature = "cuda")]
    if enabled(x.device()) && matches!(x.dtype(), DType::F32 | DType::BF16) {
        return layer_norm::layer_norm(x, w, b, eps).map(Some);
    }
    let _ = (x, w, b, eps);
    Ok(None)
}

/// The parameters of a pre-LayerNorm transformer block (f32 master copies; weights `[out, in]`):
/// LayerNorms as (scale, shift), linear layers as (weight, bias).
#[derive(Debug, Clone, Copy)]
pub struct BlockWeights<'a> {
    pub ln1: (&'a candle_core::Tensor, &'a candle_core::Tensor),
    pub qkv: (&'a candle_core::Tensor, &'a candle_core::Tensor),
    pub proj: (&'a candle_core::Tensor, &'a candle_core::Tensor),
    pub ln2: (&'a candle_core::Tensor, &'a candle_core::Tensor),
    pub fc1: (&'a candle_core::Tensor, &'a candle_core::Tensor),
    pub fc2: (&'a candle_core::Tensor, &'a candle_core::Tensor),
    /// LayerNorm's ε.
    pub eps: f32,
    pub heads: usize,
}

/// The transformer blocks `ws`, each `x + attn(ln1(x))` then `+ mlp(ln2(·))`, one after the
/// other as one graph node with its own backward pass (parameter gradients to `grads`) when it
/// runs for `x` (`[B, T, D]` bf16 on a CUDA device, kernels on, head widths the fused attention
/// takes) and a backward pass can reach the parameters; `None` otherwise. See [`block::blocks`].
pub fn fused_blocks(
    x: &candle_core::Tensor,
    ws: &[BlockWeights],
    grads: &crate::nn::side_grads::SideGrads,
) -> candle_core::Result<Option<candle_core::Tensor>> {
    #[cfg(feature = "cuda")]
    if enabled(x.device()) && x.dtype() == DType::BF16 && x.rank() == 3 {
        let (b, t, d) = x.dims3()?;
        let fits = |w: &BlockWeights| {
            w.ln1.0.track_op() && attention::supported_dims(b, t, 3 * d, w.heads)
        };
        if !ws.is_empty() && ws.iter().all(fits) {
            return block::blocks(x, ws, grads).map(Some);
        }
    }
    let _ = (x, ws, grads);
    Ok(None)
}

/// The scalars of one Adam / AdamW step ([`fused_adam_step`]).
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    pub lr: f32,
    pub betas: (f32, f32),
    pub eps: f32,
    pub weight_decay: f32,
    /// AdamW's decoupled weight decay, else Adam's L2 term.
    pub decoupled: bool,
    /// Bias corrections `1 − β1ᵗ`, `1 − β2ᵗ`.
    pub bias: (f32, f32),
    /// Factor on the gradient (global-norm clipping; 1 without).
    pub grad_scale: f32,
}

/// Updates `param` and its moments `m`, `v` in place with one kernel when it runs for `param`
/// (a CUDA device, kernels on); returns whether it did (else the caller composes the update).
pub fn fused_adam_step(
    param: &candle_core::Tensor,
    m: &candle_core::Tensor,
    v: &candle_core::Tensor,
    grad: &candle_core::Tensor,
    step: AdamStep,
) -> candle_core::Result<bool> {
    #[cfg(feature = "cuda")]
    if enabled(param.device()) {
        adam::step(param, m, v, &grad.contiguous()?, step)?;
        return Ok(true);
    }
    let _ = (param, m, v, grad, step);
    Ok(false)
}

/// `x Wᵀ + b` (`x` `[rows, in]`, `w` `[out, in]` in `x`'s dtype) with the bias added in place on
/// the matmul's output when it runs for `x` (f32 or bf16 on a CUDA device, kernels on); `None`
/// otherwise.
pub fn fused_linear(
    x: &candle_core::Tensor,
    w: &candle_core::Tensor,
    b: &candle_core::Tensor,
) -> candle_core::Result<Option<candle_core::Tensor>> {
    #[cfg(feature = "cuda")]
    if enabled(x.device()) && matches!(x.dtype(), DType::F32 | DType::BF16) {
        return bias::linear(x, w, b).map(Some);
    }
    let _ = (x, w, b);
    Ok(None)
}

/// `residual + x Wᵀ + b` (`x` `[rows, in]`, `w` `[out, in]` in `x`'s dtype, `residual`
/// `[rows, out]`) with bias and residual added in place on the matmul's output, when it runs
/// for `x` (f32 or bf16 on a CUDA device, kernels on) and no backward pass can reach any of the
/// inputs (inference: the op has none); `None` otherwise.
pub fn fused_linear_residual(
    x: &candle_core::Tensor,
    w: &candle_core::Tensor,
    b: &candle_core::Tensor,
    residual: &candle_core::Tensor,
) -> candle_core::Result<Option<candle_core::Tensor>> {
    #[cfg(feature = "cuda")]
    if enabled(x.device())
        && matches!(x.dtype(), DType::F32 | DType::BF16)
        && residual.dtype() == x.dtype()
        && ![x, w, b, residual].iter().any(|t| t.track_op())
    {
        return bias::linear_residual(x, w, b, residual).map(Some);
    }
    let _ = (x, w, b, residual);
    Ok(None)
}

/// The scalars of one MaskGIT step's token choice ([`fused_choose_tokens`]).
#[derive(Debug, Clone, Copy)]
pub struct TokenChoice {
    /// The `[MASK]` id: only those tokens are chosen; the others keep their value.
    pub mask: u32,
    /// 1 / the sampling temperature.
    pub inv_temp: f32,
    /// The argmax instead of a sample.
    pub top1: bool,
    /// The weight of the Gumbel noise on the confidence.
    pub noise: f32,
    /// The random stream of this step.
    pub seed: u64,
}

/// One MaskGIT step's choice for every token of `tokens` `[B, L]` (u32) from `logits`
/// `[B, L, K]` (f32 or bf16, the last two dimensions contiguous): a `[MASK]` token gets a
/// sample (or the argmax) of softmax(logits / temperature) and the confidence log p(choice) +
/// noise · Gumbel; a known token keeps its value with confidence +∞. One kernel per step when it
/// runs for `logits` (a CUDA device, kernels on); `None` otherwise. Returns (tokens u32 `[B, L]`,
/// confidence f32 `[B, L]`).
pub fn fused_choose_tokens(
    logits: &candle_core::Tensor,
    tokens: &candle_core::Tensor,
    choice: &TokenChoice,
) -> candle_core::Result<Option<(candle_core::Tensor, candle_core::Tensor)>> {
    #[cfg(feature = "cuda")]
    if enabled(logits.device()) && matches!(logits.dtype(), DType::F32 | DType::BF16) {
        return token_choice::choose_tokens(logits, tokens, choice).map(Some);
    }
    let _ = (logits, tokens, choice);
    Ok(None)
}

/// `Σ g²` over every element of `grads` (f32), as f64, with one kernel per tensor adding into
/// one accumulator, when it runs for them (all f32 on one CUDA device, kernels on); `None`
/// otherwise.
pub fn fused_sum_of_squares(grads: &[&candle_core::Tensor]) -> candle_core::Result<Option<f64>> {
    #[cfg(feature = "cuda")]
    if let Some(first) = grads.first() {
        let dev = first.device();
        if enabled(dev)
            && grads
                .iter()
                .all(|g| g.dtype() == DType::F32 && g.device().same_device(dev))
        {
            let acc = candle_core::Tensor::zeros(1, DType::F32, dev)?;
            for g in grads {
                adam::add_sum_of_squares(&acc, g)?;
            }
            return Ok(Some(acc.to_vec1::<f32>()?[0] as f64));
        }
    }
    let _ = grads;
    Ok(None)
}
