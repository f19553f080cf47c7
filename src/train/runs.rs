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
    pub fn open(path: &Path, flags: &ComputeFlags) -> Result<Self> {
        let run = RunDir::open(&tokenizer_of(path))?;
        let cfg: RunConfig = run.config()?;
        let compute = Compute::resolve(flags, Some(&cfg.train))?;
        Self::with_compute(run, cfg, compute)
    }

    /// The stage-1 run at `path`, computing as `compute` says.
    pub fn open_with(path: &Path, compute: &Compute) -> Result<Self> {
        let run = RunDir::open(path)?;
        let cfg = run.config()?;
        Self::with_compute(run, cfg, compute.clone())
    }

    fn with_compute(run: RunDir, cfg: RunConfig, compute: Compute) -> Result<Self> {
        let (model, checkpoint) = Self::load(&run, &cfg, &compute)?;
        Ok(Self {
            cfg,
            model,
            checkpoint,
            compute,
        })
    }

    /// The latest weights of the stage-1 `run` with config `cfg`, computing as `compute` says.
    fn load(run: &RunDir, cfg: &RunConfig, compute: &Compute) -> Result<(MoVq, Checkpoint)> {
        let ckpt = run.require_latest()?;
        let store = ParamStore::frozen(0, &compute.device);
        let model = MoVq::new(&cfg.model, &store)?;
        store
            .load_file(&ckpt.model)
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
    pub fn open(path: &Path, flags: &ComputeFlags) -> Result<Self> {
        let run = RunDir::open(path)?;
        if !is_transformer_run(path) {
            anyhow::bail!(
                "{} is not a stage-2 run (no vq/ folder); train one with `movq train-transformer`",
                path.display()
            );
        }
        let cfg: TransformerRunConfig = run.config()?;
        let compute = Compute::resolve(flags, Some(&cfg.transformer.train))?;
        let vq_dir = RunDir::open(&path.join("vq"))?;
        let vq_cfg: RunConfig = vq_dir.config()?;
        let (vq, _) = VqRun::load(&vq_dir, &vq_cfg, &compute)?;
        let checkpoint = run.require_latest()?;
        let store = ParamStore::frozen(0, &compute.device);
        let layout = TokenLayout::of(&vq_cfg.model, cfg.classes.len());
        let model = MaskTransformer::new(&cfg.transformer.model, layout, store.var_builder())?;
        store
            .load_file(&checkpoint.model)
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
