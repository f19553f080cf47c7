//! A layer's bias on CUDA, forward and backward, over the row kernels ([`super::rows`]): a
//! linear layer's added in place onto the matmul's output ([`linear`]) or with the exact GELU
//! after it ([`bias_act`]), and a convolution's per channel ([`channel_bias`]; candle's
//! broadcasting add takes ~9 ms over a `[64, 128, 256, 256]` bf16 output, where one pass over
//! it takes under 1 ms).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{
    CudaStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor, D,
};

use super::rows::{
    by_dtype, column_grid, column_wise_grid, function, launch_cfg, plane_grid, storage, view, Elem,
    BLOCK,
};

/// `act(x + b)` over the last dimension of `x` (f32 or bf16, on CUDA), `b` `[N]` (cast to f32);
/// `gelu` applies the exact (erf) GELU. The result has `x`'s dtype and shape.
pub fn bias_act(x: &Tensor, b: &Tensor, gelu: bool) -> Result<Tensor> {
    let n = x.dim(D::Minus1)?;
    if b.dims() != [n] {
        candle_core::bail!("bias {:?} does not fit {:?}", b.dims(), x.dims());
    }
    x.contiguous()?
        .apply_op2(&b.to_dtype(DType::F32)?, BiasAct { gelu, inner: 1 })
}

/// `x + b` per channel for `x` `[B, C, H, W]` (f32 or bf16, on CUDA) and `b` `[C]` (cast to
/// f32): a convolution's bias. The result has `x`'s dtype and shape.
pub fn channel_bias(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    if b.dims() != [c] {
        candle_core::bail!("bias {:?} does not fit {:?}", b.dims(), x.dims());
    }
    x.contiguous()?.apply_op2(
        &b.to_dtype(DType::F32)?,
        BiasAct {
            gelu: false,
            inner: h * w,
        },
    )
}

/// The sum over the rows of `g` `[rows, N]` (f32 or bf16, on CUDA): a bias's gradient, f32 `[N]`.
pub fn column_sum(g: &Tensor) -> Result<Tensor> {
    g.detach().contiguous()?.apply_op1_no_bwd(&ColumnSum)
}

/// `dy · GELU'(x + b)`: the gradient of [`bias_act`] with `gelu` with respect to `x`, given its
/// input `x`, bias `b` and the result's gradient `dy` (`x`'s dtype and shape).
pub fn bias_gelu_backward(x: &Tensor, b: &Tensor, dy: &Tensor) -> Result<Tensor> {
    x.detach().contiguous()?.apply_op3_no_bwd(
        &b.detach().to_dtype(DType::F32)?,
        &dy.to_dtype(x.dtype())?.contiguous()?,
        &BiasGeluBackward,
    )
}

/// `act(x + b)` with the bias indexed by `(i / inner) % N`: the last dimension (`inner` 1) or a
/// convolution's channels (`inner` H·W). GELU only over the last dimension.
struct BiasAct {
    gelu: bool,
    inner: usize,
}

/// `dy · GELU'(x + b)`.
struct BiasGeluBackward;

/// The sum over rows of a `[rows, N]` tensor, f32 `[N]`.
struct ColumnSum;

/// The sums of each row of `cols` elements of a contiguous tensor, f32 `[rows]`.
struct RowSum {
    cols: usize,
}

impl CustomOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "movq-bias-act"
    }

    cuda_only!(2, "the fused row kernels");

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        b: &CudaStorage,
        bl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = x.device().clone();
        let n = xl.shape().elem_count();
        let cols = bl.shape().elem_count();
        let bias = view::<f32>(b, bl, "the bias")?;
        let act = self.gelu as i32;
        let (cols_i, inner) = (cols as i32, self.inner as i32);
        let slice = by_dtype!(x.dtype(), T => {
            let xv = view::<T>(x, xl, "x")?;
            // SAFETY: the kernel writes every element.
            let y = unsafe { dev.alloc::<T>(n)? };
            let stream = dev.cuda_stream();
            if self.inner == 1 {
                let func = function(&dev, &format!("bias_act_fwd_{}", T::SUFFIX))?;
                let mut a = stream.launch_builder(&func);
                a.arg(&xv).arg(&bias).arg(&y).arg(&n).arg(&cols_i).arg(&act);
                // SAFETY: the arguments of bias_act_fwd_* in rows.cu.
                unsafe { a.launch(launch_cfg(column_wise_grid(n, cols), BLOCK)) }.w()?;
            } else {
                let planes = n / self.inner;
                let func = function(&dev, &format!("bias_channel_fwd_{}", T::SUFFIX))?;
                let mut a = stream.launch_builder(&func);
                let planes_i = planes as i32;
                a.arg(&xv).arg(&bias).arg(&y).arg(&planes_i).arg(&cols_i).arg(&inner);
                // SAFETY: the arguments of bias_channel_fwd_* in rows.cu.
                unsafe { a.launch(launch_cfg(plane_grid(planes, self.inner), BLOCK)) }.w()?;
            }
            T::wrap(y)
        });
        Ok((storage(slice, &dev), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        b: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = if self.gelu {
            x.detach()
                .apply_op3_no_bwd(&b.detach(), &grad, &BiasGeluBackward)?
        } else {
            grad
        };
        let db = if self.inner == 1 {
            dx.apply_op1_no_bwd(&ColumnSum)?
        } else {
            channel_bias_grad(&dx, b.elem_count())?
        };
        Ok((x.track_op().then_some(dx), Some(db)))
    }
}

impl CustomOp3 for BiasGeluBackward {
    fn name(&self) -> &'static str {
        "movq-bias-gelu-backward"
    }

    cuda_only!(3, "the fused row kernels");

    /// `(x, b, dy)` → `dx`.
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        b: &CudaStorage,
        bl: &Layout,
        g: &CudaStorage,
        gl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = x.device().clone();
        let n = xl.shape().elem_count();
        let cols = bl.shape().elem_count() as i32;
        let bias = view::<f32>(b, bl, "the bias")?;
        let slice = by_dtype!(x.dtype(), T => {
            let xv = view::<T>(x, xl, "x")?;
            let gv = view::<T>(g, gl, "the gradient")?;
            // SAFETY: the kernel writes every element.
            let dx = unsafe { dev.alloc::<T>(n)? };
            let func = function(&dev, &format!("bias_gelu_bwd_{}", T::SUFFIX))?;
            let stream = dev.cuda_stream();
            let mut a = stream.launch_builder(&func);
            a.arg(&xv).arg(&bias).arg(&gv).arg(&dx).arg(&n).arg(&cols);
            // SAFETY: the arguments of bias_gelu_bwd_*.
            unsafe { a.launch(launch_cfg(column_wise_grid(n, cols as usize), BLOCK)) }.w()?;
            T::wrap(dx)
        });
        Ok((storage(slice, &dev), xl.shape().clone()))
    }
}

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "movq-column-sum"
    }

    cuda_only!(1, "the fused row kernels");

    fn cuda_fwd(&self, g: &CudaStorage, gl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = g.device().clone();
        let cols = *gl.shape().dims().last().unwrap_or(&1);
        let rows = gl.shape().elem_count() / cols.max(1);
        let out = dev.alloc_zeros::<f32>(cols)?;
        let (grid, chunk) = column_grid(rows, cols);
        let (rows_i, cols_i, chunk_i) = (rows as i32, cols as i32, chunk as i32);
        by_dtype!(g.dtype(), T => {
            let gv = view::<T>(g, gl, "the gradient")?;
            let func = function(&dev, &format!("column_sum_{}", T::SUFFIX))?;
            let stream = dev.cuda_stream();
            let mut a = stream.launch_builder(&func);
            a.arg(&gv).arg(&out).arg(&rows_i).arg(&cols_i).arg(&chunk_i);
            // SAFETY: the arguments of column_sum_*.
            unsafe { a.launch(launch_cfg(grid, BLOCK)) }.w()?;
        });
        Ok((storage(CudaStorageSlice::F32(out), &dev), Shape::from(cols)))
    }
}

impl CustomOp1 for RowSum {
    fn name(&self) -> &'static str {
        "movq-row-sum"
    }

    cuda_only!(1, "the fused row kernels");

    fn cuda_fwd(&self, g: &CudaStorage, gl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = g.device().clone();
        let cols = self.cols.max(1);
        let rows = gl.shape().elem_count() / cols;
        // SAFETY: the kernel writes every row's sum.
        let out = unsafe { dev.alloc::<f32>(rows)? };
        let cols_i = cols as i32;
        by_dtype!(g.dtype(), T => {
            let gv = view::<T>(g, gl, "the gradient")?;
            let func = function(&dev, &format!("row_sum_{}", T::SUFFIX))?;
            let stream = dev.cuda_stream();
            let mut a = stream.launch_builder(&func);
            a.arg(&gv).arg(&out).arg(&cols_i);
            // SAFETY: the arguments of row_sum_* (a block per row, at most 32 warps).
            unsafe { a.launch(launch_cfg((rows.max(1), 1), BLOCK)) }.w()?;
        });
        Ok((storage(CudaStorageSlice::F32(out), &dev), Shape::from(rows)))
    }
}

/// The gradient of a per-channel bias from the gradient `dy` `[B, C, H, W]` (contiguous) of
/// its output: the sum of each (b, c) plane, then over the batch; f32 `[C]`.
pub(super) fn channel_bias_grad(dy: &Tensor, c: usize) -> Result<Tensor> {
    let inner = dy.elem_count() / dy.dim(0)?.max(1) / c.max(1);
    let planes = dy.apply_op1_no_bwd(&RowSum { cols: inner })?;
    planes.reshape((planes.elem_count() / c, c))?.sum(0)
}

/// `y += b` per channel in place, for `y` a fresh `[B, C, H, W]` output of `dims` (a
/// convolution's, before it becomes a tensor) and `b` f32 `[C]` under `bl`. (cuDNN's
/// convolutions are its only user.)
#[cfg(feature = "cudnn")]
pub(super) fn channel_bias_inplace(
    y: &mut CudaStorage,
    b: &CudaStorage,
    bl: &Layout,
    dims: [usize; 4],
) -> Result<()> {
    let dev = y.device().clone();
    let [n, c, h, w] = dims;
    let bias = view::<f32>(b, bl, "the bias")?;
    if bias.len() != c {
        candle_core::bail!("a bias of {} for {c} channels", bias.len());
    }
    let (planes, inner) = (n * c, h * w);
    let (planes_i, c_i, inner_i) = (planes as i32, c as i32, inner as i32);
    let per_thread = if inner.is_multiple_of(8) { 8 } else { 1 };
    let stream = dev.cuda_stream();
    by_dtype!(y.dtype(), T => {
        let Some(ys) = T::of_mut(&mut y.slice) else {
            candle_core::bail!("channel bias: the output has another dtype")
        };
        let func = function(&dev, &format!("bias_channel_inplace_{}", T::SUFFIX))?;
        let mut a = stream.launch_builder(&func);
        a.arg(ys).arg(&bias).arg(&planes_i).arg(&c_i).arg(&inner_i);
        let grid = plane_grid(planes, inner.div_ceil(per_thread));
        // SAFETY: the arguments of bias_channel_inplace_* in rows.cu.
        unsafe { a.launch(launch_cfg(grid, BLOCK)) }.w()?;
    });
    Ok(())
}

/// `x Wᵀ + b` for `x` `[rows, in]` (f32 or bf16, on CUDA), `w` `[out, in]` in `x`'s dtype and
/// `b` `[out]` (cast to f32): one matmul whose output takes the bias in place, so that the graph
/// keeps only `x`, `w` and `b` for the backward pass (a matmul followed by a bias op keeps the
/// matmul's output too: a quarter of the transformer's activation memory).
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    check_linear(x, w, b)?;
    x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.to_dtype(DType::F32)?,
        Linear { residual: None },
    )
}

/// That `x` `[rows, in]`, `w` `[out, in]` (in `x`'s dtype) and `b` `[out]` fit one another.
fn check_linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<()> {
    let (_, inp) = x.dims2()?;
    let (out, w_in) = w.dims2()?;
    if w_in != inp || b.dims() != [out] || w.dtype() != x.dtype() {
        candle_core::bail!(
            "fused linear: x {:?} {:?}, weight {:?} {:?}, bias {:?} do not fit",
            x.dims(),
            x.dtype(),
            w.dims(),
            w.dtype(),
            b.dims()
        );
    }
    Ok(())
}

/// `residual + x Wᵀ + b` for [`linear`]'s `x`, `w`, `b` and `residual` `[rows, out]` in `x`'s
/// dtype: bias and residual go onto the matmul's output in place, in one pass. The result has no
/// backward pass: for inference, and for nodes that run their own ([`super::block`]).
pub fn linear_residual(x: &Tensor, w: &Tensor, b: &Tensor, residual: &Tensor) -> Result<Tensor> {
    check_linear(x, w, b)?;
    let (rows, _) = x.dims2()?;
    let (out, _) = w.dims2()?;
    if residual.dims() != [rows, out] || residual.dtype() != x.dtype() {
        candle_core::bail!(
            "fused linear: residual {:?} {:?} does not fit {rows} rows of {out} {:?}",
            residual.dims(),
            residual.dtype(),
            x.dtype()
        );
    }
    x.contiguous()?.apply_op3_no_bwd(
        &w.contiguous()?,
        &b.to_dtype(DType::F32)?,
        &Linear {
            residual: Some(residual.contiguous()?),
        },
    )
}

/// `x Wᵀ + b`, plus `residual` in the same pass when there is one (then without a backward pass).
struct Linear {
    residual: Option<Tensor>,
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "movq-linear"
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
        let (rows, inp) = xl.shape().dims2()?;
        let out = wl.shape().dims2()?.0;
        // x Wᵀ through candle's cuBLAS matmul (Wᵀ as a transposed view)
        let mut y = x.matmul(w, (1, rows, out, inp), xl, &wl.transpose(0, 1)?)?;
        let bias = view::<f32>(b, bl, "the bias")?;
        let (n, out_i) = (rows * out, out as i32);
        let stream = dev.cuda_stream();
        let residual = self.residual.as_ref().map(Tensor::storage_and_layout);
        by_dtype!(y.dtype(), T => {
            let Some(ys) = T::of_mut(&mut y.slice) else {
                candle_core::bail!("fused linear: the matmul's output has another dtype")
            };
            match &residual {
                None => {
                    let func = function(&dev, &format!("bias_add_inplace_{}", T::SUFFIX))?;
                    let mut a = stream.launch_builder(&func);
                    a.arg(ys).arg(&bias).arg(&n).arg(&out_i);
                    // SAFETY: the arguments of bias_add_inplace_* in rows.cu.
                    unsafe { a.launch(launch_cfg(column_wise_grid(n, out), BLOCK)) }.w()?;
                }
                Some((rs, rl)) => {
                    let Storage::Cuda(rs) = &**rs else {
                        candle_core::bail!("fused linear: the residual is not on the GPU")
                    };
                    let rv = view::<T>(rs, rl, "the residual")?;
                    let func = function(&dev, &format!("bias_residual_inplace_{}", T::SUFFIX))?;
                    let mut a = stream.launch_builder(&func);
                    a.arg(ys).arg(&bias).arg(&rv).arg(&n).arg(&out_i);
                    // SAFETY: the arguments of bias_residual_inplace_* in rows.cu.
                    unsafe { a.launch(launch_cfg(column_wise_grid(n, out), BLOCK)) }.w()?;
                }
            }
        });
        Ok((y, Shape::from((rows, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if self.residual.is_some() {
            candle_core::bail!("the fused linear layer with a residual has no backward pass")
        }
        let grad = grad.contiguous()?;
        let dx = if x.track_op() {
            Some(grad.matmul(&w.detach())?)
        } else {
            None
        };
        let dw = grad.t()?.matmul(&x.detach())?;
        let db = grad.apply_op1_no_bwd(&ColumnSum)?;
        Ok((dx, Some(dw), Some(db)))
    }
}
