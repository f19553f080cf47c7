//! Fused kernels against candle's composed ops, on any device: forward values and the gradients
//! of every input, in f32 (relative error < 1e-4) and, on CUDA, in bf16 (against the f32
//! reference on the same bf16-rounded inputs: < 1.5e-2 forward, < 3e-2 gradients, about four
//! bf16 roundings). The CPU kernels are tested here; the CUDA ones in `gpu_kernels.rs`.

use candle_core::{DType, Device, Tensor, Var};

use crate::devices::{randn, rel_err};

/// f32 and bf16 tolerances on (forward, gradients), relative to the reference's norm.
pub const F32_TOL: (f64, f64) = (1e-4, 1e-4);
pub const BF16_TOL: (f64, f64) = (1.5e-2, 3e-2);

/// Runs `f` on fresh variables made from `inputs` (cast to `dt`), backpropagates `sum(y · r)`
/// and returns the output and every input's gradient, in f32.
pub fn value_and_grads(
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
pub fn compare(
    name: &str,
    inputs: &[Tensor],
    fused: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    reference: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    bf16_inputs: &[bool],
) {
    // bf16 where the device computes in it (CUDA); the CPU computes in f32
    let bf16 = inputs.first().is_some_and(|t| t.device().is_cuda());
    let dtypes: &[(DType, (f64, f64))] = if bf16 {
        &[(DType::F32, F32_TOL), (DType::BF16, BF16_TOL)]
    } else {
        &[(DType::F32, F32_TOL)]
    };
    for &(dt, (fwd_tol, grad_tol)) in dtypes {
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
pub fn group_norm_reference(
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

/// The signature of a fused GroupNorm: `(x, gamma, beta, groups, eps, modulation, silu)`.
pub type GroupNormOp = fn(
    &Tensor,
    &Tensor,
    &Tensor,
    usize,
    f64,
    Option<(&Tensor, &Tensor)>,
    bool,
) -> candle_core::Result<Tensor>;

/// `op` against [`group_norm_reference`] on `dev` for one shape.
pub fn group_norm_case(
    op: GroupNormOp,
    dev: &Device,
    name: &str,
    x: &[usize],
    groups: usize,
    latent: Option<(usize, usize)>,
    silu: bool,
) {
    let dev = dev.clone();
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
        op(
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

/// The GroupNorm shapes every fused GroupNorm is tested on.
pub fn group_norm_cases(op: GroupNormOp, dev: &Device) {
    group_norm_case(op, dev, "GroupNorm", &[2, 16, 8, 8], 4, None, false);
    group_norm_case(op, dev, "GroupNorm + SiLU", &[3, 32, 16, 16], 8, None, true);
    // groups of 2 × 64 × 64 = 8,192 elements: many passes of each block's threads
    group_norm_case(
        op,
        dev,
        "GroupNorm + SiLU, large groups",
        &[2, 64, 64, 64],
        32,
        None,
        true,
    );
    group_norm_case(
        op,
        dev,
        "SpatialNorm",
        &[2, 16, 16, 16],
        8,
        Some((4, 4)),
        false,
    );
    group_norm_case(
        op,
        dev,
        "SpatialNorm + SiLU",
        &[2, 16, 16, 16],
        8,
        Some((4, 4)),
        true,
    );
    group_norm_case(
        op,
        dev,
        "SpatialNorm + SiLU, 16× blocks",
        &[1, 8, 64, 64],
        4,
        Some((4, 4)),
        true,
    );
    group_norm_case(
        op,
        dev,
        "SpatialNorm, full resolution",
        &[2, 8, 6, 10],
        2,
        Some((6, 10)),
        false,
    );
    group_norm_case(
        op,
        dev,
        "SpatialNorm, unequal blocks",
        &[2, 8, 12, 8],
        4,
        Some((3, 2)),
        true,
    );
    // the vectorised CUDA kernels (rows a multiple of 8 wide): cells 16 and 2 pixels wide (a
    // thread's 8 pixels in one cell, or across four; candle's reference upsamples by equal
    // factors only)
    group_norm_case(
        op,
        dev,
        "SpatialNorm + SiLU, 8 × 8 cells of 16 × 16",
        &[2, 8, 128, 128],
        4,
        Some((8, 8)),
        true,
    );
    group_norm_case(
        op,
        dev,
        "SpatialNorm, cells of 2 × 2",
        &[2, 16, 32, 32],
        8,
        Some((16, 16)),
        false,
    );
    group_norm_case(
        op,
        dev,
        "GroupNorm + SiLU, rows of 24",
        &[3, 12, 10, 24],
        3,
        None,
        true,
    );
}

#[test]
fn cpu_group_norm_matches_composed_ops() {
    group_norm_cases(
        |x, g, b, n, e, m, s| {
            movq::cpu::group_norm::forward(x, movq::ops::group_norm::pack(x, g, b, n, m)?, n, e, s)
        },
        &Device::Cpu,
    );
}

/// MaskGIT's token choice: the CPU kernel against the composed ops (top-1: no randomness),
/// and the same seed giving the same draws.
#[test]
fn cpu_token_choice_matches_composed_ops() {
    use movq::ops::token_choice::{choose_tokens, composed, TokenChoice};
    let dev = Device::Cpu;
    let (b, l, k, mask) = (3, 10, 17, 17u32);
    let logits = (randn(&[b, l, k], 5, &dev) * 3.0).unwrap();
    let toks: Vec<u32> = (0..b * l)
        .map(|i| if i % 3 == 0 { (i % k) as u32 } else { mask })
        .collect();
    let tokens = Tensor::from_vec(toks.clone(), (b, l), &dev).unwrap();
    let choice = |top1: bool, noise: f32, seed: u64| TokenChoice {
        mask,
        inv_temp: 1.0 / 0.7,
        top1,
        min_p: 0.0,
        noise,
        seed,
    };
    let (t1, c1) = choose_tokens(&logits, &tokens, &choice(true, 0.0, 1)).unwrap();
    let (t0, c0) = composed(&logits, &tokens, &choice(true, 0.0, 1)).unwrap();
    assert_eq!(t1.to_vec2::<u32>().unwrap(), t0.to_vec2::<u32>().unwrap());
    let (c1, c0) = (c1.to_vec2::<f32>().unwrap(), c0.to_vec2::<f32>().unwrap());
    for (a, z) in c1.iter().flatten().zip(c0.iter().flatten()) {
        assert!(a == z || (a - z).abs() < 1e-5, "confidence {a} against {z}");
    }
    // sampled: known tokens kept with confidence +∞, the same seed the same draws, another not
    let draw = |seed| {
        let (t, c) = choose_tokens(&logits, &tokens, &choice(false, 4.5, seed)).unwrap();
        (t.to_vec2::<u32>().unwrap(), c.to_vec2::<f32>().unwrap())
    };
    let (ta, ca) = draw(7);
    assert_eq!((ta.clone(), ca.clone()), draw(7));
    assert_ne!(ta, draw(8).0);
    for (i, (&t, &c)) in ta.iter().flatten().zip(ca.iter().flatten()).enumerate() {
        if toks[i] != mask {
            assert_eq!((t, c), (toks[i], f32::INFINITY));
        } else {
            assert!(t < k as u32 && c.is_finite());
        }
    }
}

/// Min-p truncation on `dev`, in the device's kernel and composed of candle ops: with
/// sampling probabilities 0.4, 0.3, 0.05 and a floor of 0.25 spread over 1,021 codes (the
/// label-smoothing floor of a trained transformer), min-p 0.1 draws only the first three codes,
/// as often as their renormalised probabilities (0.533, 0.4, 0.067), and still reports the
/// untruncated log-probability as the confidence; min-p 0 draws a floor code a quarter of the
/// time.
pub fn min_p_cases(dev: &Device) {
    use movq::ops::token_choice::{choose_tokens, composed, TokenChoice};
    let (b, l, k, mask) = (20, 1000, 1024, 1_000_000u32);
    let mut q = vec![0.25f32 / (k - 3) as f32; k];
    q[..3].copy_from_slice(&[0.4, 0.3, 0.05]);
    // logits · (1/0.7) = ln q: the sampling distribution is q itself
    let row: Vec<f32> = q.iter().map(|p| p.ln() * 0.7).collect();
    let logits = Tensor::new(row.as_slice(), dev)
        .unwrap()
        .broadcast_as((b, l, k))
        .unwrap()
        .contiguous()
        .unwrap();
    let masked = Tensor::full(mask, (b, l), dev).unwrap();
    let n = (b * l) as f64;
    for fused in [true, false] {
        let draw = |min_p: f32| {
            let c = TokenChoice {
                mask,
                inv_temp: 1.0 / 0.7,
                top1: false,
                min_p,
                noise: 0.0,
                seed: 3,
            };
            let (t, conf) = if fused {
                choose_tokens(&logits, &masked, &c).unwrap()
            } else {
                composed(&logits, &masked, &c).unwrap()
            };
            let t: Vec<u32> = t.flatten_all().unwrap().to_vec1().unwrap();
            let conf: Vec<f32> = conf.flatten_all().unwrap().to_vec1().unwrap();
            (t, conf)
        };
        let (t, conf) = draw(0.1);
        let mut counts = [0usize; 3];
        for (&t, &c) in t.iter().zip(&conf) {
            assert!(t < 3, "fused {fused}: code {t} is below the cut");
            counts[t as usize] += 1;
            assert!(
                (c - q[t as usize].ln()).abs() < 1e-4,
                "confidence {c} of {t}"
            );
        }
        for (i, p) in [0.4f64 / 0.75, 0.3 / 0.75, 0.05 / 0.75].iter().enumerate() {
            let f = counts[i] as f64 / n;
            // four standard deviations of a frequency over 20,000 draws: < 0.015
            assert!(
                (f - p).abs() < 0.015,
                "fused {fused}: code {i} at {f} for {p}"
            );
        }
        let floor = draw(0.0).0.iter().filter(|&&t| t >= 3).count() as f64 / n;
        assert!(
            (floor - 0.25).abs() < 0.015,
            "fused {fused}: floor drawn {floor}"
        );
    }
}

#[test]
fn cpu_min_p_keeps_the_codes_above_the_cut() {
    min_p_cases(&Device::Cpu);
}

/// A fused block stack: input, blocks, the list its parameters' gradients go to.
pub type FusedBlocks = dyn Fn(
    &Tensor,
    &[movq::ops::block::Block],
    &movq::gpu::side_grads::SideGrads,
) -> candle_core::Result<Tensor>;

/// A fused block stack with the output layers after it: input, blocks, output layers, the list
/// its parameters' gradients go to.
pub type FusedLogits = dyn Fn(
    &Tensor,
    &[movq::ops::block::Block],
    movq::ops::block::OutputLayers,
    &movq::gpu::side_grads::SideGrads,
) -> candle_core::Result<Tensor>;

/// Two fused transformer blocks (`fused`: one graph node with its own backward pass) against the
/// same blocks composed of layers ([`movq::ops::block::composed`]) on `dev`, the input in `dt`,
/// at `(batch, tokens, width, mlp, heads)`: the output, and the gradients of the input and of all
/// 24 parameters (those of the fused node through its side list), within `tol`; a second backward
/// pass through the node is refused.
pub fn blocks_match_composed(
    dev: &Device,
    dt: DType,
    dims: (usize, usize, usize, usize, usize),
    fused: &FusedBlocks,
    tol: (f64, f64),
) {
    let fused: &UnderTest = &|x, ws, _, side| fused(x, ws, side);
    against_composed(dev, dt, dims, None, fused, tol);
}

/// [`blocks_match_composed`] for the blocks followed by the output layers (final LayerNorm and a
/// `k`-wide head on the positions after the first, [`movq::ops::block::logits_composed`]): the
/// logits, and the gradients of the input and of all 28 parameters.
pub fn logits_match_composed(
    dev: &Device,
    dt: DType,
    dims: (usize, usize, usize, usize, usize),
    k: usize,
    fused: &FusedLogits,
    tol: (f64, f64),
) {
    let fused: &UnderTest = &|x, ws, out, side| fused(x, ws, out.expect("output layers"), side);
    against_composed(dev, dt, dims, Some(k), fused, tol);
}

type UnderTest<'a> = dyn Fn(
        &Tensor,
        &[movq::ops::block::Block],
        Option<movq::ops::block::OutputLayers>,
        &movq::gpu::side_grads::SideGrads,
    ) -> candle_core::Result<Tensor>
    + 'a;

fn against_composed(
    dev: &Device,
    dt: DType,
    (b, t, d, m, heads): (usize, usize, usize, usize, usize),
    k: Option<usize>,
    fused: &UnderTest,
    tol: (f64, f64),
) {
    use movq::gpu::side_grads::SideGrads;
    use movq::nn::layers::{LayerNorm, Linear};
    use movq::ops::block::OutputLayers;
    let var = |shape: &[usize], seed: u64, scale: f64, shift: f64| {
        Var::from_tensor(&randn(shape, seed, dev).affine(scale, shift).unwrap()).unwrap()
    };
    let block_params = |s: u64| {
        vec![
            var(&[d], s, 0.1, 1.0),
            var(&[d], s + 1, 0.1, 0.0),
            var(&[3 * d, d], s + 2, 0.05, 0.0),
            var(&[3 * d], s + 3, 0.1, 0.0),
            var(&[d, d], s + 4, 0.05, 0.0),
            var(&[d], s + 5, 0.1, 0.0),
            var(&[d], s + 6, 0.1, 1.0),
            var(&[d], s + 7, 0.1, 0.0),
            var(&[m, d], s + 8, 0.05, 0.0),
            var(&[m], s + 9, 0.1, 0.0),
            var(&[d, m], s + 10, 0.05, 0.0),
            var(&[d], s + 11, 0.1, 0.0),
        ]
    };
    let mut params = vec![block_params(60), block_params(80)];
    if let Some(k) = k {
        params.push(vec![
            var(&[d], 90, 0.1, 1.0),
            var(&[d], 91, 0.1, 0.0),
            var(&[k, d], 92, 0.05, 0.0),
            var(&[k], 93, 0.1, 0.0),
        ]);
    }
    let p: Vec<Vec<Tensor>> = params
        .iter()
        .map(|ps| ps.iter().map(|v| v.as_tensor().clone()).collect())
        .collect();
    let ln = |p: &[Tensor], i: usize| LayerNorm::new(p[i].clone(), p[i + 1].clone(), 1e-5);
    let lin = |p: &[Tensor], i: usize| Linear::new(p[i].clone(), Some(p[i + 1].clone()));
    let block = |p: &[Tensor]| movq::ops::block::Block {
        ln1: ln(p, 0),
        qkv: lin(p, 2),
        proj: lin(p, 4),
        ln2: ln(p, 6),
        fc1: lin(p, 8),
        fc2: lin(p, 10),
        heads,
    };
    let ws = [block(&p[0]), block(&p[1])];
    let top = k.map(|_| (ln(&p[2], 0), lin(&p[2], 2)));
    let out_layers = top.as_ref().map(|(ln_f, head)| OutputLayers { ln_f, head });
    let x = Var::from_tensor(&randn(&[b, t, d], 72, dev).to_dtype(dt).unwrap()).unwrap();
    let out_dims = match k {
        Some(k) => vec![b, t - 1, k],
        None => vec![b, t, d],
    };
    let r = randn(&out_dims, 73, dev);
    let grads_of = |y: &Tensor, side: Option<&SideGrads>| {
        let loss = (y.to_dtype(DType::F32).unwrap() * &r)
            .unwrap()
            .sum_all()
            .unwrap();
        let mut store = loss.backward().unwrap();
        if let Some(side) = side {
            side.drain_into(&mut store).unwrap();
        }
        let mut gs = vec![store
            .get(x.as_tensor())
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()];
        gs.extend(p.iter().flatten().map(|q| {
            store
                .get(q)
                .expect("a gradient for every parameter")
                .clone()
        }));
        gs
    };
    let side = SideGrads::new();
    let out = fused(x.as_tensor(), &ws, out_layers, &side).unwrap();
    let g1 = grads_of(&out, Some(&side));
    let composed = match out_layers {
        Some(o) => movq::ops::block::logits_composed(x.as_tensor(), &ws, o).unwrap(),
        None => movq::ops::block::composed(x.as_tensor(), &ws).unwrap(),
    };
    let g0 = grads_of(&composed, None);
    assert_eq!(out.dims(), composed.dims());
    let e = rel_err(
        &out.to_dtype(DType::F32).unwrap(),
        &composed.to_dtype(DType::F32).unwrap(),
    );
    assert!(e < tol.0, "output: relative error {e}");
    let names = [
        "ln1.w", "ln1.b", "qkv.w", "qkv.b", "proj.w", "proj.b", "ln2.w", "ln2.b", "fc1.w", "fc1.b",
        "fc2.w", "fc2.b",
    ];
    let names: Vec<String> = std::iter::once("x".to_string())
        .chain((0..2).flat_map(|i| names.iter().map(move |n| format!("block {i} {n}"))))
        .chain(
            ["ln_f.w", "ln_f.b", "head.w", "head.b"]
                .iter()
                .take(if k.is_some() { 4 } else { 0 })
                .map(|n| n.to_string()),
        )
        .collect();
    assert_eq!(names.len(), g1.len());
    let mut worst = 0f64;
    for (name, (a, b)) in names.iter().zip(g1.iter().zip(&g0)) {
        assert_eq!(a.dims(), b.dims(), "{name}");
        let e = rel_err(a, b);
        assert!(e < tol.1, "gradient of {name}: relative error {e}");
        worst = worst.max(e);
    }
    // a second backward pass through the same node is refused, not silently wrong
    let again = (out.to_dtype(DType::F32).unwrap() * &r)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward();
    assert!(again.is_err());
    println!(
        "fused vs composed ({dt:?} on {dev:?}, output layers {k:?}): output {e:.1e}, largest gradient error {worst:.1e}"
    );
}

/// The CPU's fused block stack against the composed blocks, in f32, at the quickstart
/// transformer's head width (128 / 4) over 37 tokens, and with heads of 24 over an odd 19.
#[test]
fn cpu_blocks_match_composed_layers() {
    for dims in [(3, 37, 128, 512, 4), (2, 19, 48, 96, 2)] {
        blocks_match_composed(
            &Device::Cpu,
            DType::F32,
            dims,
            &movq::cpu::block::blocks,
            F32_TOL,
        );
    }
}

/// The CPU's blocks and output layers as one node against the composed layers, in f32, at the
/// quickstart transformer's size (37 positions, 256 codes) and at an odd one.
#[test]
fn cpu_blocks_and_output_match_composed_layers() {
    for (dims, k) in [((3, 37, 128, 256, 4), 256), ((2, 19, 48, 96, 2), 33)] {
        logits_match_composed(
            &Device::Cpu,
            DType::F32,
            dims,
            k,
            &movq::cpu::block::blocks_and_output,
            F32_TOL,
        );
    }
}

/// Without a graph to train (parameters and input detached, as when sampling) the fused CPU
/// stack returns the composed blocks' output and builds no node.
#[test]
fn cpu_blocks_for_inference_match_composed_layers() {
    use movq::nn::layers::{LayerNorm, Linear};
    let dev = Device::Cpu;
    let (d, m) = (64, 128);
    let t = |shape: &[usize], seed: u64, scale: f64, shift: f64| {
        randn(shape, seed, &dev).affine(scale, shift).unwrap()
    };
    let ws = [movq::ops::block::Block {
        ln1: LayerNorm::new(t(&[d], 1, 0.1, 1.0), t(&[d], 2, 0.1, 0.0), 1e-5),
        qkv: Linear::new(t(&[3 * d, d], 3, 0.05, 0.0), Some(t(&[3 * d], 4, 0.1, 0.0))),
        proj: Linear::new(t(&[d, d], 5, 0.05, 0.0), Some(t(&[d], 6, 0.1, 0.0))),
        ln2: LayerNorm::new(t(&[d], 7, 0.1, 1.0), t(&[d], 8, 0.1, 0.0), 1e-5),
        fc1: Linear::new(t(&[m, d], 9, 0.05, 0.0), Some(t(&[m], 10, 0.1, 0.0))),
        fc2: Linear::new(t(&[d, m], 11, 0.05, 0.0), Some(t(&[d], 12, 0.1, 0.0))),
        heads: 4,
    }];
    let x = t(&[5, 11, d], 13, 1.0, 0.0);
    let side = movq::gpu::side_grads::SideGrads::new();
    let fused = movq::cpu::block::blocks(&x, &ws, &side).unwrap();
    let composed = movq::ops::block::composed(&x, &ws).unwrap();
    let e = rel_err(&fused, &composed);
    assert!(e < F32_TOL.0, "relative error {e}");
    assert!(!fused.track_op());
}

/// The CPU's one-op masked cross-entropy against the composed ops: loss, accuracy and the
/// logits' gradient, with label smoothing and a quarter of the rows weighted 0 (whose targets
/// must not matter).
#[test]
fn cpu_cross_entropy_matches_composed_ops() {
    use movq::transformer::model::masked_cross_entropy_composed;
    let dev = Device::Cpu;
    let (b, l, k) = (3, 37, 50);
    let logits = randn(&[b, l, k], 5, &dev).affine(3.0, 0.0).unwrap();
    let targets: Vec<u32> = (0..b * l).map(|i| ((i * 7919) % k) as u32).collect();
    let targets = Tensor::from_vec(targets, (b, l), &dev).unwrap();
    let weights: Vec<f32> = (0..b * l)
        .map(|i| if i % 4 == 1 { 0.0 } else { 1.0 })
        .collect();
    let weights = Tensor::from_vec(weights, (b, l), &dev).unwrap();
    let run = |composed: bool| {
        let x = Var::from_tensor(&logits).unwrap();
        let (loss, acc) = if composed {
            masked_cross_entropy_composed(x.as_tensor(), &targets, &weights, 0.1).unwrap()
        } else {
            movq::cpu::cross_entropy::masked_cross_entropy(
                &x.as_tensor().reshape((b * l, k)).unwrap(),
                &targets.reshape(b * l).unwrap(),
                &weights.reshape(b * l).unwrap(),
                0.1,
            )
            .unwrap()
        };
        let g = loss.backward().unwrap();
        let grad = g.get(x.as_tensor()).unwrap().reshape((b, l, k)).unwrap();
        (loss.to_scalar::<f32>().unwrap(), acc, grad)
    };
    let (l0, a0, g0) = run(true);
    let (l1, a1, g1) = run(false);
    assert!(
        ((l1 - l0) / l0).abs() < 1e-5,
        "loss {l1} against {l0} composed"
    );
    assert!((a1 - a0).abs() < 1e-9, "accuracy {a1} against {a0}");
    let e = rel_err(&g1, &g0);
    assert!(e < F32_TOL.1, "gradient: relative error {e}");
    // rows of weight 0 get no gradient
    let row = g1.get(0).unwrap().get(1).unwrap();
    assert_eq!(
        row.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
}

/// The Adam / AdamW step `movq::ops::adam::step` takes on `dev` (the fused one where there is
/// one) against the composed update on the CPU: parameter and both moments after three steps,
/// for AdamW and for Adam's L2 term, with and without gradient clipping.
pub fn adam_matches_composed(dev: &Device) {
    use movq::ops::adam::{step, step_composed, AdamStep};
    let cpu = Device::Cpu;
    let shape = [37, 5];
    for decoupled in [true, false] {
        for grad_scale in [1.0f32, 0.4] {
            let init = randn(&shape, 70, &cpu);
            let zeros = || Tensor::zeros(&shape[..], DType::F32, &cpu).unwrap();
            let (p0, mut m0, mut v0) = (Var::from_tensor(&init).unwrap(), zeros(), zeros());
            let on_dev = |t: &Tensor| t.to_device(dev).unwrap();
            let p1 = Var::from_tensor(&on_dev(&init)).unwrap();
            let (mut m1, mut v1) = (on_dev(&zeros()), on_dev(&zeros()));
            for t in 1..=3 {
                let s = AdamStep {
                    lr: 1e-2,
                    betas: (0.9, 0.96),
                    eps: 1e-8,
                    weight_decay: 0.05,
                    decoupled,
                    bias: (1.0 - 0.9f32.powi(t), 1.0 - 0.96f32.powi(t)),
                    grad_scale,
                };
                let g = randn(&shape, 80 + t as u64, &cpu);
                step_composed(&p0, &mut m0, &mut v0, &g, s).unwrap();
                step(&p1, &mut m1, &mut v1, &on_dev(&g), s).unwrap();
            }
            for (what, got, want) in [
                ("parameter", p1.as_tensor(), p0.as_tensor()),
                ("m", &m1, &m0),
                ("v", &v1, &v0),
            ] {
                let e = rel_err(&got.to_device(&cpu).unwrap(), want);
                assert!(
                    e < 1e-5,
                    "decoupled {decoupled}, grad scale {grad_scale}: {what} relative error {e}"
                );
            }
        }
    }
    println!("Adam on {dev:?} matches the composed update (AdamW and Adam, clipped or not)");
}

/// The gradient norm's sum of squares on `dev` against an f64 sum: a scalar, a bias, a weight
/// larger than one CUDA grid's stride, a non-contiguous view, a 4-d tensor, and no tensor.
pub fn sum_of_squares_matches_f64(dev: &Device) {
    let big = randn(&[1100, 1031], 61, dev);
    let ts = [
        randn(&[], 62, dev),
        randn(&[300], 63, dev),
        big.clone(),
        big.narrow(1, 7, 5).unwrap(),
        randn(&[2, 3, 4, 5], 64, dev),
    ];
    let refs: Vec<&Tensor> = ts.iter().collect();
    let got = movq::ops::adam::sum_of_squares(&refs).unwrap();
    let want: f64 = ts
        .iter()
        .map(|t| {
            t.to_dtype(DType::F64)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        })
        .sum();
    assert!(
        ((got - want) / want).abs() < 1e-5,
        "sum of squares {got}, f64 sum {want}"
    );
    assert_eq!(movq::ops::adam::sum_of_squares(&[]).unwrap(), 0.0);
}

#[test]
fn cpu_adam_matches_composed_update() {
    adam_matches_composed(&Device::Cpu);
}

#[test]
fn cpu_sum_of_squares_matches_f64() {
    sum_of_squares_matches_f64(&Device::Cpu);
}
