//! What both training commands do around their stage: resolve the run's config (a resumed
//! run's own, or a new one) and apply the command-line overrides, check it before anything is
//! written, write the run directory, settle the compute policy, and train every rank with the
//! shared loop from the right step, reporting how the run ended.
//!
//! A command supplies the stage-specific parts as closures: how a new config is made, what is
//! written beside it, and how each rank builds its stage and its batches.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::Device;

use crate::compute::{Compute, ComputeFlags, Precision};
use crate::config::RunSettings;
use crate::fsutil;
use crate::parallel::{check_batch, rank_devices, run_ranks, Placement, Shard};
use crate::train::fid_probe::FidProbe;
use crate::train::{self, LoopOptions, Outcome, RunDir, Stage};

/// Exit code of a run stopped by Ctrl-C after saving a checkpoint.
pub const EXIT_INTERRUPTED: u8 = 130;

/// The command-line settings every training command takes.
#[derive(Debug, Clone)]
pub struct TrainRequest<'a> {
    pub out: &'a Path,
    /// `--config` (new runs only).
    pub config: Option<&'a str>,
    pub resume: bool,
    /// `--init`: the weights a new run starts from.
    pub init: Option<&'a Path>,
    /// `--fid-ref`: the statistics FID while training is measured against.
    pub fid_ref: Option<&'a Path>,
    pub seed: Option<u64>,
    pub steps: Option<usize>,
    pub batch_size: Option<usize>,
    pub lr: Option<f64>,
    pub compute: ComputeFlags,
    pub placement: Placement,
    /// `--ranks`: ranks in this process.
    pub ranks: usize,
}

impl TrainRequest<'_> {
    /// Applies `--steps`, `--batch-size`, `--lr`, `--precision` and `--tf32` to `cfg`'s
    /// training section; true if anything changed.
    fn override_train<C: RunSettings>(&self, cfg: &mut C) -> bool {
        let t = cfg.train_mut();
        let before = t.clone();
        if let Some(s) = self.steps {
            t.steps = s;
        }
        if let Some(b) = self.batch_size {
            t.batch_size = b;
        }
        if let Some(lr) = self.lr {
            t.lr = lr;
        }
        if let Some(p) = self.compute.precision {
            t.precision = p;
        }
        if self.compute.tf32 {
            t.tf32 = true;
        }
        *t != before
    }
}

/// A run's config, checked, before anything is written.
pub struct Prepared<'a, C> {
    pub cfg: C,
    /// Selected before anything is written: a missing GPU stops the run first. One per rank.
    devices: Vec<Device>,
    request: TrainRequest<'a>,
    /// A resumed run, and whether the overrides changed its config.
    existing: Option<(RunDir, bool)>,
}

/// Resolves the config: with `--resume`, the run's own (its seed kept); else `new(seed)` makes
/// one (`seed` is `--seed`, if given). The overrides are applied and the result validated.
pub fn prepare<'a, C: RunSettings>(
    request: TrainRequest<'a>,
    new: impl FnOnce(Option<u64>) -> Result<C>,
) -> Result<Prepared<'a, C>> {
    let (mut cfg, existing) = if request.resume {
        if request.config.is_some() {
            bail!("--config cannot be combined with --resume: the run's own config.json is used");
        }
        if request.init.is_some() {
            bail!("--init starts a new run; --resume continues one from its own checkpoint");
        }
        let run = RunDir::open(request.out)?;
        let cfg: C = run.config()?;
        if let Some(seed) = request.seed.filter(|&s| s != cfg.seed()) {
            bail!(
                "--seed {seed} differs from the run's seed {}; a resumed run keeps its seed",
                cfg.seed()
            );
        }
        (cfg, Some(run))
    } else {
        (new(request.seed)?, None)
    };
    let changed = request.override_train(&mut cfg);
    cfg.validate().context("invalid command-line override")?;
    check_batch(
        cfg.train().batch_size,
        request.placement.world,
        cfg.train().accumulate,
    )?;
    let devices = rank_devices(
        &crate::device::select(&request.compute.device)?,
        request.ranks,
    )?;
    Ok(Prepared {
        cfg,
        devices,
        existing: existing.map(|run| (run, changed)),
        request,
    })
}

impl<'a, C: RunSettings> Prepared<'a, C> {
    /// Whether this continues an existing run.
    pub fn resuming(&self) -> bool {
        self.existing.is_some()
    }

    /// The FID measurement the config asks for (`train.fid_every`, `--fid-ref`), its
    /// statistics and network loaded on rank 0's device; the metric is logged as `key`.
    pub fn fid_probe(&self, key: &'static str) -> Result<Option<Arc<FidProbe>>> {
        let probe = FidProbe::prepare(
            self.cfg.train(),
            self.request.fid_ref,
            key,
            &self.devices[0],
        )?;
        Ok(probe.map(Arc::new))
    }

    /// Writes the run directory: a new run's config (then `extra`, e.g. the files a stage-2
    /// run holds), or a resumed run's config where the overrides changed it.
    pub fn create(self, extra: impl FnOnce(&RunDir) -> Result<()>) -> Result<Session<'a, C>> {
        let run = match self.existing {
            Some((run, changed)) => {
                if changed {
                    fsutil::write_atomic(&run.config_path(), self.cfg.to_json().as_bytes())?;
                }
                run
            }
            None => {
                let run = RunDir::create(self.request.out, &self.cfg.to_json())?;
                extra(&run)?;
                run
            }
        };
        let compute = Compute::on_device(
            self.devices[0].clone(),
            &self.request.compute,
            Some(self.cfg.train()),
        );
        let devices = self.devices;
        Ok(Session {
            cfg: self.cfg,
            run,
            compute,
            devices,
            request: self.request,
            fid: None,
        })
    }
}

/// A run directory ready to train.
pub struct Session<'a, C> {
    pub cfg: C,
    pub run: RunDir,
    pub compute: Compute,
    devices: Vec<Device>,
    request: TrainRequest<'a>,
    fid: Option<Arc<FidProbe>>,
}

/// A stage's batches, from the step given to [`Rank::batches`] on.
pub type Batches<B> = Box<dyn Iterator<Item = Result<B>>>;

/// What a rank trains with.
pub struct Rank<S: Stage> {
    pub stage: S,
    /// Batches from the given step on.
    pub batches: Box<dyn FnOnce(usize) -> Result<Batches<S::Batch>>>,
}

impl<C: RunSettings> Session<'_, C> {
    /// Measures FID while training with `probe` (see [`Prepared::fid_probe`]).
    pub fn with_fid(mut self, probe: Option<Arc<FidProbe>>) -> Self {
        self.fid = probe;
        self
    }
}

impl<C: RunSettings + Sync> Session<'_, C> {
    /// Trains every rank: `rank` builds one rank's stage and batches on its device (a rank's
    /// [`Compute`]); the latest checkpoint is restored when resuming; `banner(stage, start,
    /// devices)` is printed by rank 0. Returns the exit code after printing the outcome, with
    /// `resume_hint` (the command that continues the run) when interrupted.
    pub fn train<S: Stage>(
        &self,
        rank: impl Fn(&Shard, &Compute) -> Result<Rank<S>> + Sync,
        banner: impl Fn(&S, usize, &str) -> String + Sync,
        resume_hint: &str,
    ) -> Result<ExitCode> {
        let interrupt = interrupt_flag()?;
        let placement = &self.request.placement;
        let described = describe_ranks(&self.devices, placement);
        let train = self.cfg.train();
        let outcome = run_ranks(&self.devices, placement, |shard, dev| {
            let Rank { mut stage, batches } = rank(&shard, &self.compute.on(dev))?;
            let start = starting_step(
                &mut stage,
                &self.run,
                self.request.resume,
                train.steps,
                shard.is_main(),
            )?;
            if shard.is_main() {
                eprintln!("{}", banner(&stage, start, &described));
            }
            let mut batches = batches(start)?;
            let mut opts = LoopOptions::new(train, self.cfg.seed());
            opts.fid = self.fid.clone();
            train::run(
                &mut stage,
                &mut *batches,
                &self.run,
                &opts,
                start,
                &interrupt,
                &shard,
            )
        })?;
        Ok(report_outcome(outcome, &self.run, resume_hint))
    }

    /// The precision the run computes in (after the CPU's fallback to f32).
    pub fn precision(&self) -> Precision {
        self.compute.precision
    }
}

/// The step to start from: the latest checkpoint's (restored into `stage`) when resuming, else 0.
/// Errors when the run is already at `total` steps. Only the rank that writes the run (`lead`,
/// rank 0) cuts the log back to the checkpoint and says so: ranks are threads of one process,
/// and two of them rewriting `metrics.jsonl` at once collide.
fn starting_step<S: Stage>(
    stage: &mut S,
    run: &RunDir,
    resume: bool,
    total: usize,
    lead: bool,
) -> Result<usize> {
    let start = match run.latest()? {
        Some(ckpt) if resume => {
            stage.load_checkpoint(&ckpt)?;
            if lead {
                run.truncate_log_after(ckpt.step)?;
                eprintln!("resuming {} from step {}", run.root().display(), ckpt.step);
            }
            ckpt.step
        }
        _ => 0,
    };
    if start >= total {
        bail!(
            "run {} is already at step {start} of {total}; pass a larger --steps to train further",
            run.root().display()
        );
    }
    Ok(start)
}

/// A flag set by Ctrl-C (a second Ctrl-C exits at once). A repeat within a second counts as the
/// same interrupt: `timeout -s INT` and `kill -INT -PGID` deliver SIGINT twice, to the process
/// and to its group, and that must not cost the checkpoint.
fn interrupt_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let first = std::sync::Mutex::new(None::<std::time::Instant>);
    ctrlc::set_handler(move || {
        let mut first = first.lock().unwrap_or_else(|e| e.into_inner());
        match *first {
            Some(t) if t.elapsed() < std::time::Duration::from_secs(1) => {}
            Some(_) => {
                eprintln!("\ninterrupted twice: exiting without a checkpoint");
                std::process::exit(EXIT_INTERRUPTED as i32);
            }
            None => {
                *first = Some(std::time::Instant::now());
                f.store(true, Ordering::SeqCst);
                eprintln!("\ninterrupt: saving a checkpoint (Ctrl-C again to exit at once)");
            }
        }
    })
    .context("cannot install the Ctrl-C handler")?;
    Ok(flag)
}

/// Reports how a training run ended: the JSON summary on stdout and the exit code.
fn report_outcome(outcome: Outcome, run: &RunDir, resume_hint: &str) -> ExitCode {
    let (step, status) = match outcome {
        Outcome::Finished { step } => (step, "finished"),
        Outcome::Interrupted { step } => {
            eprintln!(
                "interrupted at step {step}: checkpoint saved; continue with `{resume_hint}`"
            );
            (step, "interrupted")
        }
    };
    println!(
        "{}",
        serde_json::json!({ "run": run.root().display().to_string(), "step": step, "status": status })
    );
    match outcome {
        Outcome::Finished { .. } => ExitCode::SUCCESS,
        Outcome::Interrupted { .. } => ExitCode::from(EXIT_INTERRUPTED),
    }
}

/// The devices a run trains on, for its first message: `device cuda:0`, `2 ranks on cpu, cpu`,
/// or with other processes `ranks 2..3 of 4 on cuda:0, cuda:1`.
fn describe_ranks(devices: &[Device], p: &Placement) -> String {
    let names: Vec<String> = devices.iter().map(crate::device::describe).collect();
    match names.as_slice() {
        _ if p.spans_processes() => format!(
            "ranks {}..{} of {} on {}",
            p.first_rank,
            p.first_rank + p.local - 1,
            p.world,
            names.join(", ")
        ),
        [one] => format!("device {one}"),
        many => format!("{} ranks on {}", many.len(), many.join(", ")),
    }
}
