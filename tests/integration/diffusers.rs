//! Import of a diffusers VQModel (norm_type "spatial") and parity with diffusers' own outputs on
//! a committed reduced-shape fixture (`scripts/diffusers_fixture.py`: widths 32/64, 2 levels,
//! 64 codes of dimension 4, attention at the lowest resolution, random weights).

use candle_core::{DType, Device};

/// The stage-1 model of `run` in f32 on `dev`, with its config and checkpoint.
fn load_vq(
    run: &std::path::Path,
    dev: &Device,
) -> anyhow::Result<(
    movq::config::RunConfig,
    movq::vq::MoVq,
    movq::train::run_dir::Checkpoint,
)> {
    let compute = movq::compute::Compute {
        device: dev.clone(),
        precision: movq::compute::Precision::F32,
        tf32: false,
    };
    let r = movq::train::runs::VqRun::open_with(run, &compute)?;
    Ok((r.cfg, r.model, r.checkpoint))
}

use crate::harness::{data_dir, max_abs_diff, movq, s, tmp};

fn import(out: &std::path::Path) -> crate::harness::Run {
    import_from(&data_dir().join("diffusers-mini"), out)
}

fn import_from(dir: &std::path::Path, out: &std::path::Path) -> crate::harness::Run {
    import_with(dir, &dir.join("config.json"), out, &[])
}

/// `movq import diffusers` of the weights in `dir` with the config `config` (and `extra` flags).
fn import_with(
    dir: &std::path::Path,
    config: &std::path::Path,
    out: &std::path::Path,
    extra: &[&str],
) -> crate::harness::Run {
    let weights = dir.join("diffusion_pytorch_model.safetensors");
    let mut args = vec![
        "import",
        "diffusers",
        "--weights",
        s(&weights),
        "--config",
        s(config),
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    movq(&args)
}

#[test]
fn imported_model_reproduces_diffusers() {
    check_parity(&data_dir().join("diffusers-mini"), false, &Device::Cpu);
}

/// The full Kandinsky 2.2 shape (f = 8, widths 128/256/256/512, 16,384 codes), when
/// `MOVQ_DIFFUSERS_FIXTURE` names a folder written by
/// `python3 scripts/diffusers_fixture.py DIR kandinsky` (270 MB of weights: not committed).
#[test]
fn full_kandinsky_shape_reproduces_diffusers_when_given() {
    match std::env::var_os("MOVQ_DIFFUSERS_FIXTURE") {
        Some(dir) => check_parity(std::path::Path::new(&dir), true, &Device::Cpu),
        None => println!("full-shape diffusers parity skipped (set MOVQ_DIFFUSERS_FIXTURE)"),
    }
}

/// Both fixtures on the GPU (the full shape when `MOVQ_DIFFUSERS_FIXTURE` is set).
#[cfg(feature = "cuda")]
#[test]
fn diffusers_parity_on_cuda() {
    let gpu = crate::harness::cuda_device();
    check_parity(&data_dir().join("diffusers-mini"), false, &gpu);
    if let Some(dir) = std::env::var_os("MOVQ_DIFFUSERS_FIXTURE") {
        check_parity(std::path::Path::new(&dir), true, &gpu);
    }
}

/// Parity within 1e-4 max |Δ| at every stage (`relative`: of the output's range, when above 1).
fn check_parity(fixture: &std::path::Path, relative: bool, dev: &Device) {
    let dir = tmp();
    let run = dir.path().join("run");
    import_from(fixture, &run).ok();
    check_run_against(&run, fixture, relative, dev);
}

/// The stage-1 run `run` against the diffusers outputs in `fixture/parity.safetensors`.
pub fn check_run_against(
    run: &std::path::Path,
    fixture: &std::path::Path,
    relative: bool,
    dev: &Device,
) {
    let (_, model, _) = load_vq(run, dev).unwrap();
    let p = candle_core::safetensors::load(fixture.join("parity.safetensors"), dev).unwrap();
    // encode: the quant_conv output
    let latent = model.encode(&p["x"]).unwrap();
    let d = max_abs_diff(&latent, &p["latent"]);
    assert!(d <= 1e-4, "latent: max |Δ| {d}");
    let d_latent = d;
    // quantize: the same codes
    let q = model.quantizer().forward(&p["latent"]).unwrap();
    let ours: Vec<u32> = q.indices.flatten_all().unwrap().to_vec1().unwrap();
    let theirs: Vec<u32> = p["indices"]
        .to_dtype(DType::U32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(ours, theirs, "code indices");
    // decode (quantized), and decode of the continuous latent (force_not_quantize)
    let d1 = max_abs_diff(&model.decode_indices(&q.indices).unwrap(), &p["decoded"]);
    let d2 = max_abs_diff(
        &model.decode(&p["latent"]).unwrap(),
        &p["decoded_continuous"],
    );
    let range = |t: &candle_core::Tensor| -> f32 {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    println!(
        "diffusers parity: latent {d_latent}, decoded {d1}, decoded (force_not_quantize) {d2} \
         (max |Δ|; outputs up to {} and {})",
        range(&p["decoded"]),
        range(&p["decoded_continuous"])
    );
    // relative for the full-size random model, whose continuous latents decode to values near 17
    let tol = |t: &candle_core::Tensor| {
        if relative {
            1e-4 * range(t).max(1.0)
        } else {
            1e-4
        }
    };
    assert!(d1 <= tol(&p["decoded"]), "decoded: max |Δ| {d1}");
    assert!(
        d2 <= tol(&p["decoded_continuous"]),
        "decoded (force_not_quantize): max |Δ| {d2}"
    );
}

#[test]
fn configs_movq_cannot_express_are_errors_naming_the_field() {
    let dir = tmp();
    let src = data_dir().join("diffusers-mini");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["norm_type"] = serde_json::json!("group");
    let bad = dir.path().join("config.json");
    std::fs::write(&bad, cfg.to_string()).unwrap();
    let out = dir.path().join("run");
    import_with(&src, &bad, &out, &[]).fails_with(&["norm_type"]);
    assert!(!out.exists());
    // weights of another shape: the names are listed
    cfg["norm_type"] = serde_json::json!("spatial");
    cfg["layers_per_block"] = serde_json::json!(2);
    std::fs::write(&bad, cfg.to_string()).unwrap();
    import_with(&src, &bad, &out, &[])
        .fails_with(&["missing", "encoder.down_blocks.0.resnets.1.conv1.weight"]);
    assert!(!out.exists());
}

#[test]
fn encode_and_decode_latents_of_an_imported_model() {
    use movq::data::image::{open_rgb, tensor_to_images};
    let dir = tmp();
    let run = dir.path().join("run");
    import(&run).ok();
    let (_, model, _) = load_vq(&run, &Device::Cpu).unwrap();
    // encode: latents and indices of three images in one file
    let codes = dir.path().join("codes.safetensors");
    movq(&[
        "encode",
        "--model",
        s(&run),
        "--input",
        "builtin:shapes:3",
        "--out",
        s(&codes),
    ])
    .ok();
    let t = candle_core::safetensors::load(&codes, &Device::Cpu).unwrap();
    assert_eq!(t["latents"].dims(), &[3, 4, 16, 16]);
    assert_eq!(t["indices"].dims(), &[3, 1, 16, 16]);
    // decode continuous latents given as .npy (diffusers' force_not_quantize): the diffusers
    // fixture's latents decode to diffusers' output
    let p = candle_core::safetensors::load(
        data_dir().join("diffusers-mini/parity.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let npy = dir.path().join("latent.npy");
    p["latent"].write_npy(&npy).unwrap();
    let out = dir.path().join("decoded");
    movq(&[
        "decode",
        "--model",
        s(&run),
        "--latents",
        s(&npy),
        "--out",
        s(&out),
    ])
    .ok();
    let want = tensor_to_images(&p["decoded_continuous"]).unwrap();
    for (i, w) in want.iter().enumerate() {
        let got = open_rgb(&out.join(format!("{i:05}.png"))).unwrap();
        let worst = got
            .as_raw()
            .iter()
            .zip(w.as_raw())
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .max()
            .unwrap();
        assert!(worst <= 1, "image {i}: a pixel differs by {worst} levels");
    }
    // --quantize, and a file of indices only, decode the codes
    let q = model.quantizer().forward(&p["latent"]).unwrap();
    let want = tensor_to_images(&model.decode_indices(&q.indices).unwrap()).unwrap();
    let only_indices = dir.path().join("indices.safetensors");
    candle_core::safetensors::save(
        &[("indices".to_string(), q.indices.clone())]
            .into_iter()
            .collect(),
        &only_indices,
    )
    .unwrap();
    for (src, extra) in [(&npy, Some("--quantize")), (&only_indices, None)] {
        let out = dir.path().join("q");
        let mut args = vec![
            "decode",
            "--model",
            s(&run),
            "--latents",
            s(src),
            "--out",
            s(&out),
        ];
        args.extend(extra);
        movq(&args).ok();
        for (i, w) in want.iter().enumerate() {
            assert_eq!(&open_rgb(&out.join(format!("{i:05}.png"))).unwrap(), w);
        }
    }
    // a latent of the wrong shape is a clear error
    let bad = dir.path().join("bad.npy");
    candle_core::Tensor::zeros((1, 3, 8, 8), DType::F32, &Device::Cpu)
        .unwrap()
        .write_npy(&bad)
        .unwrap();
    movq(&[
        "decode",
        "--model",
        s(&run),
        "--latents",
        s(&bad),
        "--out",
        s(&out),
    ])
    .fails_with(&["[N, 4, 16, 16]"]);
}

#[test]
fn an_imported_tokenizer_runs_at_another_resolution_and_trains_a_transformer() {
    let dir = tmp();
    let src = data_dir().join("diffusers-mini");
    let run = dir.path().join("run");
    import_with(
        &src,
        &src.join("config.json"),
        &run,
        &["--resolution", "64"],
    )
    .ok();
    let (cfg, _, _) = load_vq(&run, &Device::Cpu).unwrap();
    assert_eq!(cfg.model.resolution, 64);
    assert_eq!(cfg.model.attn_resolutions, vec![32]);
    // the run's own config with the tiny preset's transformer
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    let tiny: serde_json::Value =
        serde_json::from_str(include_str!("../../configs/tiny.json")).unwrap();
    c["transformer"] = tiny["transformer"].clone();
    let cfg_path = dir.path().join("tr.json");
    std::fs::write(&cfg_path, c.to_string()).unwrap();
    let tr = dir.path().join("tr");
    movq(&[
        "train-transformer",
        "--vq",
        s(&run),
        "--config",
        s(&cfg_path),
        "--data",
        "builtin:shapes:8",
        "--out",
        s(&tr),
        "--steps",
        "2",
        "--device",
        "cpu",
    ])
    .ok();
    assert!(tr.join("latest").is_file());
}

#[test]
fn an_imported_model_fine_tunes_with_its_own_config() {
    let dir = tmp();
    let run = dir.path().join("imported");
    import(&run).ok();
    // the imported run's config, with a short training section
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    c["train"]["steps"] = 2.into();
    c["train"]["batch_size"] = 2.into();
    c["train"]["val_images"] = 2.into();
    c["loss"]["discriminator"] = serde_json::Value::Null;
    c["loss"]["perceptual_weight"] = 0.0.into();
    let cfg = dir.path().join("tune.json");
    std::fs::write(&cfg, c.to_string()).unwrap();
    let tuned = dir.path().join("tuned");
    let r = movq(&[
        "train-vq",
        "--config",
        s(&cfg),
        "--data",
        "builtin:shapes:8",
        "--out",
        s(&tuned),
        "--init",
        s(&run),
        "--freeze",
        "encoder,quantizer",
        "--device",
        "cpu",
    ]);
    r.ok();
    let (_, _, before) = load_vq(&run, &Device::Cpu).unwrap();
    let (_, _, after) = load_vq(&tuned, &Device::Cpu).unwrap();
    let read = |p: &std::path::Path| candle_core::safetensors::load(p, &Device::Cpu).unwrap();
    let (a, b) = (read(&before.model), read(&after.model));
    let w = "quantize.embedding.weight";
    assert_eq!(max_abs_diff(&a[w], &b[w]), 0.0);
    let changed = a
        .iter()
        .filter(|(n, t)| n.starts_with("decoder.") && max_abs_diff(t, &b[*n]) > 0.0)
        .count();
    assert!(changed > 0, "the decoder trained");
}
