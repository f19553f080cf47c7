//! Embedding lookup: the rows of a table at given ids.

use candle_core::{DType, Result, Tensor};

use crate::compute::fused_kernels;

/// The rows of `table` `[V, D]` at `ids` (u32, any shape) → `ids`' shape + `[D]`. On CUDA the
/// gather kernel, whose gradient is an atomic scatter-add ([`crate::gpu::embedding`]; candle's
/// `index_add` walks every id per column); elsewhere `index_select`.
pub fn embed(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let flat = ids.flatten_all()?;
    let rows = gather_rows(table, &flat)?;
    let mut dims = ids.dims().to_vec();
    dims.push(table.dim(1)?);
    rows.reshape(dims)
}

fn gather_rows(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if fused_kernels(table.device())
        && table.device().is_cuda()
        && table.dtype() == DType::F32
        && table.rank() == 2
        && ids.dtype() == DType::U32
    {
        return crate::gpu::embedding::gather_rows(table, ids);
    }
    let _ = (fused_kernels, DType::F32);
    table.index_select(ids, 0)
}
