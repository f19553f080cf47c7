//! The GPU kernels (`movq::gpu`) against candle's composed ops on the same GPU: forward values
//! and the gradients of every input, in f32 (relative error < 1e-4) and in bf16 (against the
//! f32 reference on the same bf16-rounded inputs: < 1.5e-2 forward, < 3e-2 gradients, about
//! four bf16 roundings). Built only with `--features cuda` (the cuDNN tests with `cudnn`).
#![cfg(feature = "cuda")]

use candle_core::{DType, Tensor, Var};

use crate::devices::{randn, rel_err};
use crate::harness::cuda_device;

/// f32 and bf16 tolerances on (forward, gradients), relative to the reference's norm.
const F32_TOL: (f64, f64) = (1e-4, 1e-4);
const BF16_TOL: (f64, f64) = (1.5e-2, 3e-2);

/// Runs `f` on fresh variables made from `inputs` (cast to `dt`), backpropagates `sum(y · r)`
/// and returns the output and every input's gradient, in f32.
fn value_and_grads(
    inputs: &[Tensor],
    dt: DType,
    f: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(&t.to_dtype(dt).unwrap()).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts).unwrap();
    let r = randn(y.dims(), 99, y.device()).to_dtype(y.dtype()).unwrap();
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let gs = ts
        .iter()
        .map(|t| {
            grads
                .get(t)
                .expect("a gradient for every input")
                .to_dtype(DType::F32)
                .unwrap()
        })
        .collect();
    (y.to_dtype(DType::F32).unwrap(), gs)
}

/// `fused` against `reference` in f32, and `fused` in bf16 against `reference` in f32 on the
/// same bf16-rounded inputs.
fn compare(
    name: &str,
    inputs: &[Tensor],
    fused: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    reference: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    bf16_inputs: &[bool],
) {
    for (dt, (fwd_tol, grad_tol)) in [(DType::F32, F32_TOL), (DType::BF16, BF16_TOL)] {
        // inputs marked for bf16 are rounded to it, so that both sides see the same values
        let rounded: Vec<Tensor> = inputs
            .iter()
            .zip(bf16_inputs)
            .map(|(t, &b)| {
                if b && dt == DType::BF16 {
                    t.to_dtype(DType::BF16)
                        .unwrap()
                        .to_dtype(DType::F32)
                        .unwrap()
                } else {
                    t.clone()
                }
            })
            .collect();
        let (y0, g0) = value_and_grads(&rounded, DType::F32, reference);
        let cast = |ts: &[Tensor]| -> Vec<Tensor> {
            ts.iter()
                .zip(bf16_inputs)
                .map(|(t, &b)| {
                    if b {
                        t.to_dtype(dt).unwrap()
                    } else {
                        t.to_dtype(DType::F32).unwrap()
                    }
                })
                .collect()
        };
        let (y1, g1) = value_and_grads(&rounded, DType::F32, &|ts| fused(&cast(ts)));
        let e = rel_err(&y1, &y0);
        assert!(e < fwd_tol, "{name} {dt:?}: forward relative error {e}");
        for (i, (a, b)) in g1.iter().zip(&g0).enumerate() {
            let e = rel_err(a, b);
            assert!(
                e < grad_tol,
                "{name} {dt:?}: gradient of input {i}: relative error {e}"
            );
        }
        println!(
            "{name} {dt:?}: matches candle's composed ops (forward and {} gradients)",
            g0.len()
        );
    }
}

/// GroupNorm, (× scale↑ + shift↑), (SiLU) written with candle ops, in f32.
fn group_norm_reference(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    modulation: Option<(&Tensor, &Tensor)>,
    silu: bool,
) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let xg = x.reshape((b, groups, ()))?;
    let mean = xg.mean_keepdim(2)?;
    let xc = xg.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(2)?;
    let xh = xc
        .broadcast_div(&(var + 1e-6)?.sqrt()?)?
        .reshape((b, c, h, w))?;
    let mut y = xh
        .broadcast_mul(&gamma.reshape((1, c, 1, 1))?)?
        .broadcast_add(&beta.reshape((1, c, 1, 1))?)?;
    if let Some((s, t)) = modulation {
        y = y
            .mul(&s.upsample_nearest2d(h, w)?)?
            .add(&t.upsample_nearest2d(h, w)?)?;
    }
    if silu {
        y = y.silu()?;
    }
    Ok(y)
}

fn group_norm_case(
    name: &str,
    x: &[usize],
    groups: usize,
    latent: Option<(usize, usize)>,
    silu: bool,
) {
    let dev = cuda_device();
    let c = x[1];
    let mut inputs = vec![
        randn(x, 1, &dev),
        (randn(&[c], 2, &dev) + 1.0).unwrap(),
        randn(&[c], 3, &dev),
    ];
    if let Some((zh, zw)) = latent {
        inputs.push((randn(&[x[0], c, zh, zw], 4, &dev) + 1.0).unwrap());
        inputs.push(randn(&[x[0], c, zh, zw], 5, &dev));
    }
    let modulation = |t: &[Tensor]| -> Option<(Tensor, Tensor)> {
        (t.len() == 5).then(|| (t[3].clone(), t[4].clone()))
    };
    let fused = |t: &[Tensor]| {
        let m = modulation(t);
        movq::gpu::group_norm::group_norm(
            &t[0],
            &t[1],
            &t[2],
            groups,
            1e-6,
            m.as_ref().map(|(s, t)| (s, t)),
            silu,
        )
    };
    let reference = |t: &[Tensor]| {
        let m = modulation(t);
        group_norm_reference(
            &t[0],
            &t[1],
            &t[2],
            groups,
            m.as_ref().map(|(s, t)| (s, t)),
            silu,
        )
    };
    // only x travels in bf16; the parameters stay f32 (as the model's master weights do)
    let bf16: Vec<bool> = (0..inputs.len()).map(|i| i == 0).collect();
    compare(name, &inputs, &fused, &reference, &bf16);
}

#[test]
fn fused_group_norm_matches_composed_ops() {
    group_norm_case("GroupNorm", &[2, 16, 8, 8], 4, None, false);
    group_norm_case("GroupNorm + SiLU", &[3, 32, 16, 16], 8, None, true);
    // groups of 2 × 64 × 64 = 8,192 elements: many passes of each block's threads
    group_norm_case(
        "GroupNorm + SiLU, large groups",
        &[2, 64, 64, 64],
        32,
        None,
        true,
    );
    group_norm_case("SpatialNorm", &[2, 16, 16, 16], 8, Some((4, 4)), false);
    group_norm_case(
        "SpatialNorm + SiLU",
        &[2, 16, 16, 16],
        8,
        Some((4, 4)),
        true,
    );
    group_norm_case(
        "SpatialNorm + SiLU, 16× blocks",
        &[1, 8, 64, 64],
        4,
        Some((4, 4)),
        true,
    );
    group_norm_case(
        "SpatialNorm, full resolution",
        &[2, 8, 6, 10],
        2,
        Some((6, 10)),
        false,
    );
    group_norm_case(
        "SpatialNorm, unequal blocks",
        &[2, 8, 12, 8],
        4,
        Some((3, 2)),
        true,
    );
}

#[test]
fn fused_group_norm_skips_the_input_gradient_of_a_constant() {
    let dev = cuda_device();
    let x = randn(&[2, 8, 4, 4], 1, &dev);
    let gamma = Var::from_tensor(&randn(&[8], 2, &dev)).unwrap();
    let beta = Var::from_tensor(&randn(&[8], 3, &dev)).unwrap();
    let y = movq::gpu::group_norm::group_norm(&x, &gamma, &beta, 2, 1e-6, None, true).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&x).is_none());
    assert!(grads.get(gamma.as_tensor()).is_some() && grads.get(beta.as_tensor()).is_some());
}

#[cfg(feature = "cudnn")]
mod cudnn {
    use super::*;

    fn conv_case(name: &str, x: &[usize], w: &[usize], padding: usize, stride: usize) {
        let dev = cuda_device();
        let inputs = [randn(x, 11, &dev), randn(w, 12, &dev)];
        let fused = |t: &[Tensor]| movq::gpu::conv::conv2d(&t[0], &t[1], padding, stride);
        // on the CPU: candle's CUDA convolution may use TF32 in f32
        let cpu = candle_core::Device::Cpu;
        let reference = |t: &[Tensor]| {
            let (x, w) = (t[0].to_device(&cpu)?, t[1].to_device(&cpu)?);
            x.conv2d(&w, padding, stride, 1, 1)?.to_device(&dev)
        };
        compare(name, &inputs, &fused, &reference, &[true, true]);
    }

    #[test]
    fn cudnn_convolutions_match_candle() {
        conv_case("conv 3×3 pad 1", &[2, 8, 16, 16], &[16, 8, 3, 3], 1, 1);
        conv_case("conv 1×1", &[2, 16, 8, 8], &[8, 16, 1, 1], 0, 1);
        conv_case("conv 3×3 stride 2", &[2, 8, 17, 17], &[8, 8, 3, 3], 0, 2);
        conv_case(
            "conv 4×4 stride 2 pad 1",
            &[2, 3, 32, 32],
            &[16, 3, 4, 4],
            1,
            2,
        );
        // the same shape again: the cached algorithm and workspace
        conv_case(
            "conv 3×3 pad 1 (cached)",
            &[2, 8, 16, 16],
            &[16, 8, 3, 3],
            1,
            1,
        );
    }

    #[test]
    fn cudnn_convolution_skips_the_input_gradient_of_a_constant() {
        let dev = cuda_device();
        let x = randn(&[2, 3, 8, 8], 1, &dev);
        let w = Var::from_tensor(&randn(&[4, 3, 3, 3], 2, &dev)).unwrap();
        let y = movq::gpu::conv::conv2d(&x, &w, 1, 1).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&x).is_none());
        let cpu = candle_core::Device::Cpu;
        let (xc, wc) = (x.to_device(&cpu).unwrap(), w.to_device(&cpu).unwrap());
        let expected = xc.conv2d(&wc, 1, 1, 1, 1).unwrap();
        assert!(rel_err(&y, &expected) < 1e-4);
        assert!(grads.get(w.as_tensor()).is_some());
    }
}
