//! CPU kernels behind candle custom ops, forward and backward: convolution as matrix products
//! over unfolded windows, fused GroupNorm (+ SpatialNorm modulation) (+ SiLU), and the
//! transformer's block stack as one node, the masked-token cross-entropy, and Adam's update in
//! place. MaskGIT's
//! token choice has its CPU kernel beside its CUDA one, in [`crate::ops::token_choice`].
//! [`crate::ops`] decides when they run; each is tested against the composed ops it replaces
//! (`tests/integration/kernels.rs`).

pub mod adam;
pub mod block;
pub mod conv;
pub mod cross_entropy;
pub mod group_norm;

use candle_core::{CpuStorage, Layout, Result};

/// The f32 values of a contiguous tensor's storage; errors name the kernel and the tensor.
pub(crate) fn values<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what} must be f32");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// [`values`], to write (an in-place op's destination).
pub(crate) fn values_mut<'a>(
    s: &'a mut CpuStorage,
    l: &Layout,
    what: &str,
) -> Result<&'a mut [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what} must be f32");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&mut v[a..b]),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// A row-major matrix view: `rs` between rows, `cs` between columns.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// `data` as a `[rows, cols]` row-major matrix.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of `data` read as a `[rows, cols]` row-major matrix.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: cols,
        }
    }
}

/// `dst [m, n] (row-major, contiguous) (+)= a [m, k] · b [k, n]`, on every thread of the pool
/// when `parallel` (else on the calling thread).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    a: Mat,
    b: Mat,
    accumulate: bool,
    parallel: bool,
) {
    assert!(dst.len() >= m * n);
    assert!(m == 0 || k == 0 || a.data.len() > (m - 1) * a.rs + (k - 1) * a.cs);
    assert!(n == 0 || k == 0 || b.data.len() > (k - 1) * b.rs + (n - 1) * b.cs);
    let threads = if parallel {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every index gemm touches inside the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            threads,
        )
    }
}

/// `eˣ` for `x ≤ 0` (softmax, the normal density): `2ⁿ · e^r` with `n = round(x / ln 2)`,
/// `|r| ≤ ln 2 / 2` by a degree-6 polynomial (relative error about 2e-7), inlined so that loops
/// over it vectorise; 0 below −87.
#[inline(always)]
pub(crate) fn fast_exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // rounding by adding and subtracting 1.5 · 2²³
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    f32::from_bits(((n as i32 + 127) as u32) << 23) * p
}
