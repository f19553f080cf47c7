//! `movq train-vq`: train (or resume) the stage-1 autoencoder.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::cli::TrainVqArgs;
use crate::config::{ModelPart, RunConfig};
use crate::data::loader::{load_eval, spawn_train_loader, LoaderOptions};
use crate::data::Dataset;
use crate::metrics::lpips::{locate, missing_note, Backbone, Lpips};
use crate::train::init::{InitSource, StageKind};
use crate::train::setup::{self, Rank};
use crate::vq::losses::PerceptualLoss;
use crate::vq::stage::VqStage;
use crate::vq::MoVq;

pub fn run(a: TrainVqArgs) -> Result<ExitCode> {
    let mut prepared = setup::prepare(
        a.train.request(&a.out, a.config.as_deref(), &a.common)?,
        |seed| {
            let spec = a.config.as_deref().context(
            "--config is required for a new run (a file or a preset name such as tiny); --resume continues an existing one",
        )?;
            let mut cfg = RunConfig::resolve(spec)?;
            cfg.seed = seed.unwrap_or(cfg.seed);
            if let Some(parts) = &a.freeze {
                cfg.train.freeze = ModelPart::parse_list(parts)?;
            }
            Ok(cfg)
        },
    )?;
    // the data, its validation images, the initial weights and the perceptual network's
    // weights, before anything is written
    let resuming = prepared.resuming();
    if resuming && a.freeze.is_some() {
        bail!("--freeze applies to a new run; a resumed run keeps its config's train.freeze");
    }
    let init = a
        .train
        .init
        .as_deref()
        .map(|p| InitSource::locate(p, StageKind::Tokenizer))
        .transpose()?;
    let cfg = &mut prepared.cfg;
    if let Some(src) = &init {
        // a fine-tuned model keeps its source's channels unless the config says otherwise
        cfg.model.image_channels = cfg.model.image_channels.or(src.image_channels());
    }
    let side = cfg.model.resolution as u32;
    let ds = Dataset::open(&a.data, cfg.seed)?.with_cache(side, cfg.data.cache_mib);
    if cfg.model.image_channels.is_none() {
        // a new run's model follows its data; an older run's config without the field is RGB
        let grey = !resuming && ds.greyscale();
        cfg.model.image_channels = Some(if grey { 1 } else { 3 });
    }
    let ds = Arc::new(ds);
    let (train_items, val_items) = ds.split(cfg.data.val_fraction);
    if train_items.is_empty() {
        bail!(
            "--data {}: no image left for training after the validation split",
            a.data
        );
    }
    let val_pick: Vec<usize> = if val_items.is_empty() {
        &train_items
    } else {
        &val_items
    }
    .iter()
    .copied()
    .take(cfg.train.val_images.max(1))
    .collect();
    let workers = cfg.data.worker_threads();
    let (_, val_images) = load_eval(&ds, &val_pick, side, workers)?;
    if val_images.is_empty() {
        bail!(
            "--data {}: none of the validation images could be decoded",
            a.data
        );
    }
    let perceptual_weights = if cfg.loss.perceptual_weight > 0.0 {
        Some(locate(None, Backbone::Vgg)?.with_context(|| {
            format!(
                "loss.perceptual_weight is {} but {}; or set loss.perceptual_weight to 0",
                cfg.loss.perceptual_weight,
                missing_note(Backbone::Vgg)
            )
        })?)
    } else {
        None
    };

    let fresh = match &init {
        Some(src) => {
            // how the codebook learns may change; the shapes may not
            let free = [
                "quantizer.beta",
                "quantizer.update",
                "quantizer.restart_dead_codes",
                "quantizer.gradient",
                "quantizer.entropy_weight",
                "quantizer.entropy_temperature",
            ];
            src.check_architecture(&["model"], &serde_json::to_value(&*cfg)?, &free)?;
            src.check_fit(|store| Ok(MoVq::new(&cfg.model, store).map(|_| ())?))?
        }
        None => vec![],
    };
    let fid = prepared.fid_probe("rfid")?;
    let session = prepared
        .create(|run| match &init {
            Some(src) => src.record(run, &fresh),
            None => Ok(()),
        })?
        .with_fid(fid);
    let cfg = &session.cfg;
    let hint = format!(
        "movq train-vq --data {} --out {} --resume",
        a.data,
        a.out.display()
    );
    let code = session.train(
        |shard, compute| {
            let perceptual: Option<Box<dyn PerceptualLoss>> = match &perceptual_weights {
                Some(path) => Some(Box::new(Lpips::load(path, &compute.device)?)),
                None => None,
            };
            let val = if shard.is_main() { val_images.clone() } else { vec![] };
            let mut stage = VqStage::new(cfg, cfg.seed, compute, val, perceptual)?.with_shard(shard.clone());
            if let Some(src) = &init {
                stage.init_from(src)?;
            }
            let opts = LoaderOptions {
                batch_size: cfg.train.batch_size,
                side,
                flip: cfg.data.flip,
                workers,
                prefetch: cfg.data.prefetch,
                seed: cfg.seed,
                rows: Some(shard.rows(cfg.train.batch_size)),
            };
            let (ds, items) = (ds.clone(), train_items.clone());
            Ok(Rank {
                stage,
                batches: Box::new(move |start| Ok(Box::new(spawn_train_loader(ds, items, opts, start)?))),
            })
        },
        |stage, start, devices| {
            let skipped = match ds.skipped() {
                0 => String::new(),
                n => format!(" ({n} unreadable skipped)"),
            };
            format!(
                "train-vq: {} parameters, {} training / {} validation images{skipped}, {} classes, {devices}, steps {start}..{}",
                stage.store().num_parameters(),
                train_items.len(),
                val_items.len(),
                ds.classes().len(),
                cfg.train.steps
            )
        },
        &hint,
    )?;
    if ds.failures() > 0 {
        eprintln!(
            "warning: {} images failed to decode during training and were replaced",
            ds.failures()
        );
    }
    Ok(code)
}
