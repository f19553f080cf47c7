//! The training loop and stage-1 training: overfitting, exact resume, NaN guard, interrupts.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use movq::compute::Compute;
use movq::config::RunConfig;
use movq::data::image::push_chw;
use movq::data::loader::ImageBatch;
use movq::data::Dataset;
use movq::parallel::Shard;
use movq::train::run_dir::Checkpoint;
use movq::train::{self, LoopOptions, Metrics, Outcome, RunDir, Stage, StepContext};
use movq::vq::stage::VqStage;

use crate::harness::{movq, quick_config, s, tmp, train_vq};

fn shapes_batch(n: usize, side: u32) -> (ImageBatch, Vec<image::RgbImage>) {
    let ds = Dataset::open("builtin:shapes:64", 0).unwrap();
    let images: Vec<_> = (0..n)
        .map(|i| (*ds.load_resized(i, side).unwrap()).clone())
        .collect();
    let mut pixels = Vec::new();
    for img in &images {
        push_chw(img, &mut pixels);
    }
    (
        ImageBatch {
            pixels,
            labels: vec![None; n],
            side: side as usize,
        },
        images,
    )
}

#[test]
fn overfitting_a_handful_of_images_lowers_the_loss() {
    let mut cfg = RunConfig::resolve("tiny").unwrap();
    cfg.loss.discriminator = None;
    cfg.train.grad_clip = None;
    let (batch, images) = shapes_batch(4, 32);
    let mut stage = VqStage::new(
        &cfg,
        0,
        &Compute::from_config(&Device::Cpu, &cfg.train),
        images,
        None,
    )
    .unwrap();
    let mut first = None;
    let mut last = 0.0;
    for step in 0..120 {
        let ctx = StepContext {
            step,
            lr: 2e-3,
            rng: movq::rng::rng_for(0, movq::rng::Stream::Step, &[step as u64]),
        };
        let m = stage.train_step(batch.clone(), ctx).unwrap();
        let rec = m.get("rec").unwrap();
        first.get_or_insert(rec);
        last = rec;
    }
    let first = first.unwrap();
    assert!(last < 0.4 * first, "reconstruction loss {first} → {last}");
    let val = stage.validate().unwrap();
    assert!(val.get("psnr").unwrap() > 20.0, "{val:?}");
}

/// A stage whose loss is scripted, to test the loop itself.
struct Scripted {
    losses: Vec<f64>,
    w: Tensor,
}

impl Stage for Scripted {
    type Batch = ();
    fn train_step(&mut self, _: (), ctx: StepContext) -> anyhow::Result<Metrics> {
        let mut m = Metrics::new();
        m.push("loss", self.losses[ctx.step]);
        m.push("lr", ctx.lr);
        Ok(m)
    }
    fn validate(&mut self) -> anyhow::Result<Metrics> {
        let mut m = Metrics::new();
        m.push("score", 1.0);
        Ok(m)
    }
    fn model_tensors(&self) -> Vec<(String, Tensor)> {
        vec![("w".into(), self.w.clone())]
    }
    fn train_state(&self) -> anyhow::Result<Vec<(String, Tensor)>> {
        Ok(vec![])
    }
    fn load_checkpoint(&mut self, _: &Checkpoint) -> anyhow::Result<()> {
        Ok(())
    }
}

fn loop_opts(steps: usize) -> LoopOptions {
    LoopOptions {
        steps,
        peak_lr: 1.0,
        warmup_steps: 0,
        min_lr_ratio: 1.0,
        log_every: 1,
        val_every: 0,
        checkpoint_every: 2,
        keep_checkpoints: 0,
        sample_every: 0,
        tensorboard: false,
        fid: None,
        seed: 0,
    }
}

#[test]
fn a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let dir = tmp();
    let run = RunDir::create(&dir.path().join("run"), "{}").unwrap();
    let mut stage = Scripted {
        losses: vec![1.0, 0.9, 0.8, 0.7, f64::NAN, 0.5],
        w: Tensor::new(&[1f32], &Device::Cpu).unwrap(),
    };
    let mut batches = std::iter::repeat_with(|| Ok(()));
    let err = train::run(
        &mut stage,
        &mut batches,
        &run,
        &loop_opts(6),
        0,
        &AtomicBool::new(false),
        &Shard::single(),
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("loss is NaN at step 5"), "{msg}");
    assert!(msg.contains("last good checkpoint (step 4)"), "{msg}");
    assert_eq!(run.latest().unwrap().unwrap().step, 4);
    assert!(!run.checkpoint(5).model.exists());
}

#[test]
fn an_interrupt_saves_a_checkpoint() {
    let dir = tmp();
    let run = RunDir::create(&dir.path().join("run"), "{}").unwrap();
    let mut stage = Scripted {
        losses: vec![1.0; 10],
        w: Tensor::new(&[1f32], &Device::Cpu).unwrap(),
    };
    let mut batches = std::iter::repeat_with(|| Ok(()));
    let flag = AtomicBool::new(true);
    let single = Shard::single();
    let out = train::run(
        &mut stage,
        &mut batches,
        &run,
        &loop_opts(10),
        3,
        &flag,
        &single,
    )
    .unwrap();
    assert_eq!(out, Outcome::Interrupted { step: 3 });
    assert_eq!(run.latest().unwrap().unwrap().step, 3);
    // the log: one JSON object per logged step
    let mut stage = Scripted {
        losses: vec![1.0; 10],
        w: Tensor::new(&[1f32], &Device::Cpu).unwrap(),
    };
    let out = train::run(
        &mut stage,
        &mut batches,
        &run,
        &loop_opts(10),
        3,
        &AtomicBool::new(false),
        &single,
    )
    .unwrap();
    assert_eq!(out, Outcome::Finished { step: 10 });
    assert_eq!(logged_train_steps(&run), (4..=10).collect::<Vec<_>>());
}

/// Steps of the training records in a run's `metrics.jsonl`.
fn logged_train_steps(run: &RunDir) -> Vec<u64> {
    std::fs::read_to_string(run.metrics_path())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["split"] == "train")
        .map(|v| v["step"].as_u64().unwrap())
        .collect()
}

fn read(p: &std::path::Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn resume_continues_exactly() {
    check_resume(false);
}

#[test]
fn resume_continues_the_weights_moving_average_exactly() {
    check_resume(true);
}

/// 12 steps straight vs. 6 steps, then --resume to 12: byte-identical weights and optimizer
/// (and, with `ema`, moving average).
fn check_resume(ema: bool) {
    let dir = tmp();
    let cfg = crate::harness::tiny_config(dir.path(), |v| {
        let q: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(quick_config(dir.path(), 12)).unwrap())
                .unwrap();
        *v = q;
        if ema {
            v["train"]["ema_decay"] = 0.9.into();
        }
    });
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    train_vq(&cfg, "builtin:shapes:64", &a).ok();
    // Run b is a copy of a's state after 6 steps: train 12 with checkpoints every 6, drop the last.
    let cfg6 = crate::harness::tiny_config(dir.path(), |v| {
        let q: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
        *v = q;
        v["train"]["checkpoint_every"] = 6.into();
        v["train"]["keep_checkpoints"] = 0.into();
    });
    train_vq(&cfg6, "builtin:shapes:64", &b).ok();
    let run_b = RunDir::open(&b).unwrap();
    let last = run_b.checkpoint(12);
    std::fs::remove_file(&last.model).unwrap();
    std::fs::remove_file(&last.train_state).unwrap();
    assert_eq!(last.ema.is_file(), ema);
    let _ = std::fs::remove_file(&last.ema);
    std::fs::write(b.join("latest"), "step-0000006\n").unwrap();
    let r = movq(&[
        "train-vq",
        "--data",
        "builtin:shapes:64",
        "--out",
        s(&b),
        "--resume",
        "--device",
        "cpu",
    ]);
    r.ok();
    assert!(r.stderr.contains("resuming"), "{}", r.stderr);
    let run_a = RunDir::open(&a).unwrap();
    assert!(
        read(&run_a.checkpoint(12).model) == read(&run_b.checkpoint(12).model),
        "weights differ after resume"
    );
    assert!(
        read(&run_a.checkpoint(12).train_state) == read(&run_b.checkpoint(12).train_state),
        "optimizer state differs after resume"
    );
    if ema {
        let (ea, eb) = (
            read(&run_a.checkpoint(12).ema),
            read(&run_b.checkpoint(12).ema),
        );
        assert!(ea == eb, "moving average differs after resume");
        assert!(
            ea != read(&run_a.checkpoint(12).model),
            "the average equals the weights"
        );
    }
    // the resumed log has no duplicate steps
    assert_eq!(logged_train_steps(&run_b), vec![2, 4, 6, 8, 10, 12]);
}

/// Starts `train-vq` on `out`, waits for its first logged step, sends it SIGINT `signals` times
/// back to back, and returns its exit code and stderr.
fn train_vq_then_interrupt(cfg: &Path, out: &Path, signals: usize) -> (Option<i32>, String) {
    let child = crate::harness::bin()
        .args([
            "train-vq",
            "--config",
            s(cfg),
            "--data",
            "builtin:shapes:64",
            "--out",
            s(out),
            "--device",
            "cpu",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let log = out.join("metrics.jsonl");
    let t0 = std::time::Instant::now();
    while !log.exists() && t0.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for _ in 0..signals {
        std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ctrl_c_saves_and_resume_matches_an_uninterrupted_run() {
    let dir = tmp();
    let cfg = quick_config(dir.path(), 16);
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    train_vq(&cfg, "builtin:shapes:64", &a).ok();
    let (code, stderr) = train_vq_then_interrupt(&cfg, &b, 1);
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("--resume"), "{stderr}");
    let run_b = RunDir::open(&b).unwrap();
    let stopped = run_b
        .latest()
        .unwrap()
        .expect("a checkpoint after Ctrl-C")
        .step;
    assert!(stopped < 16, "stopped at {stopped}");
    movq(&[
        "train-vq",
        "--data",
        "builtin:shapes:64",
        "--out",
        s(&b),
        "--resume",
        "--device",
        "cpu",
    ])
    .ok();
    let run_a = RunDir::open(&a).unwrap();
    assert!(
        read(&run_a.checkpoint(16).model) == read(&run_b.checkpoint(16).model),
        "interrupted at {stopped}: weights differ"
    );
}

#[test]
fn sigint_to_process_and_group_at_once_still_saves_a_checkpoint() {
    // `timeout -s INT` signals the process and then its process group: two SIGINTs at once are
    // one interrupt, not "Ctrl-C twice: exit without a checkpoint"
    let dir = tmp();
    let cfg = quick_config(dir.path(), 10_000);
    let out = dir.path().join("run");
    let (code, stderr) = train_vq_then_interrupt(&cfg, &out, 2);
    assert_eq!(code, Some(130), "{stderr}");
    assert!(!stderr.contains("without a checkpoint"), "{stderr}");
    let run = RunDir::open(&out).unwrap();
    assert!(run.latest().unwrap().is_some(), "no checkpoint: {stderr}");
}

/// Without a terminal on stderr (a log file, a scheduler) the run prints a plain line every
/// `log_every` steps, and its validation lines.
#[test]
fn a_run_without_a_terminal_prints_plain_progress_lines() {
    let dir = tmp();
    let r = train_vq(
        &quick_config(dir.path(), 4),
        "builtin:shapes:16",
        &dir.path().join("run"),
    );
    r.ok();
    let lines: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("step "))
        .collect();
    assert!(
        lines.iter().any(|l| l.starts_with("step 2/4")
            && l.contains("loss")
            && l.contains("steps/s")
            && l.contains("ETA")),
        "{}",
        r.stderr
    );
    assert!(
        lines.iter().any(|l| l.starts_with("step 4/4")),
        "{}",
        r.stderr
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("step 4: validation psnr")),
        "{}",
        r.stderr
    );
}
