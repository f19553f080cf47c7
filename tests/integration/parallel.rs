//! Data-parallel training on the CPU: ranks as threads of one process (`LocalGroup`), each with
//! its shard of every batch, take the same steps as one process on the whole batch.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use movq::compute::Compute;
use movq::config::{CodebookUpdate, RunConfig};
use movq::data::loader::ImageBatch;
use movq::parallel::{LocalGroup, Shard};
use movq::rng::{rng_for, Stream};
use movq::train::{self, LoopOptions, Outcome, RunDir, Stage, StepContext};
use movq::transformer::stage::{TokenBatch, TokenLoader, TransformerStage};
use movq::transformer::TokenLayout;
use movq::vq::stage::VqStage;
use rand::{Rng, SeedableRng};

use crate::harness::{max_abs_diff, movq, s, tiny_config, tmp};

/// Runs `f(shard)` on `world` threads (one rank each), or once without a group for `world` 1;
/// returns each rank's result.
fn on_ranks<T: Send + 'static>(
    world: usize,
    f: impl Fn(Shard) -> T + Send + Sync + 'static,
) -> Vec<T> {
    if world == 1 {
        return vec![f(Shard::single())];
    }
    let f = Arc::new(f);
    let threads: Vec<_> = LocalGroup::new(world)
        .into_iter()
        .map(|g| {
            let f = f.clone();
            std::thread::spawn(move || f(Shard::new(Arc::new(g), &Device::Cpu)))
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

fn ctx(step: usize) -> StepContext {
    StepContext {
        step,
        lr: 1e-3,
        rng: rng_for(0, Stream::Step, &[step as u64]),
    }
}

/// The largest difference between two sets of named weights.
fn assert_same_weights(a: &[(String, Tensor)], b: &[(String, Tensor)], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len());
    let f32 = |t: &Tensor| t.to_dtype(candle_core::DType::F32).unwrap();
    for ((name, x), (_, y)) in a.iter().zip(b) {
        let d = max_abs_diff(&f32(x), &f32(y));
        assert!(d <= tol, "{what}: {name} differs by {d}");
    }
}

/// An `h × h × 2` token grid over `k` codes with `classes` classes.
fn token_layout(h: usize, k: usize, classes: usize) -> TokenLayout {
    TokenLayout {
        h,
        w: h,
        channels: 2,
        codebook_size: k,
        n_classes: classes,
    }
}

fn token_batch(rows: usize, layout: &TokenLayout) -> TokenBatch {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    TokenBatch {
        tokens: (0..rows)
            .map(|_| {
                (0..layout.seq_len())
                    .map(|_| rng.random_range(0..layout.codebook_size as u32))
                    .collect()
            })
            .collect(),
        labels: (0..rows as u32)
            .map(|i| match layout.n_classes {
                0 => layout.no_class(),
                n => i % n as u32,
            })
            .collect(),
    }
}

/// Rows `r` of a token batch.
fn token_rows(b: &TokenBatch, r: std::ops::Range<usize>) -> TokenBatch {
    TokenBatch {
        tokens: b.tokens[r.clone()].to_vec(),
        labels: b.labels[r].to_vec(),
    }
}

#[test]
fn sharded_transformer_steps_equal_the_whole_batch_steps() {
    let layout = token_layout(4, 16, 3);
    let batch = token_batch(8, &layout);
    let mut cfg = RunConfig::resolve("tiny").unwrap().transformer.unwrap();
    cfg.class_dropout = 0.3; // drawn for the whole batch, applied to each rank's rows
    cfg.micro_batch = Some(3); // chunks that do not line up with the shards
    cfg.train.ema_decay = Some(0.9); // the weights' moving average: the same on every rank
    let mut results = Vec::new();
    for (world, accumulate) in [(1, 0), (2, 0), (4, 0), (1, 2), (2, 2)] {
        let (mut cfg, batch) = (cfg.clone(), batch.clone());
        if accumulate > 0 {
            // train.accumulate instead of the chunks of 3
            cfg.micro_batch = None;
            cfg.train.accumulate = accumulate;
        }
        let per_rank = on_ranks(world, move |shard| {
            let rows = shard.rows(8);
            let mut stage = TransformerStage::new(
                &cfg,
                layout,
                0,
                &Compute::from_config(&Device::Cpu, &cfg.train),
                batch.clone(),
            )
            .unwrap()
            .with_shard(shard.clone());
            let mut losses = Vec::new();
            for step in 0..3 {
                // the loop's reduction: the ranks' shares summed
                let m = stage
                    .train_step(token_rows(&batch, rows.clone()), ctx(step))
                    .unwrap()
                    .reduce(&shard)
                    .unwrap();
                losses.push(m.get("loss").unwrap());
            }
            let mut tensors = stage.store().tensors();
            let ema = stage.ema_tensors().expect("a moving average");
            tensors.extend(ema.into_iter().map(|(n, t)| (format!("ema.{n}"), t)));
            (tensors, losses)
        });
        // every rank holds the same weights and reports the whole batch's loss
        for (w, l) in &per_rank[1..] {
            assert_same_weights(
                &per_rank[0].0,
                w,
                0.0,
                &format!("{world} ranks, rank 0 against another"),
            );
            assert_eq!(l, &per_rank[0].1);
        }
        results.push(((world, accumulate), per_rank.into_iter().next().unwrap()));
    }
    let (_, (single, single_losses)) = &results[0];
    for (world, (weights, losses)) in &results[1..] {
        assert_same_weights(
            single,
            weights,
            // summation order differs (chunks, ranks) and Adam's first steps divide by tiny
            // second moments: 3e-5 is 3 % of one step's size at lr 1e-3
            3e-5,
            &format!("(ranks, accumulate) {world:?} against one process"),
        );
        for (a, b) in single_losses.iter().zip(losses) {
            assert!((a - b).abs() < 1e-5, "{world:?}: loss {b} against {a}");
        }
    }
}

/// The `tiny` stage-1 config without dead-code restarts (rank 0 draws them from its own rows),
/// with EMA codebook updates if `ema`, and the discriminator (adaptive weight) from step 0 if
/// `adversarial`, else none.
fn tiny_vq(ema: bool, adversarial: bool) -> RunConfig {
    let mut cfg = RunConfig::resolve("tiny").unwrap();
    match (&mut cfg.loss.discriminator, adversarial) {
        (Some(d), true) => d.start = 0,
        (d, _) => *d = None,
    }
    cfg.model.quantizer.restart_dead_codes = None;
    if ema {
        cfg.model.quantizer.update = CodebookUpdate::Ema {
            decay: 0.9,
            epsilon: 1e-5,
        };
    }
    cfg
}

fn image_batch(n: usize, side: usize) -> ImageBatch {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    ImageBatch {
        pixels: (0..n * 3 * side * side)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect(),
        labels: vec![None; n],
        side,
    }
}

fn image_rows(b: &ImageBatch, r: std::ops::Range<usize>) -> ImageBatch {
    let per = 3 * b.side * b.side;
    ImageBatch {
        pixels: b.pixels[r.start * per..r.end * per].to_vec(),
        labels: b.labels[r].to_vec(),
        side: b.side,
    }
}

#[test]
fn sharded_stage_one_steps_equal_the_whole_batch_steps() {
    sharded_stage_one(false, false);
}

#[test]
fn sharded_stage_one_steps_equal_the_whole_batch_steps_with_ema_codebooks() {
    sharded_stage_one(true, false);
}

#[test]
fn sharded_stage_one_steps_equal_the_whole_batch_steps_with_the_discriminator() {
    sharded_stage_one(false, true);
}

/// Stage 1 on one process and on 2 ranks, each without and with 2 micro-batches a rank
/// (`train.accumulate`): the same weights (the discriminator's too), codebook buffers (usage,
/// EMA counts and sums: summed over the ranks and micro-batches) and losses after 2 steps.
fn sharded_stage_one(ema: bool, adversarial: bool) {
    let cfg = tiny_vq(ema, adversarial);
    stage_one_variants(&cfg, &[(1, 1), (2, 1), (1, 2), (2, 2)]);
}

/// Runs 2 steps of `cfg` on a batch of 4 as each `(ranks, accumulate)` variant and checks
/// that every variant ends where the first did.
fn stage_one_variants(cfg: &RunConfig, variants: &[(usize, usize)]) {
    let side = cfg.model.resolution;
    let batch = image_batch(4, side);
    let mut results = Vec::new();
    for &(world, accumulate) in variants {
        let (mut cfg, batch) = (cfg.clone(), batch.clone());
        cfg.train.accumulate = accumulate;
        let per_rank = on_ranks(world, move |shard| {
            let rows = shard.rows(4);
            let mut stage = VqStage::new(
                &cfg,
                0,
                &Compute::from_config(&Device::Cpu, &cfg.train),
                vec![],
                None,
            )
            .unwrap()
            .with_shard(shard.clone());
            let mut losses = Vec::new();
            for step in 0..2 {
                let m = stage
                    .train_step(image_rows(&batch, rows.clone()), ctx(step))
                    .unwrap()
                    .reduce(&shard)
                    .unwrap();
                losses.push(m.get("loss").unwrap());
            }
            {
                // the model, the discriminator and both optimizers' moments
                let mut all = stage.store().tensors();
                all.extend(stage.train_state().unwrap());
                (all, losses)
            }
        });
        assert_same_weights(
            &per_rank[0].0,
            &per_rank[world - 1].0,
            0.0,
            "rank 0 against the last",
        );
        results.push(((world, accumulate), per_rank.into_iter().next().unwrap()));
    }
    let (first, (weights, losses)) = &results[0];
    for (variant, (w, l)) in &results[1..] {
        let what = format!("(ranks, accumulate) {variant:?} against {first:?}");
        assert_same_weights(weights, w, 1e-5, &what);
        for (a, b) in losses.iter().zip(l) {
            assert!((a - b).abs() < 1e-5, "{what}: loss {b} against {a}");
        }
    }
}

#[test]
fn accumulated_micro_batches_restart_dead_codes_as_the_whole_batch_does() {
    // on one rank the restarts draw from the micro-batches' vectors in the whole batch's order
    let mut cfg = tiny_vq(false, false);
    cfg.model.quantizer.restart_dead_codes = Some(movq::config::DeadCodeRestart {
        threshold: 1e9,
        every: 1,
    });
    stage_one_variants(&cfg, &[(1, 1), (1, 2), (1, 4)]);
}

#[test]
fn dead_code_restarts_on_rank_zero_reach_every_rank() {
    let mut cfg = RunConfig::resolve("tiny").unwrap();
    cfg.loss.discriminator = None;
    let r = cfg.model.quantizer.restart_dead_codes.as_mut().unwrap();
    r.every = 1;
    r.threshold = 1e9; // every code counts as dead: restarts at every step after the first
    let side = cfg.model.resolution;
    let batch = image_batch(4, side);
    let out = on_ranks(2, move |shard| {
        let rows = shard.rows(4);
        let mut stage = VqStage::new(
            &cfg,
            0,
            &Compute::from_config(&Device::Cpu, &cfg.train),
            vec![],
            None,
        )
        .unwrap()
        .with_shard(shard);
        let mut restarted = 0.0;
        for step in 0..3 {
            let m = stage
                .train_step(image_rows(&batch, rows.clone()), ctx(step))
                .unwrap();
            restarted += m.get("restarted_codes").unwrap_or(0.0);
        }
        (stage.store().tensors(), restarted)
    });
    assert_eq!(out[0].1, 64.0, "32 codes restarted at steps 1 and 2");
    assert_eq!(out[1].1, out[0].1);
    assert_same_weights(
        &out[0].0,
        &out[1].0,
        0.0,
        "rank 0 against rank 1 after restarts",
    );
}

/// How a rank runs the whole training loop in the loop tests.
struct LoopRun {
    steps: usize,
    val_every: usize,
    checkpoint_every: usize,
    /// The step each rank starts from.
    start: fn(usize) -> usize,
    /// Whether each rank sees an interrupt.
    interrupted: fn(usize) -> bool,
}

/// Runs the transformer's loop on 2 ranks (a 2×2×2 layout, batches of 4) over a fresh run
/// directory; returns the run and each rank's outcome or error.
fn loop_on_two_ranks(how: LoopRun) -> (tempfile::TempDir, Vec<Result<Outcome, String>>) {
    let dir = tmp();
    let run_path = dir.path().join("run");
    RunDir::create(&run_path, "{}").unwrap();
    let layout = token_layout(2, 8, 0);
    let batch = token_batch(4, &layout);
    let cfg = RunConfig::resolve("tiny").unwrap().transformer.unwrap();
    let out = on_ranks(2, move |shard| {
        let run = RunDir::open(&run_path).unwrap();
        let start = (how.start)(shard.rank());
        let tokens = Arc::new(batch.tokens.clone());
        let labels = Arc::new(batch.labels.clone());
        let mut loader = TokenLoader::new((0..4).collect(), tokens, labels, 4, 0, start)
            .with_rows(shard.rows(4));
        let mut stage = TransformerStage::new(
            &cfg,
            layout,
            0,
            &Compute::from_config(&Device::Cpu, &cfg.train),
            batch.clone(),
        )
        .unwrap()
        .with_shard(shard.clone());
        let opts = LoopOptions {
            steps: how.steps,
            peak_lr: 1e-3,
            warmup_steps: 0,
            min_lr_ratio: 1.0,
            log_every: 1,
            val_every: how.val_every,
            checkpoint_every: how.checkpoint_every,
            keep_checkpoints: 0,
            sample_every: 0,
            tensorboard: false,
            fid: None,
            seed: 0,
        };
        let flag = AtomicBool::new((how.interrupted)(shard.rank()));
        train::run(&mut stage, &mut loader, &run, &opts, start, &flag, &shard)
            .map_err(|e| format!("{e:#}"))
    });
    (dir, out)
}

#[test]
fn an_interrupt_on_one_rank_stops_every_rank_and_rank_zero_alone_writes() {
    let (dir, out) = loop_on_two_ranks(LoopRun {
        steps: 6,
        val_every: 0,
        checkpoint_every: 0,
        start: |_| 0,
        interrupted: |rank| rank == 1,
    });
    for o in out {
        assert_eq!(o.unwrap(), Outcome::Interrupted { step: 0 });
    }
    let run = RunDir::open(&dir.path().join("run")).unwrap();
    assert_eq!(
        run.latest().unwrap().unwrap().step,
        0,
        "rank 0 saved the checkpoint"
    );
}

#[test]
fn a_rank_that_trains_alongside_the_others_finishes_with_them() {
    // the same steps logged once, one checkpoint per save
    let (dir, out) = loop_on_two_ranks(LoopRun {
        steps: 4,
        val_every: 2,
        checkpoint_every: 2,
        start: |_| 0,
        interrupted: |_| false,
    });
    for o in out {
        assert_eq!(o.unwrap(), Outcome::Finished { step: 4 });
    }
    let run = RunDir::open(&dir.path().join("run")).unwrap();
    let log = std::fs::read_to_string(run.metrics_path()).unwrap();
    let train_steps: Vec<u64> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["split"] == "train")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(train_steps, vec![1, 2, 3, 4], "logged once per step");
    assert_eq!(run.latest().unwrap().unwrap().step, 4);
}

#[test]
fn both_training_commands_run_on_several_ranks_and_resume_on_another_count() {
    let dir = tmp();
    let dir = dir.path();
    let cfg = tiny_config(dir, |v| {
        for path in [&["train"][..], &["transformer", "train"][..]] {
            let t = path.iter().fold(&mut *v, |v, k| &mut v[*k]);
            t["steps"] = 4.into();
            t["batch_size"] = 4.into();
            t["val_images"] = 4.into();
            t["log_every"] = 2.into();
            t["checkpoint_every"] = 0.into();
            t["val_every"] = 0.into();
        }
        v["loss"]["discriminator"]["start"] = 100.into(); // after these runs
    });
    let (vq, tr) = (dir.join("vq"), dir.join("tr"));
    let data = "builtin:shapes:24";
    let cpu = ["--device", "cpu"];
    let r = movq(
        &[
            &[
                "train-vq",
                "--config",
                s(&cfg),
                "--data",
                data,
                "--out",
                s(&vq),
                "--ranks",
                "2",
            ][..],
            &cpu,
        ]
        .concat(),
    );
    r.ok();
    assert!(r.stderr.contains("2 ranks on cpu, cpu"), "{}", r.stderr);
    // resumed on one rank: the global sample order does not depend on the rank count
    let args = [
        "train-vq",
        "--data",
        data,
        "--out",
        s(&vq),
        "--resume",
        "--steps",
        "6",
    ];
    movq(&[&args[..], &cpu].concat()).ok();
    let run = RunDir::open(&vq).unwrap();
    assert_eq!(run.latest().unwrap().unwrap().step, 6);
    let log = std::fs::read_to_string(run.metrics_path()).unwrap();
    let train_steps: Vec<u64> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["split"] == "train")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(train_steps, vec![2, 4, 6], "logged once, by rank 0");

    let args = [
        "train-transformer",
        "--vq",
        s(&vq),
        "--data",
        data,
        "--out",
        s(&tr),
        "--ranks",
        "4",
    ];
    let r = movq(&[&args[..], &cpu].concat());
    r.ok();
    assert!(r.stderr.contains("4 ranks on cpu"), "{}", r.stderr);
    assert_eq!(
        RunDir::open(&tr).unwrap().latest().unwrap().unwrap().step,
        4
    );

    // a batch that does not split; stage 1 with its discriminator on 2 ranks
    let (tr3, vq2) = (dir.join("tr3"), dir.join("vq2"));
    let args = [
        "train-transformer",
        "--vq",
        s(&vq),
        "--data",
        data,
        "--out",
        s(&tr3),
        "--ranks",
        "3",
    ];
    movq(&[&args[..], &cpu].concat())
        .fails_with(&["batch size 4 does not split evenly over 3 ranks"]);
    assert!(!tr3.exists(), "nothing written for a run that cannot start");
    let with_disc = tiny_config(dir, |v| {
        v["train"]["steps"] = 4.into();
        v["train"]["batch_size"] = 4.into();
        v["train"]["val_images"] = 4.into();
        v["loss"]["discriminator"]["start"] = 2.into();
    });
    let args = [
        "train-vq",
        "--config",
        s(&with_disc),
        "--data",
        data,
        "--out",
        s(&vq2),
        "--ranks",
        "2",
    ];
    movq(&[&args[..], &cpu].concat()).ok();
    let log = std::fs::read_to_string(RunDir::open(&vq2).unwrap().metrics_path()).unwrap();
    assert!(log.contains("d_loss"), "the discriminator trained: {log}");
}

#[test]
fn ranks_that_would_start_from_different_steps_refuse_to_train() {
    // as if rank 1 had found a checkpoint that rank 0 has not
    let (_dir, out) = loop_on_two_ranks(LoopRun {
        steps: 6,
        val_every: 0,
        checkpoint_every: 0,
        start: |rank| 3 * rank,
        interrupted: |_| false,
    });
    for o in out {
        let e = o.unwrap_err();
        assert!(e.contains("start from different steps"), "{e}");
    }
}

#[test]
fn a_run_over_several_processes_says_what_it_needs() {
    let dir = tmp();
    let args = [
        "train-transformer",
        "--vq",
        "no-such-run",
        "--data",
        "builtin:shapes:8",
        "--out",
        s(dir.path()),
        "--ranks",
        "2",
        "--world-size",
        "4",
        "--device",
        "cpu",
    ];
    movq(&args).fails_with(&["--world-size 4 spans several processes"]);
    let args = [
        "train-vq",
        "--config",
        "tiny",
        "--data",
        "builtin:shapes:8",
        "--out",
        s(dir.path()),
        "--ranks",
        "2",
        "--world-size",
        "3",
        "--first-rank",
        "2",
        "--device",
        "cpu",
    ];
    movq(&args).fails_with(&["goes past --world-size 3"]);
}

#[test]
fn a_rank_that_fails_or_panics_stops_the_others_at_once() {
    use movq::parallel::{run_ranks, Placement};
    let devices = [Device::Cpu, Device::Cpu, Device::Cpu];
    let placement = Placement::single_process(3);
    for panics in [false, true] {
        let started = std::time::Instant::now();
        let err = run_ranks(&devices, &placement, |shard, _| {
            if shard.rank() == 1 {
                if panics {
                    panic!("rank 1 panics");
                }
                anyhow::bail!("rank 1 fails");
            }
            // the others wait for rank 1 in a collective
            shard.sum(&[1.0])?;
            Ok(())
        })
        .unwrap_err();
        let msg = format!("{err:#}");
        let expected = if panics {
            "rank 1 panicked"
        } else {
            "rank 1 fails"
        };
        assert!(msg.contains(expected), "{msg}");
        assert!(
            started.elapsed().as_secs() < 30,
            "the others did not wait for rank 1"
        );
    }
}

/// On a machine with two GPUs: two ranks on cuda:0 and cuda:1 (NCCL in an `nccl` build, and
/// host memory with `MOVQ_COMM=host`) end with the weights of one GPU on the whole batch. With
/// one GPU it says so and checks nothing (`scripts/gpu-run.sh ranks` runs it where there are two).
#[cfg(feature = "cuda")]
#[test]
fn two_gpus_take_the_whole_batch_step() {
    use movq::parallel::{run_ranks, Placement};
    let Ok(gpu1) = Device::new_cuda(1) else {
        println!("two_gpus_take_the_whole_batch_step: skipped, this machine has one GPU");
        return;
    };
    let gpu0 = Device::new_cuda(0).unwrap();
    let layout = token_layout(4, 16, 3);
    let batch = token_batch(8, &layout);
    let cfg = RunConfig::resolve("tiny").unwrap().transformer.unwrap();
    let train = |shard: Shard, dev: &Device| -> anyhow::Result<Vec<(String, Tensor)>> {
        let rows = shard.rows(8);
        let mut stage = TransformerStage::new(
            &cfg,
            layout,
            0,
            &Compute::from_config(dev, &cfg.train),
            batch.clone(),
        )?
        .with_shard(shard);
        for step in 0..3 {
            stage.train_step(token_rows(&batch, rows.clone()), ctx(step))?;
        }
        let cpu = |(n, t): (String, Tensor)| (n, t.to_device(&Device::Cpu).unwrap());
        Ok(stage.store().tensors().into_iter().map(cpu).collect())
    };
    let single = train(Shard::single(), &gpu0).unwrap();
    let transports: &[&str] = if cfg!(feature = "nccl") {
        &["nccl", "host"]
    } else {
        &["host"]
    };
    for &transport in transports {
        if transport == "host" {
            std::env::set_var("MOVQ_COMM", "host");
        }
        let devices = [gpu0.clone(), gpu1.clone()];
        let two = run_ranks(&devices, &Placement::single_process(2), |s, d| train(s, d)).unwrap();
        std::env::remove_var("MOVQ_COMM");
        assert_same_weights(
            &single,
            &two,
            3e-5,
            &format!("2 GPUs ({transport}) against 1"),
        );
        println!("two_gpus_take_the_whole_batch_step: {transport}: the same weights as one GPU");
    }
}

#[test]
fn a_run_on_two_ranks_resumes_exactly() {
    // 4 steps straight vs. the same run cut back to its step-2 checkpoint and resumed: the same
    // bytes (host reductions are in rank order, so every step is deterministic)
    let dir = tmp();
    let dir = dir.path();
    let cfg = tiny_config(dir, |v| {
        let t = &mut v["train"];
        t["steps"] = 4.into();
        t["batch_size"] = 4.into();
        t["val_images"] = 4.into();
        t["log_every"] = 2.into();
        t["checkpoint_every"] = 2.into();
        t["keep_checkpoints"] = 0.into();
        t["val_every"] = 0.into();
        v["loss"]["discriminator"]["start"] = 1.into(); // adversarial from step 1
    });
    let (a, b) = (dir.join("a"), dir.join("b"));
    for out in [&a, &b] {
        let args = [
            "train-vq",
            "--config",
            s(&cfg),
            "--data",
            "builtin:shapes:24",
            "--out",
            s(out),
        ];
        movq(&[&args[..], &["--ranks", "2", "--device", "cpu"]].concat()).ok();
    }
    let run_b = RunDir::open(&b).unwrap();
    let last = run_b.checkpoint(4);
    std::fs::remove_file(&last.model).unwrap();
    std::fs::remove_file(&last.train_state).unwrap();
    std::fs::write(b.join("latest"), "step-0000002\n").unwrap();
    let args = [
        "train-vq",
        "--data",
        "builtin:shapes:24",
        "--out",
        s(&b),
        "--resume",
    ];
    let resumed = movq(&[&args[..], &["--ranks", "2", "--device", "cpu"]].concat());
    resumed.ok();
    // rank 0 alone cuts the log back and says so (two ranks rewriting metrics.jsonl collide)
    assert_eq!(
        resumed.stderr.matches("resuming").count(),
        1,
        "{}",
        resumed.stderr
    );
    let run_a = RunDir::open(&a).unwrap();
    let read = |p: &std::path::Path| std::fs::read(p).unwrap();
    assert!(read(&run_a.checkpoint(4).model) == read(&run_b.checkpoint(4).model));
    assert!(read(&run_a.checkpoint(4).train_state) == read(&run_b.checkpoint(4).train_state));
}

#[test]
fn cpu_ranks_run_on_thread_pools_of_their_own() {
    let devices = movq::parallel::rank_devices(&Device::Cpu, 2).unwrap();
    let placement = movq::parallel::Placement::single_process(2);
    let seen = std::sync::Mutex::new(Vec::new());
    movq::parallel::run_ranks(&devices, &placement, |shard, _| {
        // a worker of a pool (not the rank's own thread queueing work on the global pool), of
        // its share of the cores
        let pool = (
            rayon::current_thread_index().is_some(),
            rayon::current_num_threads(),
        );
        seen.lock().unwrap().push((shard.rank(), pool));
        Ok(())
    })
    .unwrap();
    let mut seen = seen.into_inner().unwrap();
    seen.sort();
    let share = movq::parallel::cpu_threads_per_rank(2);
    assert_eq!(share, (num_cores() / 2).max(1));
    assert_eq!(seen, vec![(0, (true, share)), (1, (true, share))]);
}

fn num_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
