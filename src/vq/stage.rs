//! Stage-1 training step: reconstruction + perceptual + codebook/commitment + PatchGAN terms,
//! plugged into the shared loop through [`Stage`].

use anyhow::{Context, Result};
use candle_core::{Device, Module, Tensor};
use image::RgbImage;

use crate::compute::Compute;
use crate::config::{ModelPart, RunConfig};
use crate::data::image::{grid, images_to_tensor, tensor_to_images};
use crate::data::loader::ImageBatch;
use crate::metrics::reconstruction::{Extras, Reconstruction};
use crate::nn::params::ParamStore;
use crate::parallel::{all_reduce_grads, Shard};
use crate::rng::{mix, Stream};
use crate::train::accumulate::{micro_batches, GradSum};
use crate::train::ema::Ema;
use crate::train::init::InitSource;
use crate::train::optim::Adam;
use crate::train::run_dir::{read_tensors, Checkpoint};
use crate::train::{Metrics, Stage, StepContext};
use crate::vq::decoder::LAST_LAYER;
use crate::vq::discriminator::Discriminator;
use crate::vq::losses::{self, PerceptualLoss};
use crate::vq::MoVq;

/// Validation images a preview shows (`train.sample_every`).
const PREVIEW_IMAGES: usize = 8;

/// The PatchGAN critic with its own parameters and optimizer.
struct Critic {
    store: ParamStore,
    net: Discriminator,
    opt: Adam,
}

pub struct VqStage {
    cfg: RunConfig,
    store: ParamStore,
    model: MoVq,
    opt: Adam,
    critic: Option<Critic>,
    perceptual: Option<Box<dyn PerceptualLoss>>,
    val_images: Vec<RgbImage>,
    /// The weights' moving average (`train.ema_decay`).
    ema: Option<Ema>,
    device: Device,
    shard: Shard,
}

impl VqStage {
    /// Validation metrics of the model as its weights are now, names prefixed with `prefix`.
    fn validate_weights(&self, prefix: &str) -> Result<Metrics> {
        let mut metrics = Reconstruction::new(&self.model, Extras::default());
        for chunk in self.val_images.chunks(self.cfg.train.batch_size.max(1)) {
            metrics.add(&self.model, chunk, &[], &self.device)?;
        }
        let r = metrics.report()?;
        let mut m = Metrics::new();
        m.push(format!("{prefix}psnr"), r.psnr);
        m.push(format!("{prefix}ssim"), r.ssim);
        m.push(format!("{prefix}codebook_usage"), r.codebook.usage);
        m.push(format!("{prefix}perplexity"), r.codebook.perplexity);
        Ok(m)
    }
}

impl VqStage {
    /// Reconstructions of `images` with the weights inference would use (the moving average
    /// where there is one), a training batch at a time.
    fn reconstructions(&self, images: &[RgbImage]) -> Result<Vec<RgbImage>> {
        Ema::with_average(self.ema.as_ref(), &self.store, || {
            let mut out = Vec::with_capacity(images.len());
            for chunk in images.chunks(self.cfg.train.batch_size.max(1)) {
                let x = images_to_tensor(chunk, &self.device)?;
                out.extend(tensor_to_images(&self.model.reconstruct(&x)?.0.detach())?);
            }
            Ok(out)
        })
    }
}

/// Restores a run's moving average from a checkpoint (nothing when the run keeps none).
pub fn load_ema(ema: &mut Option<Ema>, ckpt: &Checkpoint, device: &Device) -> Result<()> {
    let Some(ema) = ema else { return Ok(()) };
    let path = ckpt.ema_file().with_context(|| {
        format!(
            "{} has no EMA weights ({}), but the run's train.ema_decay asks for them",
            ckpt.model.display(),
            ckpt.ema.display()
        )
    })?;
    let saved = read_tensors(path, device)?;
    Ok(ema.load(&saved, &path.display().to_string())?)
}

/// The seed of a model's initial weights.
pub fn init_seed(seed: u64) -> u64 {
    mix(&[seed, Stream::Init as u64])
}

impl VqStage {
    /// A freshly initialised model (weights from `seed`) ready to train.
    pub fn new(
        cfg: &RunConfig,
        seed: u64,
        compute: &Compute,
        val_images: Vec<RgbImage>,
        perceptual: Option<Box<dyn PerceptualLoss>>,
    ) -> Result<Self> {
        let device = &compute.device;
        let frozen: Vec<&str> = cfg
            .train
            .freeze
            .iter()
            .flat_map(|p| p.prefixes().iter().copied())
            .collect();
        let store = ParamStore::new(init_seed(seed), device).with_frozen_parts(&frozen);
        let dtype = compute.dtype();
        let model = MoVq::new(&cfg.model, &store)?.with_dtype(dtype);
        let opt = Adam::new(store.trainable(), &cfg.train)?;
        let critic = match &cfg.loss.discriminator {
            Some(d) => {
                let dstore = ParamStore::new(mix(&[seed, Stream::Init as u64, 1]), device);
                let net = Discriminator::new(
                    d,
                    cfg.model.image_channels(),
                    dstore.var_builder().pp("disc"),
                )?
                .with_dtype(dtype);
                let opt = Adam::new(dstore.trainable(), &cfg.train)?;
                Some(Critic {
                    store: dstore,
                    net,
                    opt,
                })
            }
            None => None,
        };
        let ema = cfg.train.ema().map(|d| Ema::new(d, &store)).transpose()?;
        Ok(Self {
            cfg: cfg.clone(),
            store,
            model,
            opt,
            critic,
            perceptual,
            val_images,
            ema,
            device: device.clone(),
            shard: Shard::single(),
        })
    }

    /// Trains as one rank of a data-parallel group: batches hold this rank's rows only.
    pub fn with_shard(mut self, shard: Shard) -> Self {
        self.shard = shard;
        self
    }

    pub fn model(&self) -> &MoVq {
        &self.model
    }

    /// Checks, before anything is written, that `source` can start a run of `cfg`: the same
    /// architecture (how the codebook learns may change, its shapes may not) and tensors that
    /// load into it. Returns the parameters `source` lacks (they start fresh).
    pub fn check_init(source: &InitSource, cfg: &RunConfig) -> Result<Vec<String>> {
        let free = [
            "quantizer.beta",
            "quantizer.update",
            "quantizer.restart_dead_codes",
            "quantizer.gradient",
            "quantizer.entropy_weight",
            "quantizer.entropy_temperature",
        ];
        source.check_architecture(&["model"], &serde_json::to_value(cfg)?, &free)?;
        source.check_fit(|store| Ok(MoVq::new(&cfg.model, store).map(|_| ())?))
    }

    /// Starts from `source`'s weights (a new fine-tuning run, before its first step); the
    /// weights' moving average starts from them too. Returns the parameters `source` lacks.
    pub fn init_from(&mut self, source: &InitSource) -> Result<Vec<String>> {
        source.start(&self.store, &mut self.ema)
    }

    pub fn store(&self) -> &ParamStore {
        &self.store
    }
}

/// Mean PSNR of a reconstruction batch against its input (both in [-1, 1], the reconstruction
/// clamped), computed on the device with one read back.
fn batch_psnr(x: &Tensor, xrec: &Tensor) -> Result<f64> {
    let mse: Vec<f32> = (x - xrec.clamp(-1f32, 1f32)?)?
        .sqr()?
        .flatten_from(1)?
        .mean(1)?
        .to_vec1()?;
    // peak-to-peak range 2: PSNR = 10·log10(4 / mse)
    let s: Vec<f64> = mse
        .iter()
        .map(|&m| 10.0 * (4.0 / (m as f64).max(1e-10)).log10())
        .collect();
    Ok(s.iter().sum::<f64>() / s.len().max(1) as f64)
}

impl Stage for VqStage {
    type Batch = ImageBatch;

    fn train_step(&mut self, batch: ImageBatch, mut ctx: StepContext) -> Result<Metrics> {
        let images = self.model.image_input(&batch.tensor(&self.device)?)?;
        let rows = images.dim(0)?;
        let loss_cfg = &self.cfg.loss;
        let disc_cfg = loss_cfg.discriminator.as_ref();
        let adversarial = disc_cfg.is_some_and(|d| ctx.step >= d.start) && self.critic.is_some();
        // Each micro-batch's losses are means over its rows: weighted by its share of the
        // whole batch (its rows over all ranks' rows), the gradients summed over micro-batches
        // and ranks are the whole batch's.
        let world = self.shard.world();
        let (mut g_rec, mut g_gan) = (GradSum::default(), GradSum::default());
        let mut m = Metrics::new();
        let (mut total, mut rec_sum, mut q_sum, mut psnr_sum, mut g_sum, mut perc_sum) =
            (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        let mut stats: Option<Tensor> = None;
        let (mut vectors, mut pairs) = (Vec::new(), Vec::new());
        for part in micro_batches(rows, self.cfg.train.accumulate) {
            let share = part.len() as f64 / (rows * world) as f64;
            let weighted = |t: &Tensor| -> candle_core::Result<Tensor> {
                // × 1 exactly when there is one micro-batch on one rank
                if share == 1.0 {
                    Ok(t.clone())
                } else {
                    t * share
                }
            };
            let x = images.narrow(0, part.start, part.len())?;
            let (xrec, q) = self.model.forward(&x)?;
            let rec = losses::reconstruction(&x, &xrec, loss_cfg.reconstruction)?;
            let mut nll = rec.clone();
            if let (Some(p), true) = (&self.perceptual, loss_cfg.perceptual_weight > 0.0) {
                let pl = p.loss(&x, &xrec)?;
                perc_sum += share * pl.to_scalar::<f32>()? as f64;
                nll = (nll + (pl * loss_cfg.perceptual_weight)?)?;
            }
            let q_loss = (&q.loss * loss_cfg.codebook_weight)?;
            let base = (&nll + &q_loss)?;
            total += share * base.to_scalar::<f32>()? as f64;
            rec_sum += share * rec.to_scalar::<f32>()? as f64;
            q_sum += share * q_loss.to_scalar::<f32>()? as f64;
            psnr_sum += share * batch_psnr(&x, &xrec)?;
            match &self.critic {
                Some(critic) if adversarial => {
                    let g_loss = losses::generator_loss(&critic.net.forward(&xrec)?)?;
                    g_sum += share * g_loss.to_scalar::<f32>()? as f64;
                    g_rec.add(self.opt.grads(&weighted(&base)?.backward()?))?;
                    g_gan.add(self.opt.grads(&weighted(&g_loss)?.backward()?))?;
                    pairs.push((x.detach(), xrec.detach(), share));
                }
                _ => g_rec.add(self.opt.grads(&crate::profile::scope(
                    || "backward".into(),
                    &self.device,
                    || weighted(&base)?.backward(),
                )?))?,
            }
            let s = self.model.quantizer().statistics(&q)?;
            stats = Some(match stats {
                None => s,
                Some(acc) => (acc + s)?,
            });
            vectors.push(q.vectors);
        }
        let g_rec = g_rec.total().context("a training batch without rows")?;
        if self.perceptual.is_some() && loss_cfg.perceptual_weight > 0.0 {
            m.push("perceptual", perc_sum);
        }
        let grads = match (g_gan.total(), disc_cfg) {
            (Some(g_gan), Some(d)) => {
                let weight = if d.adaptive {
                    let last = self
                        .opt
                        .index_of(LAST_LAYER)
                        .context("decoder has no last layer")?;
                    // norms of the whole batch's gradients (summed over the ranks)
                    let norm = |g: &crate::train::optim::Grads| -> Result<f64> {
                        Ok(match &g.0[last] {
                            Some(t) => {
                                let t = self.shard.sum_tensor(t)?;
                                t.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt() as f64
                            }
                            None => 0.0,
                        })
                    };
                    losses::adaptive_weight(norm(&g_rec)?, norm(&g_gan)?) * d.weight
                } else {
                    d.weight
                };
                m.push("g_loss", g_sum);
                m.push_global("d_weight", weight);
                total += weight * g_sum;
                g_rec.add_scaled(&g_gan, weight)?
            }
            _ => g_rec,
        };
        let grads = all_reduce_grads(&self.shard, grads)?;
        let grad_norm = crate::profile::scope(
            || "optimizer".into(),
            &self.device,
            || self.opt.step(&grads, ctx.lr),
        )?;
        // the codebook's maintenance: the whole batch's code statistics (one collective), dead
        // codes restarted by rank 0 from its rows, then its codebook everywhere (one more)
        let quantizer = self.model.quantizer();
        let stats = stats.context("a training batch without rows")?;
        let stats = self.shard.sum_tensor(&stats)?;
        let vectors = if vectors.len() == 1 {
            vectors.remove(0)
        } else {
            Tensor::cat(&vectors, 0)?
        };
        let frozen = self.cfg.train.freeze.contains(&ModelPart::Quantizer);
        let mut restarted = if frozen {
            0
        } else {
            quantizer.apply(
                &stats,
                &vectors,
                ctx.step,
                &mut ctx.rng,
                self.shard.is_main(),
            )?
        };
        if self.shard.world() > 1 && !frozen && quantizer.restart_due(ctx.step) {
            let n = Tensor::new(&[restarted as f32], &self.device)?;
            let state = Tensor::cat(&[quantizer.state()?, n], 0)?;
            let state = self.shard.broadcast_tensor(&state, 0)?;
            let len = state.dim(0)? - 1;
            quantizer.set_state(&state.narrow(0, 0, len)?)?;
            restarted = state.narrow(0, len, 1)?.to_vec1::<f32>()?[0] as usize;
        }
        if let Some(ema) = &mut self.ema {
            ema.update(&self.store, ctx.step)?;
        }
        if let (Some(critic), Some(d), false) = (&mut self.critic, disc_cfg, pairs.is_empty()) {
            let mut dg = GradSum::default();
            let mut d_sum = 0.0;
            for (x, xrec, share) in &pairs {
                let real = critic.net.forward(x)?;
                let fake = critic.net.forward(xrec)?;
                let d_loss = losses::hinge_d_loss(&real, &fake)?;
                d_sum += share * d_loss.to_scalar::<f32>()? as f64;
                let d_loss = if *share == 1.0 {
                    d_loss
                } else {
                    (d_loss * *share)?
                };
                dg.add(critic.opt.grads(&d_loss.backward()?))?;
            }
            let dg = dg.total().context("a training batch without rows")?;
            let dg = all_reduce_grads(&self.shard, dg)?;
            critic.opt.step(&dg, ctx.lr * d.lr_ratio)?;
            m.push("d_loss", d_sum);
        }
        // shares of the whole batch's means (the loop sums them over the ranks)
        let mut out = Metrics::new();
        out.push("loss", total);
        out.push("rec", rec_sum);
        out.push("q", q_sum);
        for (n, v) in m.iter() {
            if n == "d_weight" {
                out.push_global(n, v);
            } else {
                out.push(n, v);
            }
        }
        out.push("psnr", psnr_sum);
        out.push_global("grad_norm", grad_norm);
        if restarted > 0 {
            out.push_global("restarted_codes", restarted as f64);
        }
        Ok(out)
    }

    fn validate(&mut self) -> Result<Metrics> {
        Ema::validate_both(self.ema.as_ref(), &self.store, |p| self.validate_weights(p))
    }

    fn model_tensors(&self) -> Vec<(String, Tensor)> {
        self.store.tensors()
    }

    fn ema_tensors(&self) -> Option<Vec<(String, Tensor)>> {
        self.ema.as_ref().map(|e| e.model_tensors(&self.store))
    }

    fn train_state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = self.opt.state("optimizer")?;
        if let Some(c) = &self.critic {
            out.extend(c.store.tensors());
            out.extend(c.opt.state("disc_optimizer")?);
        }
        Ok(out)
    }

    fn load_checkpoint(&mut self, ckpt: &Checkpoint) -> Result<()> {
        self.store.load_file(&ckpt.model)?;
        load_ema(&mut self.ema, ckpt, &self.device)?;
        let state = read_tensors(&ckpt.train_state, &self.device)?;
        let origin = ckpt.train_state.display().to_string();
        self.opt
            .load_state(&state, "optimizer")
            .with_context(|| format!("cannot restore the optimizer from {origin}"))?;
        if let Some(c) = &mut self.critic {
            let disc: std::collections::BTreeMap<String, Tensor> = state
                .iter()
                .filter(|(k, _)| k.starts_with("disc."))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            c.store.load_tensors(&disc, &origin)?;
            c.opt
                .load_state(&state, "disc_optimizer")
                .with_context(|| {
                    format!("cannot restore the discriminator optimizer from {origin}")
                })?;
        }
        Ok(())
    }

    fn preview(&mut self) -> Result<Option<RgbImage>> {
        // the first validation images above their reconstructions
        let shown = &self.val_images[..self.val_images.len().min(PREVIEW_IMAGES)];
        if shown.is_empty() {
            return Ok(None);
        }
        let rec = self.reconstructions(shown)?;
        Ok(Some(grid(&[shown.to_vec(), rec], 2)))
    }

    fn fid_images(&mut self, _samples: usize) -> Result<Vec<RgbImage>> {
        self.reconstructions(&self.val_images)
    }

    fn progress_keys(&self) -> &'static [&'static str] {
        &["loss", "rec", "psnr"]
    }
}
