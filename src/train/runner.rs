//! The one training loop. It owns batching, the learning-rate schedule, periodic validation,
//! checkpoints, `metrics.jsonl`, the progress bar, the NaN guard and Ctrl-C handling; each stage
//! plugs in its step through [`Stage`].

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use serde_json::{json, Map, Value};

use crate::parallel::Shard;
use crate::rng::{rng_for, Stream};
use crate::train::fid_probe::FidProbe;
use crate::train::metrics::Metrics;
use crate::train::run_dir::{Checkpoint, RunDir};
use crate::train::schedule::lr_at;
use crate::train::tensorboard::EventWriter;

/// What a step gets from the loop.
pub struct StepContext {
    /// 0-based index of this step.
    pub step: usize,
    pub lr: f64,
    /// Randomness for this step alone (a function of seed and step, so resume is exact).
    pub rng: StdRng,
}

/// A trainable stage (stage-1 autoencoder, stage-2 transformer).
pub trait Stage {
    type Batch;

    /// Forward, backward and optimizer update for one batch. The returned metrics must hold
    /// `loss`; each is this rank's share of the whole batch's value or global (see
    /// [`Metrics`]), and the loop sums the shares over the ranks.
    fn train_step(&mut self, batch: Self::Batch, ctx: StepContext) -> Result<Metrics>;

    /// Metrics on the validation set.
    fn validate(&mut self) -> Result<Metrics>;

    /// Tensors that make up the model (what inference loads).
    fn model_tensors(&self) -> Vec<(String, Tensor)>;

    /// Training-only state: optimizer moments, auxiliary networks.
    fn train_state(&self) -> Result<Vec<(String, Tensor)>>;

    /// The model with its weights' moving average, when the run keeps one.
    fn ema_tensors(&self) -> Option<Vec<(String, Tensor)>> {
        None
    }

    /// Restores model and training state from a checkpoint.
    fn load_checkpoint(&mut self, ckpt: &Checkpoint) -> Result<()>;

    /// A picture of what the model does now (`train.sample_every`), with the weights inference
    /// would use; `None` when the stage has nothing to show.
    fn preview(&mut self) -> Result<Option<image::RgbImage>> {
        Ok(None)
    }

    /// The images a FID measurement scores (`train.fid_every`): stage 1 its validation
    /// images' reconstructions, stage 2 `samples` samples; none when the stage has none.
    fn fid_images(&mut self, _samples: usize) -> Result<Vec<image::RgbImage>> {
        Ok(vec![])
    }

    /// Metric names shown on the progress bar.
    fn progress_keys(&self) -> &'static [&'static str] {
        &["loss"]
    }
}

/// Loop settings (from `TrainConfig`).
#[derive(Debug, Clone)]
pub struct LoopOptions {
    pub steps: usize,
    pub peak_lr: f64,
    pub warmup_steps: usize,
    pub min_lr_ratio: f64,
    pub log_every: usize,
    pub val_every: usize,
    pub checkpoint_every: usize,
    pub keep_checkpoints: usize,
    pub sample_every: usize,
    pub tensorboard: bool,
    /// FID while training (`train.fid_every`), measured by rank 0.
    pub fid: Option<std::sync::Arc<FidProbe>>,
    pub seed: u64,
}

impl LoopOptions {
    pub fn new(cfg: &crate::config::TrainConfig, seed: u64) -> Self {
        Self {
            steps: cfg.steps,
            peak_lr: cfg.peak_lr(),
            warmup_steps: cfg.warmup_steps,
            min_lr_ratio: cfg.min_lr_ratio,
            log_every: cfg.log_every,
            val_every: cfg.val_every,
            checkpoint_every: cfg.checkpoint_every,
            keep_checkpoints: cfg.keep_checkpoints,
            sample_every: cfg.sample_every,
            tensorboard: cfg.tensorboard,
            fid: None,
            seed,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Finished {
        step: usize,
    },
    /// Ctrl-C: a checkpoint was written at `step`.
    Interrupted {
        step: usize,
    },
}

/// Runs steps `start..opts.steps` of `stage`, taking batches from `batches`. As one rank of a
/// data-parallel group (`shard`), every rank runs this loop in step; rank 0 alone validates
/// and writes checkpoints, metrics and progress, and an interrupt seen by any rank stops all of
/// them at the same step.
pub fn run<S: Stage>(
    stage: &mut S,
    batches: &mut dyn Iterator<Item = Result<S::Batch>>,
    run_dir: &RunDir,
    opts: &LoopOptions,
    start: usize,
    interrupt: &AtomicBool,
    shard: &Shard,
) -> Result<Outcome> {
    let main = shard.is_main();
    // every rank must resume from the same step (the same checkpoint): on several hosts the run
    // directory has to be shared or copied
    let first = shard.broadcast(&[start as f64], 0)?[0];
    if shard.any(first != start as f64)? {
        bail!(
            "the ranks start from different steps (this one from {start}): every host must see the \
             same run directory (--out on a shared filesystem, or the same checkpoint copied)"
        );
    }
    let plain_lines = main && !std::io::stderr().is_terminal();
    let bar = if main && !plain_lines {
        ProgressBar::new(opts.steps as u64).with_position(start as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {per_sec} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut last_saved = start;
    let save = |stage: &S, step: usize| -> Result<Checkpoint> {
        run_dir.save_checkpoint(
            step,
            &stage.model_tensors(),
            &stage.train_state()?,
            stage.ema_tensors().as_deref(),
            opts.keep_checkpoints,
        )
    };
    let mut tb = match main && opts.tensorboard {
        true => Some(EventWriter::create(&run_dir.root().join("tb"), start)?),
        false => None,
    };
    let mut window = Instant::now();
    let mut window_steps = 0usize;
    for step in start..opts.steps {
        if shard.any(interrupt.load(Ordering::SeqCst))? {
            bar.abandon();
            if main && (step > last_saved || run_dir.latest()?.is_none()) {
                save(stage, step)?;
            }
            return Ok(Outcome::Interrupted { step });
        }
        let batch = batches
            .next()
            .context("the data loader stopped unexpectedly")??;
        let lr = lr_at(
            step,
            opts.steps,
            opts.peak_lr,
            opts.warmup_steps,
            opts.min_lr_ratio,
        );
        let rng = rng_for(opts.seed, Stream::Step, &[step as u64]);
        let metrics = stage
            .train_step(batch, StepContext { step, lr, rng })?
            .reduce(shard)?;
        if let Some((name, value)) = metrics.non_finite() {
            bar.abandon();
            let kept = match run_dir.latest()? {
                Some(c) => format!("the last good checkpoint (step {}) is kept", c.step),
                None => "no checkpoint had been written yet".to_string(),
            };
            bail!(
                "training diverged: {name} is {value} at step {}; stopped, {kept} in {}. Lower --lr or enable train.grad_clip",
                step + 1,
                run_dir.root().display()
            );
        }
        let done = step + 1;
        window_steps += 1;
        bar.set_position(done as u64);
        bar.set_message(metrics.short(stage.progress_keys()));
        if main && (done % opts.log_every == 0 || done == opts.steps) {
            let secs = window.elapsed().as_secs_f64();
            let mut rec = Map::new();
            rec.insert("step".into(), json!(done));
            rec.insert("split".into(), json!("train"));
            rec.insert("lr".into(), json!(lr));
            metrics.write_json(&mut rec);
            rec.insert(
                "steps_per_s".into(),
                json!(window_steps as f64 / secs.max(1e-9)),
            );
            if let Some(tb) = &mut tb {
                tb.scalars(done, tags("train", &rec))?;
            }
            run_dir.log(&Value::Object(rec))?;
            if plain_lines {
                // no terminal to draw the bar on (a log file, nohup, a scheduler): a line instead
                let rate = window_steps as f64 / secs.max(1e-9);
                let eta = (opts.steps - done) as f64 / rate.max(1e-9);
                eprintln!(
                    "step {done}/{}  {}  {rate:.2} steps/s  ETA {}",
                    opts.steps,
                    metrics.short(stage.progress_keys()),
                    hms(eta)
                );
            }
            window = Instant::now();
            window_steps = 0;
        }
        if main && ((opts.val_every > 0 && done % opts.val_every == 0) || done == opts.steps) {
            let val = stage.validate()?;
            let mut rec = Map::new();
            rec.insert("step".into(), json!(done));
            rec.insert("split".into(), json!("val"));
            val.write_json(&mut rec);
            if let Some(tb) = &mut tb {
                tb.scalars(done, tags("val", &rec))?;
            }
            run_dir.log(&Value::Object(rec))?;
            let line = format!("step {done}: validation {}", val.short(&val_keys(&val)));
            if plain_lines {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
        }
        if main && opts.sample_every > 0 && (done % opts.sample_every == 0 || done == opts.steps) {
            if let Some(img) = stage.preview()? {
                let dir = run_dir.root().join("samples");
                crate::fsutil::create_dir(&dir)?;
                crate::data::image::save_png(&img, &dir.join(format!("step-{done:07}.png")))?;
                if let Some(tb) = &mut tb {
                    tb.image(done, "samples", &img)?;
                }
            }
        }
        if let Some(probe) = opts
            .fid
            .as_deref()
            .filter(|p| main && p.due(done, opts.steps))
        {
            let images = stage.fid_images(probe.samples)?;
            if images.len() >= 2 {
                let n = images.len();
                let fid = probe.measure(images)?;
                let mut rec = Map::new();
                rec.insert("step".into(), json!(done));
                rec.insert("split".into(), json!("fid"));
                rec.insert(probe.key.into(), json!(fid));
                rec.insert("images".into(), json!(n));
                if let Some(tb) = &mut tb {
                    tb.scalars(done, vec![(format!("fid/{}", probe.key), fid)])?;
                }
                run_dir.log(&Value::Object(rec))?;
                let line = format!("step {done}: {} {fid:.2} ({n} images)", probe.key);
                if plain_lines {
                    eprintln!("{line}");
                } else {
                    bar.println(line);
                }
            }
        }
        if (opts.checkpoint_every > 0 && done % opts.checkpoint_every == 0) || done == opts.steps {
            if main {
                save(stage, done)?;
            }
            last_saved = done;
        }
    }
    bar.finish();
    Ok(Outcome::Finished { step: opts.steps })
}

/// The numbers of a `metrics.jsonl` record as TensorBoard tags `split/name`.
fn tags(split: &str, rec: &Map<String, Value>) -> Vec<(String, f64)> {
    rec.iter()
        .filter(|(k, _)| *k != "step")
        .filter_map(|(k, v)| Some((format!("{split}/{k}"), v.as_f64()?)))
        .collect()
}

/// Seconds as `H:MM:SS`.
fn hms(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn val_keys(m: &Metrics) -> Vec<&str> {
    m.iter().map(|(n, _)| n).collect()
}
