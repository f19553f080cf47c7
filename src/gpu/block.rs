//! The transformer's pre-LayerNorm blocks, each `x + attn(ln1(x))` then `+ mlp(ln2(·))`, as one
//! node of candle's graph on CUDA, with their backward pass written out over the kernels of this
//! module.
//!
//! candle's backward pass adds each gradient that reaches a tensor onto a fresh zero tensor
//! (`GradStore::or_insert`, then `add`): a full pass over an activation for every edge of the
//! graph. Composed of ops, the 24-layer transformer at 64 × 1,025 tokens took 656 such adds per
//! step, 198 of its 639 ms of GPU time (31 %). With a node per block there was still one such
//! add per block (24, ~5 ms a step); with one node for the whole stack there is one. The
//! residual adds ride along with other passes: forward on the linear layer's output (bias and
//! residual in one pass), backward in LayerNorm's one-pass input gradient. The parameters'
//! gradients go to a [`SideGrads`] list that the model moves into the gradient store after the
//! backward pass. The forward pass keeps what the backward pass needs (fewer tensors than the
//! composed ops keep) and the backward pass frees it block by block.

use candle_core::backend::BackendStorage;
use candle_core::{CudaStorage, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor};

use super::attention::{attention_backward, attention_saving, Lse};
use super::bias::{bias_act, bias_gelu_backward, column_sum, linear, linear_residual};
use super::layer_norm::{layer_norm_backward, layer_norm_saving, InputGrad, Stats};
use super::side_grads::SideGrads;
use crate::ops::block::{Block, Handover};

/// The blocks `ws` one after the other for `x` `[B, T, D]` (bf16 on CUDA; see
/// [`crate::ops::block::stack`]), as one node of the graph.
pub fn blocks(x: &Tensor, ws: &[Block], grads: &SideGrads) -> Result<Tensor> {
    let Some(first) = ws.first() else {
        candle_core::bail!("fused transformer blocks: no blocks")
    };
    let (b, t, d) = x.dims3()?;
    let mut h = x.detach().reshape((b * t, d))?.contiguous()?;
    let mut layers = Vec::with_capacity(ws.len());
    for w in ws {
        let (out, layer) = Layer::forward(&h, w, (b, t))?;
        layers.push(layer);
        h = out;
    }
    // the node's second input is a parameter, so that it is on the graph's path to the
    // parameters even where `x` is not (its gradient goes to the side list with the others)
    x.apply_op2(
        first.ln1.parts().0,
        Node {
            out: Handover::new(h.reshape((b, t, d))?),
            layers: Handover::new(layers),
            grads: grads.clone(),
        },
    )
}

/// One block's parameters and what its backward pass takes from its forward pass.
struct Layer {
    saved: Saved,
    /// ln1 (scale, shift), qkv, proj (weight, bias), ln2, fc1, fc2: the gradients' keys.
    params: [Tensor; 12],
    heads: usize,
}

impl Layer {
    /// The block for rows `x` `[B·T, D]` (`bt` = (B, T)): its output rows, and what its
    /// backward pass needs. The linear layers that feed the residual stream add bias and
    /// residual on their matmul's output in one pass.
    fn forward(x: &Tensor, blk: &Block, bt: (usize, usize)) -> Result<(Tensor, Self)> {
        let (p, eps) = blk.parameters()?;
        let dt = x.dtype();
        let (b, t) = bt;
        let d = x.dim(1)?;
        let cast = |p: &Tensor| p.detach().to_dtype(dt);
        let (y1, st1) = layer_norm_saving(x, p[0], p[1], eps)?;
        let wqkv = cast(p[2])?;
        let qkv = linear(&y1, &wqkv, &p[3].detach())?;
        let (a, lse) = attention_saving(&qkv.reshape((b, t, 3 * d))?, blk.heads)?;
        let a = a.reshape((b * t, d))?;
        let wproj = cast(p[4])?;
        let x2 = linear_residual(&a, &wproj, &p[5].detach(), x)?;
        let (y2, st2) = layer_norm_saving(&x2, p[6], p[7], eps)?;
        let w1 = cast(p[8])?;
        let m1 = y2.matmul(&w1.t()?)?;
        let h = bias_act(&m1, &p[9].detach(), true)?;
        let w2 = cast(p[10])?;
        let out = linear_residual(&h, &w2, &p[11].detach(), &x2)?;
        let params = p.map(|p| p.clone());
        let saved = Saved {
            x: x.clone(),
            y1,
            st1,
            qkv,
            a,
            lse,
            x2,
            y2,
            st2,
            m1,
            h,
            weights: [wqkv, wproj, w1, w2],
        };
        let layer = Self {
            saved,
            params,
            heads: blk.heads,
        };
        Ok((out, layer))
    }

    /// The gradient of the block's input rows from its output rows' `g` `[B·T, D]` (`bt` =
    /// (B, T)); the parameters' gradients (f32) go to `side`. Consumes what the forward pass
    /// kept, so that it is freed block by block.
    fn backward(self, g: Tensor, bt: (usize, usize), side: &SideGrads) -> Result<Tensor> {
        let Self {
            saved: s,
            params: p,
            heads,
        } = self;
        let (b, t) = bt;
        let d = g.dim(1)?;
        let [wqkv, wproj, w1, w2] = &s.weights;
        let mut grads: Grads = Vec::with_capacity(12);
        // out = x2 + fc2(h), h = gelu(m1 + b1), m1 = y2 W1ᵀ
        let dh = linear_back(&g, &s.h, w2, 10, &mut grads)?;
        drop(s.h);
        let du = bias_gelu_backward(&s.m1, &p[9], &dh)?;
        drop((dh, s.m1));
        let dy2 = linear_back(&du, &s.y2, w1, 8, &mut grads)?;
        drop((du, s.y2));
        // the residual path's g joins LayerNorm's input gradient in its pass
        let dx2 = layer_norm_back(&s.x2, &p[6], &s.st2, &dy2, &g, 6, &mut grads)?;
        drop((g, dy2, s.x2));
        // x2 = x + a Wprojᵀ + bproj, a = attention(qkv), qkv = y1 Wqkvᵀ + bqkv
        let da = linear_back(&dx2, &s.a, wproj, 4, &mut grads)?;
        let dqkv = attention_backward(
            &s.qkv.reshape((b, t, 3 * d))?,
            &s.a.reshape((b, t, d))?,
            &da.reshape((b, t, d))?,
            heads,
            &s.lse,
        )?
        .reshape((b * t, 3 * d))?;
        drop((da, s.a, s.qkv));
        let dy1 = linear_back(&dqkv, &s.y1, wqkv, 2, &mut grads)?;
        drop((dqkv, s.y1));
        let dx = layer_norm_back(&s.x, &p[0], &s.st1, &dy1, &dx2, 0, &mut grads)?;
        for (i, g) in grads {
            side.push(&p[i], g.to_dtype(DType::F32)?);
        }
        Ok(dx)
    }
}

/// Gradients of a block's parameters by their index in [`Layer::params`], in the compute dtype.
type Grads = Vec<(usize, Tensor)>;

/// Backward through the linear layer `x Wᵀ + b` (`w` in the compute dtype) from its output's
/// gradient `g`: the weight's and bias's gradients into `grads` at `i` and `i + 1`, the input's
/// returned.
fn linear_back(g: &Tensor, x: &Tensor, w: &Tensor, i: usize, grads: &mut Grads) -> Result<Tensor> {
    grads.push((i + 1, column_sum(g)?));
    grads.push((i, g.t()?.matmul(x)?));
    g.matmul(w)
}

/// Backward through a block's LayerNorm (scale `w`, statistics `st`) from its output's gradient
/// `dy`, where its input also feeds the residual path that brings the gradient `r`: the scale's
/// and shift's gradients into `grads` at `i` and `i + 1`, the input's (with `r`) returned.
fn layer_norm_back(
    x: &Tensor,
    w: &Tensor,
    st: &Stats,
    dy: &Tensor,
    r: &Tensor,
    i: usize,
    grads: &mut Grads,
) -> Result<Tensor> {
    let (dx, dw, db) = layer_norm_backward(x, w, st, dy, InputGrad::Plus(r))?;
    grads.extend([(i, dw), (i + 1, db)]);
    match dx {
        Some(dx) => Ok(dx),
        None => candle_core::bail!("fused transformer block: LayerNorm gave no input gradient"),
    }
}

/// What the backward pass takes from the forward pass: rows are `[B·T, ·]`.
struct Saved {
    x: Tensor,
    y1: Tensor,
    st1: Stats,
    qkv: Tensor,
    a: Tensor,
    lse: Lse,
    x2: Tensor,
    y2: Tensor,
    st2: Stats,
    /// fc1's output before its bias and GELU, and after them.
    m1: Tensor,
    h: Tensor,
    /// qkv, proj, fc1 and fc2's weights in the compute dtype.
    weights: [Tensor; 4],
}

struct Node {
    /// The last block's output, handed over by the first (only) forward call.
    out: Handover<Tensor>,
    /// Taken by the backward pass (a second backward pass through the blocks is an error).
    layers: Handover<Vec<Layer>>,
    grads: SideGrads,
}

impl CustomOp2 for Node {
    fn name(&self) -> &'static str {
        "movq-transformer-blocks"
    }

    cuda_only!(2, "the fused transformer blocks");

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let out = self.out.take("the output was already handed over")?;
        let (s, l) = out.storage_and_layout();
        match &*s {
            Storage::Cuda(s) => Ok((s.try_clone(l)?, l.shape().clone())),
            _ => candle_core::bail!("fused transformer blocks: the output is not on the GPU"),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let layers = self.layers.take("a second backward pass through them")?;
        let (b, t, d) = x.dims3()?;
        let mut g = grad
            .to_dtype(x.dtype())?
            .reshape((b * t, d))?
            .contiguous()?;
        for layer in layers.into_iter().rev() {
            g = layer.backward(g, (b, t), &self.grads)?;
        }
        Ok((Some(g.reshape((b, t, d))?), None))
    }
}
