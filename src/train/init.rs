//! Fine-tuning (`--init RUN|CHECKPOINT`): a new run that starts from another run's weights —
//! trained by movq or imported with `movq import` — with a fresh optimizer (and, in stage 1, a
//! fresh discriminator). The source's model section must describe the same architecture; a
//! parameter the new model has and the source lacks keeps its fresh initialisation and is listed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde_json::Value;

use crate::config::{RunConfig, TransformerRunConfig};
use crate::nn::params::ParamStore;
use crate::train::ema::Ema;
use crate::train::run_dir::{read_tensors, RunDir};
use crate::train::runs::is_transformer_run;

/// Which stage a run trains, for what `--init` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageKind {
    Tokenizer,
    Transformer,
}

/// The initial weights of a new run.
#[derive(Debug, Clone)]
pub struct InitSource {
    /// The file the weights come from.
    pub file: PathBuf,
    /// The source run's step, when it is a run.
    pub step: Option<usize>,
    /// The source run's config as JSON (absent for a bare checkpoint file).
    config: Option<Value>,
}

impl InitSource {
    /// Resolves `--init PATH` for a run of `kind`: a run directory (its latest checkpoint, the
    /// moving average where it keeps one) or a `.safetensors` model file.
    pub fn locate(path: &Path, kind: StageKind) -> Result<Self> {
        if path.is_file() {
            return Ok(Self {
                file: path.to_path_buf(),
                step: None,
                config: None,
            });
        }
        if !path.is_dir() {
            bail!(
                "--init {}: no such run directory or checkpoint file",
                path.display()
            );
        }
        let run = RunDir::open(path).with_context(|| format!("--init {}", path.display()))?;
        match (kind, is_transformer_run(path)) {
            (StageKind::Tokenizer, true) => bail!(
                "--init {}: a train-transformer run; train-vq starts from a stage-1 run (such as its vq/ folder) or a model file",
                path.display()
            ),
            (StageKind::Transformer, false) => bail!(
                "--init {}: not a train-transformer run; train-transformer starts from a stage-2 run or a model file",
                path.display()
            ),
            _ => {}
        }
        let ckpt = run
            .latest()?
            .with_context(|| format!("--init {}: the run has no checkpoint yet", path.display()))?;
        // the config as this version reads it, every default filled in, so that two configs
        // compare by meaning
        let config = match kind {
            StageKind::Tokenizer => {
                let mut cfg: RunConfig = run.config()?;
                cfg.model.image_channels = Some(cfg.model.image_channels());
                serde_json::to_value(cfg)?
            }
            StageKind::Transformer => serde_json::to_value(run.config::<TransformerRunConfig>()?)?,
        };
        Ok(Self {
            file: ckpt.ema_file().unwrap_or(&ckpt.model).to_path_buf(),
            step: Some(ckpt.step),
            config: Some(config),
        })
    }

    /// The source's number of image channels (stage 1 runs).
    pub fn image_channels(&self) -> Option<usize> {
        self.config.as_ref()?["model"]["image_channels"]
            .as_u64()
            .map(|c| c as usize)
    }

    /// Checks that the source's model section (at `section`, e.g. `["model"]` or
    /// `["transformer", "model"]`) describes the architecture of `new`, apart from the
    /// fields in `free` (paths below the section). An error names the first differing field.
    pub fn check_architecture(&self, section: &[&str], new: &Value, free: &[&str]) -> Result<()> {
        let Some(source) = &self.config else {
            return Ok(()); // a bare model file: the tensors' shapes are checked on loading
        };
        let pick = |v: &Value| section.iter().fold(v.clone(), |v, k| v[*k].clone());
        let prefix = section.join(".");
        if let Some((field, a, b)) = first_difference(&pick(source), &pick(new), &prefix, free) {
            bail!(
                "--init {}: {field} is {a} there but {b} in this run's config; fine-tuning keeps the architecture",
                self.file.display()
            );
        }
        Ok(())
    }

    /// The source's tensors.
    pub fn tensors(&self, device: &Device) -> Result<BTreeMap<String, Tensor>> {
        read_tensors(&self.file, device)
            .with_context(|| format!("--init: cannot read {}", self.file.display()))
    }

    /// Loads the source into `store`; returns the names of the parameters it lacks (they keep
    /// their fresh initialisation).
    pub fn load_into(&self, store: &ParamStore) -> Result<Vec<String>> {
        let tensors = self.tensors(store.device())?;
        let origin = format!("--init {}", self.file.display());
        let missing = store.load_matching(&tensors, &origin)?;
        if missing.len() == store.tensors().len() {
            bail!("{origin}: none of its tensors belongs to this model");
        }
        Ok(missing)
    }

    /// Checks, before anything is written, that the source loads into the model that `build`
    /// creates (on the CPU); returns the parameters the source lacks.
    pub fn check_fit(&self, build: impl FnOnce(&ParamStore) -> Result<()>) -> Result<Vec<String>> {
        let store = ParamStore::frozen(0, &Device::Cpu);
        build(&store)?;
        self.load_into(&store)
    }

    /// Starts a new run's model (`store`, with its moving average `ema` if it keeps one) from
    /// the source, before the first step; returns the parameters the source lacks.
    pub fn start(&self, store: &ParamStore, ema: &mut Option<Ema>) -> Result<Vec<String>> {
        let fresh = self.load_into(store)?;
        if let Some(e) = ema {
            // the average starts at the loaded weights, not at the random ones
            *e = Ema::new(e.decay(), store)?;
        }
        Ok(fresh)
    }

    /// Records the source in the new run's `init.json` and says what it starts from.
    pub fn record(&self, run: &RunDir, fresh: &[String]) -> Result<()> {
        let record = serde_json::json!({
            "file": self.file.display().to_string(),
            "step": self.step,
            "fresh_parameters": fresh,
        });
        crate::fsutil::write_atomic(
            &run.root().join("init.json"),
            serde_json::to_string_pretty(&record)?.as_bytes(),
        )?;
        let step = self
            .step
            .map(|s| format!(" (step {s})"))
            .unwrap_or_default();
        eprintln!("starting from {}{step}", self.file.display());
        if !fresh.is_empty() {
            eprintln!(
                "{} parameters the source lacks start fresh: {}",
                fresh.len(),
                fresh.join(", ")
            );
        }
        Ok(())
    }
}

/// The first leaf where `a` and `b` differ, as `(path, a's value, b's value)`, skipping the
/// paths in `free` (relative to `prefix`).
fn first_difference(
    a: &Value,
    b: &Value,
    prefix: &str,
    free: &[&str],
) -> Option<(String, String, String)> {
    fn walk(
        a: &Value,
        b: &Value,
        path: &str,
        rel: &str,
        free: &[&str],
    ) -> Option<(String, String, String)> {
        if free.contains(&rel) {
            return None;
        }
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                keys.into_iter().find_map(|k| {
                    let null = Value::Null;
                    let join = |p: &str| {
                        if p.is_empty() {
                            k.clone()
                        } else {
                            format!("{p}.{k}")
                        }
                    };
                    walk(
                        x.get(k).unwrap_or(&null),
                        y.get(k).unwrap_or(&null),
                        &join(path),
                        &join(rel),
                        free,
                    )
                })
            }
            _ if a == b => None,
            _ => Some((path.to_string(), a.to_string(), b.to_string())),
        }
    }
    walk(a, b, prefix, "", free)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_first_difference_is_named_by_its_path() {
        let a = json!({"model": {"ch": 64, "quantizer": {"beta": 0.25, "codebook_size": 512}}});
        let b = json!({"model": {"ch": 64, "quantizer": {"beta": 0.5, "codebook_size": 1024}}});
        let pick = |v: &Value| v["model"].clone();
        assert_eq!(
            first_difference(&pick(&a), &pick(&b), "model", &["quantizer.beta"]),
            Some((
                "model.quantizer.codebook_size".into(),
                "512".into(),
                "1024".into()
            ))
        );
        assert_eq!(
            first_difference(
                &pick(&a),
                &pick(&a),
                "model",
                &["quantizer.beta", "quantizer.codebook_size"]
            ),
            None
        );
        // a field one side lacks differs from the other's value
        let c = json!({"model": {"ch": 64, "quantizer": {"beta": 0.25, "codebook_size": 512}, "decoder_norm": "group"}});
        assert_eq!(
            first_difference(&pick(&a), &pick(&c), "model", &[]).map(|d| d.0),
            Some("model.decoder_norm".into())
        );
    }
}
