//! An embedding lookup (`table[ids]`) on CUDA whose backward pass scatters the gradient rows
//! into the table's gradient with atomic adds, over the kernels in `kernels/rows.cu`.
//!
//! candle's `index_select` takes its gradient through `index_add`, whose CUDA kernel gives one
//! thread to each column of the table and walks all ids in sequence: 8 ms for the
//! transformer's 64 × 1,025 tokens into a 768-wide table, where one pass over the gradient
//! takes well under one.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CudaStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

use super::rows::{elementwise_grid, function, launch_cfg, storage, view, BLOCK};

/// `table[ids]` for `table` `[V, D]` f32 and `ids` `[N]` u32, both on CUDA → `[N, D]` f32,
/// differentiable with respect to `table` (an id ≥ V reads zeros and gets no gradient).
pub fn gather_rows(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    if table.rank() != 2
        || table.dtype() != DType::F32
        || ids.dtype() != DType::U32
        || ids.rank() != 1
    {
        candle_core::bail!(
            "gather_rows: an f32 [V, D] table and u32 [N] ids (got {:?} {:?}, {:?} {:?})",
            table.dtype(),
            table.dims(),
            ids.dtype(),
            ids.dims()
        );
    }
    table.contiguous()?.apply_op2(
        &ids.contiguous()?,
        Rows {
            scatter: false,
            d: 0,
        },
    )
}

/// The gather (`scatter` false: `(table, ids)` → `[N, D]` rows) or its gradient (`scatter`
/// true: `(the rows' gradient, ids)` → the table's gradient `[V, D]`).
struct Rows {
    scatter: bool,
    /// The table's row count `V` (scatter; unused by the gather, which reads it off the table).
    d: usize,
}

impl CustomOp2 for Rows {
    fn name(&self) -> &'static str {
        if self.scatter {
            "movq-scatter-add-rows"
        } else {
            "movq-gather-rows"
        }
    }

    cuda_only!(2, "the embedding kernels");

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        ids: &CudaStorage,
        il: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = x.device().clone();
        let xv = view::<f32>(x, xl, "the table or gradient")?;
        let iv = match (&ids.slice, il.contiguous_offsets()) {
            (CudaStorageSlice::U32(p), Some((a, b))) => p.slice(a..b),
            _ => candle_core::bail!("gather_rows: the ids must be contiguous u32"),
        };
        let (rows, cols) = xl.shape().dims2()?;
        let count = il.shape().elem_count();
        let stream = dev.cuda_stream();
        let (out, shape, n, v, name) = if self.scatter {
            // x is the gradient [N, D]; the result the table's [V, D]
            let v = self.d;
            let out = dev.alloc_zeros::<f32>(v * cols)?;
            (
                out,
                Shape::from((v, cols)),
                rows * cols,
                v,
                "scatter_add_rows_f32",
            )
        } else {
            // SAFETY: the kernel writes every element.
            let out = unsafe { dev.alloc::<f32>(count * cols)? };
            (
                out,
                Shape::from((count, cols)),
                count * cols,
                rows,
                "gather_rows_f32",
            )
        };
        let (d_i, v_i) = (cols as i32, v as i32);
        let func = function(&dev, name)?;
        let mut a = stream.launch_builder(&func);
        a.arg(&xv).arg(&iv).arg(&out).arg(&n).arg(&d_i).arg(&v_i);
        // SAFETY: the arguments of gather_rows_f32 / scatter_add_rows_f32 in rows.cu.
        unsafe { a.launch(launch_cfg(elementwise_grid(n), BLOCK)) }.w()?;
        Ok((storage(CudaStorageSlice::F32(out), &dev), shape))
    }

    fn bwd(
        &self,
        table: &Tensor,
        ids: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let v = table.dim(0)?;
        let g = grad.to_dtype(DType::F32)?.contiguous()?.apply_op2_no_bwd(
            ids,
            &Rows {
                scatter: true,
                d: v,
            },
        )?;
        Ok((Some(g), None))
    }
}
