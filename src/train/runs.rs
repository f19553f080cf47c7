//! Opening a trained run for inference: a stage-1 run's autoencoder, or a stage-2 run's
//! transformer with the tokenizer it holds in `vq/`, at the latest checkpoint, computing as the
//! flags ask (else as the run trained).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::compute::{Compute, ComputeFlags};
use crate::config::{RunConfig, TransformerRunConfig};
use crate::nn::params::ParamStore;
use crate::train::run_dir::{Checkpoint, RunDir};
use crate::transformer::{MaskTransformer, TokenLayout};
use crate::vq::MoVq;

/// Which of a run's weights inference loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    /// The moving average (`train.ema_decay`): the default where the run has one.
    Ema,
    /// The weights as the optimizer left them.
    Raw,
}

/// How to open a run: where and in what precision it computes, and which weights.
#[derive(Debug, Clone, Default)]
pub struct RunFlags {
    pub compute: ComputeFlags,
    /// `--weights`; `None`: the moving average where the run has one, else the raw weights.
    pub weights: Option<Weights>,
}

/// The weights file of `ckpt` that `choice` asks for.
fn weights_file<'a>(ckpt: &'a Checkpoint, choice: Option<Weights>, run: &Path) -> Result<&'a Path> {
    match (choice, ckpt.ema_file()) {
        (Some(Weights::Raw), _) | (None, None) => Ok(&ckpt.model),
        (_, Some(ema)) => Ok(ema),
        (Some(Weights::Ema), None) => anyhow::bail!(
            "--weights ema: run {} keeps no moving average of its weights (train.ema_decay); use --weights raw",
            run.display()
        ),
    }
}

/// True when `path` is a stage-2 run (it holds the stage-1 model in `vq/`).
pub fn is_transformer_run(path: &Path) -> bool {
    path.join("vq").join("config.json").is_file()
}

/// The stage-1 run of `path`: itself, or a stage-2 run's own `vq/`.
pub fn tokenizer_of(path: &Path) -> PathBuf {
    if is_transformer_run(path) {
        path.join("vq")
    } else {
        path.to_path_buf()
    }
}

/// A trained stage-1 model.
pub struct VqRun {
    pub cfg: RunConfig,
    pub model: MoVq,
    pub checkpoint: Checkpoint,
    pub compute: Compute,
}

impl VqRun {
    /// The stage-1 model of `path` (or of the stage-2 run there: its tokenizer).
    pub fn open(path: &Path, flags: &RunFlags) -> Result<Self> {
        let run = RunDir::open(&tokenizer_of(path))?;
        let cfg: RunConfig = run.config()?;
        let compute = Compute::resolve(&flags.compute, Some(&cfg.train))?;
        Self::with_compute(run, cfg, compute, flags.weights)
    }

    /// The stage-1 run at `path` (its moving average where it has one), computing as `compute`
    /// says.
    pub fn open_with(path: &Path, compute: &Compute) -> Result<Self> {
        let run = RunDir::open(path)?;
        let cfg = run.config()?;
        Self::with_compute(run, cfg, compute.clone(), None)
    }

    fn with_compute(
        run: RunDir,
        cfg: RunConfig,
        compute: Compute,
        weights: Option<Weights>,
    ) -> Result<Self> {
        let (model, checkpoint) = Self::load(&run, &cfg, &compute, weights)?;
        Ok(Self {
            cfg,
            model,
            checkpoint,
            compute,
        })
    }

    /// The latest weights of the stage-1 `run` with config `cfg`, computing as `compute` says.
    fn load(
        run: &RunDir,
        cfg: &RunConfig,
        compute: &Compute,
        weights: Option<Weights>,
    ) -> Result<(MoVq, Checkpoint)> {
        let ckpt = run.require_latest()?;
        let store = ParamStore::frozen(0, &compute.device);
        let model = MoVq::new(&cfg.model, &store)?;
        store
            .load_file(weights_file(&ckpt, weights, run.root())?)
            .with_context(|| format!("cannot load the model of run {}", run.root().display()))?;
        Ok((model.with_dtype(compute.dtype()), ckpt))
    }
}

/// A trained stage-2 run: its config, the transformer, and the stage-1 model it decodes with.
pub struct TransformerRun {
    pub cfg: TransformerRunConfig,
    pub vq_cfg: RunConfig,
    pub vq: MoVq,
    pub model: MaskTransformer,
    pub checkpoint: Checkpoint,
    pub compute: Compute,
}

impl TransformerRun {
    /// The stage-2 run at `path`.
    pub fn open(path: &Path, flags: &RunFlags) -> Result<Self> {
        let run = RunDir::open(path)?;
        if !is_transformer_run(path) {
            anyhow::bail!(
                "{} is not a stage-2 run (no vq/ folder); train one with `movq train-transformer`",
                path.display()
            );
        }
        let cfg: TransformerRunConfig = run.config()?;
        let compute = Compute::resolve(&flags.compute, Some(&cfg.transformer.train))?;
        let vq_dir = RunDir::open(&path.join("vq"))?;
        let vq_cfg: RunConfig = vq_dir.config()?;
        // the tokenizer's moving average where it has one (the tokens were encoded with it)
        let (vq, _) = VqRun::load(&vq_dir, &vq_cfg, &compute, None)?;
        let checkpoint = run.require_latest()?;
        let store = ParamStore::frozen(0, &compute.device);
        let layout = TokenLayout::of(&vq_cfg.model, cfg.classes.len());
        let model = MaskTransformer::new(&cfg.transformer.model, layout, store.var_builder())?;
        store
            .load_file(weights_file(&checkpoint, flags.weights, path)?)
            .with_context(|| format!("cannot load the transformer of run {}", path.display()))?;
        Ok(Self {
            cfg,
            vq_cfg,
            vq,
            model: model.with_dtype(compute.dtype()),
            checkpoint,
            compute,
        })
    }
}
