//! One Adam / AdamW step in place on the CPU, the counterpart of [`crate::gpu::adam`]: the
//! composed update is about fifteen candle ops per tensor, each allocating its output, which at
//! the quickstart's size (38 small tensors) costs more than the arithmetic. Here three passes
//! per tensor update the first moment, the second moment and then the parameter, each in place
//! through candle's in-place ops (one tensor written per op).

use candle_core::{CpuStorage, DType, InplaceOp3, Layout, Result, Tensor};

use super::{values, values_mut};
use crate::ops::adam::AdamStep;

/// Updates `param` and its moments `m`, `v` in place from `grad` (all f32, contiguous, one
/// shape, on the CPU; `m` and `v` not shared with any other tensor).
pub fn step(param: &Tensor, m: &Tensor, v: &Tensor, grad: &Tensor, s: AdamStep) -> Result<()> {
    crate::ops::adam::check_operands(
        "CPU Adam",
        [("parameter", param), ("m", m), ("v", v), ("gradient", grad)],
    )?;
    m.inplace_op3(grad, param, &Moment { s, second: false })?;
    v.inplace_op3(grad, param, &Moment { s, second: true })?;
    param.inplace_op3(m, v, &Update { s })
}

/// `Σ g²` over every element of `grads` (f32 on the CPU), in f64.
pub fn sum_of_squares(grads: &[&Tensor]) -> Result<f64> {
    let mut total = 0.0f64;
    for g in grads {
        let g = g.to_dtype(DType::F32)?.contiguous()?;
        let (storage, layout) = g.storage_and_layout();
        let candle_core::Storage::Cpu(storage) = &*storage else {
            candle_core::bail!("CPU sum of squares: the gradient is not on the CPU");
        };
        let x = values(storage, layout, "CPU sum of squares: the gradient")?;
        // f32 partial sums over short runs, added in f64
        total += x
            .chunks(1024)
            .map(|c| c.iter().map(|&v| v * v).sum::<f32>() as f64)
            .sum::<f64>();
    }
    Ok(total)
}

/// The gradient Adam sees: clipped, plus the L2 term when the decay is not decoupled.
#[inline(always)]
fn effective_grad(s: &AdamStep, g: f32, p: f32) -> f32 {
    let g = g * s.grad_scale;
    if s.decoupled {
        g
    } else {
        g + s.weight_decay * p
    }
}

/// `m ← β1·m + (1−β1)·g` or `v ← β2·v + (1−β2)·g²`, in place, from the gradient and parameter.
struct Moment {
    s: AdamStep,
    second: bool,
}

impl InplaceOp3 for Moment {
    fn name(&self) -> &'static str {
        "movq-adam-moment"
    }

    fn cpu_fwd(
        &self,
        m: &mut CpuStorage,
        ml: &Layout,
        g: &CpuStorage,
        gl: &Layout,
        p: &CpuStorage,
        pl: &Layout,
    ) -> Result<()> {
        let (g, p) = (
            values(g, gl, "CPU Adam: the gradient")?,
            values(p, pl, "CPU Adam: the parameter")?,
        );
        let m = values_mut(m, ml, "CPU Adam: the moment")?;
        let s = &self.s;
        if self.second {
            let b = s.betas.1;
            for ((m, &g), &p) in m.iter_mut().zip(g).zip(p) {
                let g = effective_grad(s, g, p);
                *m = b * *m + (1.0 - b) * g * g;
            }
        } else {
            let b = s.betas.0;
            for ((m, &g), &p) in m.iter_mut().zip(g).zip(p) {
                *m = b * *m + (1.0 - b) * effective_grad(s, g, p);
            }
        }
        Ok(())
    }
}

/// `θ ← θ·(1 − lr·wd) − lr·m̂ / (√v̂ + ε)` (AdamW; Adam without the decay factor), in place.
struct Update {
    s: AdamStep,
}

impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "movq-adam-update"
    }

    fn cpu_fwd(
        &self,
        p: &mut CpuStorage,
        pl: &Layout,
        m: &CpuStorage,
        ml: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> Result<()> {
        let (m, v) = (values(m, ml, "CPU Adam: m")?, values(v, vl, "CPU Adam: v")?);
        let p = values_mut(p, pl, "CPU Adam: the parameter")?;
        let s = &self.s;
        let decay = if s.decoupled {
            1.0 - s.lr * s.weight_decay
        } else {
            1.0
        };
        let (c1, c2) = (1.0 / s.bias.0, 1.0 / s.bias.1);
        for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
            *p = *p * decay - s.lr * (m * c1) / ((v * c2).sqrt() + s.eps);
        }
        Ok(())
    }
}
