//! `movq train-vq`: train (or resume) the stage-1 autoencoder.

use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::cli::TrainVqArgs;
use crate::config::RunConfig;
use crate::data::training_set::TrainingSet;
use crate::train::init::{InitSource, StageKind};
use crate::train::setup::{self, Rank};
use crate::vq::losses::{load_perceptual, perceptual_weights};
use crate::vq::stage::VqStage;

pub fn run(a: TrainVqArgs) -> Result<ExitCode> {
    let request = a.train.request(&a.out, a.config.as_deref(), &a.common)?;
    let mut prepared = setup::prepare(request, |seed| {
        RunConfig::for_new_run(a.config.as_deref(), seed, a.freeze.as_deref())
    })?;
    let resuming = prepared.resuming();
    if resuming && a.freeze.is_some() {
        bail!("--freeze applies to a new run; a resumed run keeps its config's train.freeze");
    }
    // the initial weights, the data and the perceptual network, before anything is written
    let init = (a.train.init.as_deref())
        .map(|p| InitSource::locate(p, StageKind::Tokenizer))
        .transpose()?;
    let cfg = &mut prepared.cfg;
    if let Some(src) = &init {
        // a fine-tuned model keeps its source's channels unless the config says otherwise
        cfg.model.image_channels = cfg.model.image_channels.or(src.image_channels());
    }
    let data = TrainingSet::open(&a.data, cfg, resuming)?;
    let perceptual = perceptual_weights(&prepared.cfg)?;
    let fresh = match &init {
        Some(src) => VqStage::check_init(src, &prepared.cfg)?,
        None => vec![],
    };
    let fid = prepared.fid_probe("rfid")?;
    let session = prepared
        .create(|run| init.as_ref().map_or(Ok(()), |src| src.record(run, &fresh)))?
        .with_fid(fid);
    let cfg = &session.cfg;
    let hint = format!(
        "movq train-vq --data {} --out {} --resume",
        a.data,
        a.out.display()
    );
    let code = session.train(
        |shard, compute| {
            let val = if shard.is_main() {
                data.val_images.clone()
            } else {
                vec![]
            };
            let perceptual = load_perceptual(perceptual.as_deref(), &compute.device)?;
            let mut stage =
                VqStage::new(cfg, cfg.seed, compute, val, perceptual)?.with_shard(shard.clone());
            if let Some(src) = &init {
                stage.init_from(src)?;
            }
            let loader = data.loader(cfg, shard.rows(cfg.train.batch_size));
            Ok(Rank {
                stage,
                batches: Box::new(move |start| Ok(Box::new(loader(start)?))),
            })
        },
        |stage, start, devices| {
            format!(
                "train-vq: {} parameters, {}, {devices}, steps {start}..{}",
                stage.store().num_parameters(),
                data.describe(),
                cfg.train.steps
            )
        },
        &hint,
    )?;
    data.warn_failures();
    Ok(code)
}
