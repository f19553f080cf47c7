//! MaskGIT's per-step token choice on CUDA in one kernel (`choose_tokens_*` in
//! `kernels/rows.cu`), a warp per token.
//!
//! Composed of candle ops the choice is ~15 passes over the `[B, L, K]` logits (the scaling,
//! six for the Gumbel noise, the log-softmax, the argmax, the gather) with all of their
//! temporaries alive at once: 12 ms of a 100 ms decoding step at 64 × 1,024 tokens and 1,024
//! codes on the H200. The kernel reads each masked token's row of logits twice (its maximum and
//! perturbed argmax, then the softmax's sum), draws its Gumbel noise from a counter-based
//! generator (so the result depends on the seed alone, not on the launch), and skips the rows of
//! known tokens.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CudaStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

use super::rows::{by_dtype, function, launch_cfg, row_grid, storage, Elem, BLOCK};
use super::TokenChoice;

/// See [`super::fused_choose_tokens`]: (tokens u32 `[B, L]`, confidence f32 `[B, L]`).
pub fn choose_tokens(
    logits: &Tensor,
    tokens: &Tensor,
    choice: &TokenChoice,
) -> Result<(Tensor, Tensor)> {
    let (b, l, k) = logits.dims3()?;
    if tokens.dims() != [b, l] || tokens.dtype() != DType::U32 {
        candle_core::bail!(
            "choose_tokens: tokens {:?} {:?} do not fit logits {:?}",
            tokens.dims(),
            tokens.dtype(),
            logits.dims()
        );
    }
    if k as u64 > 1 << 24 {
        candle_core::bail!("choose_tokens: {k} codes (at most 2^24)");
    }
    // the kernel takes any batch stride (the logits of a longer sequence, narrowed) but rows of
    // K contiguous values, one after the other
    let logits = match logits.stride() {
        [_, s1, 1] if *s1 == k => logits.clone(),
        _ => logits.contiguous()?,
    };
    let out = logits.apply_op2_no_bwd(&tokens.contiguous()?, &Choose(*choice))?;
    let conf = out.get(0)?;
    let chosen = out.get(1)?.to_dtype(DType::U32)?;
    Ok((chosen, conf))
}

/// `(logits, tokens)` → `[2, B, L]` f32: the confidences, then the chosen tokens.
struct Choose(TokenChoice);

impl CustomOp2 for Choose {
    fn name(&self) -> &'static str {
        "movq-choose-tokens"
    }

    cuda_only!(2, "the token choice kernel");

    fn cuda_fwd(
        &self,
        logits: &CudaStorage,
        ll: &Layout,
        tokens: &CudaStorage,
        tl: &Layout,
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
        let c = &self.0;
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
}
