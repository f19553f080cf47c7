//! Helpers shared by the commands: loading a trained model, interrupt handling, input images.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::{DType, Device};

use std::process::ExitCode;

use crate::cli::{Common, TrainFlags};
use crate::config::{RunConfig, TrainConfig, TransformerRunConfig};
use crate::nn::params::ParamStore;
use crate::nn::precision::set_tf32;
use crate::train::run_dir::Checkpoint;
use crate::train::RunDir;
use crate::train::{Outcome, Stage};
use crate::transformer::{MaskTransformer, TokenLayout};
use crate::vq::MoVq;
use image::RgbImage;

/// The stage-1 model of a run directory at its latest checkpoint.
pub fn load_vq(run_path: &Path, device: &Device) -> Result<(RunConfig, MoVq, Checkpoint)> {
    let run = RunDir::open(run_path)?;
    let cfg = RunConfig::parse(
        &run.read_config()?,
        &run.config_path().display().to_string(),
    )?;
    let ckpt = run.require_latest()?;
    let store = ParamStore::frozen(0, device);
    let model = MoVq::new(&cfg.model, &store)?;
    store
        .load_file(&ckpt.model)
        .with_context(|| format!("cannot load the model of run {}", run_path.display()))?;
    Ok((cfg, model, ckpt))
}

/// A flag set by Ctrl-C (a second Ctrl-C exits at once). A repeat within a second counts as the
/// same interrupt: `timeout -s INT` and `kill -INT -PGID` deliver SIGINT twice, to the process
/// and to its group, and that must not cost the checkpoint.
pub fn interrupt_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let first = std::sync::Mutex::new(None::<std::time::Instant>);
    ctrlc::set_handler(move || {
        let mut first = first.lock().unwrap_or_else(|e| e.into_inner());
        match *first {
            Some(t) if t.elapsed() < std::time::Duration::from_secs(1) => {}
            Some(_) => {
                eprintln!("\ninterrupted twice: exiting without a checkpoint");
                std::process::exit(super::EXIT_INTERRUPTED as i32);
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

/// Output file names from input names: the file stem, made unique.
pub fn output_names(names: &[String]) -> Vec<String> {
    let mut used = std::collections::HashSet::new();
    names
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let stem = Path::new(p).file_stem().map_or_else(
                || format!("image-{i}"),
                |s| s.to_string_lossy().into_owned(),
            );
            let mut name = format!("{stem}.png");
            let mut k = 1;
            while !used.insert(name.clone()) {
                name = format!("{stem}-{k}.png");
                k += 1;
            }
            name
        })
        .collect()
}

/// Reports how a training run ended: the JSON summary on stdout and the exit code.
pub fn report_outcome(outcome: Outcome, run: &RunDir, resume_hint: &str) -> ExitCode {
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
        Outcome::Interrupted { .. } => ExitCode::from(super::EXIT_INTERRUPTED),
    }
}

/// A trained stage-2 run: its config, the transformer, and the stage-1 model it decodes with.
pub struct TransformerRun {
    pub cfg: TransformerRunConfig,
    pub vq_cfg: RunConfig,
    pub vq: MoVq,
    pub model: MaskTransformer,
    pub checkpoint: Checkpoint,
}

impl TransformerRun {
    /// Both models computing in the precision asked by `common` (or the run's config).
    pub fn with_precision(mut self, common: &Common) -> Self {
        let dtype = compute_dtype(common, &self.cfg.transformer.train, &self.vq_device());
        self.vq = self.vq.with_dtype(dtype);
        self.model = self.model.with_dtype(dtype);
        self
    }

    /// The device the models live on.
    pub fn vq_device(&self) -> Device {
        self.model.device().clone()
    }
}

/// True when `path` is a stage-2 run (it holds the stage-1 model in `vq/`).
pub fn is_transformer_run(path: &Path) -> bool {
    path.join("vq").join("config.json").is_file()
}

/// The token layout of a stage-1 model with `n_classes` classes.
pub fn layout_for(vq: &RunConfig, n_classes: usize) -> TokenLayout {
    let m = &vq.model;
    TokenLayout {
        h: m.latent_size(),
        w: m.latent_size(),
        channels: m.quantizer.channels,
        codebook_size: m.quantizer.codebook_size,
        n_classes,
    }
}

/// Loads a stage-2 run at its latest checkpoint.
pub fn load_transformer(run_path: &Path, device: &Device) -> Result<TransformerRun> {
    let run = RunDir::open(run_path)?;
    if !is_transformer_run(run_path) {
        anyhow::bail!(
            "{} is not a stage-2 run (no vq/ folder); train one with `movq train-transformer`",
            run_path.display()
        );
    }
    let cfg = TransformerRunConfig::parse(
        &run.read_config()?,
        &run.config_path().display().to_string(),
    )?;
    let (vq_cfg, vq, _) = load_vq(&run_path.join("vq"), device)?;
    let checkpoint = run.require_latest()?;
    let store = ParamStore::frozen(0, device);
    let layout = layout_for(&vq_cfg, cfg.classes.len());
    let model = MaskTransformer::new(&cfg.transformer.model, layout, store.var_builder())?;
    store
        .load_file(&checkpoint.model)
        .with_context(|| format!("cannot load the transformer of run {}", run_path.display()))?;
    Ok(TransformerRun {
        cfg,
        vq_cfg,
        vq,
        model,
        checkpoint,
    })
}

/// Applies `--steps`, `--batch-size` and `--lr` to a training section; true if anything changed.
pub fn override_train(train: &mut TrainConfig, flags: &TrainFlags, common: &Common) -> bool {
    let before = train.clone();
    if let Some(s) = flags.steps {
        train.steps = s;
    }
    if let Some(b) = flags.batch_size {
        train.batch_size = b;
    }
    if let Some(lr) = flags.lr {
        train.lr = lr;
    }
    if let Some(p) = common.precision {
        train.precision = p;
    }
    if common.tf32 {
        train.tf32 = true;
    }
    *train != before
}

/// The dtype a command computes in on `device`: `--precision` if given, else the config's
/// `train.precision`; bf16 on the CPU falls back to f32 with a notice. Applies TF32 as asked.
pub fn compute_dtype(common: &Common, train: &TrainConfig, device: &Device) -> DType {
    set_tf32(common.tf32 || train.tf32);
    common
        .precision
        .unwrap_or(train.precision)
        .effective(device)
        .compute_dtype(device)
}

/// The step to start from: the latest checkpoint's (restored into `stage`) when resuming, else 0.
/// Errors when the run is already at `total` steps. Only the rank that writes the run (`lead`,
/// rank 0) cuts the log back to the checkpoint and says so: ranks are threads of one process,
/// and two of them rewriting `metrics.jsonl` at once collide.
pub fn starting_step<S: Stage>(
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
        anyhow::bail!(
            "run {} is already at step {start} of {total}; pass a larger --steps to train further",
            run.root().display()
        );
    }
    Ok(start)
}

/// The LPIPS network the flags ask for, on `device`; `None` (with a note on stderr) when its
/// weights are not installed and no file was named.
pub fn load_lpips(
    flags: &crate::cli::LpipsFlags,
    device: &Device,
) -> Result<Option<crate::metrics::lpips::Lpips>> {
    use crate::metrics::lpips::{locate, missing_note, Backbone, Lpips};
    let backbone = match flags.lpips {
        crate::cli::LpipsNet::Alex => Backbone::Alex,
        crate::cli::LpipsNet::Vgg => Backbone::Vgg,
    };
    match locate(flags.lpips_weights.as_deref(), backbone)? {
        Some(path) => Ok(Some(Lpips::load(&path, device)?)),
        None => {
            eprintln!("note: LPIPS left out: {}", missing_note(backbone));
            Ok(None)
        }
    }
}

/// LPIPS between two same-sized images (uint8, as the other metrics see them).
pub fn lpips_pair(
    net: &crate::metrics::lpips::Lpips,
    a: &RgbImage,
    b: &RgbImage,
    device: &Device,
) -> Result<f64> {
    use crate::data::image::images_to_tensor;
    let d = net.distance(
        &images_to_tensor(std::slice::from_ref(a), device)?,
        &images_to_tensor(std::slice::from_ref(b), device)?,
    )?;
    Ok(d.to_vec1::<f32>()?[0] as f64)
}

/// The devices a run trains on, for its first message: `device cuda:0`, `2 ranks on cpu, cpu`,
/// or with other processes `ranks 2..3 of 4 on cuda:0, cuda:1`.
pub fn describe_ranks(devices: &[candle_core::Device], p: &crate::dist::Placement) -> String {
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
