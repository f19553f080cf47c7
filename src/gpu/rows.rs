//! A linear layer (its bias in place on the matmul's output, or bias + exact GELU) and LayerNorm
//! on CUDA, forward and backward, as candle custom ops over the kernels in `kernels/rows.cu`.
//!
//! candle's broadcasting binary ops index every element through the full shape and strides,
//! and reducing a `[rows, N]` gradient over its rows reads it with a stride of `N`: on the
//! transformer's `[64·1025, 768…3072]` activations a bias add took 2.7 ms where a pass over the
//! data takes 0.3, and LayerNorm (cast, standardize, scale, shift, cast) 2.8 ms. Here each is one
//! pass forward; backward, one pass for the input's gradient and one column-sum pass (a thread
//! per column, coalesced) for the parameters'. Values are f32 or bf16, parameters and
//! statistics f32 (the optimizer's master copies, used as they are).

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{
    CpuStorage, CudaDevice, CudaStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result,
    Shape, Tensor, D,
};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/rows.ptx"));
const MODULE: &str = "movq_rows";

/// Threads per block; rows per block of the column sums.
const BLOCK: usize = 256;
const CHUNK: usize = 256;

/// The value types of these kernels: f32 and bf16.
trait Elem: DeviceRepr + Sized {
    const SUFFIX: &'static str;
    fn of(s: &CudaStorageSlice) -> Option<&CudaSlice<Self>>;
    fn of_mut(s: &mut CudaStorageSlice) -> Option<&mut CudaSlice<Self>>;
    fn wrap(s: CudaSlice<Self>) -> CudaStorageSlice;
}

impl Elem for f32 {
    const SUFFIX: &'static str = "f32";
    fn of(s: &CudaStorageSlice) -> Option<&CudaSlice<Self>> {
        match s {
            CudaStorageSlice::F32(p) => Some(p),
            _ => None,
        }
    }
    fn of_mut(s: &mut CudaStorageSlice) -> Option<&mut CudaSlice<Self>> {
        match s {
            CudaStorageSlice::F32(p) => Some(p),
            _ => None,
        }
    }
    fn wrap(s: CudaSlice<Self>) -> CudaStorageSlice {
        CudaStorageSlice::F32(s)
    }
}

impl Elem for half::bf16 {
    const SUFFIX: &'static str = "bf16";
    fn of(s: &CudaStorageSlice) -> Option<&CudaSlice<Self>> {
        match s {
            CudaStorageSlice::BF16(p) => Some(p),
            _ => None,
        }
    }
    fn of_mut(s: &mut CudaStorageSlice) -> Option<&mut CudaSlice<Self>> {
        match s {
            CudaStorageSlice::BF16(p) => Some(p),
            _ => None,
        }
    }
    fn wrap(s: CudaSlice<Self>) -> CudaStorageSlice {
        CudaStorageSlice::BF16(s)
    }
}

/// The contiguous `T` view of `s` under `l`.
fn view<'a, T: Elem>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    match (T::of(&s.slice), l.contiguous_offsets()) {
        (Some(p), Some((a, b))) => Ok(p.slice(a..b)),
        _ => candle_core::bail!(
            "fused row kernels: {what} must be contiguous {} (got {:?})",
            T::SUFFIX,
            s.dtype()
        ),
    }
}

/// Runs `$body` with `$t` the element type of `dtype` (f32 or bf16).
macro_rules! by_dtype {
    ($dtype:expr, $t:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $t = f32;
                $body
            }
            DType::BF16 => {
                type $t = half::bf16;
                $body
            }
            dt => candle_core::bail!("fused row kernels: {dt:?} values (f32 or bf16 only)"),
        }
    };
}

fn launch_cfg(grid: (usize, usize), block: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0 as u32, grid.1 as u32, 1),
        block_dim: (block as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Blocks of the grid-stride elementwise kernels over `n` elements.
fn elementwise_grid(n: usize) -> (usize, usize) {
    (n.div_ceil(BLOCK).clamp(1, 1 << 20), 1)
}

/// (column blocks, row chunks) of the column sums, and the rows per chunk.
fn column_grid(rows: usize, cols: usize) -> ((usize, usize), usize) {
    let chunk = CHUNK.max(rows.div_ceil(65_535));
    ((cols.div_ceil(BLOCK), rows.div_ceil(chunk).max(1)), chunk)
}

/// Warps of 32 threads, a row each, in blocks of `BLOCK` threads.
fn row_grid(rows: usize) -> (usize, usize) {
    (rows.div_ceil(BLOCK / 32).max(1), 1)
}

fn function(
    dev: &CudaDevice,
    name: &str,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaFunction> {
    Ok(dev
        .get_or_load_custom_func(name, MODULE, PTX)?
        .into_cuda_function())
}

fn storage(slice: CudaStorageSlice, dev: &CudaDevice) -> CudaStorage {
    CudaStorage {
        slice,
        device: dev.clone(),
    }
}

fn cpu_unsupported() -> Result<(CpuStorage, Shape)> {
    candle_core::bail!("the fused row kernels run on CUDA only")
}

/// `act(x + b)` over the last dimension of `x` (f32 or bf16, on CUDA), `b` `[N]` (cast to f32);
/// `gelu` applies the exact (erf) GELU. The result has `x`'s dtype and shape.
pub fn bias_act(x: &Tensor, b: &Tensor, gelu: bool) -> Result<Tensor> {
    let n = x.dim(D::Minus1)?;
    if b.dims() != [n] {
        candle_core::bail!("bias {:?} does not fit {:?}", b.dims(), x.dims());
    }
    x.contiguous()?
        .apply_op2(&b.to_dtype(DType::F32)?, BiasAct { gelu })
}

struct BiasAct {
    gelu: bool,
}

/// `dy · GELU'(x + b)`.
struct BiasGeluBackward;

/// The sum over rows of a `[rows, N]` tensor, f32 `[N]`.
struct ColumnSum;

impl CustomOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "movq-bias-act"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_unsupported()
    }

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
        let cols_i = cols as i32;
        let slice = by_dtype!(x.dtype(), T => {
            let xv = view::<T>(x, xl, "x")?;
            // SAFETY: the kernel writes every element.
            let y = unsafe { dev.alloc::<T>(n)? };
            let func = function(&dev, &format!("bias_act_fwd_{}", T::SUFFIX))?;
            let stream = dev.cuda_stream();
            let mut a = stream.launch_builder(&func);
            a.arg(&xv).arg(&bias).arg(&y).arg(&n).arg(&cols_i).arg(&act);
            // SAFETY: the arguments of bias_act_fwd_* in rows.cu.
            unsafe { a.launch(launch_cfg(elementwise_grid(n), BLOCK)) }.w()?;
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
        let db = dx.apply_op1_no_bwd(&ColumnSum)?;
        Ok((x.track_op().then_some(dx), Some(db)))
    }
}

impl CustomOp3 for BiasGeluBackward {
    fn name(&self) -> &'static str {
        "movq-bias-gelu-backward"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_unsupported()
    }

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
            unsafe { a.launch(launch_cfg(elementwise_grid(n), BLOCK)) }.w()?;
            T::wrap(dx)
        });
        Ok((storage(slice, &dev), xl.shape().clone()))
    }
}

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "movq-column-sum"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_unsupported()
    }

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

/// `x Wᵀ + b` for `x` `[rows, in]` (f32 or bf16, on CUDA), `w` `[out, in]` in `x`'s dtype and
/// `b` `[out]` (cast to f32): one matmul whose output takes the bias in place, so that the graph
/// keeps only `x`, `w` and `b` for the backward pass (a matmul followed by a bias op keeps the
/// matmul's output too: a quarter of the transformer's activation memory).
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
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
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.to_dtype(DType::F32)?, Linear)
}

struct Linear;

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "movq-linear"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_unsupported()
    }

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
        by_dtype!(y.dtype(), T => {
            let Some(ys) = T::of_mut(&mut y.slice) else {
                candle_core::bail!("fused linear: the matmul's output has another dtype")
            };
            let func = function(&dev, &format!("bias_add_inplace_{}", T::SUFFIX))?;
            let mut a = stream.launch_builder(&func);
            a.arg(ys).arg(&bias).arg(&n).arg(&out_i);
            // SAFETY: the arguments of bias_add_inplace_* in rows.cu.
            unsafe { a.launch(launch_cfg(elementwise_grid(n), BLOCK)) }.w()?;
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

/// LayerNorm over the last dimension of `x` (f32 or bf16, on CUDA) with scale `w` and shift
/// `b` `[D]` (cast to f32): statistics in f32, the result in `x`'s dtype.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
    let n = x.dim(D::Minus1)?;
    if w.dims() != [n] || b.dims() != [n] {
        candle_core::bail!(
            "LayerNorm: scale {:?} / shift {:?} do not fit {:?}",
            w.dims(),
            b.dims(),
            x.dims()
        );
    }
    let f = |t: &Tensor| t.to_dtype(DType::F32);
    x.contiguous()?.apply_op3(
        &f(w)?,
        &f(b)?,
        LayerNorm {
            eps,
            stats: Mutex::new(None),
        },
    )
}

struct LayerNorm {
    eps: f32,
    /// Each row's mean and 1/σ from the forward pass, for the backward pass.
    stats: Mutex<Option<Arc<CudaSlice<f32>>>>,
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

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "movq-layer-norm"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_unsupported()
    }

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
        let n = xl.shape().elem_count();
        let d = wl.shape().elem_count();
        let rows = n / d.max(1);
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
        let grad = grad.to_dtype(x.dtype())?.contiguous()?;
        let need_dx = x.track_op();
        let (x, w) = (x.detach(), w.detach());
        let pass = |pass| LnBackward {
            pass,
            stats: stats.clone(),
        };
        let dx = if need_dx {
            Some(x.apply_op3_no_bwd(&grad, &w, &pass(LnPass::Input))?)
        } else {
            None
        };
        let dp = x.apply_op3_no_bwd(&grad, &w, &pass(LnPass::Params))?;
        let d = w.elem_count();
        Ok((dx, Some(dp.narrow(0, 0, d)?), Some(dp.narrow(0, d, d)?)))
    }
}

impl CustomOp3 for LnBackward {
    fn name(&self) -> &'static str {
        match self.pass {
            LnPass::Input => "movq-layer-norm-backward-input",
            LnPass::Params => "movq-layer-norm-backward-params",
        }
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_unsupported()
    }

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
        let n = xl.shape().elem_count();
        let d = wl.shape().elem_count();
        let rows = n / d.max(1);
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
