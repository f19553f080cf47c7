//! `movq train-vq`: train (or resume) the stage-1 autoencoder.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::cli::TrainVqArgs;
use crate::commands::common::{
    compute_dtype, describe_ranks, interrupt_flag, override_train, report_outcome, starting_step,
};
use crate::config::RunConfig;
use crate::data::loader::{load_eval, spawn_train_loader, LoaderOptions};
use crate::data::Dataset;
use crate::device;
use crate::dist::{check_batch, rank_devices, run_ranks, Placement};
use crate::fsutil;
use crate::metrics::lpips::{locate, missing_note, Backbone, Lpips};
use crate::train::{self, LoopOptions, RunDir};
use crate::vq::losses::PerceptualLoss;
use crate::vq::stage::VqStage;

/// Applies `--steps`, `--batch-size`, `--lr`; returns whether anything changed.
fn apply_overrides(cfg: &mut RunConfig, a: &TrainVqArgs) -> Result<bool> {
    let changed = override_train(&mut cfg.train, &a.train, &a.common);
    cfg.validate().context("invalid command-line override")?;
    Ok(changed)
}

pub fn run(a: TrainVqArgs) -> Result<ExitCode> {
    let device = device::select(&a.common.device)?;
    let t = &a.train;
    let placement = Placement::new(t.ranks, t.world_size, t.first_rank, t.nccl_id.clone())?;
    // Resolve the config and open the data before anything is written.
    let (cfg, existing) = if a.train.resume {
        if a.config.is_some() {
            bail!("--config cannot be combined with --resume: the run's own config.json is used");
        }
        let run = RunDir::open(&a.out)?;
        let mut cfg = RunConfig::parse(
            &run.read_config()?,
            &run.config_path().display().to_string(),
        )?;
        if let Some(seed) = a.common.seed {
            if seed != cfg.seed {
                bail!(
                    "--seed {seed} differs from the run's seed {}; a resumed run keeps its seed",
                    cfg.seed
                );
            }
        }
        let changed = apply_overrides(&mut cfg, &a)?;
        (cfg, Some((run, changed)))
    } else {
        let spec = a
            .config
            .as_deref()
            .context("--config is required for a new run (a file or a preset name such as tiny)")?;
        let mut cfg = RunConfig::resolve(spec)?;
        if let Some(seed) = a.common.seed {
            cfg.seed = seed;
        }
        apply_overrides(&mut cfg, &a)?;
        (cfg, None)
    };
    let side = cfg.model.resolution as u32;
    let ds = Dataset::open(&a.data, cfg.seed)?.with_cache(side, cfg.data.cache_mib);
    let mut cfg = cfg;
    if cfg.model.image_channels.is_none() {
        // a new run's model follows its data; an old run's config without the field is RGB
        cfg.model.image_channels = Some(if existing.is_none() && ds.greyscale() {
            1
        } else {
            3
        });
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

    // The perceptual term: LPIPS with the VGG16 network, frozen (found before anything is
    // written; loaded by each rank on its device).
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
    let devices = rank_devices(&device, a.train.ranks)?;
    // checked before anything is written (a new run's directory, a resumed run's new config)
    check_batch(cfg.train.batch_size, placement.world)?;
    let run = match existing {
        Some((run, changed)) => {
            if changed {
                fsutil::write_atomic(&run.config_path(), cfg.to_json().as_bytes())?;
            }
            run
        }
        None => RunDir::create(&a.out, &cfg.to_json())?,
    };
    compute_dtype(&a.common, &cfg.train, &device);
    let interrupt = interrupt_flag()?;
    let outcome = run_ranks(&devices, &placement, |shard, dev| {
        let perceptual: Option<Box<dyn PerceptualLoss>> = match &perceptual_weights {
            Some(path) => Some(Box::new(Lpips::load(path, dev)?)),
            None => None,
        };
        let val = if shard.is_main() {
            val_images.clone()
        } else {
            vec![]
        };
        let mut stage =
            VqStage::new(&cfg, cfg.seed, dev, val, perceptual)?.with_shard(shard.clone());
        let start = starting_step(
            &mut stage,
            &run,
            a.train.resume,
            cfg.train.steps,
            shard.is_main(),
        )?;
        if shard.is_main() {
            eprintln!(
                "train-vq: {} parameters, {} training / {} validation images{}, {} classes, {}, steps {}..{}",
                stage.store().num_parameters(),
                train_items.len(),
                val_items.len(),
                if ds.skipped() > 0 { format!(" ({} unreadable skipped)", ds.skipped()) } else { String::new() },
                ds.classes().len(),
                describe_ranks(&devices, &placement),
                start,
                cfg.train.steps
            );
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
        let mut loader = spawn_train_loader(ds.clone(), train_items.clone(), opts, start)?;
        let loop_opts = LoopOptions::new(&cfg.train, cfg.seed);
        train::run(
            &mut stage,
            &mut loader,
            &run,
            &loop_opts,
            start,
            &interrupt,
            &shard,
        )
    })?;
    if ds.failures() > 0 {
        eprintln!(
            "warning: {} images failed to decode during training and were replaced",
            ds.failures()
        );
    }
    let hint = format!(
        "movq train-vq --data {} --out {} --resume",
        a.data,
        run.root().display()
    );
    Ok(report_outcome(outcome, &run, &hint))
}
