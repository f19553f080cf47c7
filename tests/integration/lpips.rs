//! LPIPS against the numpy reference of `scripts/lpips_weights.py` (float64) on real photos:
//! small random networks of the AlexNet and VGG16 layouts committed as fixtures (always run),
//! and the real LPIPS v0.1 weights when `scripts/get-weights` has put them in the movq cache.

use candle_core::{Device, Tensor, Var};
use movq::data::image::{images_to_tensor, open_rgb};
use movq::metrics::lpips::{locate, Backbone, Lpips};

use crate::harness::data_dir;

/// `[1, 3, H, W]` in [-1, 1] for a committed photo.
fn photo(name: &str) -> Tensor {
    let img = open_rgb(&data_dir().join(format!("photos/{name}.png"))).unwrap();
    images_to_tensor(&[img], &Device::Cpu).unwrap()
}

const PAIRS: [(&str, &str); 3] = [
    ("astronaut", "camera"),
    ("chelsea", "coffee"),
    ("rocket", "coffee"),
];

fn check(net: &Lpips, expected: [f64; 3], what: &str) {
    for ((a, b), want) in PAIRS.iter().zip(expected) {
        let got = net
            .distance(&photo(a), &photo(b))
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0] as f64;
        assert!(
            (got - want).abs() < 1e-4,
            "{what}: LPIPS({a}, {b}) = {got}, reference {want}"
        );
    }
}

#[test]
fn small_networks_match_the_reference() {
    // python3 scripts/lpips_weights.py score tests/data/lpips-tiny-{alex,vgg}.safetensors A B
    let alex = Lpips::load(
        &data_dir().join("lpips-tiny-alex.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(alex.backbone(), Backbone::Alex);
    check(&alex, [0.21222725, 0.16111290, 0.29443321], "tiny AlexNet");
    let vgg = Lpips::load(&data_dir().join("lpips-tiny-vgg.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(vgg.backbone(), Backbone::Vgg);
    check(&vgg, [0.33370212, 0.16425661, 0.47650290], "tiny VGG16");
}

#[test]
fn identical_images_are_at_distance_zero_and_gradients_reach_the_image() {
    let net = Lpips::load(&data_dir().join("lpips-tiny-vgg.safetensors"), &Device::Cpu).unwrap();
    let a = photo("chelsea");
    let d = net.distance(&a, &a).unwrap().to_vec1::<f32>().unwrap()[0];
    assert!(d.abs() < 1e-7, "{d}");
    let x = Var::from_tensor(&photo("coffee")).unwrap();
    let g = net
        .distance(x.as_tensor(), &a)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gx = g.get(x.as_tensor()).expect("a gradient for the image");
    let total = gx
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(total.is_finite() && total > 0.0, "{total}");
}

#[test]
fn real_weights_match_the_reference_when_installed() {
    // python3 scripts/lpips_weights.py score ~/.cache/movq/lpips-{alex,vgg}.safetensors A B
    for (backbone, expected) in [
        (Backbone::Alex, [0.53212262, 0.50216527, 0.68830746]),
        (Backbone::Vgg, [0.64006767, 0.67134513, 0.90727856]),
    ] {
        match locate(None, backbone).unwrap() {
            Some(path) => {
                let net = Lpips::load(&path, &Device::Cpu).unwrap();
                check(
                    &net,
                    expected,
                    &format!("{backbone:?} ({})", path.display()),
                );
            }
            None => crate::harness::weights_missing(&format!("the LPIPS {backbone:?} weights")),
        }
    }
}

#[test]
fn a_file_of_another_layout_is_a_clear_error() {
    let dir = crate::harness::tmp();
    let path = dir.path().join("bad.safetensors");
    let t = Tensor::zeros((4, 3, 5, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &[
            ("net.0.weight".to_string(), t),
            ("net.0.bias".to_string(), b),
        ]
        .into_iter()
        .collect(),
        &path,
    )
    .unwrap();
    let err = format!("{:#}", Lpips::load(&path, &Device::Cpu).unwrap_err());
    assert!(err.contains("lin.0.weight"), "{err}");
    let err = format!(
        "{:#}",
        locate(Some(&dir.path().join("absent.safetensors")), Backbone::Vgg).unwrap_err()
    );
    assert!(err.contains("scripts/get-weights"), "{err}");
}

#[test]
fn compare_reports_lpips_when_weights_are_there() {
    let a = data_dir().join("photos/astronaut.png");
    let b = data_dir().join("photos/camera.png");
    let w = data_dir().join("lpips-tiny-alex.safetensors");
    let r = crate::harness::movq(&[
        "compare",
        crate::harness::s(&a),
        crate::harness::s(&b),
        "--lpips-weights",
        crate::harness::s(&w),
    ]);
    r.ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let got = v["lpips"].as_f64().unwrap();
    assert!((got - 0.21222725).abs() < 1e-4, "{got}");
    // no weights installed: the other metrics still come, LPIPS is null with a note
    let r = crate::harness::movq(&["compare", crate::harness::s(&a), crate::harness::s(&b)]);
    r.ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(v["lpips"].is_null() && v["ssim"].is_number());
    assert!(r.stderr.contains("scripts/get-weights"), "{}", r.stderr);
}

#[test]
fn the_perceptual_loss_trains_with_vgg_weights_and_their_absence_is_an_error() {
    use crate::harness::{movq_with_cache, s, tiny_config, tmp};
    let dir = tmp();
    let cfg = tiny_config(dir.path(), |c| {
        c["loss"]["perceptual_weight"] = serde_json::json!(0.5);
        c["train"]["steps"] = serde_json::json!(2);
        c["train"]["log_every"] = serde_json::json!(1);
    });
    let empty = dir.path().join("no-weights");
    let out = dir.path().join("run");
    let args = [
        "train-vq",
        "--config",
        s(&cfg),
        "--data",
        "builtin:shapes:16",
        "--out",
        s(&out),
    ];
    movq_with_cache(&args, &empty).fails_with(&["perceptual_weight", "scripts/get-weights"]);
    assert!(
        !out.exists(),
        "nothing is written when the weights are missing"
    );
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::copy(
        data_dir().join("lpips-tiny-vgg.safetensors"),
        cache.join("lpips-vgg.safetensors"),
    )
    .unwrap();
    movq_with_cache(&args, &cache).ok();
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(log.contains("\"perceptual\""), "{log}");
}

/// Images under 32 px (the quickstart's 24 px) are enlarged by a whole factor first: AlexNet's
/// pooling would leave nothing of them. The distance is that of the enlarged pair.
#[test]
fn small_images_are_enlarged_first() {
    let alex = Lpips::load(
        &data_dir().join("lpips-tiny-alex.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let img = |seed: u64| crate::devices::randn(&[1, 3, 24, 24], seed, &Device::Cpu);
    let (a, b) = (img(1), img(2));
    let d = alex.distance(&a, &b).unwrap().to_vec1::<f32>().unwrap()[0];
    let up = |t: &candle_core::Tensor| t.upsample_nearest2d(48, 48).unwrap();
    let d48 = alex
        .distance(&up(&a), &up(&b))
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0];
    assert!(d > 0.0 && (d - d48).abs() < 1e-6, "{d} against {d48}");
    assert_eq!(
        alex.distance(&a, &a).unwrap().to_vec1::<f32>().unwrap()[0],
        0.0
    );
}
