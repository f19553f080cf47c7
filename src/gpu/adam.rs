//! One Adam / AdamW step in place on CUDA: a kernel per parameter tensor (`kernels/adam.cu`)
//! that reads the parameter, its two moments and its gradient once and writes the three back,
//! where the composed update takes about ten kernels and as many fresh tensors.
//!
//! The parameter is updated through candle's in-place op; the moments, which only the optimizer
//! holds, are written by the same kernel through their device pointers (candle has no in-place
//! op over three tensors), so whoever reads them between steps must copy them first
//! ([`crate::train::optim::Adam::state`] does).

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CpuStorage, CudaStorage, DType, InplaceOp2, Layout, Result, Storage, Tensor};

use crate::ops::adam::AdamStep;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/adam.ptx"));
const MODULE: &str = "movq_adam";

/// Updates `param` and its moments `m`, `v` in place from `grad` (all f32, contiguous, one
/// shape, on one CUDA device; `m` and `v` not shared with any other tensor).
pub fn step(param: &Tensor, m: &Tensor, v: &Tensor, grad: &Tensor, s: AdamStep) -> Result<()> {
    crate::ops::adam::check_operands(
        "fused Adam",
        [("parameter", param), ("m", m), ("v", v), ("gradient", grad)],
    )?;
    param.inplace_op2(
        grad,
        &Step {
            s,
            m: m.clone(),
            v: v.clone(),
        },
    )
}

struct Step {
    s: AdamStep,
    m: Tensor,
    v: Tensor,
}

fn f32_slice<'a>(s: &'a CudaStorage, what: &str) -> Result<&'a CudaSlice<f32>> {
    match &s.slice {
        CudaStorageSlice::F32(p) => Ok(p),
        _ => candle_core::bail!("fused Adam: the {what} must be f32"),
    }
}

impl InplaceOp2 for Step {
    fn name(&self) -> &'static str {
        "movq-adam-step"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<()> {
        candle_core::bail!("the fused Adam step runs on CUDA only")
    }

    fn cuda_fwd(
        &self,
        p: &mut CudaStorage,
        pl: &Layout,
        g: &CudaStorage,
        gl: &Layout,
    ) -> Result<()> {
        let n = pl.shape().elem_count();
        let (Some((p0, _)), Some((g0, _))) = (pl.contiguous_offsets(), gl.contiguous_offsets())
        else {
            candle_core::bail!("fused Adam: the parameter and gradient must be contiguous")
        };
        let (ms, ml) = self.m.storage_and_layout();
        let (vs, vl) = self.v.storage_and_layout();
        let (Storage::Cuda(ms), Storage::Cuda(vs)) = (&*ms, &*vs) else {
            candle_core::bail!("fused Adam: the moments must be on the GPU")
        };
        let (m0, v0) = (ml.start_offset(), vl.start_offset());
        let dev = g.device.clone();
        let m = f32_slice(ms, "first moment")?.slice(m0..m0 + n);
        let v = f32_slice(vs, "second moment")?.slice(v0..v0 + n);
        let gv = f32_slice(g, "gradient")?.slice(g0..g0 + n);
        let mut pv = match &mut p.slice {
            CudaStorageSlice::F32(s) => s.slice_mut(p0..p0 + n),
            _ => candle_core::bail!("fused Adam: the parameter must be f32"),
        };
        let s = self.s;
        let func = dev
            .get_or_load_custom_func("adam_step_f32", MODULE, PTX)?
            .into_cuda_function();
        let stream = dev.cuda_stream();
        let mut a = stream.launch_builder(&func);
        let decoupled = s.decoupled as i32;
        a.arg(&mut pv).arg(&m).arg(&v).arg(&gv).arg(&n);
        a.arg(&s.lr)
            .arg(&s.betas.0)
            .arg(&s.betas.1)
            .arg(&s.eps)
            .arg(&s.weight_decay);
        a.arg(&decoupled)
            .arg(&s.bias.0)
            .arg(&s.bias.1)
            .arg(&s.grad_scale);
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(256).clamp(1, 1 << 16) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments of adam_step_f32 in adam.cu; the kernel writes the moments
        // through views of buffers that only the optimizer holds (see the module's note).
        unsafe { a.launch(cfg) }.w()?;
        Ok(())
    }
}

/// `acc[0] += Σ g²` in place, for `acc` `[1]` and `g` f32 on one CUDA device: a gradient's
/// share of the global norm in one kernel.
pub fn add_sum_of_squares(acc: &Tensor, g: &Tensor) -> Result<()> {
    if acc.dims() != [1] || acc.dtype() != DType::F32 || g.dtype() != DType::F32 {
        candle_core::bail!(
            "sum of squares: an f32 [1] accumulator and an f32 tensor (got {:?} {:?}, {:?})",
            acc.dtype(),
            acc.dims(),
            g.dtype()
        );
    }
    acc.inplace_op2(&g.contiguous()?, &SumSquares)
}

struct SumSquares;

impl InplaceOp2 for SumSquares {
    fn name(&self) -> &'static str {
        "movq-sum-of-squares"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<()> {
        candle_core::bail!("the fused sum of squares runs on CUDA only")
    }

    fn cuda_fwd(
        &self,
        acc: &mut CudaStorage,
        al: &Layout,
        g: &CudaStorage,
        gl: &Layout,
    ) -> Result<()> {
        let (Some((a0, _)), Some((g0, g1))) = (al.contiguous_offsets(), gl.contiguous_offsets())
        else {
            candle_core::bail!("sum of squares: contiguous tensors only")
        };
        let n = g1 - g0;
        if n == 0 {
            return Ok(());
        }
        let dev = g.device.clone();
        let gv = f32_slice(g, "gradient")?.slice(g0..g1);
        let mut av = match &mut acc.slice {
            CudaStorageSlice::F32(s) => s.slice_mut(a0..a0 + 1),
            _ => candle_core::bail!("sum of squares: the accumulator must be f32"),
        };
        let func = dev
            .get_or_load_custom_func("sum_squares_f32", MODULE, PTX)?
            .into_cuda_function();
        let stream = dev.cuda_stream();
        let mut a = stream.launch_builder(&func);
        a.arg(&mut av).arg(&gv).arg(&n);
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(1024).clamp(1, 1024) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments of sum_squares_f32 in adam.cu.
        unsafe { a.launch(cfg) }.w()?;
        Ok(())
    }
}
