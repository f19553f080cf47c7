//! FID: the statistics and the Fréchet distance against scipy's `sqrtm`-based formula (the one
//! pytorch-fid uses) on committed feature sets, and the statistics file round trip.

use candle_core::Device;
use movq::metrics::fid::{frechet_distance, FeatureStats};

use crate::harness::{data_dir, tmp};

fn sets() -> (FeatureStats, FeatureStats) {
    let t =
        candle_core::safetensors::load(data_dir().join("fid-features.safetensors"), &Device::Cpu)
            .unwrap();
    (
        FeatureStats::from_features(&t["a"]).unwrap(),
        FeatureStats::from_features(&t["b"]).unwrap(),
    )
}

#[test]
fn frechet_distance_matches_scipy() {
    // numpy.cov + scipy.linalg.sqrtm(s1 @ s2) on the same features: 55.7353653414317
    let (a, b) = sets();
    let want = 55.7353653414317;
    for got in [
        frechet_distance(&a, &b).unwrap(),
        frechet_distance(&b, &a).unwrap(),
    ] {
        assert!((got - want).abs() / want < 1e-6, "FID {got}, scipy {want}");
    }
    let same = frechet_distance(&a, &a).unwrap();
    assert!(same.abs() < 1e-6, "FID(A, A) = {same}");
}

/// Sets of fewer images than feature dimensions (a class of `eval-samples`) have singular
/// covariances: the distance takes the low-rank form, and the file-loaded form (covariance only)
/// agrees with it and with scipy.
#[test]
fn frechet_distance_of_small_sets_matches_scipy() {
    let t =
        candle_core::safetensors::load(data_dir().join("fid-features.safetensors"), &Device::Cpu)
            .unwrap();
    let rows = |k: &str, n: usize| FeatureStats::from_features(&t[k].narrow(0, 0, n).unwrap());
    let (a20, b25, b) = (
        rows("a", 20).unwrap(),
        rows("b", 25).unwrap(),
        rows("b", 150).unwrap(),
    );
    // numpy.cov + scipy.linalg.sqrtm(s1 @ s2) on the first 20 rows of A and 25 (or all 150) of B
    for (x, y, want) in [
        (&a20, &b25, 191.0316974621462),
        (&a20, &b, 143.49964680475819),
    ] {
        for got in [
            frechet_distance(x, y).unwrap(),
            frechet_distance(y, x).unwrap(),
            frechet_distance(&x.without_factor(), y).unwrap(),
            frechet_distance(&x.without_factor(), &y.without_factor()).unwrap(),
        ] {
            assert!((got - want).abs() / want < 1e-6, "FID {got}, scipy {want}");
        }
    }
    let same = frechet_distance(&a20, &a20).unwrap();
    assert!(same.abs() < 1e-6, "FID(A, A) = {same}");
}

#[test]
fn statistics_round_trip_through_a_file() {
    let (a, b) = sets();
    let dir = tmp();
    let path = dir.path().join("a.safetensors");
    a.save(&path).unwrap();
    let back = FeatureStats::load(&path).unwrap();
    assert_eq!(back.count, 120);
    assert_eq!(back.mean, a.mean);
    assert_eq!(back.cov, a.cov);
    assert_eq!(
        frechet_distance(&back, &b).unwrap(),
        frechet_distance(&a, &b).unwrap()
    );
    let err = format!(
        "{:#}",
        FeatureStats::load(&data_dir().join("fid-features.safetensors")).unwrap_err()
    );
    assert!(err.contains("not FID statistics"), "{err}");
}

/// (photo, feature sum, l2 norm, first four features) from scripts/fid_reference.py.
type Reference = (&'static str, f64, f64, [f64; 4]);

fn check_features(net: &movq::metrics::inception::FidInception, refs: &[Reference], what: &str) {
    for (name, sum, norm, first) in refs {
        let img =
            movq::data::image::open_rgb(&data_dir().join(format!("photos/{name}.png"))).unwrap();
        let f: Vec<f32> = net
            .features(&[img])
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let got_sum: f64 = f.iter().map(|&v| v as f64).sum();
        let got_norm: f64 = f.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1e-6);
        assert!(
            rel(got_sum, *sum) < 1e-3,
            "{what} {name}: sum {got_sum} vs {sum}"
        );
        assert!(
            rel(got_norm, *norm) < 1e-3,
            "{what} {name}: norm {got_norm} vs {norm}"
        );
        for (g, w) in f.iter().zip(first) {
            assert!(
                (*g as f64 - w).abs() < 1e-3 * w.abs().max(0.1),
                "{what} {name}: {g} vs {w}"
            );
        }
    }
}

#[test]
fn reduced_inception_matches_the_torchscript_graph() {
    // FID_HELPER=… python3 scripts/fid_reference.py --tiny tests/data/fid-tiny-inception.safetensors
    let net = movq::metrics::inception::FidInception::load(
        &data_dir().join("fid-tiny-inception.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    check_features(
        &net,
        &[
            (
                "astronaut",
                22.039706361661956,
                3.392973797001694,
                [
                    0.1309816986322403,
                    0.05407417193055153,
                    1.0309555530548096,
                    0.553959846496582,
                ],
            ),
            (
                "chelsea",
                22.08394618636521,
                3.402823585671276,
                [
                    0.11471749097108841,
                    0.0621524304151535,
                    1.0376156568527222,
                    0.5570136308670044,
                ],
            ),
            (
                "camera",
                21.867620807897765,
                3.370625710154757,
                [
                    0.1126413345336914,
                    0.06043371558189392,
                    1.015215277671814,
                    0.5623443126678467,
                ],
            ),
        ],
        "reduced network",
    );
}

#[test]
fn inception_features_match_torchscript_when_installed() {
    let path = movq::metrics::cache_dir().join("fid-inception.safetensors");
    if !path.is_file() {
        crate::harness::weights_missing("the FID Inception weights");
        return;
    }
    let net = movq::metrics::inception::FidInception::load(&path, &Device::Cpu).unwrap();
    // FID_HELPER=… python3 scripts/fid_reference.py tests/data/photos/{astronaut,chelsea,camera}.png
    check_features(
        &net,
        &[
            (
                "astronaut",
                737.0559038446663,
                22.569790392239934,
                [
                    0.6282190680503845,
                    0.13784515857696533,
                    0.16846376657485962,
                    0.014745158143341541,
                ],
            ),
            (
                "chelsea",
                551.7869900408259,
                17.40655017310797,
                [
                    0.3680073618888855,
                    0.45427995920181274,
                    0.44473403692245483,
                    0.12729690968990326,
                ],
            ),
            (
                "camera",
                596.9913364279164,
                20.95604626673134,
                [
                    0.13668295741081238,
                    0.2806781828403473,
                    0.1301635056734085,
                    0.23620185256004333,
                ],
            ),
        ],
        "FID Inception",
    );
}

#[test]
fn fid_and_rfid_commands() {
    use crate::harness::{movq, quick_config, s, train_vq};
    let dir = tmp();
    let net = data_dir().join("fid-tiny-inception.safetensors");
    let photos = data_dir().join("photos");
    let fashion = format!(
        "idx:{}:test",
        data_dir().join("fashion-mnist-mini").display()
    );
    let stats = dir.path().join("photos.safetensors");
    // the first set's statistics saved, then reused: the same distance
    let first = movq(&[
        "fid",
        s(&photos),
        &fashion,
        "--save-stats",
        s(&stats),
        "--inception-weights",
        s(&net),
        "--device",
        "cpu",
    ]);
    first.ok();
    let again = movq(&[
        "fid",
        s(&stats),
        &fashion,
        "--inception-weights",
        s(&net),
        "--device",
        "cpu",
    ]);
    again.ok();
    let fid = |r: &crate::harness::Run| {
        serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()["fid"]
            .as_f64()
            .unwrap()
    };
    assert!(fid(&first) > 0.0);
    assert!((fid(&first) - fid(&again)).abs() < 1e-9 * fid(&first).max(1.0));
    // without weights: a clear error
    movq(&["fid", s(&photos), &fashion, "--device", "cpu"]).fails_with(&["scripts/get-weights"]);
    // rFID of a (barely) trained tokenizer against the saved statistics
    let run = dir.path().join("run");
    train_vq(&quick_config(dir.path(), 2), &fashion, &run).ok();
    let r = movq(&[
        "eval",
        "--model",
        s(&run),
        "--data",
        &fashion,
        "--fid-ref",
        s(&stats),
        "--inception-weights",
        s(&net),
        "--json",
        "--device",
        "cpu",
    ]);
    r.ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(v["rfid"].as_f64().unwrap().is_finite(), "{v}");
}
