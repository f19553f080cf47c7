//! The GPU kernels (`movq::gpu`) against candle's composed ops on the same GPU: forward values
//! and the gradients of every input, in f32 (relative error < 1e-4) and in bf16 (against the
//! f32 reference on the same bf16-rounded inputs: < 1.5e-2 forward, < 3e-2 gradients, about
//! four bf16 roundings). Built only with `--features cuda` (the cuDNN tests with `cudnn`).
#![cfg(feature = "cuda")]

use candle_core::{DType, Tensor, Var};

use crate::devices::{randn, rel_err};
use crate::harness::cuda_device;

use crate::kernels::{compare, value_and_grads, BF16_TOL, F32_TOL};
use movq::ops::linear::Act;

#[test]
fn fused_group_norm_matches_composed_ops() {
    crate::kernels::group_norm_cases(
        |x, g, b, n, e, m, s| {
            movq::gpu::group_norm::forward(x, movq::ops::group_norm::pack(x, g, b, n, m)?, n, e, s)
        },
        &cuda_device(),
    );
}

#[test]
fn fused_group_norm_skips_the_input_gradient_of_a_constant() {
    let dev = cuda_device();
    let x = randn(&[2, 8, 4, 4], 1, &dev);
    let gamma = Var::from_tensor(&randn(&[8], 2, &dev)).unwrap();
    let beta = Var::from_tensor(&randn(&[8], 3, &dev)).unwrap();
    let packed = movq::ops::group_norm::pack(&x, &gamma, &beta, 2, None).unwrap();
    let y = movq::gpu::group_norm::forward(&x, packed, 2, 1e-6, true).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&x).is_none());
    assert!(grads.get(gamma.as_tensor()).is_some() && grads.get(beta.as_tensor()).is_some());
}

#[test]
fn fused_bias_and_gelu_match_composed_ops() {
    let dev = cuda_device();
    for (name, shape) in [
        ("[3, 37, 300]", [3, 37, 300]),
        ("[1, 700, 96]", [1, 700, 96]),
    ] {
        let n = shape[2];
        let inputs = [randn(&shape, 31, &dev), randn(&[n], 32, &dev)];
        for gelu in [false, true] {
            let fused = |t: &[Tensor]| movq::gpu::bias::bias_act(&t[0], &t[1], gelu);
            let reference = |t: &[Tensor]| {
                let y = t[0].broadcast_add(&t[1])?;
                if gelu {
                    y.gelu_erf()
                } else {
                    Ok(y)
                }
            };
            let what = format!("bias{} {name}", if gelu { " + GELU" } else { "" });
            compare(&what, &inputs, &fused, &reference, &[true, false]);
        }
    }
}

#[test]
fn fused_linear_matches_composed_ops() {
    let dev = cuda_device();
    for (name, rows, inp, out) in [
        ("111×300 → 64", 111, 300, 64),
        ("700×96 → 288", 700, 96, 288),
    ] {
        let inputs = [
            randn(&[rows, inp], 35, &dev),
            (randn(&[out, inp], 36, &dev) * 0.1).unwrap(),
            randn(&[out], 37, &dev),
        ];
        let fused = |t: &[Tensor]| movq::gpu::bias::linear(&t[0], &t[1], &t[2]);
        let reference = |t: &[Tensor]| {
            t[0].matmul(&t[1].t()?)?
                .broadcast_add(&t[2].to_dtype(t[0].dtype())?)
        };
        compare(
            &format!("linear {name}"),
            &inputs,
            &fused,
            &reference,
            &[true, true, false],
        );
    }
}

/// Bias and residual added in the matmul's output pass (inference) against the composed
/// `residual + x Wᵀ + b`; the fused op refuses a tensor a backward pass could reach.
#[test]
fn fused_linear_with_residual_matches_composed_ops() {
    let dev = cuda_device();
    for (dt, tol) in [(DType::F32, F32_TOL.0), (DType::BF16, BF16_TOL.0)] {
        for (rows, inp, out) in [(111, 300, 64), (700, 96, 291)] {
            let x = randn(&[rows, inp], 40, &dev).to_dtype(dt).unwrap();
            let w = (randn(&[out, inp], 41, &dev) * 0.1)
                .unwrap()
                .to_dtype(dt)
                .unwrap();
            let b = randn(&[out], 42, &dev);
            let res = randn(&[rows, out], 43, &dev).to_dtype(dt).unwrap();
            let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let want = (f32(&x)
                .matmul(&f32(&w).t().unwrap())
                .unwrap()
                .broadcast_add(&b))
            .unwrap()
            .add(&f32(&res))
            .unwrap();
            let got =
                movq::ops::linear::linear_rows(&x, &w, Some(&b), Act::None, Some(&res)).unwrap();
            assert_eq!(got.dtype(), dt);
            let e = rel_err(&f32(&got), &want);
            assert!(e < tol, "{dt:?} {rows}×{inp} → {out}: relative error {e}");
        }
    }
    // a tracked input takes the composed path (the fused op has no backward pass)
    let x = Var::from_tensor(&randn(&[4, 8], 44, &dev)).unwrap();
    let (w, b, res) = (
        randn(&[8, 8], 45, &dev),
        randn(&[8], 46, &dev),
        randn(&[4, 8], 47, &dev),
    );
    let y =
        movq::ops::linear::linear_rows(x.as_tensor(), &w, Some(&b), Act::None, Some(&res)).unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    assert!(
        g.get(x.as_tensor()).is_some(),
        "the gradient reaches the input"
    );
}

#[test]
fn fused_channel_bias_matches_composed_ops() {
    let dev = cuda_device();
    for (name, shape) in [
        ("[2, 16, 9, 7]", [2, 16, 9, 7]),
        ("[3, 8, 64, 64]", [3, 8, 64, 64]),
    ] {
        let c = shape[1];
        let inputs = [randn(&shape, 38, &dev), randn(&[c], 39, &dev)];
        let fused = |t: &[Tensor]| movq::gpu::bias::channel_bias(&t[0], &t[1]);
        let reference =
            |t: &[Tensor]| t[0].broadcast_add(&t[1].to_dtype(t[0].dtype())?.reshape((1, c, 1, 1))?);
        compare(
            &format!("channel bias {name}"),
            &inputs,
            &fused,
            &reference,
            &[true, false],
        );
    }
}

/// The gradient norm's sum of squares, one kernel per tensor into one accumulator.
#[test]
fn fused_sum_of_squares_matches_f64() {
    crate::kernels::sum_of_squares_matches_f64(&cuda_device());
}

/// The fused Adam step against the composed update on the CPU, one step at a time.
#[test]
fn fused_adam_step_matches_the_composed_update() {
    crate::kernels::adam_matches_composed(&cuda_device());
}

/// `--device cuda` makes the GPU's memory pool keep freed memory (its release threshold at the
/// maximum), so that allocations after a synchronisation reuse it.
#[test]
fn the_cuda_memory_pool_keeps_freed_memory() {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let dev = cuda_device();
    let ctx = dev
        .as_cuda_device()
        .unwrap()
        .cuda_stream()
        .context()
        .clone();
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold = 0u64;
    // SAFETY: a live context's device; the attribute is a u64.
    unsafe {
        assert_eq!(
            sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()),
            sys::CUresult::CUDA_SUCCESS
        );
        assert_eq!(
            sys::cuMemPoolGetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast(),
            ),
            sys::CUresult::CUDA_SUCCESS
        );
    }
    assert_eq!(threshold, u64::MAX);
}

/// The embedding gather against `index_select`: rows, and the table's gradient (ids repeat, as
/// tokens do, so the scatter's atomic adds meet on one row); an id past the table reads zeros.
#[test]
fn fused_gather_rows_matches_index_select() {
    let dev = cuda_device();
    let table = randn(&[50, 24], 51, &dev);
    let ids: Vec<u32> = (0..700u32).map(|i| (i * 37 + i / 5) % 50).collect();
    let ids = Tensor::new(ids.as_slice(), &dev).unwrap();
    let (y0, g0) = value_and_grads(std::slice::from_ref(&table), DType::F32, &|t| {
        t[0].index_select(&ids, 0)
    });
    let (y1, g1) = value_and_grads(std::slice::from_ref(&table), DType::F32, &|t| {
        movq::gpu::embedding::gather_rows(&t[0], &ids)
    });
    assert_eq!(y1.dims(), [700, 24]);
    let (e, eg) = (rel_err(&y1, &y0), rel_err(&g1[0], &g0[0]));
    assert!(e == 0.0, "gathered rows differ: {e}");
    assert!(eg < 1e-5, "table gradient: relative error {eg}");
    let past = Tensor::new(&[3u32, 50, 7], &dev).unwrap();
    let rows = movq::gpu::embedding::gather_rows(&table, &past).unwrap();
    let zeros = rows.get(1).unwrap().abs().unwrap().sum_all().unwrap();
    assert_eq!(zeros.to_scalar::<f32>().unwrap(), 0.0);
    println!("gather rows: equal to index_select, table gradient {eg:.1e}");
}

#[test]
fn fused_layer_norm_matches_composed_ops() {
    let dev = cuda_device();
    for (name, shape) in [
        ("[2, 45, 768]", [2, 45, 768]),
        ("[1, 600, 96]", [1, 600, 96]),
    ] {
        let n = shape[2];
        let inputs = [
            randn(&shape, 41, &dev).affine(2.0, 0.5).unwrap(),
            (randn(&[n], 42, &dev) + 1.0).unwrap(),
            randn(&[n], 43, &dev),
        ];
        let fused = |t: &[Tensor]| movq::gpu::layer_norm::layer_norm(&t[0], &t[1], &t[2], 1e-5);
        let reference = |t: &[Tensor]| {
            movq::ops::group_norm::standardize(&t[0], 1e-5)?
                .broadcast_mul(&t[1])?
                .broadcast_add(&t[2])?
                .to_dtype(t[0].dtype())
        };
        compare(
            &format!("LayerNorm {name}"),
            &inputs,
            &fused,
            &reference,
            &[true, false, false],
        );
    }
}

/// LayerNorm's backward pass as the fused blocks call it, with the input's gradient plus a
/// residual gradient (`InputGrad::Plus`) and without the input's (`Skip`): rows of 768 (the
/// one-pass kernel) and 96 (row and column passes), f32 against candle's composed ops (1e-4),
/// bf16 inputs against the same (3e-2).
#[test]
fn layer_norm_backward_adds_the_residual_gradient() {
    use movq::gpu::layer_norm::{layer_norm_backward, layer_norm_saving, InputGrad};
    let dev = cuda_device();
    for n in [768, 96] {
        let rows = 150;
        let x = randn(&[rows, n], 81, &dev).affine(2.0, 0.5).unwrap();
        let (w, b) = (
            (randn(&[n], 82, &dev) + 1.0).unwrap(),
            randn(&[n], 83, &dev),
        );
        let (dy, r) = (randn(&[rows, n], 84, &dev), randn(&[rows, n], 85, &dev));
        // the reference: candle's ops in f32, the residual gradient added after
        let xv = Var::from_tensor(&x).unwrap();
        let (wv, bv) = (Var::from_tensor(&w).unwrap(), Var::from_tensor(&b).unwrap());
        let y = movq::ops::group_norm::standardize(xv.as_tensor(), 1e-5)
            .unwrap()
            .broadcast_mul(wv.as_tensor())
            .unwrap()
            .broadcast_add(bv.as_tensor())
            .unwrap();
        let g = (y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        let want = [
            (g.get(xv.as_tensor()).unwrap() + &r).unwrap(),
            g.get(wv.as_tensor()).unwrap().clone(),
            g.get(bv.as_tensor()).unwrap().clone(),
        ];
        for (dt, tol) in [(DType::F32, 1e-4), (DType::BF16, 3e-2)] {
            let c = |t: &Tensor| t.to_dtype(dt).unwrap();
            let (_, stats) = layer_norm_saving(&c(&x), &w, &b, 1e-5).unwrap();
            let (dx, dw, db) =
                layer_norm_backward(&c(&x), &w, &stats, &c(&dy), InputGrad::Plus(&c(&r))).unwrap();
            let got = [dx.expect("the input's gradient"), dw, db];
            for (name, (a, b)) in ["x", "scale", "shift"].iter().zip(got.iter().zip(&want)) {
                let e = rel_err(&a.to_dtype(DType::F32).unwrap(), b);
                assert!(
                    e < tol,
                    "rows of {n} {dt:?}: gradient of {name} + residual: {e}"
                );
            }
            let (none, dw, _) =
                layer_norm_backward(&c(&x), &w, &stats, &c(&dy), InputGrad::Skip).unwrap();
            assert!(none.is_none());
            let e = rel_err(&dw, &want[1]);
            assert!(e < tol, "rows of {n} {dt:?}, no input gradient: scale {e}");
        }
    }
}

/// The fused Adam / AdamW step on the GPU against the composed update on the CPU: parameters
/// and both moments after three steps (weight decay and gradient clipping on), and the state
/// handed out for a checkpoint stays as it was when the moments move on in place.
#[test]
fn fused_adam_matches_the_composed_update() {
    use movq::config::{OptimizerKind, RunConfig};
    use movq::train::optim::{Adam, Grads};
    let gpu = cuda_device();
    let cpu = candle_core::Device::Cpu;
    for kind in [OptimizerKind::AdamW, OptimizerKind::Adam] {
        let mut cfg = RunConfig::resolve("tiny").unwrap().train;
        cfg.optimizer = kind;
        cfg.betas = (0.9, 0.96);
        cfg.weight_decay = 0.05;
        cfg.grad_clip = Some(0.5);
        let shapes: [&[usize]; 2] = [&[37, 5], &[300]];
        let run = |dev: &candle_core::Device| {
            let vars: Vec<(String, Var)> = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    (
                        format!("p{i}"),
                        Var::from_tensor(&randn(s, 50 + i as u64, dev)).unwrap(),
                    )
                })
                .collect();
            let mut opt = Adam::new(vars.clone(), &cfg).unwrap();
            let mut saved = None;
            for step in 0..3u64 {
                let grads = Grads(
                    shapes
                        .iter()
                        .enumerate()
                        .map(|(i, s)| Some(randn(s, 60 + 10 * step + i as u64, dev)))
                        .collect(),
                );
                opt.step(&grads, 1e-2).unwrap();
                if step == 0 {
                    saved = Some(opt.state("opt").unwrap());
                }
            }
            let saved: Vec<Tensor> = saved.unwrap().into_iter().map(|(_, t)| t).collect();
            let state: Vec<Tensor> = opt
                .state("opt")
                .unwrap()
                .into_iter()
                .map(|(_, t)| t)
                .collect();
            let params: Vec<Tensor> = vars.iter().map(|(_, v)| v.as_tensor().clone()).collect();
            (params, state, saved)
        };
        let (p0, s0, k0) = run(&cpu);
        let (p1, s1, k1) = run(&gpu);
        for (what, a, b) in [
            ("parameters", &p1, &p0),
            ("moments", &s1, &s0),
            ("state after step 1", &k1, &k0),
        ] {
            for (x, y) in a.iter().zip(b.iter()) {
                if x.dtype() != DType::F32 {
                    continue; // the step counter
                }
                let e = rel_err(&x.to_device(&cpu).unwrap(), y);
                assert!(e < 1e-5, "{kind:?} {what}: relative error {e}");
            }
        }
        println!("{kind:?}: the fused step matches the composed update (3 steps, clipping, weight decay)");
    }
}

/// Multi-head attention of the packed `[B, T, 3·H·Dh]` projection written with candle ops.
fn attention_reference(qkv: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (b, t, w) = qkv.dims3()?;
    let dh = w / (3 * heads);
    let qkv = qkv
        .reshape((b, t, 3, heads, dh))?
        .permute((2, 0, 3, 1, 4))?;
    let (q, k, v) = (
        qkv.get(0)?.contiguous()?,
        qkv.get(1)?.contiguous()?,
        qkv.get(2)?.contiguous()?,
    );
    let s = (q.matmul(&k.t()?)? * (1.0 / (dh as f64).sqrt()))?;
    let p = candle_nn::ops::softmax(&s, candle_core::D::Minus1)?;
    p.matmul(&v)?.transpose(1, 2)?.reshape((b, t, heads * dh))
}

/// The fused attention in bf16 against the composed ops in f32 on the CPU, on the same
/// bf16-rounded projection: the output and the projection's gradient.
fn attention_case(b: usize, t: usize, heads: usize, dh: usize) {
    let dev = cuda_device();
    let cpu = candle_core::Device::Cpu;
    // × 3: scores of standard deviation ~1–3, a softmax far from uniform
    let qkv = (randn(&[b, t, 3 * heads * dh], 21, &cpu) * 3.0)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    let (y0, g0) = value_and_grads(&[qkv.to_dtype(DType::F32).unwrap()], DType::F32, &|ts| {
        attention_reference(&ts[0], heads)
    });
    let on_gpu = qkv.to_device(&dev).unwrap();
    let (y1, g1) = value_and_grads(&[on_gpu], DType::BF16, &|ts| {
        movq::gpu::attention::attention(&ts[0], heads)
    });
    // value_and_grads draws the output's weights with one seed on either device: the same values
    let e = rel_err(&y1.to_device(&cpu).unwrap(), &y0);
    let eg = rel_err(&g1[0].to_device(&cpu).unwrap(), &g0[0]);
    println!(
        "attention B{b} T{t} H{heads} Dh{dh} bf16: forward relative error {e:.2e}, qkv gradient {eg:.2e}"
    );
    assert!(e < BF16_TOL.0, "attention forward: relative error {e}");
    assert!(
        eg < BF16_TOL.1,
        "attention qkv gradient: relative error {eg}"
    );
}

#[test]
fn fused_attention_matches_composed_ops() {
    // sequence lengths off the 64-row tiles, every compiled head width
    attention_case(2, 77, 2, 64);
    attention_case(1, 130, 3, 32);
    attention_case(2, 64, 1, 128);
    attention_case(1, 33, 4, 16);
    // the reference transformer's heads (768 / 16 = 48) at its 1,024 + 1 tokens
    attention_case(1, 1025, 2, 48);
}

#[test]
fn fused_attention_refuses_what_it_does_not_take() {
    let dev = cuda_device();
    let f32_qkv = randn(&[1, 8, 3 * 64], 1, &dev);
    assert!(!movq::gpu::attention::supported(&f32_qkv, 1));
    assert!(movq::gpu::attention::attention(&f32_qkv, 1).is_err());
    let odd = randn(&[1, 8, 3 * 40], 1, &dev)
        .to_dtype(DType::BF16)
        .unwrap();
    assert!(!movq::gpu::attention::supported(&odd, 1));
    // the op falls back to the composed ops for both
    assert!(movq::ops::attention::attention(&odd, 1).is_ok());
    assert!(movq::ops::attention::attention(&f32_qkv, 1).is_ok());
}

/// Two fused transformer blocks (one graph node, their own backward pass) against the same
/// blocks composed of layers over the same kernels, in bf16: output, and the gradients of the
/// input and of all 24 parameters (those through the side list). Rows of 256 take LayerNorm's
/// one-pass backward kernel, with the residual gradient added in it. The fused blocks round once
/// where the layers round twice (bias, then residual), so the two differ by bf16 roundings: the
/// file's bf16 tolerances.
#[test]
fn fused_blocks_match_composed_layers() {
    crate::kernels::blocks_match_composed(
        &cuda_device(),
        DType::BF16,
        (2, 77, 256, 512, 4),
        &movq::gpu::block::blocks,
        BF16_TOL,
    );
}

/// A transformer with 64-wide heads in bf16 (fused blocks, so fused attention) against the same
/// weights in f32 (composed ops): logits close, every weight's gradient pointing the same way.
/// Two blocks of width 128 (heads of 64) over an 8 × 8 × 2 token layout of `codebook` codes and
/// 3 classes, parameters from a store seeded with `seed` on the GPU.
fn small_transformer(
    codebook: usize,
    seed: u64,
) -> (
    movq::nn::params::ParamStore,
    movq::transformer::TokenLayout,
    movq::config::TransformerConfig,
) {
    let layout = movq::transformer::TokenLayout {
        h: 8,
        w: 8,
        channels: 2,
        codebook_size: codebook,
        n_classes: 3,
    };
    let cfg = movq::config::TransformerConfig {
        layers: 2,
        width: 128,
        heads: 2,
        mlp: 256,
    };
    let store = movq::nn::params::ParamStore::new(seed, &cuda_device());
    (store, layout, cfg)
}

#[test]
fn transformer_with_fused_attention_follows_f32() {
    use movq::transformer::MaskTransformer;
    let dev = cuda_device();
    let (store, layout, cfg) = small_transformer(32, 5);
    let l = layout.seq_len();
    let model = MaskTransformer::new(&cfg, layout, store.var_builder()).unwrap();
    let toks: Vec<u32> = (0..2 * l).map(|i| (i * 7 % 33) as u32).collect();
    let tokens = Tensor::from_vec(toks, (2, l), &dev).unwrap();
    let cond = Tensor::new(&[0u32, 2], &dev).unwrap();
    let run = |m: &MaskTransformer| {
        let y = m.forward(&tokens, &cond).unwrap();
        let r = randn(y.dims(), 2, &dev);
        let grads = m.backward(&(&y * r).unwrap().sum_all().unwrap()).unwrap();
        (y, grads)
    };
    let (y32, g32) = run(&model);
    let (y16, g16) = run(&model.clone().with_dtype(DType::BF16));
    let e = rel_err(&y16, &y32);
    assert!(e < 3e-2, "logits: relative error {e}");
    let mut worst = 1.0f64;
    for (name, var) in store.trainable() {
        let (a, b) = (
            g32.get(var.as_tensor()).unwrap().flatten_all().unwrap(),
            g16.get(var.as_tensor()).unwrap().flatten_all().unwrap(),
        );
        let dot = (&a * &b)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let norm = |t: &Tensor| {
            t.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .sqrt() as f64
        };
        let (na, nb) = (norm(&a), norm(&b));
        if na < 1e-6 {
            continue; // an exactly-zero gradient (the key projection's bias)
        }
        let cos = dot / (na * nb);
        assert!(cos > 0.98, "gradient of {name}: cosine {cos}");
        worst = worst.min(cos);
    }
    println!(
        "transformer bf16 (fused blocks) vs f32: logits {e:.2e}, lowest gradient cosine {worst:.5}"
    );
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

    /// The convolution with its bias in the same node against candle's convolution plus a
    /// broadcast bias: values and the gradients of input, kernel and bias (planes of 289 and of
    /// 256 values: the bias kernel's scalar and vector paths).
    #[test]
    fn cudnn_convolution_with_bias_matches_candle() {
        let dev = cuda_device();
        for (name, x, w, padding, stride) in [
            ("3×3 pad 1, 16² planes", [2, 8, 16, 16], [16, 8, 3, 3], 1, 1),
            (
                "3×3 stride 2, 8² planes",
                [2, 8, 17, 17],
                [8, 8, 3, 3],
                0,
                2,
            ),
            ("1×1, 17² planes", [3, 16, 17, 17], [8, 16, 1, 1], 0, 1),
        ] {
            let o = w[0];
            let inputs = [
                randn(&x, 13, &dev),
                randn(&w, 14, &dev),
                randn(&[o], 15, &dev),
            ];
            let fused =
                |t: &[Tensor]| movq::gpu::conv::conv2d_bias(&t[0], &t[1], &t[2], padding, stride);
            let cpu = candle_core::Device::Cpu;
            let reference = |t: &[Tensor]| {
                let (x, w) = (t[0].to_device(&cpu)?, t[1].to_device(&cpu)?);
                let b = t[2].to_device(&cpu)?.to_dtype(x.dtype())?;
                x.conv2d(&w, padding, stride, 1, 1)?
                    .broadcast_add(&b.reshape((1, o, 1, 1))?)?
                    .to_device(&dev)
            };
            compare(
                &format!("conv + bias {name}"),
                &inputs,
                &fused,
                &reference,
                &[true, true, false],
            );
        }
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

/// The token choice kernel of one MaskGIT step.
mod token_choice {
    use super::*;
    use movq::ops::token_choice::{choose_tokens, TokenChoice};

    const MASK: u32 = 1_000_000;

    fn choose(logits: &Tensor, tokens: &Tensor, c: TokenChoice) -> (Vec<Vec<u32>>, Vec<Vec<f32>>) {
        let (t, conf) = choose_tokens(logits, tokens, &c).unwrap();
        (t.to_vec2().unwrap(), conf.to_vec2().unwrap())
    }

    fn choice(top1: bool, noise: f32, seed: u64) -> TokenChoice {
        TokenChoice {
            mask: MASK,
            inv_temp: 1.0 / 0.7,
            top1,
            min_p: 0.0,
            noise,
            seed,
        }
    }

    /// `[B, L]` tokens, every third one known (its value `i`), the rest `[MASK]`.
    fn tokens(b: usize, l: usize, dev: &candle_core::Device) -> Tensor {
        let v: Vec<u32> = (0..b * l)
            .map(|i| if i % 3 == 0 { i as u32 } else { MASK })
            .collect();
        Tensor::from_vec(v, (b, l), dev).unwrap()
    }

    /// Top-1 in f32 and bf16 (odd vocabulary, a narrowed view of longer logits) against argmax
    /// and log-softmax composed of candle ops; known tokens keep their value at confidence +∞.
    #[test]
    fn top1_matches_argmax_and_log_softmax() {
        let dev = cuda_device();
        let (b, l, k) = (3, 40, 1001);
        let full = (randn(&[b, l + 1, k], 60, &dev) * 3.0).unwrap();
        let toks = tokens(b, l, &dev);
        for dt in [DType::F32, DType::BF16] {
            let logits = full.to_dtype(dt).unwrap().narrow(1, 1, l).unwrap();
            let (got, conf) = choose(&logits, &toks, choice(true, 0.0, 1));
            let scaled = (logits.to_dtype(DType::F32).unwrap() / 0.7).unwrap();
            let values: Vec<Vec<Vec<f32>>> = scaled.to_vec3().unwrap();
            let best: Vec<Vec<f32>> = scaled.max(2).unwrap().to_vec2().unwrap();
            let logp: Vec<Vec<Vec<f32>>> = candle_nn::ops::log_softmax(&scaled, 2)
                .unwrap()
                .to_vec3()
                .unwrap();
            let known: Vec<Vec<u32>> = toks.to_vec2().unwrap();
            for r in 0..b {
                for t in 0..l {
                    if known[r][t] != MASK {
                        assert_eq!(got[r][t], known[r][t]);
                        assert_eq!(conf[r][t], f32::INFINITY);
                        continue;
                    }
                    // bf16 logits tie often: the first of the largest
                    let first = values[r][t].iter().position(|&v| v == best[r][t]).unwrap();
                    assert_eq!(got[r][t] as usize, first, "{dt:?} token ({r}, {t})");
                    let e = (conf[r][t] - logp[r][t][first]).abs();
                    assert!(e < 1e-4, "{dt:?} confidence ({r}, {t}) off by {e}");
                }
            }
        }
    }

    /// Sampling: the same seed gives the same tokens, another seed others; the confidence is
    /// the chosen token's log-probability; over 30,000 draws from softmax(log p)·(1/0.7) the
    /// frequencies match the probabilities, and the confidence's noise is Gumbel (mean γ·w,
    /// standard deviation π/√6·w).
    #[test]
    fn samples_follow_the_softmax_and_the_seed() {
        let dev = cuda_device();
        let (b, l) = (30, 1000);
        let p = [0.1f32, 0.2, 0.3, 0.4];
        // logits · (1/0.7) = ln p: the sampling distribution is p itself
        let row: Vec<f32> = p.iter().map(|q| q.ln() * 0.7).collect();
        let logits = Tensor::new(row.as_slice(), &dev)
            .unwrap()
            .broadcast_as((b, l, 4))
            .unwrap()
            .contiguous()
            .unwrap();
        let masked = Tensor::full(MASK, (b, l), &dev).unwrap();
        let (a, conf_a) = choose(&logits, &masked, choice(false, 0.0, 5));
        let (again, _) = choose(&logits, &masked, choice(false, 0.0, 5));
        let (other, _) = choose(&logits, &masked, choice(false, 0.0, 6));
        assert_eq!(a, again, "same seed, same draws");
        assert_ne!(a, other, "another seed, other draws");
        let mut counts = [0usize; 4];
        for (row, confs) in a.iter().zip(&conf_a) {
            for (&t, &c) in row.iter().zip(confs) {
                counts[t as usize] += 1;
                assert!(
                    (c - p[t as usize].ln()).abs() < 1e-5,
                    "confidence {c} of token {t}"
                );
            }
        }
        let n = (b * l) as f64;
        for (i, &q) in p.iter().enumerate() {
            let f = counts[i] as f64 / n;
            // four standard deviations of a frequency over 30,000 draws: < 0.012
            assert!((f - q as f64).abs() < 0.012, "token {i}: {f} for {q}");
        }
        let w = 2.0f32;
        let (_, conf_w) = choose(&logits, &masked, choice(false, w, 5));
        let noise: Vec<f64> = conf_w
            .iter()
            .flatten()
            .zip(conf_a.iter().flatten())
            .map(|(x, y)| (x - y) as f64 / w as f64)
            .collect();
        let mean = noise.iter().sum::<f64>() / n;
        let sd = (noise.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!((mean - 0.5772).abs() < 0.03, "Gumbel mean {mean}");
        assert!((sd - 1.2825).abs() < 0.03, "Gumbel standard deviation {sd}");
    }
}

#[test]
fn min_p_keeps_the_codes_above_the_cut() {
    crate::kernels::min_p_cases(&cuda_device());
}

/// A bf16 transformer prepared for sampling (parameters detached, weights cast once, bias and
/// residual in the matmul's pass) gives the logits of the model it came from.
#[test]
fn transformer_for_inference_gives_the_same_logits() {
    use movq::transformer::MaskTransformer;
    let dev = cuda_device();
    let (store, layout, cfg) = small_transformer(40, 8);
    let l = layout.seq_len();
    let toks: Vec<u32> = (0..2 * l).map(|i| (i * 7 % 41) as u32).collect();
    let tokens = Tensor::from_vec(toks, (2, l), &dev).unwrap();
    let cond = Tensor::new(&[0u32, 3], &dev).unwrap();
    for dt in [DType::F32, DType::BF16] {
        let model = MaskTransformer::new(&cfg, layout, store.var_builder())
            .unwrap()
            .with_dtype(dt);
        let want = model.forward(&tokens, &cond).unwrap();
        let fast = model.for_inference().unwrap();
        for scale in [0.0, 1.5] {
            let got = fast
                .sampling_logits(&tokens, &cond, scale)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let want = model.guided_logits(&tokens, &cond, scale).unwrap();
            let e = rel_err(&got, &want);
            let tol = if dt == DType::F32 { 1e-5 } else { 2e-2 };
            assert!(e < tol, "{dt:?} guidance {scale}: relative error {e}");
        }
        let got = fast.guided_logits(&tokens, &cond, 0.0).unwrap();
        let e = rel_err(&got, &want);
        assert!(
            e < if dt == DType::F32 { 1e-5 } else { 2e-2 },
            "{dt:?}: {e}"
        );
    }
}
