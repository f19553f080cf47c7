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
        crate::harness::small_batches(v);
        v["train"]["steps"] = 2.into();
        v["transformer"]["train"]["steps"] = 2.into();
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
        crate::harness::small_batches(v);
        v["train"]["steps"] = 4.into();
        v["train"]["sample_every"] = 2.into();
        v["transformer"]["train"]["steps"] = 3.into();
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

/// One value of a TensorBoard event file: `(step, tag, scalar)`, the scalar `None` for an image
/// (whose PNG's size is checked on reading).
type Logged = (u64, String, Option<f32>);

/// Reads an event file back: every record's framing and both masked CRC-32Cs checked, every
/// event's summary values decoded, session restarts as `(step, "START", None)`.
fn read_events(path: &Path) -> Vec<Logged> {
    use movq::train::tensorboard::masked_crc;
    let data = std::fs::read(path).unwrap();
    let (mut at, mut out) = (0, Vec::new());
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    let mut version = None;
    while at < data.len() {
        let len_bytes = &data[at..at + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        assert_eq!(u32_at(&data, at + 8), masked_crc(len_bytes), "length CRC");
        let body = &data[at + 12..at + 12 + len];
        assert_eq!(u32_at(&data, at + 12 + len), masked_crc(body), "data CRC");
        at += 12 + len + 4;
        let mut step = 0;
        for (field, value) in fields(body) {
            match (field, value) {
                (2, Field::Varint(s)) => step = s,
                (3, Field::Bytes(v)) => version = Some(String::from_utf8(v).unwrap()),
                (5, Field::Bytes(summary)) => {
                    for (_, value) in fields(&summary) {
                        let Field::Bytes(value) = value else { panic!() };
                        let (mut tag, mut scalar) = (String::new(), None);
                        for (f, v) in fields(&value) {
                            match (f, v) {
                                (1, Field::Bytes(t)) => tag = String::from_utf8(t).unwrap(),
                                (2, Field::Fixed32(x)) => scalar = Some(f32::from_bits(x)),
                                (4, Field::Bytes(img)) => {
                                    let png = fields(&img)
                                        .into_iter()
                                        .find_map(|(f, v)| match (f, v) {
                                            (4, Field::Bytes(p)) => Some(p),
                                            _ => None,
                                        })
                                        .unwrap();
                                    image::load_from_memory(&png).unwrap();
                                }
                                _ => {}
                            }
                        }
                        out.push((step, tag, scalar));
                    }
                }
                (7, Field::Bytes(_)) => out.push((step, "START".into(), None)),
                _ => {}
            }
        }
    }
    assert_eq!(version.as_deref(), Some("brain.Event:2"));
    out
}

enum Field {
    Varint(u64),
    Fixed64,
    Fixed32(u32),
    Bytes(Vec<u8>),
}

/// The fields of a protocol-buffer message.
fn fields(mut b: &[u8]) -> Vec<(u64, Field)> {
    fn varint(b: &mut &[u8]) -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let byte = b[0];
            *b = &b[1..];
            v |= ((byte & 0x7f) as u64) << shift;
            if byte < 0x80 {
                return v;
            }
            shift += 7;
        }
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b);
        let value = match key & 7 {
            0 => Field::Varint(varint(&mut b)),
            1 => {
                b = &b[8..];
                Field::Fixed64
            }
            5 => {
                let x = u32::from_le_bytes(b[..4].try_into().unwrap());
                b = &b[4..];
                Field::Fixed32(x)
            }
            2 => {
                let n = varint(&mut b) as usize;
                let v = b[..n].to_vec();
                b = &b[n..];
                Field::Bytes(v)
            }
            w => panic!("wire type {w}"),
        };
        out.push((key >> 3, value));
    }
    out
}

#[test]
fn tensorboard_event_files_hold_every_metric_and_the_previews() {
    let dir = tmp();
    let cfg = tiny_config(dir.path(), |v| {
        v["train"]["steps"] = 4.into();
        v["train"]["batch_size"] = 4.into();
        v["train"]["val_images"] = 4.into();
        v["train"]["log_every"] = 2.into();
        v["train"]["val_every"] = 2.into();
        v["train"]["checkpoint_every"] = 2.into();
        v["train"]["sample_every"] = 4.into();
    });
    let run = dir.path().join("vq");
    train_vq(&cfg, "builtin:shapes:32", &run).ok();
    let files: Vec<_> = std::fs::read_dir(run.join("tb"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    let events = read_events(&files[0]);
    // every number of metrics.jsonl is in the event file, at its step
    let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let mut count = 0;
    for line in log.lines() {
        let rec: serde_json::Value = serde_json::from_str(line).unwrap();
        let step = rec["step"].as_u64().unwrap();
        let split = rec["split"].as_str().unwrap();
        for (k, v) in rec.as_object().unwrap() {
            let Some(v) = v.as_f64() else { continue };
            if k == "step" {
                continue;
            }
            let tag = format!("{split}/{k}");
            let found = events
                .iter()
                .find(|(s, t, _)| *s == step && *t == tag)
                .unwrap_or_else(|| panic!("{tag} at step {step} is missing"));
            assert_eq!(found.2, Some(v as f32), "{tag}");
            count += 1;
        }
    }
    assert!(count > 10);
    for tag in [
        "train/loss",
        "train/lr",
        "train/grad_norm",
        "train/steps_per_s",
        "val/psnr",
    ] {
        assert!(events.iter().any(|(_, t, _)| t == tag), "{tag}");
    }
    assert!(events
        .iter()
        .any(|(s, t, v)| *s == 4 && t == "samples" && v.is_none()));
    // a resumed run writes a new file that restarts the session at its checkpoint
    movq(&[
        "train-vq",
        "--data",
        "builtin:shapes:32",
        "--out",
        s(&run),
        "--resume",
        "--steps",
        "6",
        "--device",
        "cpu",
    ])
    .ok();
    let mut files: Vec<_> = std::fs::read_dir(run.join("tb"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.retain(|f| {
        !read_events(f)
            .iter()
            .any(|e| e.1 == "train/loss" && e.0 == 2)
    });
    assert_eq!(files.len(), 1, "the resumed session's own file");
    let resumed = read_events(&files[0]);
    assert_eq!(resumed[0], (5, "START".to_string(), None));
    assert!(resumed.iter().any(|(s, t, _)| *s == 6 && t == "train/loss"));
}

#[test]
fn plot_overlays_runs_and_names_what_it_cannot_plot() {
    let dir = tmp();
    let cfg = quick_config(dir.path(), 4);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    train_vq(&cfg, "builtin:shapes:16", &a).ok();
    train_vq(&cfg, "builtin:shapes:24", &b).ok();
    let out = dir.path().join("plots/curves.png");
    movq(&[
        "plot",
        s(&a),
        s(&b),
        "--out",
        s(&out),
        "--metrics",
        "loss,psnr,rec",
    ])
    .ok();
    let img = image::open(&out).unwrap().to_rgb8();
    let count = |c: image::Rgb<u8>| img.pixels().filter(|p| **p == c).count();
    // one colour per run, three panels
    use movq::data::chart::PALETTE;
    assert!(count(PALETTE[0]) > 300 && count(PALETTE[1]) > 300);
    assert_eq!(count(PALETTE[2]), 0);
    assert!(img.height() > 3 * 200);
    // the default: loss and psnr
    movq(&["plot", s(&a), "--out", s(&dir.path().join("d.png"))]).ok();
    // bad input
    movq(&["plot", s(&a), "--out", s(&out), "--metrics", "los"]).fails_with(&[
        "no run logged `los`",
        "loss",
        "psnr",
    ]);
    movq(&["plot", "/nonexistent/run", "--out", s(&out)])
        .fails_with(&["/nonexistent/run", "does not exist"]);
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    movq(&["plot", s(&empty), "--out", s(&dir.path().join("e.png"))])
        .fails_with(&["has no metrics.jsonl"]);
    assert!(!dir.path().join("e.png").exists());
}

#[test]
fn the_rotation_trick_and_the_entropy_penalty_train_resume_exactly_and_run_on_ranks() {
    let dir = tmp();
    let cfg = tiny_config(dir.path(), |v| {
        v["train"]["steps"] = 4.into();
        v["train"]["batch_size"] = 4.into();
        v["train"]["val_images"] = 4.into();
        v["train"]["checkpoint_every"] = 2.into();
        v["model"]["quantizer"]["gradient"] = "rotation".into();
        v["model"]["quantizer"]["entropy_weight"] = 0.1.into();
        v["model"]["quantizer"]["entropy_temperature"] = 0.5.into();
    });
    let straight = dir.path().join("straight");
    train_vq(&cfg, "builtin:shapes:16", &straight).ok();
    let cut = dir.path().join("cut");
    movq(&[
        "train-vq",
        "--config",
        s(&cfg),
        "--data",
        "builtin:shapes:16",
        "--out",
        s(&cut),
        "--steps",
        "2",
        "--device",
        "cpu",
    ])
    .ok();
    movq(&[
        "train-vq",
        "--data",
        "builtin:shapes:16",
        "--out",
        s(&cut),
        "--resume",
        "--steps",
        "4",
        "--device",
        "cpu",
    ])
    .ok();
    let file = "checkpoints/step-0000004.safetensors";
    assert_eq!(
        std::fs::read(straight.join(file)).unwrap(),
        std::fs::read(cut.join(file)).unwrap(),
        "resumed weights differ"
    );
    let config = std::fs::read_to_string(straight.join("config.json")).unwrap();
    assert!(config.contains("\"rotation\"") && config.contains("\"entropy_weight\": 0.1"));
    movq(&[
        "train-vq",
        "--config",
        s(&cfg),
        "--data",
        "builtin:shapes:16",
        "--out",
        s(&dir.path().join("ranks")),
        "--ranks",
        "2",
        "--device",
        "cpu",
    ])
    .ok();
    // bad values name the field
    let bad = dir.path().join("bad");
    let negative = tiny_config(dir.path(), |v| {
        v["model"]["quantizer"]["entropy_weight"] = (-1.0).into()
    });
    train_vq(&negative, "builtin:shapes:16", &bad)
        .fails_with(&["model.quantizer.entropy_weight must be non-negative"]);
    let unknown = tiny_config(dir.path(), |v| {
        v["model"]["quantizer"]["gradient"] = "gumbel".into()
    });
    train_vq(&unknown, "builtin:shapes:16", &bad).fails_with(&["gumbel", "ste", "rotation"]);
    assert!(!bad.exists());
}

#[test]
fn fid_while_training_is_logged_for_both_stages() {
    let dir = tmp();
    let cfg = tiny_config(dir.path(), |v| {
        crate::harness::small_batches(v);
        v["train"]["steps"] = 2.into();
        v["train"]["fid_every"] = 2.into();
        v["transformer"]["train"]["steps"] = 2.into();
        v["transformer"]["train"]["fid_every"] = 1.into();
        v["transformer"]["train"]["fid_samples"] = 4.into();
    });
    let vq = dir.path().join("vq");
    // bad input first: each one line, nothing written
    train_vq(&cfg, "builtin:shapes:32", &vq).fails_with(&["train.fid_every is 2", "--fid-ref"]);
    let plain = quick_config(dir.path(), 2);
    let stats = dir.path().join("stats.safetensors");
    let with_ref = |cfg: &Path, out: &Path, stats: &Path, cache: &Path| {
        crate::harness::movq_with_cache(
            &[
                "train-vq",
                "--config",
                s(cfg),
                "--data",
                "builtin:shapes:32",
                "--out",
                s(out),
                "--fid-ref",
                s(stats),
                "--device",
                "cpu",
            ],
            cache,
        )
    };
    let no_cache = std::env::temp_dir().join("movq-tests-no-weights");
    with_ref(&plain, &vq, &stats, &no_cache).fails_with(&["measures no FID"]);
    with_ref(&cfg, &vq, &dir.path().join("none.safetensors"), &no_cache)
        .fails_with(&["--fid-ref", "none.safetensors"]);
    assert!(!vq.exists());
    // with the Inception weights (installed by scripts/get-weights)
    let cache = movq::metrics::cache_dir();
    if !cache.join("fid-inception.safetensors").is_file() {
        crate::harness::weights_missing("the FID Inception weights");
        return;
    }
    crate::harness::movq_with_cache(
        &[
            "fid",
            "builtin:shapes:8",
            "--save-stats",
            s(&stats),
            "--device",
            "cpu",
        ],
        &cache,
    )
    .ok();
    with_ref(&cfg, &vq, &stats, &cache).ok();
    let logged = |run: &Path, key: &str| -> Vec<(u64, f64)> {
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["split"] == "fid")
            .map(|r| (r["step"].as_u64().unwrap(), r[key].as_f64().unwrap()))
            .collect()
    };
    let rfid = logged(&vq, "rfid");
    assert_eq!(rfid.len(), 1);
    assert!(rfid[0].0 == 2 && rfid[0].1 > 0.0 && rfid[0].1.is_finite());
    let tr = dir.path().join("tr");
    crate::harness::movq_with_cache(
        &[
            "train-transformer",
            "--vq",
            s(&vq),
            "--data",
            "builtin:shapes:32",
            "--out",
            s(&tr),
            "--fid-ref",
            s(&stats),
            "--device",
            "cpu",
        ],
        &cache,
    )
    .ok();
    let fid = logged(&tr, "fid");
    assert_eq!(fid.iter().map(|f| f.0).collect::<Vec<_>>(), vec![1, 2]);
    assert!(fid.iter().all(|f| f.1 > 0.0 && f.1.is_finite()));
}
