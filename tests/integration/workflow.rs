//! The training workflow: fine-tuning (`--init`, `--freeze`) and gradient accumulation
//! (`train.accumulate`) from the command line, with their bad input.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::harness::{max_abs_diff, movq, quick_config, s, tiny_config, tmp, train_vq};

/// The tensors of a run's latest model file (`kind` "" for the weights, "train" for the
/// training state).
fn latest(run: &Path, kind: &str) -> BTreeMap<String, Tensor> {
    let step: usize = std::fs::read_to_string(run.join("latest"))
        .unwrap()
        .trim()
        .trim_start_matches("step-")
        .parse()
        .unwrap_or_else(|_| panic!("a latest file in {}", run.display()));
    let name = match kind {
        "" => format!("step-{step:07}.safetensors"),
        k => format!("step-{step:07}.{k}.safetensors"),
    };
    candle_core::safetensors::load(run.join("checkpoints").join(name), &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect()
}

fn fine_tune(args: &[&str]) -> crate::harness::Run {
    let mut all = vec!["train-vq", "--device", "cpu"];
    all.extend_from_slice(args);
    movq(&all)
}

#[test]
fn decoder_only_fine_tuning_leaves_the_frozen_parts_untouched() {
    let dir = tmp();
    let cfg = quick_config(dir.path(), 2);
    let source = dir.path().join("source");
    train_vq(&cfg, "builtin:shapes:16", &source).ok();
    let tuned = dir.path().join("tuned");
    fine_tune(&[
        "--config",
        s(&cfg),
        "--data",
        "builtin:shapes:16",
        "--out",
        s(&tuned),
        "--init",
        s(&source),
        "--freeze",
        "encoder,quantizer",
        "--steps",
        "3",
    ])
    .ok();
    let (before, after) = (latest(&source, ""), latest(&tuned, ""));
    let frozen = |n: &str| n.starts_with("encoder.") || n.starts_with("quant_conv.");
    let (mut same, mut moved) = (0, 0);
    for (name, t) in &after {
        let d = max_abs_diff(t, &before[name]);
        if frozen(name) || name.starts_with("quantize.") {
            assert_eq!(d, 0.0, "{name} is frozen but changed by {d}");
            same += 1;
        } else if d > 0.0 {
            moved += 1;
        }
    }
    assert!(same > 10 && moved > 10, "{same} frozen, {moved} trained");
    // no optimizer state for the frozen parts; the config records them; init.json the source
    let state = latest(&tuned, "train");
    assert!(state.keys().any(|k| k.contains("decoder.")));
    assert!(
        !state
            .keys()
            .any(|k| k.contains("encoder.") || k.contains("quantize.")),
        "{:?}",
        state.keys().collect::<Vec<_>>()
    );
    let config = std::fs::read_to_string(tuned.join("config.json")).unwrap();
    assert!(config.contains("\"freeze\"") && config.contains("\"quantizer\""));
    let init = std::fs::read_to_string(tuned.join("init.json")).unwrap();
    assert!(init.contains("step-0000002"), "{init}");
    // a resumed fine-tuning run keeps its frozen parts
    fine_tune(&[
        "--data",
        "builtin:shapes:16",
        "--out",
        s(&tuned),
        "--resume",
        "--steps",
        "4",
    ])
    .ok();
    let resumed = latest(&tuned, "");
    assert_eq!(
        max_abs_diff(
            &resumed["encoder.conv_in.weight"],
            &before["encoder.conv_in.weight"]
        ),
        0.0
    );
}

#[test]
fn a_fine_tuned_transformer_starts_from_its_source() {
    let dir = tmp();
    let cfg = tiny_config(dir.path(), |v| {
        v["train"]["steps"] = 2.into();
        v["train"]["batch_size"] = 4.into();
        v["train"]["val_images"] = 4.into();
        v["transformer"]["train"]["steps"] = 2.into();
        v["transformer"]["train"]["batch_size"] = 4.into();
        v["transformer"]["train"]["val_images"] = 4.into();
    });
    let vq = dir.path().join("vq");
    train_vq(&cfg, "builtin:shapes:16", &vq).ok();
    let tr = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "train-transformer",
            "--vq",
            s(&vq),
            "--data",
            "builtin:shapes:16",
            "--out",
            s(out),
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        movq(&args)
    };
    let first = dir.path().join("tr1");
    tr(&first, &[]).ok();
    // one step at a learning rate of 1e-12 leaves the source's weights as they were
    let second = dir.path().join("tr2");
    let r = tr(
        &second,
        &[
            "--init",
            s(&first),
            "--steps",
            "1",
            "--lr",
            "1e-12",
            "--batch-size",
            "4",
        ],
    );
    r.ok();
    assert!(r.stderr.contains("starting from"), "{}", r.stderr);
    let (a, b) = (latest(&first, ""), latest(&second, ""));
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        let d = max_abs_diff(t, &b[name]);
        assert!(d < 1e-6, "{name} differs by {d}");
    }
    // a stage-1 run is not a transformer's source, nor a transformer run a tokenizer's
    tr(&dir.path().join("bad"), &["--init", s(&vq)])
        .fails_with(&["--init", "not a train-transformer run"]);
    assert!(!dir.path().join("bad").exists());
    fine_tune(&[
        "--config",
        s(&cfg),
        "--data",
        "builtin:shapes:16",
        "--out",
        s(&dir.path().join("bad")),
        "--init",
        s(&first),
    ])
    .fails_with(&["--init", "a train-transformer run"]);
    assert!(!dir.path().join("bad").exists());
}

#[test]
fn fine_tuning_bad_input_says_what_is_wrong_and_writes_nothing() {
    let dir = tmp();
    let cfg = quick_config(dir.path(), 2);
    let source = dir.path().join("source");
    train_vq(&cfg, "builtin:shapes:16", &source).ok();
    let out = dir.path().join("out");
    let base = |extra: &[&str]| {
        let mut args = vec![
            "--config",
            s(&cfg),
            "--data",
            "builtin:shapes:16",
            "--out",
            s(&out),
        ];
        args.extend_from_slice(extra);
        fine_tune(&args)
    };
    base(&["--init", "/nonexistent/run"])
        .fails_with(&["--init /nonexistent/run", "no such run directory"]);
    base(&["--freeze", "encoder,bottleneck"])
        .fails_with(&["unknown part `bottleneck`", "encoder, quantizer, decoder"]);
    base(&["--freeze", "encoder,quantizer,decoder"]).fails_with(&["nothing would train"]);
    // another architecture: the field is named
    let wider = tiny_config(dir.path(), |v| v["model"]["ch"] = 32.into());
    fine_tune(&[
        "--config",
        s(&wider),
        "--data",
        "builtin:shapes:16",
        "--out",
        s(&out),
        "--init",
        s(&source),
    ])
    .fails_with(&["model.ch", "16", "32"]);
    // a model file of another model
    let file = source.join("checkpoints/step-0000002.safetensors");
    fine_tune(&[
        "--config",
        s(&wider),
        "--data",
        "builtin:shapes:16",
        "--out",
        s(&out),
        "--init",
        s(&file),
    ])
    .fails_with(&["--init", "has shape"]);
    assert!(!out.exists());
    // --init and --freeze start new runs
    fine_tune(&[
        "--data",
        "builtin:shapes:16",
        "--out",
        s(&source),
        "--resume",
        "--init",
        s(&source),
    ])
    .fails_with(&["--init starts a new run"]);
    fine_tune(&[
        "--data",
        "builtin:shapes:16",
        "--out",
        s(&source),
        "--resume",
        "--freeze",
        "encoder",
    ])
    .fails_with(&["--freeze applies to a new run"]);
}

#[test]
fn accumulation_trains_on_several_ranks_and_rejects_bad_values() {
    let dir = tmp();
    let accumulating = |n: usize| {
        tiny_config(dir.path(), move |v| {
            v["train"]["steps"] = 2.into();
            v["train"]["batch_size"] = 4.into();
            v["train"]["val_images"] = 4.into();
            v["train"]["accumulate"] = n.into();
        })
    };
    let run = dir.path().join("acc");
    movq(&[
        "train-vq",
        "--config",
        s(&accumulating(2)),
        "--data",
        "builtin:shapes:16",
        "--out",
        s(&run),
        "--ranks",
        "2",
        "--device",
        "cpu",
    ])
    .ok();
    assert!(std::fs::read_to_string(run.join("config.json"))
        .unwrap()
        .contains("\"accumulate\": 2"));
    let bad = dir.path().join("bad");
    train_vq(&accumulating(0), "builtin:shapes:16", &bad)
        .fails_with(&["train.accumulate must be positive"]);
    train_vq(&accumulating(3), "builtin:shapes:16", &bad)
        .fails_with(&["train.accumulate (3) must divide train.batch_size (4)"]);
    movq(&[
        "train-vq",
        "--config",
        s(&accumulating(4)),
        "--data",
        "builtin:shapes:16",
        "--out",
        s(&bad),
        "--ranks",
        "2",
        "--device",
        "cpu",
    ])
    .fails_with(&["do not split into train.accumulate = 4 micro-batches"]);
    assert!(!bad.exists());
}

#[test]
fn previews_show_reconstructions_and_one_sample_per_class_while_training() {
    let dir = tmp();
    let cfg = tiny_config(dir.path(), |v| {
        v["train"]["steps"] = 4.into();
        v["train"]["batch_size"] = 4.into();
        v["train"]["val_images"] = 4.into();
        v["train"]["sample_every"] = 2.into();
        v["transformer"]["train"]["steps"] = 3.into();
        v["transformer"]["train"]["batch_size"] = 4.into();
        v["transformer"]["train"]["sample_every"] = 2.into();
    });
    let vq = dir.path().join("vq");
    train_vq(&cfg, "builtin:shapes:32", &vq).ok();
    // the validation images (up to 8) above their reconstructions, 32 px with 2 px padding
    for step in [2, 4] {
        let img = image::open(vq.join(format!("samples/step-{step:07}.png"))).unwrap();
        assert_eq!(img.height(), 2 * 32 + 3 * 2);
        assert!(img.width() >= 32 + 2 * 2 && (img.width() - 2).is_multiple_of(34));
    }
    assert!(!vq.join("samples/step-0000001.png").exists());
    let tr = dir.path().join("tr");
    movq(&[
        "train-transformer",
        "--vq",
        s(&vq),
        "--data",
        "builtin:shapes:32",
        "--out",
        s(&tr),
        "--device",
        "cpu",
    ])
    .ok();
    // steps 2 and 3 (the last): one sample of each of the 16 classes, the same seed each time
    let a = image::open(tr.join("samples/step-0000002.png")).unwrap();
    assert_eq!((a.width(), a.height()), (16 * 32 + 17 * 2, 32 + 2 * 2));
    assert!(tr.join("samples/step-0000003.png").is_file());
    // nothing to show without validation images
    let bad = tiny_config(dir.path(), |v| {
        v["train"]["sample_every"] = 2.into();
        v["train"]["val_images"] = 0.into();
    });
    train_vq(&bad, "builtin:shapes:32", &dir.path().join("bad"))
        .fails_with(&["train.sample_every needs validation images"]);
    assert!(!dir.path().join("bad").exists());
}
