//! The command line end to end, and its handling of bad input.

use std::path::Path;

use crate::harness::{data_dir, movq, quick_config, s, small_batches, tiny_config, tmp, train_vq};

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
        .fails_with(&["built without CUDA", "--features cudnn"]);
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

/// A stage-1 run and a stage-2 run on top of it, trained for a few steps on builtin:shapes.
fn pipeline(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cfg = tiny_config(dir, |v| {
        v["train"]["steps"] = 4.into();
        v["train"]["batch_size"] = 4.into();
        v["train"]["val_images"] = 4.into();
        v["transformer"]["train"]["steps"] = 6.into();
        v["transformer"]["train"]["batch_size"] = 4.into();
        v["transformer"]["train"]["val_images"] = 8.into();
        v["transformer"]["train"]["log_every"] = 2.into();
    });
    let vq = dir.join("vq");
    let tr = dir.join("tr");
    train_vq(&cfg, "builtin:shapes:48", &vq).ok();
    let r = movq(&[
        "train-transformer",
        "--vq",
        s(&vq),
        "--data",
        "builtin:shapes:48",
        "--out",
        s(&tr),
        "--device",
        "cpu",
    ]);
    r.ok();
    assert!(r.stderr.contains("16 classes"), "{}", r.stderr);
    (vq, tr)
}

fn png_bytes(dir: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn stage2_pipeline_sample_and_masked_reconstruction() {
    let dir = tmp();
    let (vq, tr) = pipeline(dir.path());
    for f in [
        "config.json",
        "tokens.safetensors",
        "vq/config.json",
        "vq/latest",
        "checkpoints/step-0000006.safetensors",
    ] {
        assert!(tr.join(f).is_file(), "missing {f}");
    }
    let log = std::fs::read_to_string(tr.join("metrics.jsonl")).unwrap();
    let val = log
        .lines()
        .map(json)
        .find(|v| v["split"] == "val")
        .expect("validation record");
    assert!(
        val["acc@0.5"].is_number() && val["loss@0.95"].is_number(),
        "{val}"
    );

    // conditional (by name and by index) and unconditional sampling; seeded
    let sample = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "sample",
            "--model",
            s(&tr),
            "--steps",
            "4",
            "--num",
            "3",
            "--batch-size",
            "2",
            "--out",
            s(out),
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        movq(&args)
    };
    let (a, b, c, d) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
        dir.path().join("d"),
    );
    let r = sample(&a, &["--class", "circle-red", "--seed", "1"]);
    r.ok();
    assert_eq!(json(&r.stdout)["class"], "circle-red");
    sample(&b, &["--class", "0", "--seed", "1"]).ok();
    sample(&c, &["--class", "0", "--seed", "2"]).ok();
    sample(&d, &["--seed", "1", "--cfg-scale", "0"]).ok();
    assert!(a.join("sample-0002.png").is_file() && a.join("grid.png").is_file());
    assert_eq!(
        png_bytes(&a),
        png_bytes(&b),
        "same seed and class must give identical PNGs"
    );
    assert_ne!(
        png_bytes(&b),
        png_bytes(&c),
        "different seeds should differ"
    );

    // bad classes
    sample(&a, &["--class", "16"]).fails_with(&["--class 16", "out of range", "16 classes"]);
    sample(&a, &["--class", "hexagon"]).fails_with(&[
        "--class hexagon",
        "unknown class name",
        "circle-red",
    ]);
    // min-p truncation: a fraction from 0 to 1, checked before anything is written
    let e = dir.path().join("e");
    sample(&e, &["--min-p", "1.5"]).fails_with(&["--min-p", "from 0 to 1", "1.5"]);
    assert!(!e.exists());
    sample(&e, &["--seed", "1", "--min-p", "0.2"]).ok();
    assert!(e.join("grid.png").is_file());

    // masked reconstruction at several ratios (figure A.1 layout) and at R = 0
    let m = dir.path().join("m");
    let r = movq(&[
        "reconstruct",
        "--model",
        s(&tr),
        "--input",
        "builtin:shapes:2",
        "--mask-ratio",
        "1,0.95,0.5",
        "--steps",
        "3",
        "--samples",
        "2",
        "--out",
        s(&m),
        "--device",
        "cpu",
    ]);
    r.ok();
    assert!(r.stdout.contains("0.950"), "{}", r.stdout);
    let report = json(&std::fs::read_to_string(m.join("metrics.json")).unwrap());
    let t = report["table"].as_array().unwrap();
    assert_eq!(t.len(), 3);
    assert_eq!(t[1]["masked_per_channel"], 244);
    assert_eq!(t[1]["visible_per_channel"], 12);
    assert_eq!(t[0]["visible_per_channel"], 0);
    let fig = image::open(m.join("grid.png")).unwrap();
    // 32 px tiles enlarged to 96 px; 2 images × 3 rows, 1 + 3 columns, the first row of each
    // image captioned (ratio, visible tokens)
    assert_eq!(fig.width(), 2 + 4 * (96 + 2), "1 + 3 columns of 96 px");
    assert!(
        fig.height() > 2 + 6 * (96 + 2),
        "captions above the masked inputs"
    );
    assert!(
        fig.height() < 2 + 6 * (96 + 2) + 2 * 96,
        "height {}",
        fig.height()
    );

    let z = dir.path().join("z");
    movq(&[
        "reconstruct",
        "--model",
        s(&tr),
        "--input",
        "builtin:shapes:2",
        "--mask-ratio",
        "0",
        "--samples",
        "1",
        "--out",
        s(&z),
        "--device",
        "cpu",
    ])
    .ok();
    let report = json(&std::fs::read_to_string(z.join("metrics.json")).unwrap());
    assert_eq!(report["masked_per_channel"], 0);
    assert_eq!(report["visible_per_channel"], 256);
    // row: original | stage-1 | masked | top-1 | random: at R = 0 top-1 and random equal stage 1, pixel for pixel
    let row = image::open(z.join("000000.png")).unwrap().to_rgb8();
    let tile = |k: u32| image::imageops::crop_imm(&row, 2 + k * 34, 2, 32, 32).to_image();
    assert!(
        tile(1) == tile(3) && tile(1) == tile(4),
        "R = 0 must reproduce the stage-1 reconstruction"
    );
    assert!(tile(1) != tile(0));

    // a stage-1 run cannot do masked reconstruction; the error says why
    movq(&[
        "reconstruct",
        "--model",
        s(&vq),
        "--input",
        "builtin:shapes:1",
        "--mask-ratio",
        "0.5",
        "--out",
        s(&z),
    ])
    .fails_with(&["--mask-ratio", "stage-2"]);
    movq(&[
        "reconstruct",
        "--model",
        s(&tr),
        "--input",
        "builtin:shapes:1",
        "--mask-ratio",
        "1.5",
        "--out",
        s(&z),
    ])
    .fails_with(&["--mask-ratio 1.5", "from 0 to 1"]);

    // resume reuses the token cache
    let r = movq(&[
        "train-transformer",
        "--vq",
        s(&vq),
        "--data",
        "builtin:shapes:48",
        "--out",
        s(&tr),
        "--resume",
        "--steps",
        "8",
        "--device",
        "cpu",
    ]);
    r.ok();
    assert!(r.stderr.contains("token cache: reusing"), "{}", r.stderr);
}

#[test]
fn stage2_bad_input() {
    let dir = tmp();
    let cfg = quick_config(dir.path(), 2);
    let vq = dir.path().join("vq");
    train_vq(&cfg, "builtin:shapes:16", &vq).ok();
    // a transformer config whose tokenizer disagrees with the stage-1 run
    let other = tiny_config(dir.path(), |v| {
        v["model"]["quantizer"]["codebook_size"] = 64.into()
    });
    movq(&[
        "train-transformer",
        "--vq",
        s(&vq),
        "--data",
        "builtin:shapes:16",
        "--out",
        s(&dir.path().join("t")),
        "--config",
        s(&other),
    ])
    .fails_with(&["codebook_size (64)", "stage-1 run's (32)"]);
    assert!(!dir.path().join("t").exists());
    // missing run directories
    movq(&[
        "train-transformer",
        "--vq",
        "/nonexistent/vq",
        "--data",
        "builtin:shapes:16",
        "--out",
        s(&dir.path().join("t")),
    ])
    .fails_with(&["/nonexistent/vq", "does not exist"]);
    movq(&[
        "sample",
        "--model",
        "/nonexistent/tr",
        "--out",
        s(&dir.path().join("o")),
    ])
    .fails_with(&["/nonexistent/tr", "does not exist"]);
    // sampling from a stage-1 run
    movq(&[
        "sample",
        "--model",
        s(&vq),
        "--out",
        s(&dir.path().join("o")),
    ])
    .fails_with(&["not a stage-2 run"]);
}

/// `movq bench --section small` measures the small models (the fashion-32 preset's tokenizer and
/// its 8 × 256 transformer over 8×8×2 tokens of 512 codes) and nothing else; the JSON lines name
/// each workload with its shape and a positive throughput.
#[test]
fn bench_small_section_measures_the_fashion_models() {
    let dir = tmp();
    let out = dir.path().join("bench.jsonl");
    movq(&[
        "bench",
        "--smoke",
        "--section",
        "small",
        "--min-iters",
        "1",
        "--target-seconds",
        "0",
        "--out",
        s(&out),
    ])
    .ok();
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .expect("bench lines")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let names: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["workload"].as_str().unwrap(),
                r["config"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        names,
        ["vq-train fashion-32", "tr-train 8x8x2", "tr-sample 8x8x2"]
    );
    for r in &rows {
        assert_eq!(r["status"], "ok", "{r}");
        assert!(r["throughput"].as_f64().unwrap() > 0.0, "{r}");
    }
    // the token layout of the small section: 8×8×2 tokens + the class token per sequence
    let tokens =
        rows[1]["throughput"].as_f64().unwrap() * rows[1]["median_ms"].as_f64().unwrap() / 1e3;
    assert!(
        (tokens - 2.0 * 129.0).abs() < 1e-6,
        "{tokens} tokens per call"
    );
}

/// `scripts/bench_table.py` joins `movq bench`'s lines with the PyTorch reference's eager and
/// compiled figures of the same workload: throughputs, both ratios, MFU against the matmul
/// peak measured in the same run, and the memory of all three.
#[test]
fn bench_table_joins_movq_eager_and_compiled() {
    let dir = tmp();
    let (movq_lines, torch_lines) = (
        dir.path().join("movq.jsonl"),
        dir.path().join("torch.jsonl"),
    );
    std::fs::write(
        &movq_lines,
        r#"{"workload":"tr-train","config":"8x8x2","batch":128,"prec":"bf16","status":"ok","throughput":200.0,"peak_alloc_gib":1.5,"peak_mem_gib":5.0}
"#,
    )
    .unwrap();
    std::fs::write(
        &torch_lines,
        r#"{"section":"ceil","mode":"matmul","prec":"bf16","status":"ok","tflops":100.0}
{"section":"small","config":"MaskGIT-small 8x256 seq 128+1","mode":"train","prec":"bf16","batch":128,"status":"ok","throughput":100.0,"flops_per_item":1e9,"peak_mem_steady_gib":3.0}
{"section":"compile","config":"MaskGIT-small 8x256 seq 128+1","mode":"train+compile","prec":"bf16","batch":128,"status":"ok","throughput":400.0,"peak_mem_steady_gib":1.0}
"#,
    )
    .unwrap();
    let out = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/bench_table.py"
        ))
        .args([&movq_lines, &torch_lines])
        .output()
        .expect("python3 runs scripts/bench_table.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    let row = table
        .lines()
        .find(|l| l.contains("transformer 8×256 train"))
        .unwrap_or_else(|| panic!("no row for the small transformer:\n{table}"));
    let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
    assert_eq!(
        cells[1..],
        [
            "128",
            "bf16",
            "200.0 tok/s",
            "100.0 tok/s",
            "400.0 tok/s",
            "2.000×",
            "0.500×",
            "0.002",
            "0.004",
            "1.5 / 5.0",
            "3.0 / 1.0"
        ]
    );
    // rows only for what movq measured
    assert_eq!(
        table
            .lines()
            .filter(|l| l.starts_with("| ") && l.contains("×"))
            .count(),
        1
    );
}

/// The training sequences a stage-2 run reports: "N training / M validation sequences".
fn sequence_counts(stderr: &str) -> (usize, usize) {
    let line = stderr
        .lines()
        .find(|l| l.contains(" training / "))
        .unwrap_or_else(|| panic!("no sequence counts in {stderr}"));
    let number_before = |word: &str| -> usize {
        let head = &line[..line.find(word).unwrap()];
        head.rsplit([' ', ','])
            .find(|w| !w.is_empty())
            .unwrap()
            .parse()
            .unwrap()
    };
    (number_before(" training"), number_before(" validation"))
}

#[test]
fn the_transformer_trains_on_mirrored_copies_unless_its_flip_is_off() {
    let dir = tmp();
    // data.flip is on in the tiny preset: the stage-1 run's images are mirrored at random
    let cfg = tiny_config(dir.path(), |v| {
        v["train"]["steps"] = 1.into();
        v["transformer"]["train"]["steps"] = 1.into();
        small_batches(v);
    });
    let vq = dir.path().join("vq");
    train_vq(&cfg, "builtin:shapes:40", &vq).ok();
    let stage2 = |name: &str, config: Option<&Path>| {
        let out = dir.path().join(name);
        let mut args = vec![
            "train-transformer",
            "--vq",
            s(&vq),
            "--data",
            "builtin:shapes:40",
        ];
        args.extend(["--out", s(&out), "--device", "cpu"]);
        if let Some(c) = config {
            args.extend(["--config", s(c)]);
        }
        let r = movq(&args);
        r.ok();
        let recorded: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        (
            sequence_counts(&r.stderr),
            recorded["transformer"]["flip"].clone(),
        )
    };
    // without the field the transformer follows data.flip, and its config stays as it was
    let ((inherited, val), field) = stage2("inherited", None);
    assert!(field.is_null(), "{field}");
    assert!(val > 0);
    // `transformer.flip: false`: each training image once
    let off = tiny_config(dir.path(), |v| {
        v["transformer"]["train"]["steps"] = 1.into();
        v["transformer"]["flip"] = false.into();
        small_batches(v);
    });
    let ((once, val_off), field) = stage2("off", Some(&off));
    assert_eq!(field, serde_json::json!(false));
    assert_eq!(val_off, val);
    assert_eq!(
        inherited,
        2 * once,
        "mirrored copies of the training images only"
    );
    assert_eq!(once + val, 40);
}
