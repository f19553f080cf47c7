//! The bidirectional (non-causal) masked transformer over multichannel tokens.

use candle_core::backprop::GradStore;
use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

use crate::config::TransformerConfig;
use crate::gpu::side_grads::SideGrads;
use crate::nn::layers::{LayerNorm, Linear};
use crate::ops::block::{layer_norm, linear, logits, stack, Block, OutputLayers};
use crate::ops::embedding::embed;
use crate::transformer::tokens::TokenLayout;

const INIT_STD: f64 = 0.02;

/// An embedding table `[n, dim]` (looked up with [`embed`]).
fn embedding(n: usize, dim: usize, vb: VarBuilder) -> Result<Tensor> {
    vb.get_with_hints(
        (n, dim),
        "weight",
        Init::Randn {
            mean: 0.0,
            stdev: INIT_STD,
        },
    )
}

#[derive(Debug, Clone)]
pub struct MaskTransformer {
    tok_emb: Tensor,
    cond_emb: Tensor,
    /// Learned embedding per spatial position `[h·w, D]`, per channel `[c, D]`, and for the
    /// conditioning slot `[1, D]`.
    pos_emb: Tensor,
    chan_emb: Tensor,
    cond_pos: Tensor,
    /// Sequence index → spatial position and channel, `[L]` u32 each.
    seq_pos: Tensor,
    seq_chan: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    head: Linear,
    layout: TokenLayout,
    /// Compute dtype of the blocks (f32, or bf16 for mixed precision).
    dtype: DType,
    /// Gradients of the blocks' parameters from fused blocks' own backward passes.
    side: SideGrads,
}

impl MaskTransformer {
    pub fn new(cfg: &TransformerConfig, layout: TokenLayout, vb: VarBuilder) -> Result<Self> {
        let d = cfg.width;
        let randn = Init::Randn {
            mean: 0.0,
            stdev: INIT_STD,
        };
        let dev = vb.device().clone();
        let l = layout.seq_len();
        let seq_pos: Vec<u32> = (0..l).map(|i| (i / layout.channels) as u32).collect();
        let seq_chan: Vec<u32> = (0..l).map(|i| (i % layout.channels) as u32).collect();
        Ok(Self {
            tok_emb: embedding(layout.vocab_size(), d, vb.pp("tok_emb"))?,
            cond_emb: embedding(layout.n_classes + 1, d, vb.pp("cond_emb"))?,
            pos_emb: vb.get_with_hints((layout.positions(), d), "pos_emb", randn)?,
            chan_emb: vb.get_with_hints((layout.channels, d), "chan_emb", randn)?,
            cond_pos: vb.get_with_hints((1, d), "cond_pos", randn)?,
            seq_pos: Tensor::new(seq_pos.as_slice(), &dev)?,
            seq_chan: Tensor::new(seq_chan.as_slice(), &dev)?,
            blocks: (0..cfg.layers)
                .map(|i| Block::new(cfg, vb.pp(format!("blocks.{i}"))))
                .collect::<Result<_>>()?,
            ln_f: layer_norm(d, vb.pp("ln_f"))?,
            head: linear(d, layout.codebook_size, vb.pp("head"))?,
            layout,
            dtype: DType::F32,
            side: SideGrads::new(),
        })
    }

    /// The same model computing its blocks in `dtype` (weights, embeddings and logits stay f32).
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    pub fn layout(&self) -> &TokenLayout {
        &self.layout
    }

    pub fn device(&self) -> &candle_core::Device {
        self.pos_emb.device()
    }

    /// The same model for sampling: every parameter detached from the graph, so that no
    /// backward pass can reach it (on the GPU, the blocks then add bias and residual in the
    /// matmul's output pass), and the linear layers' weights cast to the compute dtype once
    /// rather than at every pass. Shares the parameters' memory where no cast is needed.
    pub fn for_inference(&self) -> Result<Self> {
        let dt = self.dtype;
        Ok(Self {
            tok_emb: self.tok_emb.detach(),
            cond_emb: self.cond_emb.detach(),
            pos_emb: self.pos_emb.detach(),
            chan_emb: self.chan_emb.detach(),
            cond_pos: self.cond_pos.detach(),
            seq_pos: self.seq_pos.clone(),
            seq_chan: self.seq_chan.clone(),
            blocks: self
                .blocks
                .iter()
                .map(|b| b.for_inference(dt))
                .collect::<Result<_>>()?,
            ln_f: self.ln_f.detached(),
            head: self.head.for_inference(dt)?,
            layout: self.layout,
            dtype: dt,
            side: SideGrads::new(),
        })
    }

    /// `tokens`: `[B, L]` u32 (codes or `[MASK]`), `cond`: `[B]` u32 → logits `[B, L, K]`.
    pub fn forward(&self, tokens: &Tensor, cond: &Tensor) -> Result<Tensor> {
        let out = OutputLayers {
            ln_f: &self.ln_f,
            head: &self.head,
        };
        logits(&self.embedded(tokens, cond)?, &self.blocks, out, &self.side)?.to_dtype(DType::F32)
    }

    /// The last block's output `[B, 1 + L, D]` (the conditioning slot first), in the blocks'
    /// compute dtype.
    fn hidden(&self, tokens: &Tensor, cond: &Tensor) -> Result<Tensor> {
        stack(&self.embedded(tokens, cond)?, &self.blocks, &self.side)
    }

    /// The blocks' input `[B, 1 + L, D]`: the conditioning slot, then each token's embedding
    /// plus its position's and channel's, in the compute dtype.
    fn embedded(&self, tokens: &Tensor, cond: &Tensor) -> Result<Tensor> {
        let (_, l) = tokens.dims2()?;
        if l != self.layout.seq_len() {
            candle_core::bail!(
                "expected sequences of {} tokens, got {l}",
                self.layout.seq_len()
            );
        }
        let pos = (embed(&self.pos_emb, &self.seq_pos)? + embed(&self.chan_emb, &self.seq_chan)?)?; // [L, D]
        let x = embed(&self.tok_emb, tokens)?.broadcast_add(&pos)?; // [B, L, D]
        let c = embed(&self.cond_emb, cond)?
            .broadcast_add(&self.cond_pos)?
            .unsqueeze(1)?; // [B, 1, D]
        Tensor::cat(&[&c, &x], 1)?.to_dtype(self.dtype) // [B, L+1, D]
    }

    /// The logits of the `L` token positions `[B, L, K]` in the compute dtype: a view of the
    /// head's output over every position (the head takes the conditioning slot too, rather than
    /// a copy of the hidden states without it).
    fn logits_view(&self, tokens: &Tensor, cond: &Tensor) -> Result<Tensor> {
        let h = self.ln_f.forward(&self.hidden(tokens, cond)?)?;
        self.head.forward(&h)?.narrow(1, 1, self.layout.seq_len())
    }

    /// The gradients of `loss` (a function of this model's output) for every parameter: candle's
    /// backward pass, plus the gradients the fused blocks computed beside it.
    pub fn backward(&self, loss: &Tensor) -> Result<GradStore> {
        let mut grads = loss.backward()?;
        self.side.drain_into(&mut grads)?;
        Ok(grads)
    }

    /// Logits with classifier-free guidance: `(1+s)·cond − s·uncond` (plain conditional logits
    /// when `s = 0`).
    pub fn guided_logits(&self, tokens: &Tensor, cond: &Tensor, scale: f64) -> Result<Tensor> {
        self.sampling_logits(tokens, cond, scale)?
            .to_dtype(DType::F32)
    }

    /// [`Self::guided_logits`] as a sampler reads them: without guidance, a view of the logits
    /// in the compute dtype (no copy, no cast); with it, f32.
    pub fn sampling_logits(&self, tokens: &Tensor, cond: &Tensor, scale: f64) -> Result<Tensor> {
        let logits = self.logits_view(tokens, cond)?;
        if scale == 0.0 {
            return Ok(logits);
        }
        let none = Tensor::full(self.layout.no_class(), cond.dims(), cond.device())?;
        let uncond = self.logits_view(tokens, &none)?;
        let f32 = |t: Tensor| t.to_dtype(DType::F32);
        (f32(logits)? * (1.0 + scale))? - (f32(uncond)? * scale)?
    }
}

/// Number of parameters of a transformer of this size over this layout (what
/// [`MaskTransformer::new`] creates).
pub fn parameter_count(cfg: &TransformerConfig, layout: &TokenLayout) -> usize {
    let (d, m) = (cfg.width, cfg.mlp);
    let block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d);
    let embeddings =
        (layout.vocab_size() + layout.n_classes + 1 + layout.positions() + layout.channels + 1) * d;
    embeddings + cfg.layers * block + 2 * d + (d * layout.codebook_size + layout.codebook_size)
}

/// Masked-token cross-entropy with label smoothing `eps`, averaged over positions where
/// `weights` (`[B, L]` f32, 1 = masked) is 1; unmasked positions contribute exactly nothing.
/// Returns the loss and the accuracy of the argmax on masked positions.
/// On the CPU in f32 one op each way ([`crate::cpu::cross_entropy`]); elsewhere, and as its
/// reference, [`masked_cross_entropy_composed`].
pub fn masked_cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
    eps: f64,
) -> Result<(Tensor, f64)> {
    if crate::compute::fused_kernels(logits.device())
        && logits.device().is_cpu()
        && logits.dtype() == DType::F32
    {
        let (b, l, k) = logits.dims3()?;
        return crate::cpu::cross_entropy::masked_cross_entropy(
            &logits.reshape((b * l, k))?,
            &targets.reshape(b * l)?.to_dtype(DType::U32)?,
            &weights.reshape(b * l)?.to_dtype(DType::F32)?,
            eps as f32,
        );
    }
    masked_cross_entropy_composed(logits, targets, weights, eps)
}

/// [`masked_cross_entropy`] composed of candle ops.
pub fn masked_cross_entropy_composed(
    logits: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
    eps: f64,
) -> Result<(Tensor, f64)> {
    let (b, l, k) = logits.dims3()?;
    let logits = logits.reshape((b * l, k))?.to_dtype(DType::F32)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let targets = targets.reshape(b * l)?.to_dtype(DType::U32)?;
    let nll = logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
    let smooth = logp.mean(D::Minus1)?.neg()?;
    let per = ((nll * (1.0 - eps))? + (smooth * eps)?)?;
    let w = weights.reshape(b * l)?;
    let count = w.sum_all()?.to_scalar::<f32>()?.max(1.0) as f64;
    let loss = ((per * &w)?.sum_all()? / count)?;
    let correct = logits
        .argmax(D::Minus1)?
        .eq(&targets)?
        .to_dtype(DType::F32)?;
    let acc = (correct * &w)?.sum_all()?.to_scalar::<f32>()? as f64 / count;
    Ok((loss, acc))
}
