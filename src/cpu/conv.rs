//! 2-D convolution on the CPU, forward and backward, as matrix products over unfolded windows.
//!
//! candle 0.11's CPU convolution gathers its input with per-element index arithmetic, and its
//! backward pass concatenates shifted views through generic strided copies; on two cores a
//! small autoencoder's training step spent most of its time there. Here, per image, the
//! `k×k` windows are unfolded into a `[C·k², Ho·Wo]` matrix by plain loops (`unfold`), and
//!
//! - forward: `y = W [O, C·k²] · cols (+ bias)`;
//! - weight gradient: `dW = Σ_b dY_b [O, Ho·Wo] · cols_bᵀ`, bias gradient `Σ dY`;
//! - input gradient: `dcols = Wᵀ · dY_b`, folded back onto the image (`fold`, the adjoint of
//!   `unfold`).
//!
//! Images are spread over rayon's threads, each running a single-threaded GEMM (the `gemm`
//! crate candle itself uses). f32, contiguous `[B, C, H, W]` input, `[O, C, k, k]` weights,
//! square kernel, any stride, the same zero padding on every side.

use super::{gemm, values, Mat};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Sizes of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

impl Geometry {
    fn new(x: &[usize], w: &[usize], stride: usize, pad: usize) -> Result<Self> {
        let (&[b, c, h, wd], &[o, cw, k, k2]) = (x, w) else {
            candle_core::bail!("cpu conv: expected 4-d input and weight, got {x:?} and {w:?}");
        };
        if c != cw || k != k2 || stride == 0 || h + 2 * pad < k || wd + 2 * pad < k {
            candle_core::bail!(
                "cpu conv: input {x:?}, weight {w:?}, stride {stride}, padding {pad} do not fit"
            );
        }
        Ok(Self {
            b,
            c,
            h,
            w: wd,
            o,
            k,
            stride,
            pad,
        })
    }

    fn ho(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }

    fn wo(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }

    /// Values per image of the input, the output and the unfolded windows.
    fn image(&self) -> usize {
        self.c * self.h * self.w
    }

    fn out_image(&self) -> usize {
        self.o * self.ho() * self.wo()
    }

    fn rows(&self) -> usize {
        self.c * self.k * self.k
    }

    fn out_shape(&self) -> Shape {
        (self.b, self.o, self.ho(), self.wo()).into()
    }

    /// For output index `i` along an axis and kernel offset `j`: the input index, if inside.
    fn source(&self, i: usize, j: usize, len: usize) -> Option<usize> {
        (i * self.stride + j)
            .checked_sub(self.pad)
            .filter(|&s| s < len)
    }

    /// The output columns `ox` whose input column `ox·stride + j − pad` lies inside `0..len`.
    fn valid(&self, j: usize, out_len: usize, len: usize) -> std::ops::Range<usize> {
        let first = self.pad.saturating_sub(j).div_ceil(self.stride);
        // the last valid ox satisfies ox·stride + j − pad ≤ len − 1
        let end = ((len + self.pad).saturating_sub(j + 1) / self.stride + 1).min(out_len);
        first.min(end)..end
    }

    /// One image `[C, H, W]` → its windows `[C·k², Ho·Wo]`, rows ordered (c, ky, kx).
    fn unfold(&self, x: &[f32], cols: &mut [f32]) {
        let (ho, wo, k, s) = (self.ho(), self.wo(), self.k, self.stride);
        for c in 0..self.c {
            let plane = &x[c * self.h * self.w..(c + 1) * self.h * self.w];
            for ky in 0..k {
                for kx in 0..k {
                    let row = ((c * k + ky) * k + kx) * ho * wo;
                    let cols_x = self.valid(kx, wo, self.w);
                    for oy in 0..ho {
                        let out = &mut cols[row + oy * wo..row + (oy + 1) * wo];
                        let Some(iy) = self.source(oy, ky, self.h) else {
                            out.fill(0.0);
                            continue;
                        };
                        let line = &plane[iy * self.w..(iy + 1) * self.w];
                        out[..cols_x.start].fill(0.0);
                        out[cols_x.end..].fill(0.0);
                        let first = cols_x.start * s + kx - self.pad;
                        let dst = &mut out[cols_x.clone()];
                        if s == 1 {
                            dst.copy_from_slice(&line[first..first + dst.len()]);
                        } else {
                            for (n, v) in dst.iter_mut().enumerate() {
                                *v = line[first + n * s];
                            }
                        }
                    }
                }
            }
        }
    }

    /// The adjoint of [`Self::unfold`]: adds each window value back onto its pixel.
    fn fold(&self, cols: &[f32], x: &mut [f32]) {
        let (ho, wo, k, s) = (self.ho(), self.wo(), self.k, self.stride);
        x.fill(0.0);
        for c in 0..self.c {
            let plane = &mut x[c * self.h * self.w..(c + 1) * self.h * self.w];
            for ky in 0..k {
                for kx in 0..k {
                    let row = ((c * k + ky) * k + kx) * ho * wo;
                    let cols_x = self.valid(kx, wo, self.w);
                    for oy in 0..ho {
                        let Some(iy) = self.source(oy, ky, self.h) else {
                            continue;
                        };
                        let src = &cols[row + oy * wo..row + (oy + 1) * wo][cols_x.clone()];
                        let line = &mut plane[iy * self.w..(iy + 1) * self.w];
                        let first = cols_x.start * s + kx - self.pad;
                        for (n, v) in src.iter().enumerate() {
                            line[first + n * s] += v;
                        }
                    }
                }
            }
        }
    }
}

/// Runs `f(image index, chunk)` over the `chunk`-sized pieces of `out`, in parallel.
fn per_image(out: &mut [f32], chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if chunk == 0 {
        return;
    }
    out.par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(i, o)| f(i, o));
}

/// `y = x ⋆ w + bias` (the bias optional through [`conv2d`]).
struct Forward {
    stride: usize,
    pad: usize,
}

impl Forward {
    fn run(
        &self,
        x: &[f32],
        xs: &[usize],
        w: &[f32],
        ws: &[usize],
        bias: Option<&[f32]>,
    ) -> Result<(Vec<f32>, Shape)> {
        let g = Geometry::new(xs, ws, self.stride, self.pad)?;
        let (hw, rows) = (g.ho() * g.wo(), g.rows());
        let mut y = vec![0f32; g.b * g.out_image()];
        per_image(&mut y, g.out_image(), |i, out| {
            let mut cols = vec![0f32; rows * hw];
            g.unfold(&x[i * g.image()..(i + 1) * g.image()], &mut cols);
            let wm = Mat {
                data: w,
                rs: rows,
                cs: 1,
            };
            let cm = Mat {
                data: &cols,
                rs: hw,
                cs: 1,
            };
            gemm(g.o, hw, rows, out, wm, cm, false, false);
            if let Some(bias) = bias {
                for (row, &b) in out.chunks_mut(hw).zip(bias) {
                    row.iter_mut().for_each(|v| *v += b);
                }
            }
        });
        Ok((y, g.out_shape()))
    }
}

impl CustomOp2 for Forward {
    fn name(&self) -> &'static str {
        "cpu-conv2d"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, shape) = self.run(
            values(x, xl, "cpu conv: input")?,
            xl.dims(),
            values(w, wl, "cpu conv: weight")?,
            wl.dims(),
            None,
        )?;
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = backward(x, w, grad, self.stride, self.pad, false)?;
        Ok((dx, Some(dw)))
    }
}

impl CustomOp3 for Forward {
    fn name(&self) -> &'static str {
        "cpu-conv2d-bias"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let bias = values(b, bl, "cpu conv: bias")?;
        if bias.len() != wl.dims()[0] {
            candle_core::bail!(
                "cpu conv: {} biases for {} output channels",
                bias.len(),
                wl.dims()[0]
            );
        }
        let (y, shape) = self.run(
            values(x, xl, "cpu conv: input")?,
            xl.dims(),
            values(w, wl, "cpu conv: weight")?,
            wl.dims(),
            Some(bias),
        )?;
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = backward(x, w, grad, self.stride, self.pad, true)?;
        Ok((dx, Some(dw), db))
    }
}

/// The input's, the weights' and (with `bias`) the bias's gradients.
fn backward(
    x: &Tensor,
    w: &Tensor,
    grad: &Tensor,
    stride: usize,
    pad: usize,
    bias: bool,
) -> Result<(Option<Tensor>, Tensor, Option<Tensor>)> {
    let grad = grad.contiguous()?;
    let dx = if x.track_op() {
        Some(grad.apply_op2_no_bwd(
            w,
            &InputGrad {
                stride,
                pad,
                input: x.dims().to_vec(),
            },
        )?)
    } else {
        None
    };
    let dw = x.apply_op2_no_bwd(
        &grad,
        &WeightGrad {
            stride,
            pad,
            weight: w.dims().to_vec(),
        },
    )?;
    // the last dimension first: contiguous row sums (a strided sum over (0, 2, 3) is slow)
    let db = if bias {
        Some(grad.flatten_from(2)?.sum(2)?.sum(0)?)
    } else {
        None
    };
    Ok((dx, dw, db))
}

/// `dX` from `dY` and `W`: `fold(Wᵀ · dY_b)` per image.
struct InputGrad {
    stride: usize,
    pad: usize,
    input: Vec<usize>,
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "cpu-conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        dy: &CpuStorage,
        dyl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(&self.input, wl.dims(), self.stride, self.pad)?;
        if dyl.shape() != &g.out_shape() {
            candle_core::bail!(
                "cpu conv: output gradient {:?}, expected {:?}",
                dyl.dims(),
                g.out_shape()
            );
        }
        let (dy, w) = (
            values(dy, dyl, "cpu conv: output gradient")?,
            values(w, wl, "cpu conv: weight")?,
        );
        let (hw, rows) = (g.ho() * g.wo(), g.rows());
        let mut dx = vec![0f32; g.b * g.image()];
        per_image(&mut dx, g.image(), |i, out| {
            let mut cols = vec![0f32; rows * hw];
            let wt = Mat {
                data: w,
                rs: 1,
                cs: rows,
            };
            let dym = Mat {
                data: &dy[i * g.out_image()..(i + 1) * g.out_image()],
                rs: hw,
                cs: 1,
            };
            gemm(rows, hw, g.o, &mut cols, wt, dym, false, false);
            g.fold(&cols, out);
        });
        Ok((CpuStorage::F32(dx), Shape::from(self.input.clone())))
    }
}

/// `dW = Σ_b dY_b · unfold(X_b)ᵀ`, summed per thread over a share of the images.
struct WeightGrad {
    stride: usize,
    pad: usize,
    weight: Vec<usize>,
}

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "cpu-conv2d-weight-grad"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        dy: &CpuStorage,
        dyl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(xl.dims(), &self.weight, self.stride, self.pad)?;
        if dyl.shape() != &g.out_shape() {
            candle_core::bail!(
                "cpu conv: output gradient {:?}, expected {:?}",
                dyl.dims(),
                g.out_shape()
            );
        }
        let (x, dy) = (
            values(x, xl, "cpu conv: input")?,
            values(dy, dyl, "cpu conv: output gradient")?,
        );
        let (hw, rows) = (g.ho() * g.wo(), g.rows());
        let threads = rayon::current_num_threads().clamp(1, g.b.max(1));
        let share = g.b.div_ceil(threads);
        let partials: Vec<Vec<f32>> = (0..threads)
            .into_par_iter()
            .map(|t| {
                let mut dw = vec![0f32; g.o * rows];
                let mut cols = vec![0f32; rows * hw];
                for (n, i) in (t * share..((t + 1) * share).min(g.b)).enumerate() {
                    g.unfold(&x[i * g.image()..(i + 1) * g.image()], &mut cols);
                    let dym = Mat {
                        data: &dy[i * g.out_image()..(i + 1) * g.out_image()],
                        rs: hw,
                        cs: 1,
                    };
                    let ct = Mat {
                        data: &cols,
                        rs: 1,
                        cs: hw,
                    };
                    gemm(g.o, rows, hw, &mut dw, dym, ct, n > 0, false);
                }
                dw
            })
            .collect();
        let mut dw = vec![0f32; g.o * rows];
        for p in partials {
            dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        Ok((CpuStorage::F32(dw), Shape::from(self.weight.clone())))
    }
}

/// `x ⋆ w (+ b)` on the CPU in f32: `x` `[B, C, H, W]`, `w` `[O, C, k, k]`, `b` `[O]`, zero
/// padding `pad` on every side, stride `stride`; differentiable in all three.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    pad: usize,
    stride: usize,
) -> Result<Tensor> {
    let op = Forward { stride, pad };
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
        None => x.apply_op2(&w, op),
    }
}

/// Whether [`conv2d`] handles this input: f32 on the CPU.
pub fn supports(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}
