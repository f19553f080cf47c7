//! The transformer's pre-LayerNorm blocks on the CPU (f32), each `x + attn(ln1(x))` then
//! `+ mlp(ln2(·))`, as one node of candle's graph with its backward pass written out: the CPU
//! counterpart of [`crate::gpu::block`].
//!
//! Composed of candle ops, a block is some thirty ops forward and more backward, each allocating
//! its output and most of them one pass over memory on one thread; at the quickstart's size (4
//! blocks of width 128 over 64 × 37 tokens) that overhead took about three times the matrix
//! products' time. Here each LayerNorm, bias (+ GELU) (+ residual) and attention head is one pass
//! over rows on the thread pool, matrix products go straight to `gemm`, and the forward pass keeps
//! what the backward pass needs (attention probabilities included: at 37 tokens they are smaller
//! than recomputing them costs). The parameters' gradients go to a [`SideGrads`] list, as on the
//! GPU; without a graph to train (sampling) the node is skipped and the output returned as is.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{fast_exp, gemm, Mat};
use crate::gpu::side_grads::SideGrads;
use crate::ops::block::{Block, Handover, OutputLayers};

/// Rows per task of the row-parallel passes (enough work per task to amortise the scheduling).
const ROWS_PER_TASK: usize = 32;

/// The blocks `ws` one after the other for `x` `[B, T, D]` (f32 on the CPU; see
/// [`crate::ops::block::stack`]).
pub fn blocks(x: &Tensor, ws: &[Block], grads: &SideGrads) -> Result<Tensor> {
    run(x, ws, None, grads)
}

/// The blocks, then the output layers on the positions `1..T` (after the conditioning slot):
/// logits `[B, T − 1, K]`, one node with the blocks while training (see
/// [`crate::ops::block::logits`]).
pub fn blocks_and_output(
    x: &Tensor,
    ws: &[Block],
    out: OutputLayers,
    grads: &SideGrads,
) -> Result<Tensor> {
    run(x, ws, Some(out), grads)
}

fn run(x: &Tensor, ws: &[Block], top: Option<OutputLayers>, grads: &SideGrads) -> Result<Tensor> {
    let Some(first) = ws.first() else {
        candle_core::bail!("fused transformer blocks: no blocks")
    };
    let (b, t, d) = x.dims3()?;
    let dims = Dims { b, t, d };
    let training = x.track_op() || first.ln1.parts().0.track_op();
    let mut h = x.detach().flatten_all()?.to_vec1::<f32>()?;
    let mut layers = Vec::with_capacity(if training { ws.len() } else { 0 });
    for w in ws {
        let p = Params::of(w, d)?;
        let (out, saved) = p.forward(h, dims, training);
        if let Some(saved) = saved {
            layers.push(Layer { p, saved });
        }
        h = out;
    }
    let (h, shape, head) = match top {
        None => (h, Shape::from((b, t, d)), None),
        Some(top) => {
            let p = OutputParams::of(top, d)?;
            let (logits, saved) = p.forward(&h, dims, training);
            let k = p.k;
            let head = saved.map(|saved| Output { p, saved });
            (logits, Shape::from((b, t - 1, k)), head)
        }
    };
    if !training {
        return Tensor::from_vec(h, shape, x.device());
    }
    // the node's second input is a parameter, so that it is on the graph's path to the
    // parameters even where `x` is not (its gradient goes to the side list with the others)
    x.apply_op2(
        first.ln1.parts().0,
        Node {
            out: Handover::new((h, shape)),
            layers: Handover::new((layers, head)),
            grads: grads.clone(),
            dims,
        },
    )
}

#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    d: usize,
}

impl Dims {
    fn rows(&self) -> usize {
        self.b * self.t
    }
}

/// One block's parameters as f32 values, in the order of [`Block::parameters`] (ln1 scale and
/// shift, qkv weight and bias, proj, ln2, fc1, fc2), with the tensors they came from (the keys
/// of their gradients).
struct Params {
    v: [Vec<f32>; 12],
    keys: [Tensor; 12],
    eps: f32,
    heads: usize,
    /// The MLP's hidden width.
    m: usize,
}

/// What a block's backward pass takes from its forward pass (rows of `[B·T, ·]`).
struct Saved {
    x: Vec<f32>,
    y1: Vec<f32>,
    /// Mean and reciprocal standard deviation of each row, for both LayerNorms.
    st1: Vec<f32>,
    qkv: Vec<f32>,
    /// Attention probabilities `[B, H, T, T]`.
    probs: Vec<f32>,
    a: Vec<f32>,
    x2: Vec<f32>,
    y2: Vec<f32>,
    st2: Vec<f32>,
    /// fc1's output with its bias, before the GELU, and after it.
    u: Vec<f32>,
    h: Vec<f32>,
}

struct Layer {
    p: Params,
    saved: Saved,
}

impl Params {
    fn of(blk: &Block, d: usize) -> Result<Self> {
        let (p, eps) = blk.parameters()?;
        let keys = p.map(|p| p.clone());
        let v = values_of(&keys)?;
        let m = keys[8].dim(0)?;
        if blk.heads == 0
            || !d.is_multiple_of(blk.heads)
            || v[2].len() != 3 * d * d
            || v[8].len() != m * d
        {
            candle_core::bail!("fused transformer blocks: width {d} does not fit the block's weights or its {} heads", blk.heads)
        }
        Ok(Self {
            v,
            keys,
            eps,
            heads: blk.heads,
            m,
        })
    }

    /// The block for the rows `x`: its output rows, and what the backward pass needs when
    /// `keep`.
    fn forward(&self, x: Vec<f32>, dims: Dims, keep: bool) -> (Vec<f32>, Option<Saved>) {
        let (n, d, m) = (dims.rows(), dims.d, self.m);
        let v = &self.v;
        let (y1, st1) = layer_norm(&x, &v[0], &v[1], d, self.eps);
        let qkv = linear(&y1, &v[2], &v[3], None, n, d, 3 * d);
        let (a, probs) = attention(&qkv, dims, self.heads);
        let x2 = linear(&a, &v[4], &v[5], Some(&x), n, d, d);
        let (y2, st2) = layer_norm(&x2, &v[6], &v[7], d, self.eps);
        let u = linear(&y2, &v[8], &v[9], None, n, d, m);
        let h = rows_map(&u, m, |u, h| {
            h.iter_mut().zip(u).for_each(|(h, &u)| *h = gelu(u))
        });
        let out = linear(&h, &v[10], &v[11], Some(&x2), n, m, d);
        let saved = keep.then_some(Saved {
            x,
            y1,
            st1,
            qkv,
            probs,
            a,
            x2,
            y2,
            st2,
            u,
            h,
        });
        (out, saved)
    }
}

impl Layer {
    /// The gradient of the block's input rows from its output rows' `g`; the parameters'
    /// gradients go to `side`.
    fn backward(self, g: Vec<f32>, dims: Dims, side: &SideGrads) -> Result<Vec<f32>> {
        let Self { p, saved: s } = self;
        let (n, d, m) = (dims.rows(), dims.d, p.m);
        let v = &p.v;
        let mut grads: Vec<(usize, Vec<f32>)> = Vec::with_capacity(12);
        // out = x2 + h W2ᵀ + b2, h = gelu(u), u = y2 W1ᵀ + b1
        let mut dh = linear_back(&g, &s.h, &v[10], n, m, d, 10, &mut grads);
        drop(s.h);
        rows_zip(&mut dh, &s.u, m, |dh, u| {
            dh.iter_mut().zip(u).for_each(|(g, &u)| *g *= gelu_grad(u))
        });
        drop(s.u);
        let dy2 = linear_back(&dh, &s.y2, &v[8], n, d, m, 8, &mut grads);
        drop((dh, s.y2));
        // the residual path's g joins LayerNorm's input gradient in its pass
        let dx2 = layer_norm_back(&s.x2, &v[6], &s.st2, &dy2, Some(&g), d, 6, &mut grads);
        drop((g, dy2, s.x2));
        // x2 = x + a Wprojᵀ + bproj, a = attention(qkv), qkv = y1 Wqkvᵀ + bqkv
        let da = linear_back(&dx2, &s.a, &v[4], n, d, d, 4, &mut grads);
        drop(s.a);
        let dqkv = attention_back(&s.qkv, &s.probs, &da, dims, p.heads);
        drop((da, s.qkv, s.probs));
        let dy1 = linear_back(&dqkv, &s.y1, &v[2], n, d, 3 * d, 2, &mut grads);
        drop((dqkv, s.y1));
        let dx = layer_norm_back(&s.x, &v[0], &s.st1, &dy1, Some(&dx2), d, 0, &mut grads);
        push_grads(side, &p.keys, grads)?;
        Ok(dx)
    }
}

struct Node {
    /// The node's output and its shape, handed over by the first (only) forward call.
    out: Handover<(Vec<f32>, Shape)>,
    /// Taken by the backward pass (a second backward pass through the blocks is an error).
    layers: Handover<(Vec<Layer>, Option<Output>)>,
    grads: SideGrads,
    dims: Dims,
}

impl CustomOp2 for Node {
    fn name(&self) -> &'static str {
        "movq-transformer-blocks-cpu"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (out, shape) = self.out.take("the output was already handed over")?;
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (layers, head) = self.layers.take("a second backward pass through them")?;
        let mut g = grad.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        if let Some(head) = head {
            g = head.backward(g, self.dims, &self.grads)?;
        }
        for layer in layers.into_iter().rev() {
            g = layer.backward(g, self.dims, &self.grads)?;
        }
        Ok((Some(Tensor::from_vec(g, x.shape(), x.device())?), None))
    }
}

/// The f32 values of parameter tensors, in their order.
fn values_of<const N: usize>(keys: &[Tensor; N]) -> Result<[Vec<f32>; N]> {
    let v: Vec<Vec<f32>> = keys
        .iter()
        .map(|t| t.detach().to_dtype(DType::F32)?.flatten_all()?.to_vec1())
        .collect::<Result<_>>()?;
    Ok(v.try_into()
        .unwrap_or_else(|_| unreachable!("one value list per tensor")))
}

/// Hands parameter gradients `(index into keys, values)` to the side list, keyed by the
/// parameter tensors.
fn push_grads(side: &SideGrads, keys: &[Tensor], grads: Vec<(usize, Vec<f32>)>) -> Result<()> {
    for (i, g) in grads {
        let key = &keys[i];
        side.push(
            key,
            Tensor::from_vec(g, key.shape(), &candle_core::Device::Cpu)?,
        );
    }
    Ok(())
}

/// The output layers' parameters as f32 values (final LayerNorm scale and shift, head weight
/// `[K, D]` and bias), with the tensors they came from.
struct OutputParams {
    v: [Vec<f32>; 4],
    keys: [Tensor; 4],
    eps: f32,
    /// The head's width: logits per position.
    k: usize,
}

/// What the output layers' backward pass takes from their forward pass: their input rows (the
/// positions after the conditioning slot), the normalised rows, and the LayerNorm statistics.
struct OutputSaved {
    x: Vec<f32>,
    y: Vec<f32>,
    st: Vec<f32>,
}

struct Output {
    p: OutputParams,
    saved: OutputSaved,
}

impl OutputParams {
    fn of(top: OutputLayers, d: usize) -> Result<Self> {
        let (w, b, eps) = top.ln_f.parts();
        let Some(bias) = top.head.bias() else {
            candle_core::bail!("fused transformer output: the head has no bias")
        };
        let keys = [w, b, top.head.weight(), bias].map(|t| t.clone());
        let v = values_of(&keys)?;
        let k = keys[2].dim(0)?;
        if v[0].len() != d || v[2].len() != k * d || v[3].len() != k {
            candle_core::bail!(
                "fused transformer output: width {d} does not fit the head's weights"
            )
        }
        Ok(Self { v, keys, eps, k })
    }

    /// Logits `[B·(T − 1), K]` of the block output rows `h` `[B·T, D]` at the positions after
    /// each sequence's first, and what the backward pass needs when `keep`.
    fn forward(&self, h: &[f32], dims: Dims, keep: bool) -> (Vec<f32>, Option<OutputSaved>) {
        let Dims { b, t, d } = dims;
        let n = b * (t - 1);
        let x: Vec<f32> = h.chunks(t * d).flat_map(|seq| &seq[d..]).copied().collect();
        let (y, st) = layer_norm(&x, &self.v[0], &self.v[1], d, self.eps);
        let logits = linear(&y, &self.v[2], &self.v[3], None, n, d, self.k);
        (logits, keep.then_some(OutputSaved { x, y, st }))
    }
}

impl Output {
    /// The gradient of the block output rows `[B·T, D]` (zero at each sequence's first
    /// position) from the logits' `g`; the parameters' gradients go to `side`.
    fn backward(self, g: Vec<f32>, dims: Dims, side: &SideGrads) -> Result<Vec<f32>> {
        let Self { p, saved: s } = self;
        let Dims { b, t, d } = dims;
        let n = b * (t - 1);
        let mut grads: Vec<(usize, Vec<f32>)> = Vec::with_capacity(4);
        let dy = linear_back(&g, &s.y, &p.v[2], n, d, p.k, 2, &mut grads);
        drop((g, s.y));
        let dx = layer_norm_back(&s.x, &p.v[0], &s.st, &dy, None, d, 0, &mut grads);
        let mut dh = vec![0f32; b * t * d];
        for (seq, rows) in dh.chunks_mut(t * d).zip(dx.chunks((t - 1) * d)) {
            seq[d..].copy_from_slice(rows);
        }
        push_grads(side, &p.keys, grads)?;
        Ok(dh)
    }
}

/// A new `[rows, out_w]` buffer whose rows are `f(input row, output row)` of `x`'s `in_w`-wide
/// rows, in parallel.
fn rows_map_to(
    x: &[f32],
    in_w: usize,
    out_w: usize,
    f: impl Fn(&[f32], &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let mut out = vec![0f32; x.len() / in_w * out_w];
    out.par_chunks_mut(out_w * ROWS_PER_TASK)
        .zip(x.par_chunks(in_w * ROWS_PER_TASK))
        .for_each(|(o, x)| {
            o.chunks_mut(out_w)
                .zip(x.chunks(in_w))
                .for_each(|(o, x)| f(x, o))
        });
    out
}

/// [`rows_map_to`] with rows of one width.
fn rows_map(x: &[f32], w: usize, f: impl Fn(&[f32], &mut [f32]) + Sync + Send) -> Vec<f32> {
    rows_map_to(x, w, w, f)
}

/// `f(row of y, row of x)` over the `w`-wide rows of `y` and `x`, in parallel.
fn rows_zip(y: &mut [f32], x: &[f32], w: usize, f: impl Fn(&mut [f32], &[f32]) + Sync + Send) {
    y.par_chunks_mut(w * ROWS_PER_TASK)
        .zip(x.par_chunks(w * ROWS_PER_TASK))
        .for_each(|(y, x)| y.chunks_mut(w).zip(x.chunks(w)).for_each(|(y, x)| f(y, x)));
}

/// Sums over rows of `f(row index, row, sums)` accumulations into `k` `w`-wide vectors, the rows
/// split into tasks whose partial sums are added at the end.
fn row_sums(n: usize, w: usize, k: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) -> Vec<f32> {
    (0..n.div_ceil(ROWS_PER_TASK * 4))
        .into_par_iter()
        .map(|task| {
            let mut acc = vec![0f32; k * w];
            let start = task * ROWS_PER_TASK * 4;
            for r in start..(start + ROWS_PER_TASK * 4).min(n) {
                f(r, &mut acc);
            }
            acc
        })
        .reduce(
            || vec![0f32; k * w],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        )
}

/// LayerNorm over `d`-wide rows: the output and each row's (mean, 1/σ).
fn layer_norm(x: &[f32], w: &[f32], b: &[f32], d: usize, eps: f32) -> (Vec<f32>, Vec<f32>) {
    let stats = rows_map_to(x, d, 2, |x, st| {
        let mean = x.iter().sum::<f32>() / d as f32;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
        st[0] = mean;
        st[1] = 1.0 / (var + eps).sqrt();
    });
    let mut y = x.to_vec();
    y.par_chunks_mut(d * ROWS_PER_TASK)
        .zip(stats.par_chunks(2 * ROWS_PER_TASK))
        .for_each(|(y, st)| {
            for (y, st) in y.chunks_mut(d).zip(st.chunks(2)) {
                for ((y, w), b) in y.iter_mut().zip(w).zip(b) {
                    *y = (*y - st[0]) * st[1] * w + b;
                }
            }
        });
    (y, stats)
}

/// Backward through LayerNorm (scale `w`, statistics `st`) from its output's gradient `dy`, where
/// its input may also feed a residual path that brings the gradient `r`: the input's gradient
/// (with `r`) returned, the scale's and shift's into `grads` at `i` and `i + 1`.
#[allow(clippy::too_many_arguments)]
fn layer_norm_back(
    x: &[f32],
    w: &[f32],
    st: &[f32],
    dy: &[f32],
    r: Option<&[f32]>,
    d: usize,
    i: usize,
    grads: &mut Vec<(usize, Vec<f32>)>,
) -> Vec<f32> {
    let n = x.len() / d;
    let sums = row_sums(n, d, 2, |row, acc| {
        let (mean, rstd) = (st[2 * row], st[2 * row + 1]);
        let (dw, db) = acc.split_at_mut(d);
        let (x, dy) = (&x[row * d..(row + 1) * d], &dy[row * d..(row + 1) * d]);
        for (((dw, db), &g), &x) in dw.iter_mut().zip(db.iter_mut()).zip(dy).zip(x) {
            *dw += g * (x - mean) * rstd;
            *db += g;
        }
    });
    let mut dx = r.map_or_else(|| vec![0f32; x.len()], <[f32]>::to_vec);
    dx.par_chunks_mut(d * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, dx)| {
            for (k, dx) in dx.chunks_mut(d).enumerate() {
                let row = task * ROWS_PER_TASK + k;
                let (mean, rstd) = (st[2 * row], st[2 * row + 1]);
                let (x, dy) = (&x[row * d..(row + 1) * d], &dy[row * d..(row + 1) * d]);
                let (mut c1, mut c2) = (0f32, 0f32);
                for ((&g, &x), &w) in dy.iter().zip(x).zip(w) {
                    let g = g * w;
                    c1 += g * (x - mean) * rstd;
                    c2 += g;
                }
                let (c1, c2) = (c1 / d as f32, c2 / d as f32);
                for (((dx, &g), &x), &w) in dx.iter_mut().zip(dy).zip(x).zip(w) {
                    let xhat = (x - mean) * rstd;
                    *dx += rstd * (g * w - c2 - xhat * c1);
                }
            }
        });
    let (dw, db) = sums.split_at(d);
    grads.extend([(i, dw.to_vec()), (i + 1, db.to_vec())]);
    dx
}

/// `x Wᵀ + b (+ residual)` for `x` `[n, i]`, `w` `[o, i]`: the bias (and residual) written
/// first, the product added onto them.
fn linear(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    residual: Option<&[f32]>,
    n: usize,
    i: usize,
    o: usize,
) -> Vec<f32> {
    let mut y = match residual {
        Some(r) => rows_map(r, o, |r, y| {
            y.iter_mut()
                .zip(r)
                .zip(b)
                .for_each(|((y, r), b)| *y = r + b)
        }),
        None => {
            let mut y = vec![0f32; n * o];
            y.par_chunks_mut(o * ROWS_PER_TASK)
                .for_each(|y| y.chunks_mut(o).for_each(|y| y.copy_from_slice(b)));
            y
        }
    };
    gemm(
        n,
        o,
        i,
        &mut y,
        Mat::rows(x, i),
        Mat::transposed(w, i),
        true,
        true,
    );
    y
}

/// Backward through `x Wᵀ + b` (`x` `[n, i]`, `w` `[o, i]`) from its output's gradient `g`: the
/// input's gradient returned, the weight's and bias's into `grads` at `k` and `k + 1`.
#[allow(clippy::too_many_arguments)]
fn linear_back(
    g: &[f32],
    x: &[f32],
    w: &[f32],
    n: usize,
    i: usize,
    o: usize,
    k: usize,
    grads: &mut Vec<(usize, Vec<f32>)>,
) -> Vec<f32> {
    let mut dw = vec![0f32; o * i];
    gemm(
        o,
        i,
        n,
        &mut dw,
        Mat::transposed(g, o),
        Mat::rows(x, i),
        false,
        true,
    );
    let db = row_sums(n, o, 1, |row, acc| {
        acc.iter_mut()
            .zip(&g[row * o..(row + 1) * o])
            .for_each(|(a, g)| *a += g)
    });
    grads.extend([(k, dw), (k + 1, db)]);
    let mut dx = vec![0f32; n * i];
    gemm(
        n,
        i,
        o,
        &mut dx,
        Mat::rows(g, o),
        Mat::rows(w, i),
        false,
        true,
    );
    dx
}

/// Multi-head attention without a mask from the packed `qkv` rows `[B·T, 3·D]` (query, key,
/// value, each `H` heads of `D / H`, as [`crate::ops::attention::composed`] reads them): the
/// output rows `[B·T, D]` and the probabilities `[B, H, T, T]`. One task per sequence.
fn attention(qkv: &[f32], dims: Dims, heads: usize) -> (Vec<f32>, Vec<f32>) {
    let Dims { b, t, d } = dims;
    let dh = d / heads;
    let scale = 1.0 / (dh as f32).sqrt();
    let mut a = vec![0f32; b * t * d];
    let mut probs = vec![0f32; b * heads * t * t];
    a.par_chunks_mut(t * d)
        .zip(probs.par_chunks_mut(heads * t * t))
        .zip(qkv.par_chunks(t * 3 * d))
        .for_each(|((a, p), qkv)| {
            let mut head = vec![0f32; t * dh];
            for h in 0..heads {
                let p = &mut p[h * t * t..(h + 1) * t * t];
                let (q, k, v) = head_views(qkv, d, h * dh);
                gemm(t, t, dh, p, q, transpose(k), false, false);
                for row in p.chunks_mut(t) {
                    let max = row.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
                    let mut sum = 0f32;
                    for s in row.iter_mut() {
                        *s = fast_exp((*s - max) * scale);
                        sum += *s;
                    }
                    row.iter_mut().for_each(|s| *s /= sum);
                }
                gemm(t, dh, t, &mut head, Mat::rows(p, t), v, false, false);
                scatter_head(&head, a, d, h * dh);
            }
        });
    (a, probs)
}

/// Backward through [`attention`] from the output rows' gradient `da`: the gradient of `qkv`.
fn attention_back(qkv: &[f32], probs: &[f32], da: &[f32], dims: Dims, heads: usize) -> Vec<f32> {
    let Dims { b, t, d } = dims;
    let dh = d / heads;
    let scale = 1.0 / (dh as f32).sqrt();
    let mut dqkv = vec![0f32; b * t * 3 * d];
    dqkv.par_chunks_mut(t * 3 * d)
        .zip(qkv.par_chunks(t * 3 * d))
        .zip(probs.par_chunks(heads * t * t))
        .zip(da.par_chunks(t * d))
        .for_each(|(((dqkv, qkv), p), da)| {
            let (mut ds, mut head) = (vec![0f32; t * t], vec![0f32; t * dh]);
            for h in 0..heads {
                let p = &p[h * t * t..(h + 1) * t * t];
                let (q, k, v) = head_views(qkv, d, h * dh);
                let dout = Mat {
                    data: &da[h * dh..],
                    rs: d,
                    cs: 1,
                };
                // dV = Pᵀ dO
                gemm(
                    t,
                    dh,
                    t,
                    &mut head,
                    Mat::transposed(p, t),
                    dout,
                    false,
                    false,
                );
                scatter_head(&head, dqkv, 3 * d, 2 * d + h * dh);
                // dP = dO Vᵀ, then dS = P ⊙ (dP − Σ dP ⊙ P) times the scale
                gemm(t, t, dh, &mut ds, dout, transpose(v), false, false);
                for (ds, p) in ds.chunks_mut(t).zip(p.chunks(t)) {
                    let dot: f32 = ds.iter().zip(p).map(|(g, p)| g * p).sum();
                    ds.iter_mut()
                        .zip(p)
                        .for_each(|(g, p)| *g = p * (*g - dot) * scale);
                }
                // dQ = dS K, dK = dSᵀ Q
                gemm(t, dh, t, &mut head, Mat::rows(&ds, t), k, false, false);
                scatter_head(&head, dqkv, 3 * d, h * dh);
                gemm(
                    t,
                    dh,
                    t,
                    &mut head,
                    Mat::transposed(&ds, t),
                    q,
                    false,
                    false,
                );
                scatter_head(&head, dqkv, 3 * d, d + h * dh);
            }
        });
    dqkv
}

/// One head's query, key and value `[T, D/H]` within a sequence's packed rows `[T, 3·D]`, from
/// the head's first column `c`.
fn head_views(qkv: &[f32], d: usize, c: usize) -> (Mat<'_>, Mat<'_>, Mat<'_>) {
    let at = |off: usize| Mat {
        data: &qkv[off + c..],
        rs: 3 * d,
        cs: 1,
    };
    (at(0), at(d), at(2 * d))
}

fn transpose(m: Mat<'_>) -> Mat<'_> {
    Mat {
        data: m.data,
        rs: m.cs,
        cs: m.rs,
    }
}

/// Writes one head's `[T, w]` block into the `stride`-wide rows of `dst` from column `c`.
fn scatter_head(head: &[f32], dst: &mut [f32], stride: usize, c: usize) {
    let w = head.len() / (dst.len() / stride);
    for (src, row) in head.chunks(w).zip(dst.chunks_mut(stride)) {
        row[c..c + w].copy_from_slice(src);
    }
}

/// The exact (erf) GELU.
fn gelu(u: f32) -> f32 {
    u * normal_cdf_and_density(u).0
}

/// The derivative of [`gelu`]: `Φ(u) + u·φ(u)`.
fn gelu_grad(u: f32) -> f32 {
    let (cdf, density) = normal_cdf_and_density(u);
    cdf + u * density
}

/// The standard normal distribution's `Φ(u)` and `φ(u)`, branch-free so that loops over them
/// vectorise: erf by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7), which needs the
/// density's `exp(−u²/2)` anyway.
#[inline(always)]
fn normal_cdf_and_density(u: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152,
        1.061_405_4,
    ];
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let x = u.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let e = fast_exp(-x * x);
    let t = 1.0 / (1.0 + P * x);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let erf_abs = 1.0 - poly * e;
    let erf = if u < 0.0 { -erf_abs } else { erf_abs };
    (0.5 * (1.0 + erf), INV_SQRT_2PI * e)
}
