//! MaskGIT's per-step token choice on CUDA in one kernel (`choose_tokens_*` in
//! `kernels/rows.cu`), a warp per token.
//!
//! Composed of candle ops the choice is ~15 passes over the `[B, L, K]` logits (the scaling,
//! six for the Gumbel noise, the log-softmax, the argmax, the gather) with all of their
//! temporaries alive at once: 12 ms of a 100 ms decoding step at 64 × 1,024 tokens and 1,024
//! codes on the H200. The kernel reads each masked token's row of logits twice (its maximum,
//! then the perturbed argmax over the codes min-p keeps and the softmax's sum), draws its Gumbel
//! noise from a counter-based generator (so the result depends on the seed alone, not on the
//! launch), and skips the rows of known tokens.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Result, Shape};

use super::rows::{by_dtype, function, launch_cfg, row_grid, storage, Elem, BLOCK};
use crate::ops::token_choice::TokenChoice;

/// `(logits [B, L, K], tokens [B, L])` → `[2, B, L]` f32: the confidences, then the chosen
/// tokens (the `cuda_fwd` of [`crate::ops::token_choice`]'s op).
pub fn launch(
    logits: &CudaStorage,
    ll: &Layout,
    tokens: &CudaStorage,
    tl: &Layout,
    c: &TokenChoice,
) -> Result<(CudaStorage, Shape)> {
    let dev = logits.device().clone();
    let (b, l, k) = ll.shape().dims3()?;
    let batch_stride = ll.stride()[0];
    let rows = b * l;
    let tv = match (&tokens.slice, tl.contiguous_offsets()) {
        (CudaStorageSlice::U32(p), Some((a, e))) => p.slice(a..e),
        _ => candle_core::bail!("choose_tokens: the tokens must be contiguous u32"),
    };
    // SAFETY: the kernel writes both values of every row.
    let out = unsafe { dev.alloc::<f32>(2 * rows)? };
    let (rows_i, l_i, k_i, top1) = (rows as i32, l as i32, k as i32, c.top1 as i32);
    // the logits' elements from the first row's start to the last row's end
    let start = ll.start_offset();
    let end = start + (b - 1) * batch_stride + l * k;
    by_dtype!(logits.dtype(), T => {
        let Some(all) = T::of(&logits.slice) else {
            candle_core::bail!("choose_tokens: the logits' storage has another dtype")
        };
        let lv = all.slice(start..end);
        let func = function(&dev, &format!("choose_tokens_{}", T::SUFFIX))?;
        let stream = dev.cuda_stream();
        let mut a = stream.launch_builder(&func);
        a.arg(&lv)
            .arg(&tv)
            .arg(&out)
            .arg(&rows_i)
            .arg(&l_i)
            .arg(&k_i)
            .arg(&batch_stride)
            .arg(&c.mask)
            .arg(&c.inv_temp)
            .arg(&top1)
            .arg(&c.min_p)
            .arg(&c.noise)
            .arg(&c.seed);
        // SAFETY: the arguments of choose_tokens_* in rows.cu; a warp per row.
        unsafe { a.launch(launch_cfg(row_grid(rows), BLOCK)) }.w()?;
    });
    Ok((
        storage(CudaStorageSlice::F32(out), &dev),
        Shape::from((2, b, l)),
    ))
}
