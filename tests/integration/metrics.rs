//! Metric definitions checked against scikit-image 0.26.

use movq::data::image::open_rgb;
use movq::metrics::{psnr, ssim, CodebookStats};

use crate::harness::{data_dir, movq, s};

// Reference values:
//   from PIL import Image; import numpy as np
//   from skimage.metrics import structural_similarity, peak_signal_noise_ratio
//   a = np.asarray(Image.open("tests/data/metric_a.png").convert("RGB"))
//   b = np.asarray(Image.open("tests/data/metric_b.png").convert("RGB"))
//   peak_signal_noise_ratio(a, b, data_range=255)                       # 25.209870419474246
//   structural_similarity(a/255.0, b/255.0, gaussian_weights=True, sigma=1.5,
//       use_sample_covariance=False, data_range=1.0, channel_axis=-1)    # 0.913525667179719
const REF_PSNR: f64 = 25.209870419474246;
const REF_SSIM: f64 = 0.913525667179719;

#[test]
fn psnr_and_ssim_match_scikit_image() {
    let a = open_rgb(&data_dir().join("metric_a.png")).unwrap();
    let b = open_rgb(&data_dir().join("metric_b.png")).unwrap();
    assert!(
        (psnr(&a, &b) - REF_PSNR).abs() < 1e-9,
        "psnr {}",
        psnr(&a, &b)
    );
    assert!(
        (ssim(&a, &b) - REF_SSIM).abs() < 1e-9,
        "ssim {}",
        ssim(&a, &b)
    );
    assert!((ssim(&a, &a) - 1.0).abs() < 1e-12);
    assert!(psnr(&a, &a).is_infinite());
}

#[test]
fn compare_prints_json() {
    let a = data_dir().join("metric_a.png");
    let b = data_dir().join("metric_b.png");
    let run = movq(&["compare", s(&a), s(&b)]);
    run.ok();
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert!((v["psnr"].as_f64().unwrap() - REF_PSNR).abs() < 1e-9);
    assert!((v["ssim"].as_f64().unwrap() - REF_SSIM).abs() < 1e-9);
    // Different sizes: a clear error naming both files.
    let c = data_dir().join("photos/chelsea.png");
    movq(&["compare", s(&a), s(&c)]).fails_with(&["differ in size", "metric_a.png", "chelsea.png"]);
    // --device picks where LPIPS runs; a CPU-only build asked for CUDA says how to get one
    let cpu = movq(&["compare", s(&a), s(&b), "--device", "cpu"]);
    cpu.ok();
    assert_eq!(cpu.stdout, run.stdout);
    #[cfg(not(feature = "cuda"))]
    movq(&["compare", s(&a), s(&b), "--device", "cuda"])
        .fails_with(&["built without CUDA", "--features cudnn"]);
}

#[test]
fn codebook_usage_and_perplexity_on_a_known_histogram() {
    let mut st = CodebookStats::new(2, 4);
    st.add_counts(0, &[5, 5, 0, 0]); // two equally used codes: usage 0.5, perplexity 2
    st.add_counts(1, &[1, 1, 1, 1]); // uniform: usage 1, perplexity 4
    let r = st.report();
    assert_eq!(r.usage_per_channel, vec![0.5, 1.0]);
    assert!((r.perplexity_per_channel[0] - 2.0).abs() < 1e-12);
    assert!((r.perplexity_per_channel[1] - 4.0).abs() < 1e-12);
    // overall histogram [6, 6, 1, 1]
    let p = [6.0f64, 6.0, 1.0, 1.0].map(|c| c / 14.0);
    let h: f64 = -p.iter().map(|p| p * p.ln()).sum::<f64>();
    assert!((r.perplexity - h.exp()).abs() < 1e-12);
    assert_eq!(r.usage, 1.0);
}
