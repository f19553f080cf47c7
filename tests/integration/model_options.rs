//! Model options: one-channel models for greyscale data, and the decoder's normalization.

use movq::config::{DecoderNorm, RunConfig};

use crate::harness::{data_dir, movq, quick_config, s, tiny_config, tmp, train_vq};

fn fashion() -> String {
    format!(
        "idx:{}:test",
        data_dir().join("fashion-mnist-mini").display()
    )
}

fn run_config(run: &std::path::Path) -> RunConfig {
    RunConfig::load(&run.join("config.json")).unwrap()
}

/// Every pixel of every PNG under `dir` has R = G = B.
fn all_grey(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|e| e == "png") {
            let img = image::open(&p).unwrap().to_rgb8();
            assert!(
                img.pixels().all(|px| px[0] == px[1] && px[1] == px[2]),
                "{} has colour",
                p.display()
            );
            n += 1;
        }
    }
    n
}

#[test]
fn greyscale_data_trains_a_one_channel_model_end_to_end() {
    let dir = tmp();
    let cfg = tiny_config(dir.path(), |v| {
        v["train"]["steps"] = 3.into();
        v["train"]["batch_size"] = 4.into();
        v["train"]["val_images"] = 4.into();
        v["loss"]["discriminator"]["start"] = 1.into();
        v["transformer"]["train"]["steps"] = 2.into();
        v["transformer"]["train"]["batch_size"] = 4.into();
    });
    let vq = dir.path().join("vq");
    train_vq(&cfg, &fashion(), &vq).ok();
    // recorded in the run's config
    let c = run_config(&vq);
    assert_eq!(c.model.image_channels, Some(1));
    let tensors = movq::train::run_dir::read_tensors(
        &movq::train::RunDir::open(&vq)
            .unwrap()
            .require_latest()
            .unwrap()
            .model,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert_eq!(tensors["encoder.conv_in.weight"].dims()[1], 1);
    assert_eq!(tensors["decoder.conv_out.weight"].dims()[0], 1);
    // reconstructions and samples are grey
    let rec = dir.path().join("rec");
    movq(&[
        "reconstruct",
        "--model",
        s(&vq),
        "--input",
        &fashion(),
        "--out",
        s(&rec),
        "--device",
        "cpu",
    ])
    .ok();
    assert!(all_grey(&rec) >= 20);
    let tr = dir.path().join("tr");
    movq(&[
        "train-transformer",
        "--vq",
        s(&vq),
        "--data",
        &fashion(),
        "--out",
        s(&tr),
        "--device",
        "cpu",
    ])
    .ok();
    let samples = dir.path().join("samples");
    movq(&[
        "sample",
        "--model",
        s(&tr),
        "--num",
        "4",
        "--out",
        s(&samples),
        "--device",
        "cpu",
    ])
    .ok();
    assert_eq!(all_grey(&samples), 5, "4 samples and the grid");

    // RGB data keeps three channels; an explicit setting wins over the data
    let rgb = dir.path().join("rgb");
    train_vq(&quick_config(dir.path(), 1), "builtin:shapes:16", &rgb).ok();
    assert_eq!(run_config(&rgb).model.image_channels, Some(3));
    let forced = dir.path().join("forced");
    let cfg3 = tiny_config(dir.path(), |v| {
        v["train"]["steps"] = 1.into();
        v["train"]["batch_size"] = 2.into();
        v["model"]["image_channels"] = 3.into();
    });
    train_vq(&cfg3, &fashion(), &forced).ok();
    assert_eq!(run_config(&forced).model.image_channels, Some(3));
    // a value other than 1 or 3 is refused, naming the field
    let bad = tiny_config(dir.path(), |v| v["model"]["image_channels"] = 2.into());
    train_vq(&bad, &fashion(), &dir.path().join("bad")).fails_with(&["model.image_channels", "2"]);
    assert!(!dir.path().join("bad").exists());
}

#[test]
fn configs_without_the_new_fields_load_as_before() {
    // a run directory written before `image_channels` and `decoder_norm` existed
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny.json"),
    )
    .unwrap();
    let cfg = RunConfig::parse(&text, "tiny.json").unwrap();
    assert_eq!(cfg.model.image_channels, None);
    assert_eq!(cfg.model.image_channels(), 3);
    assert_eq!(cfg.model.decoder_norm, DecoderNorm::Spatial);
}

#[test]
fn a_group_norm_decoder_trains_without_the_modulation() {
    let dir = tmp();
    let cfg = tiny_config(dir.path(), |v| {
        v["model"]["decoder_norm"] = "group".into();
        v["train"]["steps"] = 3.into();
        v["train"]["batch_size"] = 4.into();
        v["train"]["val_images"] = 4.into();
        v["loss"]["discriminator"]["start"] = 1.into();
    });
    let run = dir.path().join("run");
    train_vq(&cfg, "builtin:shapes:16", &run).ok();
    assert_eq!(run_config(&run).model.decoder_norm, DecoderNorm::Group);
    let tensors = movq::train::run_dir::read_tensors(
        &movq::train::RunDir::open(&run)
            .unwrap()
            .require_latest()
            .unwrap()
            .model,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    // the decoder's norms have their affine weights and no modulation convolutions
    assert!(tensors.contains_key("decoder.norm_out.weight"));
    assert!(!tensors
        .keys()
        .any(|k| k.starts_with("decoder.") && k.contains("conv_y")));
    // and the spatial decoder has them
    let spatial = dir.path().join("spatial");
    train_vq(&quick_config(dir.path(), 1), "builtin:shapes:16", &spatial).ok();
    let t = movq::train::run_dir::read_tensors(
        &movq::train::RunDir::open(&spatial)
            .unwrap()
            .require_latest()
            .unwrap()
            .model,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(t.contains_key("decoder.norm_out.conv_y.weight"));
    // an unknown kind is refused
    let bad = tiny_config(dir.path(), |v| v["model"]["decoder_norm"] = "batch".into());
    train_vq(&bad, "builtin:shapes:16", &dir.path().join("bad"))
        .fails_with(&["batch", "spatial", "group"]);
}

#[test]
fn every_preset_and_config_file_loads() {
    for (name, _) in movq::config::PRESETS {
        RunConfig::resolve(name).unwrap_or_else(|e| panic!("preset {name}: {e:#}"));
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut files = 0;
    for dir in [root.clone(), root.join("ablation")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                RunConfig::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
                files += 1;
            }
        }
    }
    assert!(files >= movq::config::PRESETS.len() + 4);
}

/// `configs/fashion-32-f2-t16.json` is the `fashion-32-f2` preset with another transformer: its
/// size, steps and learning rate, nothing else (so run I's tokenizer recipe is the preset's).
#[test]
fn the_large_transformer_config_differs_from_its_preset_only_in_the_transformer() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let preset = RunConfig::resolve("fashion-32-f2").unwrap();
    let mut cfg = RunConfig::load(&root.join("fashion-32-f2-t16.json")).unwrap();
    let tr = cfg.transformer.as_mut().unwrap();
    assert_eq!(
        (
            tr.model.layers,
            tr.model.width,
            tr.model.heads,
            tr.model.mlp
        ),
        (16, 512, 8, 2048)
    );
    assert_eq!((tr.train.steps, tr.train.lr), (10_000, 3e-4));
    let base = preset.transformer.as_ref().unwrap();
    tr.model = base.model.clone();
    tr.train.steps = base.train.steps;
    tr.train.lr = base.train.lr;
    assert_eq!(cfg, preset);
}

#[test]
fn the_ablation_runs_differ_only_in_decoder_norm_and_quantizer_channels() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/ablation");
    let reference = RunConfig::load(&root.join("fashion-spatial-c2.json")).unwrap();
    for (norm, channels) in [
        (DecoderNorm::Group, 1),
        (DecoderNorm::Group, 2),
        (DecoderNorm::Spatial, 1),
    ] {
        let name = format!(
            "fashion-{}-c{channels}.json",
            format!("{norm:?}").to_lowercase()
        );
        let mut cfg = RunConfig::load(&root.join(name)).unwrap();
        assert_eq!(
            (cfg.model.decoder_norm, cfg.model.quantizer.channels),
            (norm, channels)
        );
        cfg.model.decoder_norm = reference.model.decoder_norm;
        cfg.model.quantizer.channels = reference.model.quantizer.channels;
        assert_eq!(cfg, reference);
    }
}
