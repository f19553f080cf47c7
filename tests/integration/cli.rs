//! The command line end to end, and its handling of bad input.

use std::path::Path;

use crate::harness::{data_dir, movq, quick_config, s, tiny_config, tmp, train_vq};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn builtin_shapes_train_reconstruct_eval_compare() {
    let dir = tmp();
    let cfg = quick_config(dir.path(), 6);
    let run = dir.path().join("run");
    let r = movq(&[
        "train-vq",
        "--config",
        s(&cfg),
        "--data",
        "builtin:shapes:48",
        "--out",
        s(&run),
        "--device",
        "cpu",
        "--seed",
        "3",
    ]);
    r.ok();
    assert_eq!(json(&r.stdout)["status"], "finished");
    for f in [
        "config.json",
        "latest",
        "metrics.jsonl",
        "checkpoints/step-0000006.safetensors",
        "checkpoints/step-0000006.train.safetensors",
    ] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    let saved = json(&std::fs::read_to_string(run.join("config.json")).unwrap());
    assert_eq!(saved["seed"], 3);
    let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let val = log
        .lines()
        .map(json)
        .find(|v| v["split"] == "val")
        .expect("a validation record");
    for k in ["psnr", "ssim", "codebook_usage", "perplexity"] {
        assert!(val[k].is_number(), "{k} in {val}");
    }

    // reconstruct a few real photos (one greyscale) with the shapes model
    let out = dir.path().join("rec");
    let photos = data_dir().join("photos");
    let r = movq(&[
        "reconstruct",
        "--model",
        s(&run),
        "--input",
        s(&photos),
        "--out",
        s(&out),
        "--device",
        "cpu",
    ]);
    r.ok();
    let m = json(&std::fs::read_to_string(out.join("metrics.json")).unwrap());
    assert_eq!(m["images"].as_array().unwrap().len(), 6);
    assert!(m["mean"]["psnr"].as_f64().unwrap() > 5.0);
    assert!(m["codebook"]["usage_per_channel"].as_array().unwrap().len() == 2);
    assert!(out.join("camera.png").is_file() && out.join("grid.png").is_file());
    let rec = image::open(out.join("camera.png")).unwrap();
    assert_eq!((rec.width(), rec.height()), (32, 32));

    // built-in images as input
    let out2 = dir.path().join("rec2");
    movq(&[
        "reconstruct",
        "--model",
        s(&run),
        "--input",
        "builtin:shapes:3",
        "--out",
        s(&out2),
        "--device",
        "cpu",
    ])
    .ok();
    assert!(out2.join("000002.png").is_file());

    // eval over a folder, as JSON
    let r = movq(&[
        "eval",
        "--model",
        s(&run),
        "--data",
        s(&photos),
        "--json",
        "--device",
        "cpu",
    ]);
    r.ok();
    let e = json(&r.stdout);
    assert_eq!(e["images"], 6);
    assert!(
        e["ssim"].as_f64().unwrap() > 0.0 && e["codebook"]["perplexity"].as_f64().unwrap() >= 1.0
    );

    // compare a reconstruction with itself
    let img = out.join("astronaut.png");
    let r = movq(&["compare", s(&img), s(&img)]);
    r.ok();
    assert_eq!(json(&r.stdout)["ssim"], 1.0);

    // --mask-ratio needs stage 2, and says so
    movq(&[
        "reconstruct",
        "--model",
        s(&run),
        "--input",
        s(&img),
        "--out",
        s(&out),
        "--mask-ratio",
        "0.95",
    ])
    .fails_with(&["--mask-ratio", "stage-2"]);
}

/// Copies the committed photos plus a corrupt file into `dir`.
fn photos_with_a_corrupt_file(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for e in std::fs::read_dir(data_dir().join("photos")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    std::fs::write(dir.join("broken.png"), b"\x89PNG\r\n\x1a\nnot really a png").unwrap();
}

#[test]
fn real_photos_with_a_corrupt_file_train_with_a_warning() {
    let dir = tmp();
    let data = dir.path().join("photos");
    photos_with_a_corrupt_file(&data);
    let cfg = quick_config(dir.path(), 4);
    let run = dir.path().join("run");
    let r = train_vq(&cfg, s(&data), &run);
    r.ok();
    assert!(r.stderr.contains("broken.png"), "{}", r.stderr);
    assert!(
        r.stderr.contains("1 unreadable skipped") || r.stderr.contains("1 of 7"),
        "{}",
        r.stderr
    );
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = tmp();
    let cfg = quick_config(dir.path(), 2);
    let out = dir.path().join("run");
    let train = |data: &str, cfg: &Path, out: &Path, extra: &[&str]| {
        let mut args = vec![
            "train-vq",
            "--config",
            s(cfg),
            "--data",
            data,
            "--out",
            s(out),
        ];
        args.extend_from_slice(extra);
        movq(&args)
    };
    // missing data folder: error, and nothing written
    train("/nonexistent/images", &cfg, &out, &[])
        .fails_with(&["/nonexistent/images", "does not exist"]);
    assert!(!out.exists(), "a failed start must not create the run");
    // empty folder
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    train(s(&empty), &cfg, &out, &[]).fails_with(&["no usable image", "empty"]);
    // unknown config key, named
    let bad = tiny_config(dir.path(), |v| v["model"]["chanels"] = 3.into());
    train("builtin:shapes:8", &bad, &out, &[]).fails_with(&["chanels", s(&bad)]);
    // invalid value, named
    let bad = tiny_config(dir.path(), |v| v["model"]["norm_groups"] = 7.into());
    train("builtin:shapes:8", &bad, &out, &[]).fails_with(&["model.norm_groups (7)"]);
    // unknown preset
    movq(&[
        "train-vq",
        "--config",
        "huge",
        "--data",
        "builtin:shapes",
        "--out",
        s(&out),
    ])
    .fails_with(&["--config huge", "tiny"]);
    // CUDA on a CPU-only build
    #[cfg(not(feature = "cuda"))]
    train("builtin:shapes:8", &cfg, &out, &["--device", "cuda"])
        .fails_with(&["built without CUDA", "--features cuda"]);
    // an output folder that cannot be created (its parent is a file)
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    train("builtin:shapes:8", &cfg, &file.join("run"), &[])
        .fails_with(&["cannot create output folder", "a-file"]);
    // a missing run directory
    movq(&[
        "reconstruct",
        "--model",
        "/nonexistent/run",
        "--input",
        s(&cfg),
        "--out",
        s(&out),
    ])
    .fails_with(&["/nonexistent/run", "does not exist"]);
    // resume without a run
    movq(&[
        "train-vq",
        "--data",
        "builtin:shapes:8",
        "--out",
        s(&dir.path().join("none")),
        "--resume",
    ])
    .fails_with(&["does not exist"]);
    // a second run into the same folder is refused
    train("builtin:shapes:8", &cfg, &out, &["--device", "cpu"]).ok();
    train("builtin:shapes:8", &cfg, &out, &["--device", "cpu"])
        .fails_with(&["already holds a run", "--resume"]);
    // a checkpoint of another configuration
    let other = tiny_config(dir.path(), |v| {
        v["model"]["quantizer"]["codebook_size"] = 64.into()
    });
    std::fs::write(
        out.join("config.json"),
        std::fs::read_to_string(&other).unwrap(),
    )
    .unwrap();
    movq(&[
        "eval",
        "--model",
        s(&out),
        "--data",
        "builtin:shapes:4",
        "--device",
        "cpu",
    ])
    .fails_with(&["quantize.", "configuration"]);
    // a bad flag value is a usage error (exit 2)
    let r = movq(&[
        "train-vq",
        "--config",
        s(&cfg),
        "--data",
        "builtin:shapes",
        "--out",
        s(&out),
        "--steps",
        "many",
    ]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
}
