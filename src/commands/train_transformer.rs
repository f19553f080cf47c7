//! `movq train-transformer`: encode the dataset with the frozen stage-1 model, then train the
//! masked transformer.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::cli::TrainTransformerArgs;
use crate::config::{RunConfig, TransformerRunConfig, TransformerSection};
use crate::data::Dataset;
use crate::train::init::{InitSource, StageKind};
use crate::train::runs::VqRun;
use crate::train::setup::{self, Rank};
use crate::train::RunDir;
use crate::transformer::cache::{load_or_build, CacheKey};
use crate::transformer::stage::{TokenBatch, TokenLoader, TransformerStage};
use crate::transformer::{MaskTransformer, TokenLayout};

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

pub fn run(a: TrainTransformerArgs) -> Result<ExitCode> {
    let vq_source = RunDir::open(&a.vq);
    let prepared = setup::prepare(
        a.train.request(&a.out, a.config.as_deref(), &a.common)?,
        |seed| {
            let vq_run = vq_source.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            let vq_cfg: RunConfig = vq_run.config()?;
            vq_run.require_latest()?;
            let seed = seed.unwrap_or(vq_cfg.seed);
            Ok(TransformerRunConfig {
                seed,
                vq_run: a.vq.display().to_string(),
                classes: Dataset::open(&a.data, seed)?.classes().to_vec(),
                data_spec: Some(a.data.clone()),
                data: vq_cfg.data.clone(),
                transformer: transformer_section(a.config.as_deref(), &vq_cfg)?,
            })
        },
    )?;
    let ds = Dataset::open(&a.data, prepared.cfg.seed)?;
    if prepared.resuming() && ds.classes() != prepared.cfg.classes.as_slice() {
        bail!(
            "--data {}: its classes differ from the ones this run was trained with",
            a.data
        );
    }
    let init = a
        .train
        .init
        .as_deref()
        .map(|p| InitSource::locate(p, StageKind::Transformer))
        .transpose()?;
    let fresh = match &init {
        Some(src) => {
            let cfg = &prepared.cfg;
            src.check_architecture(&["transformer", "model"], &serde_json::to_value(cfg)?, &[])?;
            let source = vq_source.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            let layout = TokenLayout::of(&source.config::<RunConfig>()?.model, cfg.classes.len());
            src.check_fit(|store| {
                MaskTransformer::new(&cfg.transformer.model, layout, store.var_builder())?;
                Ok(())
            })?
        }
        None => vec![],
    };
    let fid = prepared.fid_probe("fid")?;
    // a new run holds a copy of the stage-1 config and weights in vq/
    let session = prepared
        .create(|run| {
            if let Some(src) = &init {
                src.record(run, &fresh)?;
            }
            let source = vq_source.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            RunDir::create(&run.root().join("vq"), &source.read_config()?)?
                .adopt_checkpoint(&source.require_latest()?)
                .map(|_| ())
        })?
        .with_fid(fid);
    let cfg = &session.cfg;
    let tcfg = &cfg.transformer;
    // the token cache is encoded in f32 whatever the transformer trains in
    let vq = VqRun::open_with(&session.run.root().join("vq"), &session.compute.f32())?;
    let layout = TokenLayout::of(&vq.cfg.model, cfg.classes.len());
    let side = vq.cfg.model.resolution as u32;
    let ds = ds.with_cache(side, cfg.data.cache_mib);
    let key = CacheKey {
        dataset: &ds,
        vq_checkpoint: &vq.checkpoint.model,
        side,
        flip: cfg.data.flip,
        val_fraction: cfg.data.val_fraction,
    };
    let cache = load_or_build(
        &session.run.root().join("tokens.safetensors"),
        &key,
        &vq.model,
        &layout,
        cfg.data.worker_threads(),
        &session.compute.device,
    )?;
    let train_rows = cache.rows(false);
    if train_rows.is_empty() {
        bail!(
            "--data {}: no sequence left for training after the validation split",
            a.data
        );
    }
    let val_count = cache.rows(true).len();
    let mut val_rows = cache.rows(true);
    if val_rows.is_empty() {
        val_rows = train_rows.clone();
    }
    val_rows.truncate(tcfg.train.val_images.max(1));
    let val = TokenBatch {
        tokens: val_rows.iter().map(|&i| cache.tokens[i].clone()).collect(),
        labels: val_rows.iter().map(|&i| cache.labels[i]).collect(),
    };
    let (tokens, labels) = (Arc::new(cache.tokens), Arc::new(cache.labels));
    let hint = format!(
        "movq train-transformer --vq {} --data {} --out {} --resume",
        a.vq.display(),
        a.data,
        a.out.display()
    );
    session.train(
        |shard, compute| {
            let val = if shard.is_main() { val.clone() } else { TokenBatch::default() };
            let mut stage = TransformerStage::new(tcfg, layout, cfg.seed, compute, val)?
                .with_shard(shard.clone());
            if shard.is_main() && (tcfg.train.sample_every > 0 || tcfg.train.fid_every > 0) {
                // previews and FID samples decode with the tokenizer, on this rank's device
                let vq_dir = session.run.root().join("vq");
                stage = stage.with_decoder(VqRun::open_with(&vq_dir, compute)?.model);
            }
            if let Some(src) = &init {
                stage.init_from(src)?;
            }
            let (rows, tokens, labels) = (train_rows.clone(), tokens.clone(), labels.clone());
            let (batch, seed, mine) = (tcfg.train.batch_size, cfg.seed, shard.rows(tcfg.train.batch_size));
            Ok(Rank {
                stage,
                batches: Box::new(move |start| {
                    Ok(Box::new(
                        TokenLoader::new(rows, tokens, labels, batch, seed, start).with_rows(mine),
                    ))
                }),
            })
        },
        |stage, start, devices| {
            let classes = match layout.n_classes {
                0 => "unconditional".to_string(),
                n => format!("{n} classes"),
            };
            format!(
                "train-transformer: {} parameters, {} tokens per image ({}×{}×{}), {} training / {val_count} validation sequences, {classes}, {devices}, steps {start}..{}",
                stage.store().num_parameters(),
                layout.seq_len(),
                layout.h,
                layout.w,
                layout.channels,
                train_rows.len(),
                tcfg.train.steps
            )
        },
        &hint,
    )
}
