//! MaskGIT's masked-token cross-entropy with label smoothing on the CPU as one op: one pass over
//! the logits forward (log-sum-exp, the target's and the mean logit, the argmax for the
//! accuracy) and one backward (`softmax − smoothed target`), where candle's composed ops take a
//! dozen passes each way. The reference is the composed form in
//! [`crate::transformer::model::masked_cross_entropy`].

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{fast_exp, values};

/// Rows per task of the row-parallel passes.
const ROWS_PER_TASK: usize = 64;

/// Mean over rows of weight `w` of `(1 − eps)·(−log p[target]) − eps·mean(log p)`, for
/// `logits` `[N, K]` (f32), `targets` `[N]` (u32), `weights` `[N]` (f32, 1 = masked); and the
/// weighted accuracy of the argmax. Weights summing to less than 1 count as 1.
pub fn masked_cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
    eps: f32,
) -> Result<(Tensor, f64)> {
    let accuracy = Arc::new(Mutex::new(0.0));
    let loss = logits.contiguous()?.apply_op3(
        &targets.contiguous()?,
        &weights.contiguous()?,
        Loss {
            eps,
            accuracy: accuracy.clone(),
        },
    )?;
    let acc = *accuracy.lock().unwrap_or_else(|e| e.into_inner());
    Ok((loss, acc))
}

struct Loss {
    eps: f32,
    /// The forward pass's weighted accuracy, for the caller.
    accuracy: Arc<Mutex<f64>>,
}

/// The op's inputs as rows: logits `[N, k]`, targets and weights `[N]`.
struct Rows<'a> {
    x: &'a [f32],
    t: &'a [u32],
    w: &'a [f32],
    k: usize,
}

/// The rows' shapes and values, checked.
fn inputs<'a>(
    logits: (&'a CpuStorage, &Layout),
    targets: (&'a CpuStorage, &Layout),
    weights: (&'a CpuStorage, &Layout),
) -> Result<Rows<'a>> {
    let x = values(logits.0, logits.1, "cross-entropy logits")?;
    let CpuStorage::U32(t) = targets.0 else {
        candle_core::bail!("cross-entropy targets must be u32")
    };
    let t = match targets.1.contiguous_offsets() {
        Some((a, b)) => &t[a..b],
        None => candle_core::bail!("cross-entropy targets must be contiguous"),
    };
    let w = values(weights.0, weights.1, "cross-entropy weights")?;
    let k = logits.1.dims().last().copied().unwrap_or(0);
    if k == 0 || x.len() != t.len() * k || w.len() != t.len() {
        candle_core::bail!(
            "cross-entropy: logits {:?}, targets {:?} and weights {:?} do not agree",
            logits.1.dims(),
            targets.1.dims(),
            weights.1.dims()
        )
    }
    if let Some(&bad) = t.iter().find(|&&t| t as usize >= k) {
        candle_core::bail!("cross-entropy: target {bad} out of range for {k} classes")
    }
    Ok(Rows { x, t, w, k })
}

/// A row's first maximum's index, and `log Σ exp`.
fn log_sum_exp(x: &[f32]) -> (usize, f32) {
    let (mut max, mut arg) = (f32::NEG_INFINITY, 0);
    for (i, &v) in x.iter().enumerate() {
        if v > max {
            (max, arg) = (v, i);
        }
    }
    let sum: f32 = x.iter().map(|&v| fast_exp(v - max)).sum();
    (arg, max + sum.ln())
}

impl CustomOp3 for Loss {
    fn name(&self) -> &'static str {
        "movq-masked-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let Rows { x, t, w, k } = inputs((s1, l1), (s2, l2), (s3, l3))?;
        let eps = self.eps;
        // (weighted loss, weighted correct, weight) summed in f64 over tasks of rows
        let (loss, correct, count) = x
            .par_chunks(k * ROWS_PER_TASK)
            .zip(t.par_chunks(ROWS_PER_TASK))
            .zip(w.par_chunks(ROWS_PER_TASK))
            .map(|((x, t), w)| {
                let mut acc = (0f64, 0f64, 0f64);
                for ((x, &t), &w) in x.chunks(k).zip(t).zip(w) {
                    acc.2 += w as f64;
                    if w == 0.0 {
                        continue;
                    }
                    let (arg, lse) = log_sum_exp(x);
                    let mean = x.iter().sum::<f32>() / k as f32;
                    let per = (1.0 - eps) * (lse - x[t as usize]) + eps * (lse - mean);
                    acc.0 += (w * per) as f64;
                    if arg == t as usize {
                        acc.1 += w as f64;
                    }
                }
                acc
            })
            .reduce(|| (0.0, 0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2));
        let count = count.max(1.0);
        *self.accuracy.lock().unwrap_or_else(|e| e.into_inner()) = correct / count;
        Ok((
            CpuStorage::F32(vec![(loss / count) as f32]),
            Shape::from(()),
        ))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        weights: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        let (ls, ll) = logits.storage_and_layout();
        let (ts, tl) = targets.storage_and_layout();
        let (ws, wl) = weights.storage_and_layout();
        let (
            candle_core::Storage::Cpu(ls),
            candle_core::Storage::Cpu(ts),
            candle_core::Storage::Cpu(ws),
        ) = (&*ls, &*ts, &*ws)
        else {
            candle_core::bail!("the CPU cross-entropy's inputs must be on the CPU")
        };
        let Rows { x, t, w, k } = inputs((ls, ll), (ts, tl), (ws, wl))?;
        let count = w.iter().map(|&w| w as f64).sum::<f64>().max(1.0) as f32;
        let (eps, smooth) = (self.eps, self.eps / k as f32);
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(k * ROWS_PER_TASK)
            .zip(x.par_chunks(k * ROWS_PER_TASK))
            .zip(t.par_chunks(ROWS_PER_TASK))
            .zip(w.par_chunks(ROWS_PER_TASK))
            .for_each(|(((dx, x), t), w)| {
                for (((dx, x), &t), &w) in dx.chunks_mut(k).zip(x.chunks(k)).zip(t).zip(w) {
                    if w == 0.0 {
                        continue;
                    }
                    let scale = g * w / count;
                    let (_, lse) = log_sum_exp(x);
                    for (d, &v) in dx.iter_mut().zip(x) {
                        *d = scale * (fast_exp(v - lse) - smooth);
                    }
                    dx[t as usize] -= scale * (1.0 - eps);
                }
            });
        let dx = Tensor::from_vec(dx, logits.shape(), logits.device())?;
        Ok((Some(dx), None, None))
    }
}
