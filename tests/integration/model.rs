//! Shapes, the quantizer, SpatialNorm and checkpoints of the stage-1 model.

use candle_core::{DType, Device, Module, Tensor, Var};
use movq::config::{CodebookUpdate, QuantizerConfig, RunConfig};
use movq::nn::params::ParamStore;
use movq::nn::spatial_norm::SpatialNorm;
use movq::vq::quantizer::Quantizer;
use movq::vq::MoVq;

use crate::harness::max_abs_diff;

fn tiny() -> RunConfig {
    RunConfig::resolve("tiny").unwrap()
}

fn qcfg(channels: usize, k: usize, d: usize) -> QuantizerConfig {
    QuantizerConfig {
        channels,
        codebook_size: k,
        code_dim: d,
        beta: 0.25,
        update: CodebookUpdate::Gradient,
        l2_normalize: false,
        restart_dead_codes: None,
        gradient: Default::default(),
        entropy_weight: 0.0,
        entropy_temperature: 1.0,
    }
}

fn randn_on(shape: &[usize], seed: u64, dev: &Device) -> Tensor {
    randn(shape, seed).to_device(dev).unwrap()
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

device_test!(tiny_shapes_through_every_stage);
fn tiny_shapes_through_every_stage(dev: &Device) {
    let cfg = tiny();
    let m = &cfg.model;
    let store = ParamStore::new(1, dev);
    let model = MoVq::new(m, &store).unwrap();
    let x = randn_on(&[2, 3, 32, 32], 0, dev);
    let z = model.encode(&x).unwrap();
    let h = m.latent_size();
    assert_eq!(h, 16);
    assert_eq!(z.dims(), &[2, m.embed_dim(), h, h]);
    let q = model.quantizer().forward(&z).unwrap();
    assert_eq!(q.zq.dims(), z.dims());
    assert_eq!(q.indices.dims(), &[2, m.quantizer.channels, h, h]);
    assert_eq!(q.indices.dtype(), DType::U32);
    assert_eq!(q.loss.dims(), &[] as &[usize]);
    let y = model.decode(&q.zq).unwrap();
    assert_eq!(y.dims(), &[2, 3, 32, 32]);
    // decode(indices) == decode(quantized)
    let y2 = model.decode_indices(&q.indices).unwrap();
    let diff = max_abs_diff(&y, &y2);
    assert!(diff < 1e-5, "{diff}");
    assert_eq!(m.tokens_per_image(), 16 * 16 * 2);
}

#[test]
fn wrong_input_size_is_an_error() {
    let cfg = tiny();
    let store = ParamStore::new(1, &Device::Cpu);
    let model = MoVq::new(&cfg.model, &store).unwrap();
    let err = model
        .encode(&randn(&[1, 3, 24, 24], 0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("[B, 3, 32, 32]"), "{err}");
}

#[test]
fn paper_preset_forward_at_batch_1() {
    let cfg = RunConfig::resolve("ffhq-256").unwrap();
    let m = &cfg.model;
    assert_eq!(m.downsample_factor(), 16);
    assert_eq!(m.latent_size(), 16);
    assert_eq!(m.tokens_per_image(), 16 * 16 * 4);
    let store = ParamStore::new(0, &Device::Cpu);
    let model = MoVq::new(m, &store).unwrap();
    // The PyTorch reference (diffusers VQModel, same shape, 4-channel VQ) has about 78 M parameters.
    let n = store.num_parameters();
    assert!((70_000_000..86_000_000).contains(&n), "{n} parameters");
    let (y, q) = model.forward(&randn(&[1, 3, 256, 256], 3)).unwrap();
    assert_eq!(y.dims(), &[1, 3, 256, 256]);
    assert_eq!(q.indices.dims(), &[1, 4, 16, 16]);
}

#[test]
fn kandinsky_preset_shapes() {
    let cfg = RunConfig::resolve("kandinsky-movq").unwrap();
    let m = &cfg.model;
    assert_eq!(
        (m.downsample_factor(), m.latent_size(), m.embed_dim()),
        (8, 32, 4)
    );
    let store = ParamStore::new(0, &Device::Cpu);
    MoVq::new(m, &store).unwrap();
    let n = store.num_parameters();
    // diffusers' Kandinsky 2.2 MoVQ (same shape) has about 68 M parameters.
    assert!((60_000_000..76_000_000).contains(&n), "{n} parameters");
}

/// Brute-force nearest code of each chunk.
fn brute_force(
    z: &[f32],
    codebook: &[Vec<f32>],
    b: usize,
    c: usize,
    d: usize,
    hw: usize,
) -> Vec<u32> {
    let mut out = Vec::new();
    for bi in 0..b {
        for ci in 0..c {
            for p in 0..hw {
                let v: Vec<f32> = (0..d)
                    .map(|k| z[((bi * c + ci) * d + k) * hw + p])
                    .collect();
                let mut best = (f32::INFINITY, 0);
                for (i, e) in codebook.iter().enumerate() {
                    let dist: f32 = v.iter().zip(e).map(|(a, b)| (a - b).powi(2)).sum();
                    if dist < best.0 {
                        best = (dist, i as u32);
                    }
                }
                out.push(best.1);
            }
        }
    }
    out
}

fn quantizer(cfg: &QuantizerConfig, seed: u64) -> (Quantizer, Vec<Vec<f32>>) {
    quantizer_on(cfg, seed, &Device::Cpu)
}

fn quantizer_on(cfg: &QuantizerConfig, seed: u64, dev: &Device) -> (Quantizer, Vec<Vec<f32>>) {
    let store = ParamStore::new(seed, dev);
    let q = Quantizer::new(cfg, store.var_builder().pp("quantize"), &store).unwrap();
    // spread the codes so that nearest-code ties are impossible
    let e = randn_on(&[cfg.codebook_size, cfg.code_dim], seed + 100, dev);
    store
        .get_var("quantize.embedding.weight")
        .unwrap()
        .set(&e)
        .unwrap();
    (q, e.to_vec2().unwrap())
}

device_test!(quantizer_returns_the_nearest_code_per_channel);
fn quantizer_returns_the_nearest_code_per_channel(dev: &Device) {
    for (c, d) in [(1, 6), (3, 4)] {
        let cfg = qcfg(c, 20, d);
        let (q, codebook) = quantizer_on(&cfg, 5, dev);
        let z = randn_on(&[2, c * d, 3, 5], 9, dev);
        let out = q.forward(&z).unwrap();
        let got: Vec<u32> = out.indices.flatten_all().unwrap().to_vec1().unwrap();
        let want = brute_force(
            &z.flatten_all().unwrap().to_vec1().unwrap(),
            &codebook,
            2,
            c,
            d,
            15,
        );
        assert_eq!(got, want, "channels {c}");
        // zq holds the chosen codes in place of each chunk
        let zq: Vec<f32> = out.zq.flatten_all().unwrap().to_vec1().unwrap();
        for bi in 0..2 {
            for ci in 0..c {
                for p in 0..15 {
                    let code = want[(bi * c + ci) * 15 + p] as usize;
                    for k in 0..d {
                        let v = zq[((bi * c + ci) * d + k) * 15 + p];
                        assert!((v - codebook[code][k]).abs() < 1e-6);
                    }
                }
            }
        }
    }
}

#[test]
fn one_channel_is_a_plain_vq() {
    // A plain VQGAN quantizer: each position's whole vector → nearest code, loss
    // ‖sg[z] − e‖² + β‖z − sg[e]‖² (means), computed here by hand.
    let (q, codebook) = quantizer(&qcfg(1, 16, 8), 11);
    let z = randn(&[1, 8, 4, 4], 12);
    let out = q.forward(&z).unwrap();
    let zf: Vec<f32> = z.flatten_all().unwrap().to_vec1().unwrap();
    let idx = brute_force(&zf, &codebook, 1, 1, 8, 16);
    let mut se = 0f64;
    for p in 0..16 {
        for k in 0..8 {
            se += (zf[k * 16 + p] - codebook[idx[p] as usize][k]).powi(2) as f64;
        }
    }
    let mse = se / (16.0 * 8.0);
    let loss = out.loss.to_scalar::<f32>().unwrap() as f64;
    assert!((loss - 1.25 * mse).abs() < 1e-5, "{loss} vs {}", 1.25 * mse);
}

device_test!(straight_through_gradient_equals_upstream_gradient);
fn straight_through_gradient_equals_upstream_gradient(dev: &Device) {
    let (q, _) = quantizer_on(&qcfg(2, 10, 3), 3, dev);
    let z = Var::from_tensor(&randn_on(&[2, 6, 4, 4], 4, dev)).unwrap();
    let upstream = randn_on(&[2, 6, 4, 4], 5, dev);
    let out = q.forward(z.as_tensor()).unwrap();
    let l = (out.zq * &upstream).unwrap().sum_all().unwrap();
    let g = l.backward().unwrap();
    let gz = g.get(z.as_tensor()).unwrap();
    let diff = max_abs_diff(gz, &upstream);
    assert!(diff < 1e-6, "{diff}");
}

#[test]
fn ema_update_moves_codes_towards_assigned_vectors() {
    let mut cfg = qcfg(1, 4, 2);
    cfg.update = CodebookUpdate::Ema {
        decay: 0.5,
        epsilon: 1e-5,
    };
    let (q, before) = quantizer(&cfg, 8);
    let z = randn(&[1, 2, 4, 4], 9);
    let out = q.forward(&z).unwrap();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    q.update(&out, 1, &mut rng).unwrap();
    let after: Vec<Vec<f32>> = q.codebook().unwrap().to_vec2().unwrap();
    // a used code moves towards the mean of its vectors
    let idx: Vec<u32> = out.indices.flatten_all().unwrap().to_vec1().unwrap();
    let vecs: Vec<Vec<f32>> = out.vectors.to_vec2().unwrap();
    let code = idx[0] as usize;
    let members: Vec<&Vec<f32>> = idx
        .iter()
        .zip(&vecs)
        .filter(|(i, _)| **i as usize == code)
        .map(|(_, v)| v)
        .collect();
    let mean: Vec<f32> = (0..2)
        .map(|k| members.iter().map(|v| v[k]).sum::<f32>() / members.len() as f32)
        .collect();
    let dist = |a: &[f32]| {
        a.iter()
            .zip(&mean)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f32>()
    };
    assert!(dist(&after[code]) < dist(&before[code]));
    // with EMA updates the loss is β·commitment alone: 0.25 · mean ‖z − e‖²
    let se: f32 = idx
        .iter()
        .zip(&vecs)
        .map(|(i, v)| {
            v.iter()
                .zip(&before[*i as usize])
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f32>()
        })
        .sum();
    let want = 0.25 * se / (16.0 * 2.0);
    let loss = out.loss.to_scalar::<f32>().unwrap();
    assert!((loss - want).abs() < 1e-6, "{loss} vs {want}");
}

#[test]
fn dead_codes_are_restarted_from_encoder_outputs() {
    let mut cfg = qcfg(1, 8, 2);
    cfg.restart_dead_codes = Some(movq::config::DeadCodeRestart {
        threshold: 0.5,
        every: 1,
    });
    let (q, _) = quantizer(&cfg, 2);
    let z = randn(&[1, 2, 2, 2], 1);
    let out = q.forward(&z).unwrap();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    let restarted = q.update(&out, 1, &mut rng).unwrap();
    // 4 vectors can use at most 4 codes, the other ≥ 4 are dead and restarted
    assert!(restarted >= 4, "{restarted}");
    let codebook: Vec<Vec<f32>> = q.codebook().unwrap().to_vec2().unwrap();
    let vecs: Vec<Vec<f32>> = out.vectors.to_vec2().unwrap();
    let from_batch = codebook.iter().filter(|e| vecs.contains(e)).count();
    assert!(
        from_batch >= restarted,
        "{from_batch} codes equal a batch vector"
    );
}

#[test]
fn l2_normalised_codes_compare_by_cosine() {
    let mut cfg = qcfg(1, 12, 4);
    cfg.l2_normalize = true;
    let (q, _) = quantizer(&cfg, 4);
    let z = randn(&[1, 4, 3, 3], 2);
    let out = q.forward(&z).unwrap();
    let zq: Vec<Vec<f32>> = out
        .zq
        .permute((0, 2, 3, 1))
        .unwrap()
        .reshape((9, 4))
        .unwrap()
        .to_vec2()
        .unwrap();
    for v in zq {
        let n: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-5, "norm {n}");
    }
}

fn spatial_norm(store: &ParamStore) -> SpatialNorm {
    SpatialNorm::new(8, 3, 4, store.var_builder().pp("sn")).unwrap()
}

device_test!(spatial_norm_with_unit_scale_and_zero_shift_is_group_norm);
fn spatial_norm_with_unit_scale_and_zero_shift_is_group_norm(dev: &Device) {
    let store = ParamStore::new(0, dev);
    let sn = spatial_norm(&store);
    let set = |name: &str, t: Tensor| store.get_var(name).unwrap().set(&t).unwrap();
    set(
        "sn.conv_y.weight",
        Tensor::zeros((8, 3, 1, 1), DType::F32, dev).unwrap(),
    );
    set("sn.conv_y.bias", Tensor::ones(8, DType::F32, dev).unwrap());
    set(
        "sn.conv_b.weight",
        Tensor::zeros((8, 3, 1, 1), DType::F32, dev).unwrap(),
    );
    set("sn.conv_b.bias", Tensor::zeros(8, DType::F32, dev).unwrap());
    // non-trivial GroupNorm affine, which SpatialNorm keeps
    set("sn.norm_layer.weight", randn_on(&[8], 1, dev));
    set("sn.norm_layer.bias", randn_on(&[8], 2, dev));
    let f = randn_on(&[2, 8, 8, 8], 3, dev);
    let zq = randn_on(&[2, 3, 2, 2], 4, dev);
    let got = sn.forward(&f, &zq).unwrap();
    let gn = candle_nn::GroupNorm::new(randn_on(&[8], 1, dev), randn_on(&[8], 2, dev), 8, 4, 1e-6)
        .unwrap();
    let want = gn.forward(&f).unwrap();
    let diff = max_abs_diff(&got, &want);
    assert!(diff < 1e-5, "{diff}");
}

device_test!(spatial_norm_modulation_is_per_pixel);
fn spatial_norm_modulation_is_per_pixel(dev: &Device) {
    // The modulation at a pixel depends only on the latent cell it lies in: changing zq at cell
    // (0, 1) of a 2×2 grid changes exactly the pixels of the matching 4×4 block of an 8×8 map.
    let store = ParamStore::new(0, dev);
    let sn = spatial_norm(&store);
    let f = randn_on(&[1, 8, 8, 8], 3, dev);
    let zq = randn_on(&[1, 3, 2, 2], 4, dev);
    let mut zq2: Vec<f32> = zq.flatten_all().unwrap().to_vec1().unwrap();
    for c in 0..3 {
        zq2[c * 4 + 1] += 1.0; // cell (row 0, col 1)
    }
    let zq2 = Tensor::from_vec(zq2, (1, 3, 2, 2), dev).unwrap();
    let a: Vec<f32> = sn
        .forward(&f, &zq)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f32> = sn
        .forward(&f, &zq2)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for c in 0..8 {
        for y in 0..8 {
            for x in 0..8 {
                let i = (c * 8 + y) * 8 + x;
                let inside = y < 4 && x >= 4;
                let changed = (a[i] - b[i]).abs() > 1e-7;
                assert_eq!(changed, inside, "channel {c} pixel ({y}, {x})");
            }
        }
    }
}

#[test]
fn checkpoint_round_trip_and_wrong_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny();
    let store = ParamStore::new(7, &Device::Cpu);
    let model = MoVq::new(&cfg.model, &store).unwrap();
    let x = randn(&[1, 3, 32, 32], 1);
    let (y, _) = model.forward(&x).unwrap();
    let path = dir.path().join("m.safetensors");
    movq::nn::safetensors_io::write_atomic(&path, &store.tensors(), &Default::default()).unwrap();
    // a model with other weights, loaded from the file, gives identical outputs
    let store2 = ParamStore::new(8, &Device::Cpu);
    let model2 = MoVq::new(&cfg.model, &store2).unwrap();
    store2.load_file(&path).unwrap();
    let (y2, _) = model2.forward(&x).unwrap();
    let diff = max_abs_diff(&y, &y2);
    assert_eq!(diff, 0.0);
    // a different configuration refuses the file, naming a tensor
    let mut other = cfg.model.clone();
    other.quantizer.codebook_size = 64;
    let store3 = ParamStore::new(0, &Device::Cpu);
    MoVq::new(&other, &store3).unwrap();
    let err = store3.load_file(&path).unwrap_err().to_string();
    assert!(
        err.contains("quantize.embedding.weight") || err.contains("quantize.buffers.usage"),
        "{err}"
    );
    assert!(
        err.contains("another model configuration") || err.contains("needs"),
        "{err}"
    );
}

#[test]
fn same_seed_same_weights() {
    let cfg = tiny();
    let a = ParamStore::new(3, &Device::Cpu);
    let b = ParamStore::new(3, &Device::Cpu);
    let c = ParamStore::new(4, &Device::Cpu);
    MoVq::new(&cfg.model, &a).unwrap();
    MoVq::new(&cfg.model, &b).unwrap();
    MoVq::new(&cfg.model, &c).unwrap();
    let w = |s: &ParamStore| {
        s.get_var("encoder.conv_in.weight")
            .unwrap()
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(w(&a), w(&b));
    assert_ne!(w(&a), w(&c));
}
