//! The run directory: `config.json`, `checkpoints/step-NNNNNNN{.safetensors,.train.safetensors}`,
//! `latest`, and `metrics.jsonl`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};

use crate::fsutil;
use crate::nn::safetensors_io;

#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

/// The files of one checkpoint.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub step: usize,
    /// Model weights (what inference reads).
    pub model: PathBuf,
    /// Optimizer moments and other training-only state.
    pub train_state: PathBuf,
    /// The model with its weights' moving average (runs with `train.ema_decay`).
    pub ema: PathBuf,
}

impl Checkpoint {
    /// The EMA weights, when this checkpoint has them.
    pub fn ema_file(&self) -> Option<&Path> {
        self.ema.is_file().then_some(self.ema.as_path())
    }
}

impl RunDir {
    /// Starts a new run at `root`, writing `config_json` first. Refuses a folder that already
    /// holds a run, so nothing is overwritten by accident.
    pub fn create(root: &Path, config_json: &str) -> Result<Self> {
        let run = Self {
            root: root.to_path_buf(),
        };
        if run.config_path().exists() {
            bail!(
                "{} already holds a run; pass --resume to continue it, or choose another --out",
                root.display()
            );
        }
        fsutil::create_dir(&run.checkpoints_dir())?;
        fsutil::write_atomic(&run.config_path(), config_json.as_bytes())?;
        Ok(run)
    }

    /// Opens an existing run directory.
    pub fn open(root: &Path) -> Result<Self> {
        let run = Self {
            root: root.to_path_buf(),
        };
        if !root.is_dir() {
            bail!("run directory {} does not exist", root.display());
        }
        if !run.config_path().is_file() {
            bail!(
                "{} is not a movq run directory (no config.json)",
                root.display()
            );
        }
        Ok(run)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.json")
    }
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    pub fn metrics_path(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    fn latest_path(&self) -> PathBuf {
        self.root.join("latest")
    }

    /// The run's config, parsed and validated (errors name the file).
    pub fn config<T: crate::config::RunSettings>(&self) -> Result<T> {
        T::parse(
            &self.read_config()?,
            &self.config_path().display().to_string(),
        )
    }

    pub fn read_config(&self) -> Result<String> {
        std::fs::read_to_string(self.config_path())
            .with_context(|| format!("cannot read {}", self.config_path().display()))
    }

    pub fn checkpoint(&self, step: usize) -> Checkpoint {
        let stem = format!("step-{step:07}");
        let dir = self.checkpoints_dir();
        Checkpoint {
            step,
            model: dir.join(format!("{stem}.safetensors")),
            train_state: dir.join(format!("{stem}.train.safetensors")),
            ema: dir.join(format!("{stem}.ema.safetensors")),
        }
    }

    /// The checkpoint named by `latest`, if any.
    pub fn latest(&self) -> Result<Option<Checkpoint>> {
        let path = self.latest_path();
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let step = text
            .trim()
            .strip_prefix("step-")
            .and_then(|s| s.parse::<usize>().ok())
            .with_context(|| format!("{} is corrupt: {:?}", path.display(), text.trim()))?;
        let ckpt = self.checkpoint(step);
        if !ckpt.model.is_file() {
            bail!(
                "{} names step {step}, but {} is missing",
                path.display(),
                ckpt.model.display()
            );
        }
        Ok(Some(ckpt))
    }

    /// The latest checkpoint, or an error saying the run has none yet.
    pub fn require_latest(&self) -> Result<Checkpoint> {
        self.latest()?.with_context(|| {
            format!(
                "run {} has no checkpoint yet (train it first)",
                self.root.display()
            )
        })
    }

    /// Writes a checkpoint (each file atomically), points `latest` at it, and keeps only the
    /// `keep` most recent ones (0 = all).
    pub fn save_checkpoint(
        &self,
        step: usize,
        model: &[(String, Tensor)],
        train_state: &[(String, Tensor)],
        ema: Option<&[(String, Tensor)]>,
        keep: usize,
    ) -> Result<Checkpoint> {
        let ckpt = self.checkpoint(step);
        let meta = BTreeMap::from([
            ("format".to_string(), "movq".to_string()),
            ("step".to_string(), step.to_string()),
        ]);
        safetensors_io::write_atomic(&ckpt.model, model, &meta)?;
        safetensors_io::write_atomic(&ckpt.train_state, train_state, &meta)?;
        if let Some(ema) = ema {
            safetensors_io::write_atomic(&ckpt.ema, ema, &meta)?;
        }
        self.point_latest_at(step)?;
        if keep > 0 {
            self.prune(keep, step)?;
        }
        Ok(ckpt)
    }

    /// Makes `step` the latest checkpoint.
    fn point_latest_at(&self, step: usize) -> Result<()> {
        fsutil::write_atomic(&self.latest_path(), format!("step-{step:07}\n").as_bytes())
    }

    /// A new run directory at `dest` holding this run's config and its latest checkpoint's
    /// weights (a stage-2 run's copy of its tokenizer).
    pub fn copy_latest_to(&self, dest: &Path) -> Result<()> {
        RunDir::create(dest, &self.read_config()?)?
            .adopt_checkpoint(&self.require_latest()?)
            .map(|_| ())
    }

    /// Copies another run's checkpoint weights (`ckpt`, its model file and its EMA weights if
    /// any) into this run as its latest checkpoint at the same step, without training state: a
    /// stage-2 run's frozen tokenizer.
    pub fn adopt_checkpoint(&self, ckpt: &Checkpoint) -> Result<Checkpoint> {
        let own = self.checkpoint(ckpt.step);
        let copy = |from: &Path, to: &Path| {
            std::fs::copy(from, to)
                .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))
        };
        copy(&ckpt.model, &own.model)?;
        if let Some(ema) = ckpt.ema_file() {
            copy(ema, &own.ema)?;
        }
        self.point_latest_at(ckpt.step)?;
        Ok(own)
    }

    fn prune(&self, keep: usize, current: usize) -> Result<()> {
        let mut steps: Vec<usize> = std::fs::read_dir(self.checkpoints_dir())?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix("step-")?
                    .strip_suffix(".safetensors")?
                    .parse::<usize>()
                    .ok()
            })
            .collect();
        steps.sort_unstable();
        let excess = steps.len().saturating_sub(keep);
        for &s in steps.iter().take(excess).filter(|&&s| s != current) {
            let c = self.checkpoint(s);
            let _ = std::fs::remove_file(c.model);
            let _ = std::fs::remove_file(c.train_state);
            let _ = std::fs::remove_file(c.ema);
        }
        Ok(())
    }

    /// Appends one JSON object to `metrics.jsonl`.
    pub fn log(&self, record: &serde_json::Value) -> Result<()> {
        let path = self.metrics_path();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        writeln!(f, "{record}").with_context(|| format!("cannot write {}", path.display()))
    }

    /// Drops log records written after `step` (used when resuming from an earlier checkpoint).
    pub fn truncate_log_after(&self, step: usize) -> Result<()> {
        let path = self.metrics_path();
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                    .is_some_and(|s| s as usize <= step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        fsutil::write_atomic(&path, kept.as_bytes())
    }
}

/// Reads a safetensors file into a name → tensor map.
pub fn read_tensors(path: &Path, device: &Device) -> Result<BTreeMap<String, Tensor>> {
    Ok(safetensors_io::read(path, device)?.0)
}
