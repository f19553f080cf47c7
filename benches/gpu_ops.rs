//! Where a transformer block's time goes on the GPU: each piece at the reference shape (64 ×
//! 1,025 tokens, width 768, bf16), forward alone and forward + backward (the latter includes the
//! backward pass of the `sum(y · 1)` that starts it), milliseconds, median of 5 after a warm-up,
//! synchronised. A diagnostic for the GPU kernels (`src/gpu/`), not a benchmark of record:
//!
//! `cargo bench --features cudnn --bench gpu_ops` (on a CUDA machine; elsewhere it says so).

#[cfg(feature = "cuda")]
fn main() {
    use candle_core::{DType, Device, Module, Tensor, Var};
    use rand::{Rng, SeedableRng};
    let dev = Device::new_cuda(0).expect("a CUDA GPU");
    let randn = |shape: &[usize], seed: u64, dev: &Device| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(v, shape, dev).unwrap()
    };
    let rows = 64 * 1025;
    let time = |name: &str, f: &dyn Fn() -> candle_core::Result<Tensor>| {
        let run = |backward: bool| {
            let mut ts = Vec::new();
            for _ in 0..6 {
                dev.synchronize().unwrap();
                let t = std::time::Instant::now();
                let y = f().unwrap();
                if backward {
                    let r = Tensor::ones_like(&y).unwrap();
                    let _g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
                }
                dev.synchronize().unwrap();
                ts.push(t.elapsed().as_secs_f64() * 1e3);
            }
            ts.remove(0);
            ts.sort_by(f64::total_cmp);
            ts[ts.len() / 2]
        };
        println!(
            "{name:<40} forward {:8.2} ms   forward+backward {:8.2} ms",
            run(false),
            run(true)
        );
    };
    let x = Var::from_tensor(&randn(&[rows, 768], 1, &dev).to_dtype(DType::BF16).unwrap()).unwrap();
    let h =
        Var::from_tensor(&randn(&[rows, 3072], 2, &dev).to_dtype(DType::BF16).unwrap()).unwrap();
    let w = Var::from_tensor(&(randn(&[2304, 768], 3, &dev) * 0.03).unwrap()).unwrap();
    let b = Var::from_tensor(&randn(&[2304], 4, &dev)).unwrap();
    let g = Var::from_tensor(&randn(&[768], 5, &dev)).unwrap();
    let beta = Var::from_tensor(&randn(&[768], 6, &dev)).unwrap();
    let wb = w.to_dtype(DType::BF16).unwrap();
    time("matmul 768→2304 (bf16 weight)", &|| x.matmul(&wb.t()?));
    time("matmul + weight cast", &|| {
        x.matmul(&w.to_dtype(DType::BF16)?.t()?)
    });
    let lin = movq::nn::layers::Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
    time("Linear 768→2304 with bias", &|| lin.forward(&x));
    let lin_nb = movq::nn::layers::Linear::new(w.as_tensor().clone(), None);
    time("Linear 768→2304 without bias", &|| lin_nb.forward(&x));
    let bb = b.to_dtype(DType::BF16).unwrap();
    let y = x.matmul(&wb.t().unwrap()).unwrap();
    time("broadcast_add bias [rows, 2304]", &|| y.broadcast_add(&bb));
    time("gelu_erf [rows, 3072]", &|| h.gelu_erf());
    time("add (residual) [rows, 768]", &|| x.add(&x));
    time("to_dtype bf16→f32 [rows, 768]", &|| {
        x.to_dtype(DType::F32)
    });
    let ln =
        movq::nn::layers::LayerNorm::new(g.as_tensor().clone(), beta.as_tensor().clone(), 1e-5);
    time("LayerNorm [rows, 768]", &|| ln.forward(&x));
    let qkv = Var::from_tensor(
        &randn(&[64, 1025, 2304], 7, &dev)
            .to_dtype(DType::BF16)
            .unwrap(),
    )
    .unwrap();
    time("fused attention 64×1025, 16 heads", &|| {
        movq::gpu::attention::attention(&qkv, 16)
    });
    time("sum over rows [rows, 2304]", &|| y.sum_keepdim(0));
    let logits = randn(&[64 * 1024, 1024], 8, &dev);
    time("softmax [65536, 1024] f32 (candle)", &|| {
        candle_nn::ops::softmax_last_dim(&logits)
    });
}

#[cfg(not(feature = "cuda"))]
fn main() {
    eprintln!("gpu_ops measures the GPU kernels: build it with --features cuda (or cudnn)");
}
