//! Fused GroupNorm (+ SpatialNorm modulation) (+ SiLU) on the CPU, forward and backward.
//!
//! Composed of candle ops, a GroupNorm is about ten passes each way, and the backward passes of
//! its broadcasts reduce over strided dimensions; on two cores that was a fifth of a small
//! autoencoder's training step. Here each pass is one loop per (image, group), spread over
//! rayon's threads: the forward pass computes the statistics (two passes over the group, in
//! f64) and writes `silu?((x̂·γ + β)·s↑ + t↑)`; the backward pass recomputes the statistics
//! and, in one sweep, the gradients of γ, β, the modulation `s`, `t` and the sums the input
//! gradient needs, then the input gradient
//! `dx = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂))` with `dx̂ = dm·s·γ`.
//!
//! The parameters travel as one packed tensor `p = [γ][β][s][t]` (as the CUDA kernel takes
//! them), so the op has two inputs and candle routes the gradients back through the
//! concatenation. f32, contiguous `x` `[B, C, H, W]`.

use super::values;
use crate::ops::group_norm::Packed;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    groups: usize,
    /// The modulation's resolution; 0 × 0 without modulation.
    zh: usize,
    zw: usize,
    silu: bool,
    eps: f64,
}

impl Dims {
    fn per_group(&self) -> usize {
        self.c / self.groups
    }
    fn plane(&self) -> usize {
        self.h * self.w
    }
    fn cells(&self) -> usize {
        self.b * self.c * self.zh * self.zw
    }
    fn params_len(&self) -> usize {
        2 * self.c + 2 * self.cells()
    }
    /// The modulation cell of each pixel of a plane, within the plane's cells (empty without
    /// modulation).
    fn cells_of_pixels(&self) -> Vec<usize> {
        if self.zh == 0 {
            return Vec::new();
        }
        let (bh, bw) = (self.h / self.zh, self.w / self.zw);
        (0..self.plane())
            .map(|i| (i / self.w / bh) * self.zw + (i % self.w) / bw)
            .collect()
    }
}

/// The packed parameters, split.
struct Params<'a> {
    gamma: &'a [f32],
    beta: &'a [f32],
    /// Per (b, c) plane, `zh·zw` values each; empty without modulation.
    scale: &'a [f32],
    shift: &'a [f32],
}

impl<'a> Params<'a> {
    fn split(p: &'a [f32], d: &Dims) -> Result<Self> {
        if p.len() != d.params_len() {
            candle_core::bail!(
                "GroupNorm: {} packed parameters, expected {}",
                p.len(),
                d.params_len()
            );
        }
        let (gamma, rest) = p.split_at(d.c);
        let (beta, rest) = rest.split_at(d.c);
        let (scale, shift) = rest.split_at(d.cells());
        Ok(Self {
            gamma,
            beta,
            scale,
            shift,
        })
    }
}

fn sigmoid(m: f32) -> f32 {
    1.0 / (1.0 + (-m).exp())
}

/// Mean and 1/σ of one group's values (two passes, f64).
fn statistics(x: &[f32], eps: f64) -> (f32, f32) {
    let n = x.len().max(1) as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
}

/// What one (image, group) pair is about: its values and its planes' parameters.
struct Group<'a> {
    d: &'a Dims,
    p: &'a Params<'a>,
    /// [`Dims::cells_of_pixels`].
    cell: &'a [usize],
    b: usize,
    g: usize,
}

impl Group<'_> {
    /// The channel of the `k`-th plane of the group.
    fn channel(&self, k: usize) -> usize {
        self.g * self.d.per_group() + k
    }

    /// Scale and shift of pixel `i` of the group's `k`-th plane (1, 0 without modulation).
    fn modulation(&self, k: usize, i: usize) -> (f32, f32) {
        if self.d.zh == 0 {
            return (1.0, 0.0);
        }
        let cells = self.d.zh * self.d.zw;
        let j = (self.b * self.d.c + self.channel(k)) * cells + self.cell[i];
        (self.p.scale[j], self.p.shift[j])
    }

    /// Calls `f(k, i, x̂, a, m)` for pixel `i` of plane `k`, with `a = x̂·γ + β` and
    /// `m = a·s + t` (before the activation).
    fn sweep(&self, x: &[f32], stats: (f32, f32), mut f: impl FnMut(usize, usize, f32, f32, f32)) {
        let (mean, rstd) = stats;
        let plane = self.d.plane();
        for (k, xs) in x.chunks(plane).enumerate() {
            let c = self.channel(k);
            let (gamma, beta) = (self.p.gamma[c], self.p.beta[c]);
            for (i, &v) in xs.iter().enumerate() {
                let xhat = (v - mean) * rstd;
                let a = xhat * gamma + beta;
                let (s, t) = self.modulation(k, i);
                f(k, i, xhat, a, a * s + t);
            }
        }
    }

    /// `dm`: the gradient at `m`, through the activation.
    fn through_activation(&self, dy: f32, m: f32) -> f32 {
        if self.d.silu {
            let s = sigmoid(m);
            dy * s * (1.0 + m * (1.0 - s))
        } else {
            dy
        }
    }
}

/// Values per (image, group): the group's slice of `x`.
fn group_slices<'a>(
    x: &'a [f32],
    d: &Dims,
) -> impl IndexedParallelIterator<Item = (usize, &'a [f32])> {
    x.par_chunks(d.per_group() * d.plane()).enumerate()
}

struct Forward(Dims);

impl CustomOp2 for Forward {
    fn name(&self) -> &'static str {
        "movq-group-norm-cpu"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        p: &CpuStorage,
        pl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = &self.0;
        let x = values(x, xl, "GroupNorm (CPU): x")?;
        let params = Params::split(values(p, pl, "GroupNorm (CPU): the parameters")?, d)?;
        let size = d.per_group() * d.plane();
        let mut y = vec![0f32; x.len()];
        let cell_of = d.cells_of_pixels();
        y.par_chunks_mut(size)
            .zip(group_slices(x, d))
            .for_each(|(out, (bg, xs))| {
                let grp = Group {
                    d,
                    p: &params,
                    cell: &cell_of,
                    b: bg / d.groups,
                    g: bg % d.groups,
                };
                let plane = d.plane();
                grp.sweep(xs, statistics(xs, d.eps), |k, i, _, _, m| {
                    out[k * plane + i] = if d.silu { m * sigmoid(m) } else { m };
                });
            });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        p: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = self.0;
        let grad = grad.contiguous()?;
        let (x, p) = (x.detach(), p.detach());
        // [dx (B·C·H·W)][dγ (C)][dβ (C)][ds (cells)][dt (cells)]
        let all = x.apply_op3_no_bwd(&grad, &p, &Backward(d))?;
        let n = x.elem_count();
        let dx = all.narrow(0, 0, n)?.reshape(x.shape())?;
        let dp = all.narrow(0, n, d.params_len())?;
        Ok((Some(dx), Some(dp)))
    }
}

/// `(x, dy, p)` → every gradient, packed.
struct Backward(Dims);

/// One (image, group)'s share of the parameter gradients.
struct GroupGrads {
    dgamma: Vec<f32>,
    dbeta: Vec<f32>,
    dscale: Vec<f32>,
    dshift: Vec<f32>,
}

impl candle_core::CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "movq-group-norm-cpu-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        dy: &CpuStorage,
        dyl: &Layout,
        p: &CpuStorage,
        pl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = &self.0;
        let x = values(x, xl, "GroupNorm (CPU): x")?;
        let dy = values(dy, dyl, "GroupNorm (CPU): the gradient")?;
        let params = Params::split(values(p, pl, "GroupNorm (CPU): the parameters")?, d)?;
        let (plane, per) = (d.plane(), d.per_group());
        let size = per * plane;
        let cells = d.zh * d.zw;
        let mut dx = vec![0f32; x.len()];
        let cell_of = d.cells_of_pixels();
        let grads: Vec<GroupGrads> = dx
            .par_chunks_mut(size)
            .zip(group_slices(x, d))
            .map(|(dxs, (bg, xs))| {
                let grp = Group {
                    d,
                    p: &params,
                    cell: &cell_of,
                    b: bg / d.groups,
                    g: bg % d.groups,
                };
                let dys = &dy[bg * size..(bg + 1) * size];
                let stats = statistics(xs, d.eps);
                let mut gg = GroupGrads {
                    dgamma: vec![0.0; per],
                    dbeta: vec![0.0; per],
                    dscale: vec![0.0; per * cells],
                    dshift: vec![0.0; per * cells],
                };
                // dx̂ = dm·s·γ, kept in dxs until the sums are known
                let (mut sum, mut sum_xhat) = (0f64, 0f64);
                grp.sweep(xs, stats, |k, i, xhat, a, m| {
                    let dm = grp.through_activation(dys[k * plane + i], m);
                    let (s, _) = grp.modulation(k, i);
                    if cells > 0 {
                        let cell = k * cells + cell_of[i];
                        gg.dscale[cell] += dm * a;
                        gg.dshift[cell] += dm;
                    }
                    let da = dm * s;
                    gg.dgamma[k] += da * xhat;
                    gg.dbeta[k] += da;
                    let dxhat = da * params.gamma[grp.channel(k)];
                    dxs[k * plane + i] = dxhat;
                    sum += dxhat as f64;
                    sum_xhat += (dxhat * xhat) as f64;
                });
                let n = size.max(1) as f64;
                let (mean_d, mean_dx) = ((sum / n) as f32, (sum_xhat / n) as f32);
                let (mean, rstd) = stats;
                for (v, &xv) in dxs.iter_mut().zip(xs) {
                    let xhat = (xv - mean) * rstd;
                    *v = rstd * (*v - mean_d - xhat * mean_dx);
                }
                gg
            })
            .collect();
        let mut out = dx;
        let (mut dgamma, mut dbeta) = (vec![0f32; d.c], vec![0f32; d.c]);
        let (mut dscale, mut dshift) =
            (Vec::with_capacity(d.cells()), Vec::with_capacity(d.cells()));
        for (bg, gg) in grads.iter().enumerate() {
            let first = (bg % d.groups) * per;
            for k in 0..per {
                dgamma[first + k] += gg.dgamma[k];
                dbeta[first + k] += gg.dbeta[k];
            }
            // groups come in (image, channel) order: their cells concatenate in place
            dscale.extend_from_slice(&gg.dscale);
            dshift.extend_from_slice(&gg.dshift);
        }
        out.extend(dgamma);
        out.extend(dbeta);
        out.extend(dscale);
        out.extend(dshift);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// The kernel's `silu?((GroupNorm(x)·γ + β)·scale↑ + shift↑)` for `x` `[B, C, H, W]` and the
/// parameters [`crate::ops::group_norm::pack`] checked and packed.
pub fn forward(x: &Tensor, packed: Packed, groups: usize, eps: f64, silu: bool) -> Result<Tensor> {
    let ((b, c, h, w), (zh, zw)) = (packed.dims, packed.latent);
    let dims = Dims {
        b,
        c,
        h,
        w,
        groups,
        zh,
        zw,
        silu,
        eps,
    };
    x.contiguous()?.apply_op2(&packed.params, Forward(dims))
}

/// Whether [`forward`] handles this input: f32 on the CPU, `[B, C, H, W]`.
pub fn supports(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && x.rank() == 4
}
