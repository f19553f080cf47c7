//! `movq train-transformer`: encode the dataset with the frozen stage-1 model, then train the
//! masked transformer.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::cli::TrainTransformerArgs;
use crate::commands::common::{
    compute_dtype, describe_ranks, interrupt_flag, layout_for, load_vq, override_train,
    report_outcome, starting_step,
};
use crate::config::{RunConfig, TransformerRunConfig, TransformerSection};
use crate::data::Dataset;
use crate::device;
use crate::dist::{check_batch, rank_devices, run_ranks, Placement};
use crate::fsutil;
use crate::train::{self, LoopOptions, RunDir};
use crate::transformer::cache::{load_or_build, CacheKey};
use crate::transformer::stage::{TokenBatch, TokenLoader, TransformerStage};

/// The transformer section to use: from `--config` (whose tokenizer must match the stage-1
/// run's) or from the stage-1 run's own config.
fn transformer_section(spec: Option<&str>, vq_cfg: &RunConfig) -> Result<TransformerSection> {
    let Some(spec) = spec else {
        return vq_cfg.transformer.clone().context(
            "the stage-1 run's config has no `transformer` section; pass --config with one (for example --config tiny)",
        );
    };
    let cfg = RunConfig::resolve(spec)?;
    let (want, got) = (&vq_cfg.model, &cfg.model);
    for (field, w, g) in [
        (
            "model.quantizer.codebook_size",
            want.quantizer.codebook_size,
            got.quantizer.codebook_size,
        ),
        (
            "model.quantizer.channels",
            want.quantizer.channels,
            got.quantizer.channels,
        ),
        ("latent size", want.latent_size(), got.latent_size()),
    ] {
        if w != g {
            bail!("--config {spec}: its {field} ({g}) disagrees with the stage-1 run's ({w}); the transformer must be trained on that run's tokens");
        }
    }
    cfg.transformer
        .with_context(|| format!("--config {spec} has no `transformer` section"))
}

/// Copies the stage-1 config and its latest weights into `dir` (a minimal run directory).
fn copy_vq(vq_run: &RunDir, dir: &Path) -> Result<()> {
    let ckpt = vq_run.require_latest()?;
    let target = RunDir::create(dir, &vq_run.read_config()?)?;
    let dest = target.checkpoint(ckpt.step).model;
    std::fs::copy(&ckpt.model, &dest)
        .with_context(|| format!("cannot copy {} to {}", ckpt.model.display(), dest.display()))?;
    fsutil::write_atomic(
        &dir.join("latest"),
        format!("step-{:07}\n", ckpt.step).as_bytes(),
    )
}

pub fn run(a: TrainTransformerArgs) -> Result<ExitCode> {
    let device = device::select(&a.common.device)?;
    let t = &a.train;
    let placement = Placement::new(t.ranks, t.world_size, t.first_rank, t.nccl_id.clone())?;
    let vq_dir = a.out.join("vq");
    let (cfg, run, ds) = if a.train.resume {
        if a.config.is_some() {
            bail!("--config cannot be combined with --resume: the run's own config.json is used");
        }
        let run = RunDir::open(&a.out)?;
        let mut cfg = TransformerRunConfig::parse(
            &run.read_config()?,
            &run.config_path().display().to_string(),
        )?;
        let changed = override_train(&mut cfg.transformer.train, &a.train, &a.common);
        if changed {
            cfg.transformer
                .validate()
                .context("invalid command-line override")?;
        }
        check_batch(cfg.transformer.train.batch_size, placement.world)?;
        if changed {
            fsutil::write_atomic(&run.config_path(), cfg.to_json().as_bytes())?;
        }
        let ds = Dataset::open(&a.data, cfg.seed)?;
        if ds.classes() != cfg.classes.as_slice() {
            bail!(
                "--data {}: its classes differ from the ones this run was trained with",
                a.data
            );
        }
        (cfg, run, ds)
    } else {
        let vq_run = RunDir::open(&a.vq)?;
        let vq_cfg = RunConfig::parse(
            &vq_run.read_config()?,
            &vq_run.config_path().display().to_string(),
        )?;
        vq_run.require_latest()?;
        let mut section = transformer_section(a.config.as_deref(), &vq_cfg)?;
        override_train(&mut section.train, &a.train, &a.common);
        section
            .validate()
            .context("invalid command-line override")?;
        check_batch(section.train.batch_size, placement.world)?;
        let seed = a.common.seed.unwrap_or(vq_cfg.seed);
        let ds = Dataset::open(&a.data, seed)?;
        let cfg = TransformerRunConfig {
            seed,
            vq_run: a.vq.display().to_string(),
            classes: ds.classes().to_vec(),
            data: vq_cfg.data.clone(),
            transformer: section,
        };
        let run = RunDir::create(&a.out, &cfg.to_json())?;
        copy_vq(&vq_run, &vq_dir)?;
        (cfg, run, ds)
    };
    let (vq_cfg, vq, vq_ckpt) = load_vq(&vq_dir, &device)?;
    let layout = layout_for(&vq_cfg, cfg.classes.len());
    let side = vq_cfg.model.resolution as u32;
    let ds = ds.with_cache(side, cfg.data.cache_mib);
    let key = CacheKey {
        dataset: &ds,
        vq_checkpoint: &vq_ckpt.model,
        side,
        flip: cfg.data.flip,
        val_fraction: cfg.data.val_fraction,
    };
    let cache = load_or_build(
        &run.root().join("tokens.safetensors"),
        &key,
        &vq,
        &layout,
        cfg.data.worker_threads(),
        &device,
    )?;
    let train_rows = cache.rows(false);
    if train_rows.is_empty() {
        bail!(
            "--data {}: no sequence left for training after the validation split",
            a.data
        );
    }
    let mut val_rows = cache.rows(true);
    if val_rows.is_empty() {
        val_rows = train_rows.clone();
    }
    val_rows.truncate(cfg.transformer.train.val_images.max(1));
    let val = TokenBatch {
        tokens: val_rows.iter().map(|&i| cache.tokens[i].clone()).collect(),
        labels: val_rows.iter().map(|&i| cache.labels[i]).collect(),
    };
    let tcfg = &cfg.transformer;
    compute_dtype(&a.common, &tcfg.train, &device);
    let devices = rank_devices(&device, a.train.ranks)?;
    let val_count = cache.rows(true).len();
    let (tokens, labels) = (Arc::new(cache.tokens), Arc::new(cache.labels));
    let interrupt = interrupt_flag()?;
    let outcome = run_ranks(&devices, &placement, |shard, dev| {
        let val = if shard.is_main() {
            val.clone()
        } else {
            TokenBatch {
                tokens: vec![],
                labels: vec![],
            }
        };
        let mut stage =
            TransformerStage::new(tcfg, layout, cfg.seed, dev, val)?.with_shard(shard.clone());
        let start = starting_step(
            &mut stage,
            &run,
            a.train.resume,
            tcfg.train.steps,
            shard.is_main(),
        )?;
        if shard.is_main() {
            eprintln!(
                "train-transformer: {} parameters, {} tokens per image ({}×{}×{}), {} training / {} validation sequences, {}, {}, steps {}..{}",
                stage.store().num_parameters(),
                layout.seq_len(),
                layout.h,
                layout.w,
                layout.channels,
                train_rows.len(),
                val_count,
                if layout.n_classes > 0 { format!("{} classes", layout.n_classes) } else { "unconditional".to_string() },
                describe_ranks(&devices, &placement),
                start,
                tcfg.train.steps
            );
        }
        let mut loader = TokenLoader::new(
            train_rows.clone(),
            tokens.clone(),
            labels.clone(),
            tcfg.train.batch_size,
            cfg.seed,
            start,
        )
        .with_rows(shard.rows(tcfg.train.batch_size));
        let opts = LoopOptions::new(&tcfg.train, cfg.seed);
        train::run(
            &mut stage,
            &mut loader,
            &run,
            &opts,
            start,
            &interrupt,
            &shard,
        )
    })?;
    let hint = format!(
        "movq train-transformer --vq {} --data {} --out {} --resume",
        a.vq.display(),
        a.data,
        run.root().display()
    );
    Ok(report_outcome(outcome, &run, &hint))
}
