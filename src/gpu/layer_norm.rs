//! LayerNorm on CUDA, forward and backward, over the row kernels ([`super::rows`]): a warp per
//! row forward (the statistics kept for the backward pass), a warp per row for the input's
//! gradient and a column pass for the scale's and shift's.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor, D};

use super::rows::{
    by_dtype, column_grid, function, launch_cfg, row_grid, storage, view, Elem, BLOCK,
};

/// LayerNorm over the last dimension of `x` (f32 or bf16, on CUDA) with scale `w` and shift
/// `b` `[D]` (cast to f32): statistics in f32, the result in `x`'s dtype.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
    check(x, w, b)?;
    let f = |t: &Tensor| t.to_dtype(DType::F32);
    x.contiguous()?.apply_op3(
        &f(w)?,
        &f(b)?,
        LayerNorm {
            eps,
            stats: Arc::new(Mutex::new(None)),
        },
    )
}

/// Each row's mean and 1/σ from a forward pass, which the backward pass takes.
#[derive(Clone)]
pub struct Stats(Arc<CudaSlice<f32>>);

/// [`layer_norm`] for a caller that runs the backward pass itself ([`layer_norm_backward`]): the
/// result (with no graph behind it) and the rows' statistics.
pub fn layer_norm_saving(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<(Tensor, Stats)> {
    check(x, w, b)?;
    let f = |t: &Tensor| t.detach().to_dtype(DType::F32);
    let stats = Arc::new(Mutex::new(None));
    let y = x.detach().contiguous()?.apply_op3_no_bwd(
        &f(w)?,
        &f(b)?,
        &LayerNorm {
            eps,
            stats: stats.clone(),
        },
    )?;
    let stats = stats
        .lock()
        .expect("the statistics lock is never poisoned")
        .clone();
    match stats {
        Some(stats) => Ok((y, Stats(stats))),
        None => candle_core::bail!("fused LayerNorm: the forward pass kept no statistics"),
    }
}

/// What [`layer_norm_backward`] gives for LayerNorm's input.
#[derive(Clone, Copy)]
pub enum InputGrad<'a> {
    /// Nothing (the input is a constant).
    Skip,
    /// Its gradient.
    Own,
    /// Its gradient plus `r`, a gradient that reaches the same tensor by another path (a
    /// residual connection), added in the same pass.
    Plus(&'a Tensor),
}

/// The gradients of LayerNorm's input (as `input` asks), scale and shift (f32 `[D]` each) from
/// the result's gradient `grad`, given the forward pass's input, scale and statistics. Rows of
/// 256, 512, 768 or 1,024 values take one pass over `x` and `grad` for all three; other widths a
/// row pass and a column pass.
pub fn layer_norm_backward(
    x: &Tensor,
    w: &Tensor,
    stats: &Stats,
    grad: &Tensor,
    input: InputGrad,
) -> Result<(Option<Tensor>, Tensor, Tensor)> {
    let grad = grad.to_dtype(x.dtype())?.contiguous()?;
    let (x, w) = (
        x.detach().contiguous()?,
        w.detach().to_dtype(DType::F32)?.contiguous()?,
    );
    let residual = match input {
        InputGrad::Plus(r) => Some(r.detach().to_dtype(x.dtype())?.contiguous()?),
        _ => None,
    };
    let d = w.elem_count();
    let aligned = |t: &Tensor| t.layout().start_offset().is_multiple_of(8);
    let one_pass = d.is_multiple_of(256)
        && d <= 1024
        && [&x, &grad, &w].into_iter().chain(&residual).all(aligned);
    let (dx, dp) = if one_pass {
        let op = LnBackwardRows {
            stats: stats.0.clone(),
            want_dx: !matches!(input, InputGrad::Skip),
            residual,
            dx: Mutex::new(None),
        };
        let dp = x.apply_op3_no_bwd(&grad, &w, &op)?;
        let dx = op
            .dx
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .map(|s| Tensor::from_storage(Storage::Cuda(s), x.shape(), BackpropOp::none(), false));
        (dx, dp)
    } else {
        let pass = |pass| LnBackward {
            pass,
            stats: stats.0.clone(),
        };
        let own = || x.apply_op3_no_bwd(&grad, &w, &pass(LnPass::Input));
        let dx = match (input, residual) {
            (InputGrad::Skip, _) => None,
            (_, None) => Some(own()?),
            (_, Some(r)) => Some((own()? + r)?),
        };
        (dx, x.apply_op3_no_bwd(&grad, &w, &pass(LnPass::Params))?)
    };
    Ok((dx, dp.narrow(0, 0, d)?, dp.narrow(0, d, d)?))
}

/// (elements, rows, row width) of `x` under `xl` with one parameter per column (`wl`).
fn extent(xl: &Layout, wl: &Layout) -> (usize, usize, usize) {
    let n = xl.shape().elem_count();
    let d = wl.shape().elem_count();
    (n, n / d.max(1), d)
}

/// An error unless `w` and `b` are `[D]` for `x` `[…, D]`.
fn check(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<()> {
    let n = x.dim(D::Minus1)?;
    if w.dims() != [n] || b.dims() != [n] {
        candle_core::bail!(
            "LayerNorm: scale {:?} / shift {:?} do not fit {:?}",
            w.dims(),
            b.dims(),
            x.dims()
        );
    }
    Ok(())
}

struct LayerNorm {
    eps: f32,
    /// Each row's mean and 1/σ from the forward pass, for the backward pass.
    stats: Arc<Mutex<Option<Arc<CudaSlice<f32>>>>>,
}

#[derive(Clone, Copy)]
enum LnPass {
    /// The input's gradient, a warp per row.
    Input,
    /// The scale's and shift's gradients `[2·D]`, column sums.
    Params,
}

struct LnBackward {
    pass: LnPass,
    stats: Arc<CudaSlice<f32>>,
}

/// The one-pass backward kernel (`ln_bwd_rows*`): the op's result is the parameters' gradients
/// `[2·D]`, the input's is left in `dx` (when `want_dx`).
struct LnBackwardRows {
    stats: Arc<CudaSlice<f32>>,
    want_dx: bool,
    residual: Option<Tensor>,
    dx: Mutex<Option<CudaStorage>>,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "movq-layer-norm"
    }

    cuda_only!(3, "the fused row kernels");

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
        b: &CudaStorage,
        bl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = x.device().clone();
        let (n, rows, d) = extent(xl, wl);
        let (wv, bv) = (
            view::<f32>(w, wl, "the scale")?,
            view::<f32>(b, bl, "the shift")?,
        );
        // SAFETY: the kernel writes every row's statistics.
        let stats = unsafe { dev.alloc::<f32>(2 * rows)? };
        let (rows_i, d_i) = (rows as i32, d as i32);
        let slice = by_dtype!(x.dtype(), T => {
            let xv = view::<T>(x, xl, "x")?;
            // SAFETY: the kernel writes every element.
            let y = unsafe { dev.alloc::<T>(n)? };
            let func = function(&dev, &format!("ln_fwd_{}", T::SUFFIX))?;
            let stream = dev.cuda_stream();
            let mut a = stream.launch_builder(&func);
            a.arg(&xv).arg(&wv).arg(&bv).arg(&y).arg(&stats).arg(&rows_i).arg(&d_i).arg(&self.eps);
            // SAFETY: the arguments of ln_fwd_*.
            unsafe { a.launch(launch_cfg(row_grid(rows), BLOCK)) }.w()?;
            T::wrap(y)
        });
        *self
            .stats
            .lock()
            .expect("the statistics lock is never poisoned") = Some(Arc::new(stats));
        Ok((storage(slice, &dev), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let stats = self
            .stats
            .lock()
            .expect("the statistics lock is never poisoned")
            .clone();
        let Some(stats) = stats else {
            candle_core::bail!("fused LayerNorm: backward pass without a forward pass on CUDA")
        };
        let input = if x.track_op() {
            InputGrad::Own
        } else {
            InputGrad::Skip
        };
        let (dx, dw, db) = layer_norm_backward(x, w, &Stats(stats), grad, input)?;
        Ok((dx, Some(dw), Some(db)))
    }
}

impl CustomOp3 for LnBackward {
    fn name(&self) -> &'static str {
        match self.pass {
            LnPass::Input => "movq-layer-norm-backward-input",
            LnPass::Params => "movq-layer-norm-backward-params",
        }
    }

    cuda_only!(3, "the fused row kernels");

    /// `(x, dy, w)` → the input's gradient, or the parameters' `[2·D]`.
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        g: &CudaStorage,
        gl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = x.device().clone();
        let (n, rows, d) = extent(xl, wl);
        let (rows_i, d_i) = (rows as i32, d as i32);
        let stats: &CudaSlice<f32> = &self.stats;
        let stream = dev.cuda_stream();
        match self.pass {
            LnPass::Input => {
                let wv = view::<f32>(w, wl, "the scale")?;
                let slice = by_dtype!(x.dtype(), T => {
                    let xv = view::<T>(x, xl, "x")?;
                    let gv = view::<T>(g, gl, "the gradient")?;
                    // SAFETY: the kernel writes every element.
                    let dx = unsafe { dev.alloc::<T>(n)? };
                    let func = function(&dev, &format!("ln_bwd_input_{}", T::SUFFIX))?;
                    let mut a = stream.launch_builder(&func);
                    a.arg(&xv).arg(&wv).arg(&gv).arg(stats).arg(&dx).arg(&rows_i).arg(&d_i);
                    // SAFETY: the arguments of ln_bwd_input_*.
                    unsafe { a.launch(launch_cfg(row_grid(rows), BLOCK)) }.w()?;
                    T::wrap(dx)
                });
                Ok((storage(slice, &dev), xl.shape().clone()))
            }
            LnPass::Params => {
                let dp = dev.alloc_zeros::<f32>(2 * d)?;
                let (grid, chunk) = column_grid(rows, d);
                let chunk_i = chunk as i32;
                by_dtype!(x.dtype(), T => {
                    let xv = view::<T>(x, xl, "x")?;
                    let gv = view::<T>(g, gl, "the gradient")?;
                    let func = function(&dev, &format!("ln_bwd_params_{}", T::SUFFIX))?;
                    let mut a = stream.launch_builder(&func);
                    a.arg(&xv).arg(&gv).arg(stats).arg(&dp).arg(&rows_i).arg(&d_i).arg(&chunk_i);
                    // SAFETY: the arguments of ln_bwd_params_*.
                    unsafe { a.launch(launch_cfg(grid, BLOCK)) }.w()?;
                });
                Ok((storage(CudaStorageSlice::F32(dp), &dev), Shape::from(2 * d)))
            }
        }
    }
}

impl CustomOp3 for LnBackwardRows {
    fn name(&self) -> &'static str {
        "movq-layer-norm-backward-rows"
    }

    cuda_only!(3, "the fused row kernels");

    /// `(x, dy, w)` → the parameters' gradients `[2·D]`; the input's into `self.dx`.
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        g: &CudaStorage,
        gl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = x.device().clone();
        let (n, rows, d) = extent(xl, wl);
        let rows_i = rows as i32;
        let stats: &CudaSlice<f32> = &self.stats;
        let wv = view::<f32>(w, wl, "the scale")?;
        let dp = dev.alloc_zeros::<f32>(2 * d)?;
        let residual = self.residual.as_ref().map(Tensor::storage_and_layout);
        // a warp per row, at least 8 rows per warp where there are enough
        let blocks = rows.div_ceil(8 * BLOCK / 32).clamp(1, 512);
        let dx = by_dtype!(x.dtype(), T => {
            let xv = view::<T>(x, xl, "x")?;
            let gv = view::<T>(g, gl, "the gradient")?;
            let rv = match &residual {
                Some((rs, rl)) => {
                    let Storage::Cuda(rs) = &**rs else {
                        candle_core::bail!("fused LayerNorm: the residual gradient is not on the GPU")
                    };
                    Some(view::<T>(rs, rl, "the residual gradient")?)
                }
                None => None,
            };
            // SAFETY: the kernel writes every element when it is asked for dx.
            let dx = if self.want_dx { Some(unsafe { dev.alloc::<T>(n)? }) } else { None };
            let func = function(&dev, &format!("ln_bwd_rows{}_{}", d / 256, T::SUFFIX))?;
            let stream = dev.cuda_stream();
            let null = 0u64;
            let mut a = stream.launch_builder(&func);
            a.arg(&xv).arg(&wv).arg(&gv);
            match &rv {
                Some(rv) => a.arg(rv),
                None => a.arg(&null),
            };
            a.arg(stats);
            match &dx {
                Some(dx) => a.arg(dx),
                None => a.arg(&null),
            };
            a.arg(&dp).arg(&rows_i);
            // SAFETY: the arguments of ln_bwd_rows*_* (null pointers for what is not there).
            unsafe { a.launch(launch_cfg((blocks, 1), BLOCK)) }.w()?;
            dx.map(T::wrap)
        });
        *self.dx.lock().unwrap_or_else(|e| e.into_inner()) = dx.map(|s| storage(s, &dev));
        Ok((storage(CudaStorageSlice::F32(dp), &dev), Shape::from(2 * d)))
    }
}
