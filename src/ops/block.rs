//! The transformer's pre-LayerNorm block, `x + attn(ln1(x))` then `+ mlp(ln2(·))` with a GELU
//! MLP: its parameters, composed forward pass, and the stack of blocks as one op.
//!
//! While training in bf16 on CUDA, the whole stack runs as one graph node with its own backward
//! pass ([`crate::gpu::block`], the parameters' gradients handed back through a
//! [`SideGrads`]), and so it does in f32 on the CPU ([`crate::cpu::block`]); elsewhere block
//! after block of the ops below. Both read the same [`Block`].

use std::sync::Mutex;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::compute::fused_kernels;
use crate::config::TransformerConfig;
use crate::gpu::side_grads::SideGrads;
use crate::nn::layers::{LayerNorm, Linear};
use crate::ops::attention::attention;

const INIT_STD: f64 = 0.02;

/// A linear layer of the transformer: weight `N(0, 0.02)`, zero bias.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let w = vb.get_with_hints(
        (out_dim, in_dim),
        "weight",
        Init::Randn {
            mean: 0.0,
            stdev: INIT_STD,
        },
    )?;
    let b = vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?;
    Ok(Linear::new(w, Some(b)))
}

/// A LayerNorm of the transformer: scale 1, shift 0, ε 1e-5.
pub fn layer_norm(dim: usize, vb: VarBuilder) -> Result<LayerNorm> {
    let w = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
    let b = vb.get_with_hints(dim, "bias", Init::Const(0.0))?;
    Ok(LayerNorm::new(w, b, 1e-5))
}

/// One block's layers (every linear layer has a bias).
#[derive(Debug, Clone)]
pub struct Block {
    pub ln1: LayerNorm,
    /// The packed query, key and value projection `[3·D, D]`.
    pub qkv: Linear,
    pub proj: Linear,
    pub ln2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    pub heads: usize,
}

impl Block {
    pub fn new(cfg: &TransformerConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.width;
        Ok(Self {
            ln1: layer_norm(d, vb.pp("ln1"))?,
            qkv: linear(d, 3 * d, vb.pp("attn.qkv"))?,
            proj: linear(d, d, vb.pp("attn.proj"))?,
            ln2: layer_norm(d, vb.pp("ln2"))?,
            fc1: linear(d, cfg.mlp, vb.pp("mlp.fc1"))?,
            fc2: linear(cfg.mlp, d, vb.pp("mlp.fc2"))?,
            heads: cfg.heads,
        })
    }

    /// The parameters in the order the fused stack keys their gradients (ln1 scale and shift,
    /// qkv, proj weight and bias, ln2, fc1, fc2), and LayerNorm's ε.
    pub fn parameters(&self) -> Result<([&Tensor; 12], f32)> {
        fn lin<'a>(l: &'a Linear, what: &str) -> Result<(&'a Tensor, &'a Tensor)> {
            match l.bias() {
                Some(b) => Ok((l.weight(), b)),
                None => candle_core::bail!("transformer block: {what} has no bias"),
            }
        }
        let (ln1w, ln1b, eps) = self.ln1.parts();
        let (ln2w, ln2b, _) = self.ln2.parts();
        let (qkv, proj) = (lin(&self.qkv, "qkv")?, lin(&self.proj, "proj")?);
        let (fc1, fc2) = (lin(&self.fc1, "fc1")?, lin(&self.fc2, "fc2")?);
        Ok((
            [
                ln1w, ln1b, qkv.0, qkv.1, proj.0, proj.1, ln2w, ln2b, fc1.0, fc1.1, fc2.0, fc2.1,
            ],
            eps,
        ))
    }

    /// The block composed of its layers, `[B, T, D]` → `[B, T, D]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = attention(&self.qkv.forward(&self.ln1.forward(x)?)?, self.heads)?;
        let x = self.proj.forward_residual(&a, x)?;
        let h = self.fc1.forward_gelu(&self.ln2.forward(&x)?)?;
        self.fc2.forward_residual(&h, &x)
    }

    /// The block for inference: parameters detached, the linear weights cast to `dtype` once.
    pub fn for_inference(&self, dtype: DType) -> Result<Self> {
        Ok(Self {
            ln1: self.ln1.detached(),
            qkv: self.qkv.for_inference(dtype)?,
            proj: self.proj.for_inference(dtype)?,
            ln2: self.ln2.detached(),
            fc1: self.fc1.for_inference(dtype)?,
            fc2: self.fc2.for_inference(dtype)?,
            heads: self.heads,
        })
    }
}

/// The blocks one after the other on `x` `[B, T, D]`. As one fused node (parameter gradients to
/// `side`) when training in bf16 on CUDA with head widths the fused attention takes, and in f32
/// on the CPU ([`crate::cpu::block`]).
pub fn stack(x: &Tensor, blocks: &[Block], side: &SideGrads) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if fused_kernels(x.device())
        && x.device().is_cuda()
        && x.dtype() == DType::BF16
        && x.rank() == 3
        && !blocks.is_empty()
    {
        let (b, t, d) = x.dims3()?;
        let fits = |blk: &Block| {
            blk.ln1.parts().0.track_op()
                && crate::gpu::attention::supported_dims(b, t, 3 * d, blk.heads)
        };
        if blocks.iter().all(fits) {
            return crate::gpu::block::blocks(x, blocks, side);
        }
    }
    if cpu_fused(x, blocks) {
        return crate::cpu::block::blocks(x, blocks, side);
    }
    composed(x, blocks)
}

/// Whether the CPU's fused node runs the blocks on `x`: movq's kernels on, f32 `[B, T, D]` on
/// the CPU, at least one block.
fn cpu_fused(x: &Tensor, blocks: &[Block]) -> bool {
    fused_kernels(x.device())
        && x.device().is_cpu()
        && x.dtype() == DType::F32
        && x.rank() == 3
        && !blocks.is_empty()
}

/// The layers after the blocks: the final LayerNorm and the head, which maps each position's
/// features to logits.
#[derive(Clone, Copy)]
pub struct OutputLayers<'a> {
    pub ln_f: &'a LayerNorm,
    pub head: &'a Linear,
}

/// The blocks on `x` `[B, T, D]`, then the output layers on the positions `1..T` (after the
/// conditioning slot): logits `[B, T − 1, K]` in the compute dtype. While training in f32 on
/// the CPU, blocks and output layers are one node ([`crate::cpu::block::blocks_and_output`]);
/// elsewhere [`stack`] then the output layers' ops.
pub fn logits(x: &Tensor, blocks: &[Block], out: OutputLayers, side: &SideGrads) -> Result<Tensor> {
    let (_, t, _) = x.dims3()?;
    if t < 2 {
        candle_core::bail!("transformer output: {t} positions, none after the conditioning slot");
    }
    if cpu_fused(x, blocks) {
        return crate::cpu::block::blocks_and_output(x, blocks, out, side);
    }
    out.after(&stack(x, blocks, side)?)
}

/// [`logits`] composed of candle ops (the reference of the fused CPU node).
pub fn logits_composed(x: &Tensor, blocks: &[Block], out: OutputLayers) -> Result<Tensor> {
    out.after(&composed(x, blocks)?)
}

impl OutputLayers<'_> {
    /// The logits of the last block's output `h` `[B, T, D]` at the positions after the first.
    fn after(&self, h: &Tensor) -> Result<Tensor> {
        let t = h.dim(1)?;
        self.head
            .forward(&self.ln_f.forward(&h.narrow(1, 1, t - 1)?)?)
    }
}

/// [`stack`] composed of candle ops, block after block (and the reference of the fused stacks).
pub fn composed(x: &Tensor, blocks: &[Block]) -> Result<Tensor> {
    let mut h = x.clone();
    for block in blocks {
        h = block.forward(&h)?;
    }
    Ok(h)
}

/// What a fused stack's graph node hands over once: its output to the forward call, what its
/// forward pass kept to the backward pass. A second taker gets an error naming `what` was taken
/// (a second backward pass through the same node is refused, not silently wrong).
pub struct Handover<T>(Mutex<Option<T>>);

impl<T> Handover<T> {
    pub fn new(value: T) -> Self {
        Self(Mutex::new(Some(value)))
    }

    /// The value, once; `taken` says what an error should report.
    pub fn take(&self, taken: &str) -> Result<T> {
        match self.0.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(v) => Ok(v),
            None => candle_core::bail!("fused transformer blocks: {taken}"),
        }
    }
}
