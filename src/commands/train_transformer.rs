//! `movq train-transformer`: encode the dataset with the frozen stage-1 model, then train the
//! masked transformer.

use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::cli::TrainTransformerArgs;
use crate::config::{RunConfig, TransformerRunConfig};
use crate::data::Dataset;
use crate::train::init::{InitSource, StageKind};
use crate::train::runs::VqRun;
use crate::train::setup::{self, Rank};
use crate::train::RunDir;
use crate::transformer::stage::{TokenBatch, TransformerStage};
use crate::transformer::training_tokens::TrainingTokens;
use crate::transformer::TokenLayout;

pub fn run(a: TrainTransformerArgs) -> Result<ExitCode> {
    let source = RunDir::open(&a.vq);
    let source = || source.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"));
    let request = a.train.request(&a.out, a.config.as_deref(), &a.common)?;
    let prepared = setup::prepare(request, |seed| {
        let vq_cfg = source()?.config()?;
        source()?.require_latest()?;
        let classes = |seed| Ok(Dataset::open(&a.data, seed)?.classes().to_vec());
        TransformerRunConfig::for_new_run(
            &a.vq,
            &vq_cfg,
            &a.data,
            classes,
            a.config.as_deref(),
            seed,
        )
    })?;
    let ds = Dataset::open(&a.data, prepared.cfg.seed)?;
    if prepared.resuming() && ds.classes() != prepared.cfg.classes.as_slice() {
        bail!(
            "--data {}: its classes differ from the ones this run was trained with",
            a.data
        );
    }
    let init = (a.train.init.as_deref())
        .map(|p| InitSource::locate(p, StageKind::Transformer))
        .transpose()?;
    let fresh = match &init {
        Some(src) => {
            let vq_model = source()?.config::<RunConfig>()?.model;
            let layout = TokenLayout::of(&vq_model, prepared.cfg.classes.len());
            TransformerStage::check_init(src, &prepared.cfg, layout)?
        }
        None => vec![],
    };
    let fid = prepared.fid_probe("fid")?;
    // a new run holds a copy of the stage-1 config and weights in vq/
    let session = prepared
        .create(|run| {
            init.as_ref()
                .map_or(Ok(()), |src| src.record(run, &fresh))?;
            source()?.copy_latest_to(&run.root().join("vq"))
        })?
        .with_fid(fid);
    let (cfg, tcfg, root) = (&session.cfg, &session.cfg.transformer, session.run.root());
    // the token cache is encoded in f32 whatever the transformer trains in
    let vq = VqRun::open_with(&root.join("vq"), &session.compute.f32())?;
    let layout = TokenLayout::of(&vq.cfg.model, cfg.classes.len());
    let ds = ds.with_cache(vq.cfg.model.resolution as u32, cfg.data.cache_mib);
    let data = TrainingTokens::encode(&ds, &a.data, &vq, cfg, &root.join("tokens.safetensors"))?;
    let hint = format!(
        "movq train-transformer --vq {} --data {} --out {} --resume",
        a.vq.display(),
        a.data,
        a.out.display()
    );
    session.train(
        |shard, compute| {
            let val = if shard.is_main() {
                data.val.clone()
            } else {
                TokenBatch::default()
            };
            let mut stage = TransformerStage::new(tcfg, layout, cfg.seed, compute, val)?
                .with_shard(shard.clone());
            if shard.is_main() && (tcfg.train.sample_every > 0 || tcfg.train.fid_every > 0) {
                // previews and FID samples decode with the tokenizer, on this rank's device
                stage = stage.with_decoder(VqRun::open_with(&root.join("vq"), compute)?.model);
            }
            if let Some(src) = &init {
                stage.init_from(src)?;
            }
            let batch = tcfg.train.batch_size;
            let loader = data.loader(batch, cfg.seed, shard.rows(batch));
            Ok(Rank {
                stage,
                batches: Box::new(move |start| Ok(Box::new(loader(start)))),
            })
        },
        |stage, start, devices| {
            format!(
                "train-transformer: {} parameters, {}, {}, {devices}, steps {start}..{}",
                stage.store().num_parameters(),
                layout.describe(),
                data.describe(),
                tcfg.train.steps
            )
        },
        &hint,
    )
}
