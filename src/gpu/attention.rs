//! Fused multi-head self-attention (no mask) on CUDA in bf16, forward and backward, as candle
//! custom ops over the kernels in `kernels/attention.cu` (the FlashAttention-2 scheme on
//! `mma.sync` tensor-core steps, intermediates in registers).
//!
//! The composed attention materialises the `[B, H, T, T]` scores, their f32 softmax and, for the
//! backward pass, keeps them all: at 1,025 tokens and batch 64 that is gigabytes per layer. Here
//! the op takes the packed projection `qkv` `[B, T, 3·H·Dh]` as a linear layer writes it and
//! returns `[B, T, H·Dh]` ready for the output projection — no transposes either way. Only the
//! per-row log-sum-exp of the scores (f32, `[B·H, T]`) is kept for the backward pass, which
//! recomputes the probabilities tile by tile and writes the gradient in `qkv`'s layout.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{
    CudaDevice, CudaStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor,
};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));
const MODULE: &str = "movq_attention";

/// Rows of a query or key tile, and threads per block (4 warps of 16 rows).
const TILE: usize = 64;
const THREADS: usize = 128;
/// Head widths with a compiled kernel.
const HEAD_DIMS: [usize; 5] = [16, 32, 48, 64, 128];

/// Shared memory of the forward and backward kernels for head width `d` (as `attention.cu`
/// lays it out: padded bf16 tiles, the streamed ones in two stages — forward, the query tile
/// and 2 × (key, value); backward, the key and value tiles, 2 × (query, dout), the
/// score-gradient tile and 2 × a query tile's statistics).
fn shared_bytes(d: usize) -> (usize, usize) {
    let tile = TILE * (d + 8) * 2;
    let ds = TILE * (TILE + 8) * 2;
    (5 * tile, 6 * tile + ds + 4 * TILE * 4)
}

/// Whether [`attention`] takes `qkv` `[B, T, 3·heads·Dh]` with `heads` heads: bf16, a compiled
/// head width, at most 65,535 (batch, head) pairs, a token at least.
pub fn supported(qkv: &Tensor, heads: usize) -> bool {
    let Ok((b, t, w)) = qkv.dims3() else {
        return false;
    };
    qkv.dtype() == DType::BF16 && supported_dims(b, t, w, heads)
}

/// Whether [`attention`] takes a bf16 `qkv` of dims `[b, t, w]` with `heads` heads.
pub fn supported_dims(b: usize, t: usize, w: usize, heads: usize) -> bool {
    heads > 0
        && t > 0
        && w.is_multiple_of(3 * heads)
        && HEAD_DIMS.contains(&(w / (3 * heads)))
        && b * heads <= 65_535
}

/// Softmax(Q Kᵀ/√Dh) V per head for `qkv` `[B, T, 3, H, Dh]` packed as `[B, T, 3·H·Dh]` (bf16,
/// see [`supported`]) → `[B, T, H·Dh]` bf16, differentiable with respect to `qkv`.
pub fn attention(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    check(qkv, heads)?;
    aligned(qkv)?.apply_op1(Forward {
        heads,
        lse: Arc::new(Mutex::new(None)),
    })
}

/// The forward pass's per-row log-sum-exp of the scores, which the backward pass takes.
#[derive(Clone)]
pub struct Lse(Arc<CudaSlice<f32>>);

/// [`attention`] for a caller that runs the backward pass itself ([`attention_backward`]): the
/// output (with no graph behind it) and the statistics the backward pass needs.
pub fn attention_saving(qkv: &Tensor, heads: usize) -> Result<(Tensor, Lse)> {
    check(qkv, heads)?;
    let lse = Arc::new(Mutex::new(None));
    let out = aligned(&qkv.detach())?.apply_op1_no_bwd(&Forward {
        heads,
        lse: lse.clone(),
    })?;
    let lse = lse.lock().expect("the lse lock is never poisoned").clone();
    match lse {
        Some(lse) => Ok((out, Lse(lse))),
        None => candle_core::bail!("fused attention: the forward pass kept no statistics"),
    }
}

/// The gradient of `qkv` from the output's gradient `dout`, given the forward pass's input,
/// output and statistics ([`attention_saving`]).
pub fn attention_backward(
    qkv: &Tensor,
    out: &Tensor,
    dout: &Tensor,
    heads: usize,
    lse: &Lse,
) -> Result<Tensor> {
    let dims = Dims::of(qkv.layout(), heads)?;
    let grad = aligned(&dout.to_dtype(DType::BF16)?)?;
    qkv.detach().apply_op3_no_bwd(
        &out.detach(),
        &grad,
        &Backward {
            dims,
            lse: lse.0.clone(),
        },
    )
}

/// An error unless [`supported`].
fn check(qkv: &Tensor, heads: usize) -> Result<()> {
    if !supported(qkv, heads) {
        candle_core::bail!(
            "fused attention: qkv {:?} {:?} with {heads} heads is not supported (bf16, head width \
             in {HEAD_DIMS:?})",
            qkv.dims(),
            qkv.dtype()
        );
    }
    Ok(())
}

/// `t` contiguous from an offset of a multiple of 8 elements (the kernels' 16-byte loads).
fn aligned(t: &Tensor) -> Result<Tensor> {
    let t = t.contiguous()?;
    if t.layout().start_offset().is_multiple_of(8) {
        Ok(t)
    } else {
        t.copy()
    }
}

/// The sizes every kernel takes.
#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    heads: usize,
    d: usize,
}

impl Dims {
    fn of(qkv: &Layout, heads: usize) -> Result<Self> {
        let (b, t, w) = qkv.shape().dims3()?;
        Ok(Self {
            b,
            t,
            heads,
            d: w / (3 * heads),
        })
    }
    fn scale(&self) -> f32 {
        1.0 / (self.d as f32).sqrt()
    }
    /// (query or key tiles, batch × heads): the grid of the tiled kernels.
    fn grid(&self) -> (u32, u32, u32) {
        (
            self.t.div_ceil(TILE) as u32,
            (self.b * self.heads) as u32,
            1,
        )
    }
    fn rows(&self) -> usize {
        self.b * self.heads * self.t
    }
}

struct Forward {
    heads: usize,
    /// The forward pass's log-sum-exp per row, for the backward pass.
    lse: Arc<Mutex<Option<Arc<CudaSlice<f32>>>>>,
}

struct Backward {
    dims: Dims,
    lse: Arc<CudaSlice<f32>>,
}

type BF16 = half::bf16;

/// The contiguous bf16 view of `s` under `l`.
fn bf16_view<'a>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, BF16>> {
    match (&s.slice, l.contiguous_offsets()) {
        (CudaStorageSlice::BF16(p), Some((a, b))) => Ok(p.slice(a..b)),
        _ => candle_core::bail!("fused attention: {what} must be contiguous bf16"),
    }
}

/// Kernel `name`, allowed `smem` bytes of dynamic shared memory, with its launch configuration.
fn kernel(
    dev: &CudaDevice,
    name: &str,
    grid: (u32, u32, u32),
    block: usize,
    smem: usize,
) -> Result<(CudaFunction, LaunchConfig)> {
    let func = dev
        .get_or_load_custom_func(name, MODULE, PTX)?
        .into_cuda_function();
    if smem > 48 * 1024 {
        func.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            smem as i32,
        )
        .w()?;
    }
    let cfg = LaunchConfig {
        grid_dim: grid,
        block_dim: (block as u32, 1, 1),
        shared_mem_bytes: smem as u32,
    };
    Ok((func, cfg))
}

impl CustomOp1 for Forward {
    fn name(&self) -> &'static str {
        "movq-attention"
    }

    cuda_only!(1, "the fused attention kernels");

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let d = Dims::of(l, self.heads)?;
        let qkv = bf16_view(s, l, "qkv")?;
        let dev = s.device().clone();
        let width = d.heads * d.d;
        // SAFETY: the kernel writes every element of both.
        let out = unsafe { dev.alloc::<BF16>(d.b * d.t * width)? };
        let lse = unsafe { dev.alloc::<f32>(d.rows())? };
        let (t, h, scale) = (d.t as i32, d.heads as i32, d.scale());
        let name = format!("attention_fwd_d{}_bf16", d.d);
        let (func, cfg) = kernel(&dev, &name, d.grid(), THREADS, shared_bytes(d.d).0)?;
        let stream = dev.cuda_stream();
        let mut a = stream.launch_builder(&func);
        a.arg(&qkv).arg(&out).arg(&lse).arg(&t).arg(&h).arg(&scale);
        // SAFETY: the arguments of attention_fwd_d*_bf16 in attention.cu.
        unsafe { a.launch(cfg) }.w()?;
        *self.lse.lock().expect("the lse lock is never poisoned") = Some(Arc::new(lse));
        let slice = CudaStorageSlice::BF16(out);
        Ok((
            CudaStorage { slice, device: dev },
            Shape::from((d.b, d.t, width)),
        ))
    }

    fn bwd(&self, qkv: &Tensor, out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let lse = self
            .lse
            .lock()
            .expect("the lse lock is never poisoned")
            .clone();
        let Some(lse) = lse else {
            candle_core::bail!("fused attention: backward pass without a forward pass on CUDA")
        };
        attention_backward(qkv, out, grad, self.heads, &Lse(lse)).map(Some)
    }
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "movq-attention-backward"
    }

    cuda_only!(3, "the fused attention kernels");

    /// `(qkv, out, dout)` → `dqkv`.
    fn cuda_fwd(
        &self,
        s: &CudaStorage,
        l: &Layout,
        o: &CudaStorage,
        ol: &Layout,
        g: &CudaStorage,
        gl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let d = self.dims;
        let qkv = bf16_view(s, l, "qkv")?;
        let out = bf16_view(o, ol, "the output")?;
        let dout = bf16_view(g, gl, "the output's gradient")?;
        let dev = s.device().clone();
        let (t, h, scale) = (d.t as i32, d.heads as i32, d.scale());
        // delta = rowsum(dout ⊙ out), a warp per row
        let rows = d.rows();
        // SAFETY: the kernels write every element of delta and dqkv; dq starts at zero.
        let delta = unsafe { dev.alloc::<f32>(rows)? };
        let rows_i = rows as i32;
        let warps_per_block = 8;
        let blocks = (rows.div_ceil(warps_per_block) as u32, 1, 1);
        let name = format!("attention_delta_d{}_bf16", d.d);
        let (func, cfg) = kernel(&dev, &name, blocks, warps_per_block * 32, 0)?;
        let stream = dev.cuda_stream();
        let mut a = stream.launch_builder(&func);
        a.arg(&out)
            .arg(&dout)
            .arg(&delta)
            .arg(&rows_i)
            .arg(&t)
            .arg(&h);
        // SAFETY: the arguments of attention_delta_d*_bf16.
        unsafe { a.launch(cfg) }.w()?;
        let n = d.b * d.t * d.heads * d.d;
        let dq = dev.alloc_zeros::<f32>(n)?;
        let dqkv = unsafe { dev.alloc::<BF16>(3 * n)? };
        let lse: &CudaSlice<f32> = &self.lse;
        let name = format!("attention_bwd_d{}_bf16", d.d);
        let (func, cfg) = kernel(&dev, &name, d.grid(), THREADS, shared_bytes(d.d).1)?;
        let stream = dev.cuda_stream();
        let mut a = stream.launch_builder(&func);
        a.arg(&qkv)
            .arg(&dout)
            .arg(lse)
            .arg(&delta)
            .arg(&dq)
            .arg(&dqkv);
        a.arg(&t).arg(&h).arg(&scale);
        // SAFETY: the arguments of attention_bwd_d*_bf16.
        unsafe { a.launch(cfg) }.w()?;
        let (b, dd) = (d.b as i32, d.d as i32);
        let blocks = (n.div_ceil(256).min(1 << 20) as u32, 1, 1);
        let (func, cfg) = kernel(&dev, "attention_dq_bf16", blocks, 256, 0)?;
        let stream = dev.cuda_stream();
        let mut a = stream.launch_builder(&func);
        a.arg(&dq).arg(&dqkv).arg(&b).arg(&t).arg(&h).arg(&dd);
        // SAFETY: the arguments of attention_dq_bf16.
        unsafe { a.launch(cfg) }.w()?;
        let slice = CudaStorageSlice::BF16(dqkv);
        Ok((CudaStorage { slice, device: dev }, l.shape().clone()))
    }
}
