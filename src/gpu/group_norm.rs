//! Fused GroupNorm (+ SpatialNorm modulation) (+ SiLU) on CUDA, forward and backward, as candle
//! custom ops over the kernels in `kernels/group_norm.cu`.
//!
//! The composed GroupNorm is about ten candle ops each way; here the forward pass is one kernel
//! (one block per group: Welford statistics in f32, then normalise, scale, modulate, activate)
//! and the backward pass two (the per-group reductions, then the input gradient elementwise).
//! Nothing but the input and the small parameters is kept for the backward pass: the statistics
//! are recomputed there.
//!
//! Every parameter travels as one packed f32 tensor `p = [gamma][beta][scale][shift]` so that
//! the op has two inputs whose gradients candle routes back through the concatenation.

use crate::ops::group_norm::Packed;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CudaDevice, CudaStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/group_norm.ptx"));
const MODULE: &str = "movq_group_norm";

/// The sizes every kernel takes.
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
    eps: f32,
}

impl Dims {
    fn spatial(&self) -> bool {
        self.zh > 0
    }
    fn cells(&self) -> usize {
        self.b * self.c * self.zh * self.zw
    }
    /// Length of the packed parameters `p`.
    fn params_len(&self) -> usize {
        2 * self.c + 2 * self.cells()
    }
    /// Length of the backward reductions: dgamma, dbeta partials per batch, dS, dT, and four
    /// values per group (mean, rstd and the two sums of the input gradient).
    fn side_len(&self) -> usize {
        2 * self.b * self.c + 2 * self.cells() + 4 * self.b * self.groups
    }
    fn elements(&self) -> usize {
        self.b * self.c * self.h * self.w
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
        eps: eps as f32,
    };
    x.contiguous()?.apply_op2(&packed.params, Forward(dims))
}

struct Forward(Dims);

/// The two kernels of the backward pass.
#[derive(Clone, Copy)]
enum BackwardPass {
    /// Per-group reductions: statistics, dgamma/dbeta partials, dS/dT, the input gradient's sums.
    Reduce,
    /// The input gradient, elementwise.
    Input,
}

struct Backward {
    dims: Dims,
    pass: BackwardPass,
}

fn contiguous<'a, T>(s: &'a CudaSlice<T>, l: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.slice(a..b)),
        None => candle_core::bail!("fused GroupNorm: {what} is not contiguous"),
    }
}

fn f32_slice<'a>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, f32>> {
    match &s.slice {
        CudaStorageSlice::F32(p) => contiguous(p, l, what),
        _ => candle_core::bail!("fused GroupNorm: {what} must be f32"),
    }
}

/// Runs `kernel` (the `_f32` or `_bf16` variant by the dtype of `x`) over a grid of
/// `(x, y)` blocks of `block` threads with arguments (x, [dy,] params, out, dims...), `out` of `out_len` elements in
/// `out_f32` or else `x`'s dtype.
#[allow(clippy::too_many_arguments)]
fn launch(
    kernel: &str,
    x: (&CudaStorage, &Layout),
    dy: Option<(&CudaStorage, &Layout)>,
    params: CudaView<'_, f32>,
    out_len: usize,
    out_f32: bool,
    d: Dims,
    (grid, block): ((usize, usize), usize),
) -> Result<CudaStorage> {
    let dev = x.0.device().clone();
    fn go<T: DeviceRepr, O: DeviceRepr>(
        dev: &CudaDevice,
        name: &str,
        x: CudaView<'_, T>,
        dy: Option<CudaView<'_, T>>,
        params: CudaView<'_, f32>,
        out_len: usize,
        d: Dims,
        ((gx, gy), block): ((usize, usize), usize),
    ) -> Result<CudaSlice<O>> {
        let func = dev.get_or_load_custom_func(name, MODULE, PTX)?;
        // SAFETY: every element is written by the kernel.
        let out = unsafe { dev.alloc::<O>(out_len)? };
        let mut args = func.builder();
        args.arg(&x);
        if let Some(dy) = &dy {
            args.arg(dy);
        }
        args.arg(&params);
        args.arg(&out);
        let int = |v: usize| v as i32;
        let sizes = [
            int(d.b),
            int(d.c),
            int(d.h),
            int(d.w),
            int(d.groups),
            int(d.zh),
            int(d.zw),
            d.spatial() as i32,
            d.silu as i32,
        ];
        for s in &sizes {
            args.arg(s);
        }
        args.arg(&d.eps);
        let cfg = LaunchConfig {
            grid_dim: (gx as u32, gy as u32, 1),
            block_dim: (block as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match the kernel's signature in group_norm.cu.
        unsafe { args.launch(cfg) }.w()?;
        Ok(out)
    }
    let run = (grid, block);
    let slice = match (&x.0.slice, dy.map(|g| &g.0.slice)) {
        (CudaStorageSlice::F32(xs), None | Some(CudaStorageSlice::F32(_))) => {
            let xv = contiguous(xs, x.1, "x")?;
            let gv = match dy {
                Some((
                    CudaStorage {
                        slice: CudaStorageSlice::F32(g),
                        ..
                    },
                    l,
                )) => Some(contiguous(g, l, "the gradient")?),
                _ => None,
            };
            let name = format!("{kernel}_f32");
            CudaStorageSlice::F32(go(&dev, &name, xv, gv, params, out_len, d, run)?)
        }
        (CudaStorageSlice::BF16(xs), None | Some(CudaStorageSlice::BF16(_))) => {
            let xv = contiguous(xs, x.1, "x")?;
            let gv = match dy {
                Some((
                    CudaStorage {
                        slice: CudaStorageSlice::BF16(g),
                        ..
                    },
                    l,
                )) => Some(contiguous(g, l, "the gradient")?),
                _ => None,
            };
            let name = format!("{kernel}_bf16");
            if out_f32 {
                CudaStorageSlice::F32(go(&dev, &name, xv, gv, params, out_len, d, run)?)
            } else {
                CudaStorageSlice::BF16(go(&dev, &name, xv, gv, params, out_len, d, run)?)
            }
        }
        _ => candle_core::bail!(
            "fused GroupNorm: x {:?} (and its gradient) must be f32 or bf16 alike",
            x.0.dtype()
        ),
    };
    // an f32 result of an f32 kernel is the same type either way
    Ok(CudaStorage { slice, device: dev })
}

/// Threads per block of the per-group kernels (`gn_bwd_reduce_*` are compiled for blocks of
/// 512: `__launch_bounds__` in group_norm.cu).
const GROUP_BLOCK: usize = 512;
/// Threads per block of the elementwise kernel.
const ELEMENT_BLOCK: usize = 256;

impl CustomOp2 for Forward {
    fn name(&self) -> &'static str {
        "movq-group-norm"
    }

    cuda_only!(2, "the fused GroupNorm kernels");

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        p: &CudaStorage,
        pl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let d = self.0;
        let params = f32_slice(p, pl, "the parameters")?;
        if params.len() != d.params_len() {
            candle_core::bail!(
                "fused GroupNorm: {} parameters, expected {}",
                params.len(),
                d.params_len()
            );
        }
        let grid = ((d.b * d.groups, 1), GROUP_BLOCK);
        let out = launch(
            "gn_fwd",
            (x, xl),
            None,
            params,
            d.elements(),
            false,
            d,
            grid,
        )?;
        Ok((out, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        p: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = self.0;
        let need_dx = x.track_op();
        let (x, p) = (x.detach(), p.detach());
        let grad = grad.contiguous()?;
        let pass = |pass| Backward { dims: d, pass };
        let side = x.apply_op3_no_bwd(&grad, &p, &pass(BackwardPass::Reduce))?;
        // the input gradient's kernel is skipped where no gradient flows (an image input)
        let dx = if need_dx {
            let ps = Tensor::cat(&[&p, &side], 0)?;
            Some(x.apply_op3_no_bwd(&grad, &ps, &pass(BackwardPass::Input))?)
        } else {
            None
        };
        let bc = d.b * d.c;
        let per_channel = |i: usize| side.narrow(0, i * bc, bc)?.reshape((d.b, d.c))?.sum(0);
        let mut dp = vec![per_channel(0)?, per_channel(1)?];
        if d.spatial() {
            dp.push(side.narrow(0, 2 * bc, 2 * d.cells())?);
        }
        Ok((dx, Some(Tensor::cat(&dp, 0)?)))
    }
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        match self.pass {
            BackwardPass::Reduce => "movq-group-norm-backward-reduce",
            BackwardPass::Input => "movq-group-norm-backward-input",
        }
    }

    cuda_only!(3, "the fused GroupNorm kernels");

    /// `(x, dy, p)` → the reductions; `(x, dy, p ++ reductions)` → the input gradient.
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        dy: &CudaStorage,
        dyl: &Layout,
        p: &CudaStorage,
        pl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let d = self.dims;
        let params = f32_slice(p, pl, "the parameters")?;
        let dy = Some((dy, dyl));
        match self.pass {
            BackwardPass::Reduce => {
                let n = d.side_len();
                let grid = ((d.b * d.groups, 1), GROUP_BLOCK);
                let out = launch("gn_bwd_reduce", (x, xl), dy, params, n, true, d, grid)?;
                Ok((out, Shape::from(n)))
            }
            BackwardPass::Input => {
                if params.len() != d.params_len() + d.side_len() {
                    candle_core::bail!("fused GroupNorm backward: {} packed values", params.len());
                }
                // blocks along y: the (b, c) planes (at most 65,535; the kernel loops past that)
                let planes = (d.b * d.c).clamp(1, 65_535);
                // a thread per 8 pixels where rows are a multiple of 8 wide (the kernel's
                // vectorised path; both paths stride over the plane, so either grid is correct)
                let per_thread = if d.w.is_multiple_of(8) { 8 } else { 1 };
                let grid = (
                    (d.h * d.w).div_ceil(ELEMENT_BLOCK * per_thread).max(1),
                    planes,
                );
                let n = d.elements();
                let out = launch(
                    "gn_bwd_input",
                    (x, xl),
                    dy,
                    params,
                    n,
                    false,
                    d,
                    (grid, ELEMENT_BLOCK),
                )?;
                Ok((out, xl.shape().clone()))
            }
        }
    }
}
