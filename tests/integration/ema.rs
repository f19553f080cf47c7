//! The weights' moving average (`train.ema_decay`): saved with every checkpoint, validated,
//! used by inference unless `--weights raw`, carried into a stage-2 run's tokenizer.

use crate::harness::{movq, s, tiny_config, tmp, train_vq};

fn png_bytes(dir: &std::path::Path) -> Vec<u8> {
    std::fs::read(dir.join("grid.png")).unwrap()
}

#[test]
fn inference_uses_the_moving_average_unless_asked_for_raw_weights() {
    let dir = tmp();
    let cfg = tiny_config(dir.path(), |v| {
        crate::harness::small_batches(v);
        v["train"]["steps"] = 6.into();
        v["train"]["ema_decay"] = 0.9.into();
        v["transformer"]["train"]["steps"] = 2.into();
        v["transformer"]["train"]["ema_decay"] = 0.9.into();
    });
    let vq = dir.path().join("vq");
    train_vq(&cfg, "builtin:shapes:24", &vq).ok();
    assert!(vq
        .join("checkpoints/step-0000006.ema.safetensors")
        .is_file());
    // validation reports both
    let log = std::fs::read_to_string(vq.join("metrics.jsonl")).unwrap();
    let val = log.lines().rev().find(|l| l.contains("\"val\"")).unwrap();
    assert!(
        val.contains("\"psnr\"") && val.contains("\"ema_psnr\""),
        "{val}"
    );
    let rec = |weights: Option<&str>| {
        let out = dir
            .path()
            .join(format!("rec-{}", weights.unwrap_or("default")));
        let mut args = vec![
            "reconstruct",
            "--model",
            s(&vq),
            "--input",
            "builtin:shapes:4",
            "--out",
            s(&out),
            "--device",
            "cpu",
        ];
        if let Some(w) = weights {
            args.extend(["--weights", w]);
        }
        movq(&args).ok();
        png_bytes(&out)
    };
    let (default, ema, raw) = (rec(None), rec(Some("ema")), rec(Some("raw")));
    assert_eq!(default, ema);
    assert_ne!(default, raw);
    // a stage-2 run keeps the tokenizer's average and has its own
    let tr = dir.path().join("tr");
    movq(&[
        "train-transformer",
        "--vq",
        s(&vq),
        "--data",
        "builtin:shapes:24",
        "--out",
        s(&tr),
        "--device",
        "cpu",
    ])
    .ok();
    assert!(tr
        .join("vq/checkpoints/step-0000006.ema.safetensors")
        .is_file());
    assert!(tr
        .join("checkpoints/step-0000002.ema.safetensors")
        .is_file());
    movq(&[
        "sample",
        "--model",
        s(&tr),
        "--num",
        "2",
        "--out",
        s(&dir.path().join("samples")),
        "--device",
        "cpu",
    ])
    .ok();

    // a run without an average: --weights ema is a clear error
    let plain = dir.path().join("plain");
    let cfg_plain = tiny_config(dir.path(), |v| {
        v["train"]["steps"] = 1.into();
        v["train"]["batch_size"] = 2.into();
    });
    train_vq(&cfg_plain, "builtin:shapes:8", &plain).ok();
    movq(&[
        "reconstruct",
        "--model",
        s(&plain),
        "--input",
        "builtin:shapes:2",
        "--out",
        s(&dir.path().join("x")),
        "--weights",
        "ema",
        "--device",
        "cpu",
    ])
    .fails_with(&["--weights ema", "no moving average", "--weights raw"]);
    // out of range
    let bad = tiny_config(dir.path(), |v| v["train"]["ema_decay"] = 1.5.into());
    train_vq(&bad, "builtin:shapes:8", &dir.path().join("bad"))
        .fails_with(&["train.ema_decay", "1.5"]);
}
