//! 2-D convolutions through cuDNN, called directly: forward, input gradient and weight gradient,
//! as candle custom ops.
//!
//! candle's own `cudnn` path builds every descriptor, asks the heuristics and allocates (and
//! zeroes) a workspace on every call, runs bf16 without tensor-op math, and leaves the
//! gradients to its naive kernels. Here bf16 convolutions run with tensor-op math and f32
//! accumulation (f32 ones with strict FMA math, as on the CPU); each pass's algorithm is chosen
//! once per shape by cuDNN's heuristics (the first deterministic one of its ranking) and cached;
//! one workspace is kept and grown; and the input gradient is skipped where the input needs
//! none. NCHW throughout, as the rest of the model.
//!
//! `MOVQ_CUDNN_FIND=1` times the candidates instead (`cudnnFind…AlgorithmEx`, as PyTorch's
//! `cudnn.benchmark`). Measured on the H200 without the stream synchronisation it now starts
//! with, its choices made the stage-1 workloads 2.6–5× slower than the heuristics' (train step
//! 7.2 against 33.6 images/s), most likely because the first candidates' timings took in the
//! work still queued on the stream. It stays opt-in until measured again.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::{result, sys, CudnnDataType};
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut, DeviceRepr,
};
use candle_core::cuda_backend::{CudaStorageSlice, DeviceId};
use candle_core::{
    CudaDevice, CudaStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};

use sys::{cudnnDataType_t, cudnnDeterminism_t, cudnnMathType_t, cudnnStatus_t};

/// A convolution's geometry: `x` `[B, C, H, W]`, `w` `[O, C, kh, kw]`, symmetric zero padding,
/// equal strides, no dilation, one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Geometry {
    x: [usize; 4],
    w: [usize; 4],
    padding: usize,
    stride: usize,
}

impl Geometry {
    fn y(&self) -> [usize; 4] {
        let out = |i: usize, k: usize| (i + 2 * self.padding - k) / self.stride + 1;
        [
            self.x[0],
            self.w[0],
            out(self.x[2], self.w[2]),
            out(self.x[3], self.w[3]),
        ]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Pass {
    Forward,
    InputGrad,
    WeightGrad,
}

#[derive(Debug, Clone, Copy)]
enum Algo {
    Forward(sys::cudnnConvolutionFwdAlgo_t),
    InputGrad(sys::cudnnConvolutionBwdDataAlgo_t),
    WeightGrad(sys::cudnnConvolutionBwdFilterAlgo_t),
}

/// The algorithm chosen for one pass of one shape, with its math type and workspace bytes.
#[derive(Debug, Clone, Copy)]
struct Choice {
    algo: Algo,
    math: cudnnMathType_t,
    workspace: usize,
}

/// Workspace offered to the timed search (algorithms that need more are left out).
const FIND_WORKSPACE: usize = 512 << 20;

fn find_enabled() -> bool {
    crate::compute::switches().cudnn_find
}

struct Handle(sys::cudnnHandle_t);
struct TensorDesc(sys::cudnnTensorDescriptor_t);
struct FilterDesc(sys::cudnnFilterDescriptor_t);
struct ConvDesc(sys::cudnnConvolutionDescriptor_t);

// SAFETY (all four): each wraps a descriptor created by the matching cudnnCreate… call and
// owned by nobody else; errors while destroying cannot be reported from a drop.
impl Drop for Handle {
    fn drop(&mut self) {
        let _ = unsafe { result::destroy_handle(self.0) };
    }
}
impl Drop for TensorDesc {
    fn drop(&mut self) {
        let _ = unsafe { result::destroy_tensor_descriptor(self.0) };
    }
}
impl Drop for FilterDesc {
    fn drop(&mut self) {
        let _ = unsafe { result::destroy_filter_descriptor(self.0) };
    }
}
impl Drop for ConvDesc {
    fn drop(&mut self) {
        let _ = unsafe { result::destroy_convolution_descriptor(self.0) };
    }
}

/// The descriptors of one convolution.
struct Descriptors {
    conv: ConvDesc,
    x: TensorDesc,
    w: FilterDesc,
    y: TensorDesc,
}

fn descriptors(g: &Geometry, dt: cudnnDataType_t) -> Result<Descriptors> {
    let i = |d: [usize; 4]| d.map(|v| v as i32);
    let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
    let (p, s) = (g.padding as i32, g.stride as i32);
    let mode = sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION;
    // SAFETY: every descriptor is set right after its creation, before any use.
    unsafe {
        let x = TensorDesc(result::create_tensor_descriptor()?);
        result::set_tensor4d_descriptor(x.0, nchw, dt, i(g.x))?;
        let y = TensorDesc(result::create_tensor_descriptor()?);
        result::set_tensor4d_descriptor(y.0, nchw, dt, i(g.y()))?;
        let w = FilterDesc(result::create_filter_descriptor()?);
        result::set_filter4d_descriptor(w.0, dt, nchw, i(g.w))?;
        let conv = ConvDesc(result::create_convolution_descriptor()?);
        let f32_compute = cudnnDataType_t::CUDNN_DATA_FLOAT;
        result::set_convolution2d_descriptor(conv.0, p, p, s, s, 1, 1, mode, f32_compute)?;
        // tensor cores for bf16 (f32 accumulation); strict FMA math for f32
        let math = if dt == cudnnDataType_t::CUDNN_DATA_FLOAT {
            cudnnMathType_t::CUDNN_FMA_MATH
        } else {
            cudnnMathType_t::CUDNN_TENSOR_OP_MATH
        };
        result::set_convolution_math_type(conv.0, math)?;
        Ok(Descriptors { conv, x, w, y })
    }
}

/// One algorithm cuDNN offers for a pass, as its timing or heuristics reported it.
struct Candidate {
    algo: Algo,
    status: cudnnStatus_t,
    determinism: cudnnDeterminism_t,
    memory: usize,
    math: cudnnMathType_t,
}

/// The first (fastest) successful deterministic candidate, else the first successful one.
fn pick(candidates: &[Candidate]) -> Option<Choice> {
    let ok = |c: &&Candidate| c.status == cudnnStatus_t::CUDNN_STATUS_SUCCESS;
    let det = |c: &&Candidate| c.determinism == cudnnDeterminism_t::CUDNN_DETERMINISTIC;
    let best = candidates
        .iter()
        .filter(ok)
        .find(det)
        .or_else(|| candidates.iter().find(ok))?;
    Some(Choice {
        algo: best.algo,
        math: best.math,
        workspace: best.memory,
    })
}

/// Raw device pointers of one pass: its two inputs, its output and the workspace.
struct Pointers {
    a: *const c_void,
    b: *const c_void,
    out: *mut c_void,
    workspace: *mut c_void,
    workspace_len: usize,
}

/// Chooses the algorithm of `pass`: timed on the real buffers (`find`) or by the heuristics.
///
/// # Safety
/// The pointers must be valid device buffers matching the descriptors, on the handle's stream.
unsafe fn choose(
    h: &Handle,
    d: &Descriptors,
    pass: Pass,
    p: &Pointers,
    find: bool,
) -> Result<Choice> {
    const N: usize = 16;
    // the candidates of one pass: `$find(results, count)` timed or `$heuristics(results, count)`
    macro_rules! candidates {
        ($perf:ty, $algo:path, $find:expr, $heuristics:expr) => {{
            let mut r: [$perf; N] = std::mem::zeroed();
            let mut n = 0i32;
            if find {
                $find(r.as_mut_ptr(), &mut n).result()?;
            } else {
                $heuristics(r.as_mut_ptr(), &mut n)?;
            }
            r[..n as usize]
                .iter()
                .map(|r| Candidate {
                    algo: $algo(r.algo),
                    status: r.status,
                    determinism: r.determinism,
                    memory: r.memory,
                    math: r.mathType,
                })
                .collect::<Vec<_>>()
        }};
    }
    let (ws, wl, n) = (p.workspace, p.workspace_len, N as i32);
    let candidates = match pass {
        Pass::Forward => candidates!(
            sys::cudnnConvolutionFwdAlgoPerf_t,
            Algo::Forward,
            |r, c| sys::cudnnFindConvolutionForwardAlgorithmEx(
                h.0, d.x.0, p.a, d.w.0, p.b, d.conv.0, d.y.0, p.out, n, c, r, ws, wl
            ),
            |r, c| result::get_convolution_forward_algorithm(
                h.0, d.x.0, d.w.0, d.conv.0, d.y.0, n, c, r
            )
        ),
        // a = dy, b = w, out = dx
        Pass::InputGrad => candidates!(
            sys::cudnnConvolutionBwdDataAlgoPerf_t,
            Algo::InputGrad,
            |r, c| sys::cudnnFindConvolutionBackwardDataAlgorithmEx(
                h.0, d.w.0, p.b, d.y.0, p.a, d.conv.0, d.x.0, p.out, n, c, r, ws, wl
            ),
            |r, c| result::get_convolution_backward_data_algorithm(
                h.0, d.w.0, d.y.0, d.conv.0, d.x.0, n, c, r
            )
        ),
        // a = x, b = dy, out = dw
        Pass::WeightGrad => candidates!(
            sys::cudnnConvolutionBwdFilterAlgoPerf_t,
            Algo::WeightGrad,
            |r, c| sys::cudnnFindConvolutionBackwardFilterAlgorithmEx(
                h.0, d.x.0, p.a, d.y.0, p.b, d.conv.0, d.w.0, p.out, n, c, r, ws, wl
            ),
            |r, c| result::get_convolution_backward_filter_algorithm(
                h.0, d.x.0, d.y.0, d.conv.0, d.w.0, n, c, r
            )
        ),
    };
    match pick(&candidates) {
        Some(c) => Ok(c),
        None => candle_core::bail!("cuDNN has no algorithm for this convolution ({pass:?})"),
    }
}

/// Runs `pass` with the chosen algorithm.
///
/// # Safety
/// As [`choose`]; the workspace holds at least `c.workspace` bytes.
unsafe fn launch(h: &Handle, d: &Descriptors, c: &Choice, p: &Pointers) -> Result<()> {
    result::set_convolution_math_type(d.conv.0, c.math)?;
    let (one, zero) = (1f32, 0f32);
    let (alpha, beta) = (
        &one as *const f32 as *const c_void,
        &zero as *const f32 as *const c_void,
    );
    let (ws, wl) = (p.workspace, p.workspace_len);
    match c.algo {
        Algo::Forward(a) => result::convolution_forward(
            h.0, alpha, d.x.0, p.a, d.w.0, p.b, d.conv.0, a, ws, wl, beta, d.y.0, p.out,
        )?,
        Algo::InputGrad(a) => result::convolution_backward_data(
            h.0, alpha, d.w.0, p.b, d.y.0, p.a, d.conv.0, a, ws, wl, beta, d.x.0, p.out,
        )?,
        Algo::WeightGrad(a) => result::convolution_backward_filter(
            h.0, alpha, d.x.0, p.a, d.y.0, p.b, d.conv.0, a, ws, wl, beta, d.w.0, p.out,
        )?,
    }
    Ok(())
}

/// Per device: the cuDNN handle, the choice per pass, shape and dtype, and the workspace. Kept
/// per thread, as cuDNN handles are neither Send nor Sync.
struct State {
    handle: Handle,
    choices: HashMap<(Pass, Geometry, DType), Choice>,
    workspace: Option<CudaSlice<u8>>,
}

thread_local! {
    static STATE: RefCell<HashMap<DeviceId, State>> = RefCell::new(HashMap::new());
}

/// The workspace, grown to at least `bytes`.
fn workspace<'a>(
    ws: &'a mut Option<CudaSlice<u8>>,
    dev: &CudaDevice,
    bytes: usize,
) -> Result<&'a mut CudaSlice<u8>> {
    let bytes = bytes.max(1);
    if ws.as_ref().is_none_or(|w| w.len() < bytes) {
        *ws = None; // the old one is freed first
                    // SAFETY: a workspace needs no initial contents.
        *ws = Some(unsafe { dev.alloc::<u8>(bytes)? });
    }
    Ok(ws.as_mut().expect("allocated above"))
}

/// Calls `f` with the raw pointers of the buffers, which stay borrowed meanwhile.
fn with_pointers<T: DeviceRepr, R>(
    stream: &Arc<CudaStream>,
    (a, b): (&CudaView<'_, T>, &CudaView<'_, T>),
    out: &mut CudaSlice<T>,
    ws: &mut CudaSlice<u8>,
    f: impl FnOnce(&Pointers) -> Result<R>,
) -> Result<R> {
    let workspace_len = ws.len();
    let (pa, _a) = a.device_ptr(stream);
    let (pb, _b) = b.device_ptr(stream);
    let (po, _o) = out.device_ptr_mut(stream);
    let (pw, _w) = ws.device_ptr_mut(stream);
    f(&Pointers {
        a: pa as *const c_void,
        b: pb as *const c_void,
        out: po as *mut c_void,
        workspace: pw as *mut c_void,
        workspace_len,
    })
}

/// Runs one pass of the convolution `g` on `dev`; `a` and `b` are its two inputs (forward:
/// x, w; input gradient: dy, w; weight gradient: x, dy) and the result is allocated here.
fn run<T>(
    dev: &CudaDevice,
    pass: Pass,
    g: &Geometry,
    dtype: DType,
    a: CudaView<'_, T>,
    b: CudaView<'_, T>,
) -> Result<CudaSlice<T>>
where
    T: CudnnDataType + DeviceRepr,
{
    let stream = dev.cuda_stream();
    STATE.with(|state| {
        let mut state = state.borrow_mut();
        let st = match state.entry(dev.id()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                stream.context().bind_to_thread()?;
                let handle = Handle(result::create_handle()?);
                // SAFETY: a fresh handle and the device's own stream.
                unsafe { result::set_stream(handle.0, stream.cu_stream() as *mut _)? };
                e.insert(State {
                    handle,
                    choices: HashMap::new(),
                    workspace: None,
                })
            }
        };
        let d = descriptors(g, T::DATA_TYPE)?;
        let out_len: usize = match pass {
            Pass::Forward => g.y().iter().product(),
            Pass::InputGrad => g.x.iter().product(),
            Pass::WeightGrad => g.w.iter().product(),
        };
        // SAFETY: cuDNN writes every element of the result.
        let mut out = unsafe { dev.alloc::<T>(out_len)? };
        let key = (pass, *g, dtype);
        let choice = match st.choices.get(&key).copied() {
            Some(c) => c,
            None => {
                // the timed search needs room to try the candidates; without it, heuristics
                let find =
                    find_enabled() && workspace(&mut st.workspace, dev, FIND_WORKSPACE).is_ok();
                if find {
                    // the timings must not include the work still queued on the stream
                    stream.synchronize()?;
                }
                let ws = workspace(&mut st.workspace, dev, 1)?;
                let handle = &st.handle;
                // SAFETY: the pointers are this pass's live buffers, sized by `g`.
                // (a shape the timed search rejects falls back to the heuristics)
                let c = with_pointers(&stream, (&a, &b), &mut out, ws, |p| unsafe {
                    choose(handle, &d, pass, p, find)
                        .or_else(|_| choose(handle, &d, pass, p, false))
                })?;
                st.choices.insert(key, c);
                c
            }
        };
        let ws = workspace(&mut st.workspace, dev, choice.workspace)?;
        let handle = &st.handle;
        // SAFETY: as above; the workspace holds at least `choice.workspace` bytes.
        with_pointers(&stream, (&a, &b), &mut out, ws, |p| unsafe {
            launch(handle, &d, &choice, p)
        })?;
        Ok(out)
    })
}

/// One pass of a convolution as a custom op over its two inputs.
struct Op {
    pass: Pass,
    geometry: Geometry,
}

fn view<'a, T>(s: &'a CudaSlice<T>, l: &Layout) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.slice(a..b)),
        None => candle_core::bail!("cuDNN convolution: inputs must be contiguous"),
    }
}

impl CustomOp2 for Op {
    fn name(&self) -> &'static str {
        match self.pass {
            Pass::Forward => "movq-cudnn-conv2d",
            Pass::InputGrad => "movq-cudnn-conv2d-input-grad",
            Pass::WeightGrad => "movq-cudnn-conv2d-weight-grad",
        }
    }

    cuda_only!(2, "cuDNN convolutions");

    fn cuda_fwd(
        &self,
        a: &CudaStorage,
        al: &Layout,
        b: &CudaStorage,
        bl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = a.device().clone();
        let g = &self.geometry;
        let slice =
            match (&a.slice, &b.slice) {
                (CudaStorageSlice::F32(x), CudaStorageSlice::F32(y)) => CudaStorageSlice::F32(run(
                    &dev,
                    self.pass,
                    g,
                    DType::F32,
                    view(x, al)?,
                    view(y, bl)?,
                )?),
                (CudaStorageSlice::BF16(x), CudaStorageSlice::BF16(y)) => CudaStorageSlice::BF16(
                    run(&dev, self.pass, g, DType::BF16, view(x, al)?, view(y, bl)?)?,
                ),
                _ => candle_core::bail!(
                    "cuDNN convolution: f32 or bf16 inputs of one dtype, not {:?} and {:?}",
                    a.dtype(),
                    b.dtype()
                ),
            };
        let shape = match self.pass {
            Pass::Forward => g.y(),
            Pass::InputGrad => g.x,
            Pass::WeightGrad => g.w,
        };
        Ok((
            CudaStorage { slice, device: dev },
            Shape::from(shape.to_vec()),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if self.pass != Pass::Forward {
            candle_core::bail!("cuDNN convolution gradients are not differentiable again");
        }
        let g = self.geometry;
        let grad = grad.contiguous()?;
        let dx = if x.track_op() {
            let op = Op {
                pass: Pass::InputGrad,
                geometry: g,
            };
            Some(grad.apply_op2_no_bwd(&w.detach(), &op)?)
        } else {
            None
        };
        let dw = if w.track_op() {
            let op = Op {
                pass: Pass::WeightGrad,
                geometry: g,
            };
            Some(x.detach().apply_op2_no_bwd(&grad, &op)?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// `x` `[B, C, H, W]` convolved with `w` `[O, C, kh, kw]` (same dtype, f32 or bf16, on CUDA),
/// zero padding `padding` on every side, stride `stride`; differentiable in both.
pub fn conv2d(x: &Tensor, w: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    x.contiguous()?.apply_op2(
        &w.contiguous()?,
        Op {
            pass: Pass::Forward,
            geometry: geometry(x, w, padding, stride)?,
        },
    )
}

/// [`conv2d`] plus a bias `b` `[O]` (cast to f32) per output channel, as one graph node: the bias
/// goes onto cuDNN's output in place and its gradient comes with the convolution's. One node
/// fewer per layer is one gradient sum fewer in the backward pass, where candle adds each node's
/// input gradient onto a fresh zero tensor (a pass over the activation, at the decoder's last
/// layers 16 × 128 × 256² values).
pub fn conv2d_bias(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    padding: usize,
    stride: usize,
) -> Result<Tensor> {
    let geometry = geometry(x, w, padding, stride)?;
    if b.dims() != [geometry.w[0]] {
        candle_core::bail!(
            "conv2d: a bias of {:?} for {} output channels",
            b.dims(),
            geometry.w[0]
        );
    }
    x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.to_dtype(DType::F32)?,
        Biased(Op {
            pass: Pass::Forward,
            geometry,
        }),
    )
}

/// The forward op with a per-channel bias (see [`conv2d_bias`]).
struct Biased(Op);

impl CustomOp3 for Biased {
    fn name(&self) -> &'static str {
        "movq-cudnn-conv2d-bias"
    }

    cuda_only!(3, "cuDNN convolutions");

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
        b: &CudaStorage,
        bl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (mut y, shape) = self.0.cuda_fwd(x, xl, w, wl)?;
        super::bias::channel_bias_inplace(&mut y, b, bl, self.0.geometry.y())?;
        Ok((y, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (dx, dw) = self.0.bwd(x, w, res, &grad)?;
        let db = if b.track_op() {
            Some(super::bias::channel_bias_grad(&grad, b.elem_count())?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

/// The geometry of `x ⋆ w`, checked.
fn geometry(x: &Tensor, w: &Tensor, padding: usize, stride: usize) -> Result<Geometry> {
    let (xd, wd) = (x.dims4()?, w.dims4()?);
    if xd.1 != wd.1 {
        candle_core::bail!("conv2d: input has {} channels, the kernel {}", xd.1, wd.1);
    }
    if xd.2 + 2 * padding < wd.2 || xd.3 + 2 * padding < wd.3 || stride == 0 {
        candle_core::bail!(
            "conv2d: kernel {:?} does not fit input {:?} with padding {padding}",
            wd,
            xd
        );
    }
    Ok(Geometry {
        x: [xd.0, xd.1, xd.2, xd.3],
        w: [wd.0, wd.1, wd.2, wd.3],
        padding,
        stride,
    })
}
