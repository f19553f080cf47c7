//! Stage-2 training step: per-channel cosine masking, class dropout, masked-token cross-entropy
//! with label smoothing, AdamW; plugged into the shared loop through [`Stage`].

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use rand::Rng;

use crate::compute::Compute;
use crate::config::TransformerSection;
use crate::data::image::{grid, tensor_to_images};
use crate::nn::params::ParamStore;
use crate::parallel::{all_reduce_grads, Shard};
use crate::rng::{rng_for, Stream};
use crate::train::accumulate::{micro_batches, GradSum};
use crate::train::ema::Ema;
use crate::train::init::InitSource;
use crate::train::optim::Adam;
use crate::train::run_dir::{read_tensors, Checkpoint};
use crate::train::{Metrics, Stage, StepContext};
use crate::transformer::maskgit::{complete, SamplerOptions};
use crate::transformer::masking::{hidden_per_channel, per_channel_mask, training_count};
use crate::transformer::model::{masked_cross_entropy, MaskTransformer};
use crate::transformer::tokens::TokenLayout;
use crate::vq::MoVq;

/// Sequences and their conditioning ids.
#[derive(Debug, Clone, Default)]
pub struct TokenBatch {
    pub tokens: Vec<Vec<u32>>,
    pub labels: Vec<u32>,
}

/// Masked inputs, targets and loss weights for a batch.
pub struct MaskedBatch {
    pub inputs: Tensor,
    pub targets: Tensor,
    pub weights: Tensor,
    pub cond: Tensor,
}

/// Replaces the positions where `masks` is true by `[MASK]` and builds the tensors.
pub fn masked_batch(
    layout: &TokenLayout,
    batch: &TokenBatch,
    masks: &[Vec<bool>],
    device: &Device,
) -> Result<MaskedBatch> {
    let (b, l) = (batch.tokens.len(), layout.seq_len());
    let mut inputs = Vec::with_capacity(b * l);
    let mut weights = Vec::with_capacity(b * l);
    for (row, mask) in batch.tokens.iter().zip(masks) {
        for (&tok, &m) in row.iter().zip(mask) {
            inputs.push(if m { layout.mask_id() } else { tok });
            weights.push(if m { 1f32 } else { 0.0 });
        }
    }
    let targets: Vec<u32> = batch.tokens.iter().flatten().copied().collect();
    Ok(MaskedBatch {
        inputs: Tensor::from_vec(inputs, (b, l), device)?,
        targets: Tensor::from_vec(targets, (b, l), device)?,
        weights: Tensor::from_vec(weights, (b, l), device)?,
        cond: Tensor::new(batch.labels.as_slice(), device)?,
    })
}

pub struct TransformerStage {
    cfg: TransformerSection,
    store: ParamStore,
    model: MaskTransformer,
    opt: Adam,
    val: TokenBatch,
    /// The weights' moving average (`train.ema_decay`).
    ema: Option<Ema>,
    seed: u64,
    device: Device,
    shard: Shard,
    /// The tokenizer that decodes previews (`train.sample_every`).
    decoder: Option<MoVq>,
}

impl TransformerStage {
    pub fn new(
        cfg: &TransformerSection,
        layout: TokenLayout,
        seed: u64,
        compute: &Compute,
        val: TokenBatch,
    ) -> Result<Self> {
        let device = &compute.device;
        let store = ParamStore::new(crate::vq::stage::init_seed(seed), device);
        let model = MaskTransformer::new(&cfg.model, layout, store.var_builder())?
            .with_dtype(compute.dtype());
        let opt = Adam::new(store.trainable(), &cfg.train)?;
        let ema = cfg.train.ema().map(|d| Ema::new(d, &store)).transpose()?;
        Ok(Self {
            ema,
            cfg: cfg.clone(),
            store,
            model,
            opt,
            val,
            seed,
            device: device.clone(),
            shard: Shard::single(),
            decoder: None,
        })
    }

    /// Trains as one rank of a data-parallel group: batches hold this rank's rows only.
    pub fn with_shard(mut self, shard: Shard) -> Self {
        self.shard = shard;
        self
    }

    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    pub fn model(&self) -> &MaskTransformer {
        &self.model
    }

    /// Decodes previews and FID samples with `tokenizer` (the stage-1 model whose tokens it learns).
    pub fn with_decoder(mut self, tokenizer: MoVq) -> Self {
        self.decoder = Some(tokenizer);
        self
    }

    /// Checks, before anything is written, that `source` can start a run of `cfg` over
    /// `layout`: the same architecture and tensors that load into it. Returns the parameters
    /// `source` lacks (they start fresh).
    pub fn check_init(
        source: &InitSource,
        cfg: &crate::config::TransformerRunConfig,
        layout: TokenLayout,
    ) -> Result<Vec<String>> {
        source.check_architecture(&["transformer", "model"], &serde_json::to_value(cfg)?, &[])?;
        source.check_fit(|store| {
            MaskTransformer::new(&cfg.transformer.model, layout, store.var_builder())?;
            Ok(())
        })
    }

    /// Starts from `source`'s weights (a new fine-tuning run, before its first step); returns
    /// the parameters `source` lacks.
    pub fn init_from(&mut self, source: &InitSource) -> Result<Vec<String>> {
        source.start(&self.store, &mut self.ema)
    }
}

/// Sequences a preview or a FID measurement samples at once.
const SAMPLE_BATCH: usize = 64;

impl TransformerStage {
    /// One image per conditioning id of `conds`, 12 MaskGIT steps from the run's seed (the same
    /// images every time for the same weights), with the weights inference would use; `None`
    /// without a decoder.
    fn generate(&self, conds: &[u32]) -> Result<Option<Vec<image::RgbImage>>> {
        let Some(decoder) = &self.decoder else {
            return Ok(None);
        };
        let layout = *self.model.layout();
        let images = Ema::with_average(self.ema.as_ref(), &self.store, || {
            let mut out = Vec::with_capacity(conds.len());
            for (bi, chunk) in conds.chunks(SAMPLE_BATCH).enumerate() {
                let mut rows = vec![vec![layout.mask_id(); layout.seq_len()]; chunk.len()];
                let mut rng = rng_for(self.seed, Stream::Sample, &[bi as u64]);
                let opts = SamplerOptions::maskgit(12);
                complete(&self.model, &mut rows, chunk, &opts, &mut rng, &self.device)?;
                let indices = layout.to_indices(&rows, &self.device)?;
                out.extend(tensor_to_images(&decoder.decode_indices(&indices)?)?);
            }
            Ok(out)
        })?;
        Ok(Some(images))
    }
}

impl Stage for TransformerStage {
    type Batch = TokenBatch;

    fn train_step(&mut self, mut batch: TokenBatch, mut ctx: StepContext) -> Result<Metrics> {
        let layout = *self.model.layout();
        // Masks and class dropout are drawn for the whole batch (every rank's rows) in one
        // order, so that a rank's rows get what they would get in a single-process step.
        let rows = batch.tokens.len();
        let whole = rows * self.shard.world();
        let mine = self.shard.rows(whole);
        let all_masks: Vec<Vec<bool>> = (0..whole)
            .map(|_| {
                let count = training_count(&layout, &mut ctx.rng);
                per_channel_mask(&layout, count, &mut ctx.rng)
            })
            .collect();
        if layout.n_classes > 0 {
            let dropped: Vec<bool> = (0..whole)
                .map(|_| ctx.rng.random_bool(self.cfg.class_dropout))
                .collect();
            for (label, &d) in batch.labels.iter_mut().zip(&dropped[mine.clone()]) {
                if d {
                    *label = layout.no_class();
                }
            }
        }
        let count = |m: &[Vec<bool>]| m.iter().flatten().filter(|&&m| m).count() as f64;
        let total = count(&all_masks).max(1.0);
        let masks = &all_masks[mine];
        let mb = masked_batch(&layout, &batch, masks, &self.device)?;
        // Forward and backward per chunk of rows; each chunk's mean loss is weighted by its
        // share of the whole batch's masked tokens, so the gradients summed over chunks and
        // ranks are the whole batch's.
        let parts = match self.cfg.micro_batch {
            Some(size) => (0..rows)
                .step_by(size.max(1))
                .map(|start| start..(start + size.max(1)).min(rows))
                .collect(),
            None => micro_batches(rows, self.cfg.train.accumulate),
        };
        let masked_in = |r: std::ops::Range<usize>| -> f64 { count(&masks[r]) };
        let (mut loss_sum, mut acc_sum) = (0.0, 0.0);
        let mut grads = GradSum::default();
        for range in parts {
            let (start, n) = (range.start, range.len());
            let share = masked_in(range) / total;
            if share == 0.0 {
                continue;
            }
            let part = |t: &Tensor| t.narrow(0, start, n);
            let logits = self.model.forward(&part(&mb.inputs)?, &part(&mb.cond)?)?;
            let (loss, acc) = masked_cross_entropy(
                &logits,
                &part(&mb.targets)?,
                &part(&mb.weights)?,
                self.cfg.label_smoothing,
            )?;
            let loss = (loss * share)?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            acc_sum += acc * share;
            let g = self.opt.grads(&crate::profile::scope(
                || "backward".into(),
                &self.device,
                || self.model.backward(&loss),
            )?);
            grads.add(g)?;
        }
        let grads = match grads.total() {
            Some(g) => g,
            // this rank's rows had no masked token; the others' did
            None if self.shard.world() > 1 => self.opt.zero_grads()?,
            None => anyhow::bail!("a training batch without a masked token"),
        };
        let grads = all_reduce_grads(&self.shard, grads)?;
        let grad_norm = crate::profile::scope(
            || "optimizer".into(),
            &self.device,
            || self.opt.step(&grads, ctx.lr),
        )?;
        if let Some(ema) = &mut self.ema {
            ema.update(&self.store, ctx.step)?;
        }
        // shares of the whole batch's loss and accuracy (the loop sums them over the ranks)
        let mut m = Metrics::new();
        m.push("loss", loss_sum);
        m.push("acc", acc_sum);
        m.push_global("grad_norm", grad_norm);
        Ok(m)
    }

    fn validate(&mut self) -> Result<Metrics> {
        Ema::validate_both(self.ema.as_ref(), &self.store, |p| self.validate_weights(p))
    }

    fn ema_tensors(&self) -> Option<Vec<(String, Tensor)>> {
        self.ema.as_ref().map(|e| e.model_tensors(&self.store))
    }

    fn model_tensors(&self) -> Vec<(String, Tensor)> {
        self.store.tensors()
    }

    fn train_state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(self.opt.state("optimizer")?)
    }

    fn load_checkpoint(&mut self, ckpt: &Checkpoint) -> Result<()> {
        self.store.load_file(&ckpt.model)?;
        crate::vq::stage::load_ema(&mut self.ema, ckpt, &self.device)?;
        let state = read_tensors(&ckpt.train_state, &self.device)?;
        self.opt.load_state(&state, "optimizer").with_context(|| {
            format!(
                "cannot restore the optimizer from {}",
                ckpt.train_state.display()
            )
        })
    }

    fn preview(&mut self) -> Result<Option<image::RgbImage>> {
        // one sample per class (8 without classes)
        let layout = *self.model.layout();
        let conds: Vec<u32> = match layout.n_classes {
            0 => vec![layout.no_class(); 8],
            n => (0..n as u32).collect(),
        };
        Ok(self.generate(&conds)?.map(|images| grid(&[images], 2)))
    }

    fn fid_images(&mut self, samples: usize) -> Result<Vec<image::RgbImage>> {
        // the classes in turn
        let layout = *self.model.layout();
        let conds: Vec<u32> = (0..samples)
            .map(|i| match layout.n_classes {
                0 => layout.no_class(),
                n => (i % n) as u32,
            })
            .collect();
        Ok(self.generate(&conds)?.unwrap_or_default())
    }

    fn progress_keys(&self) -> &'static [&'static str] {
        &["loss", "acc"]
    }
}

impl TransformerStage {
    /// Validation metrics of the model as its weights are now, names prefixed with `prefix`.
    fn validate_weights(&self, prefix: &str) -> Result<Metrics> {
        let layout = *self.model.layout();
        let mut m = Metrics::new();
        for &ratio in &self.cfg.val_mask_ratios {
            let mut rng = rng_for(self.seed, Stream::Data, &[ratio.to_bits()]);
            let count = hidden_per_channel(&layout, ratio).max(1);
            let (mut loss_sum, mut acc_sum, mut n) = (0.0, 0.0, 0usize);
            let bs = self.cfg.train.batch_size.max(1);
            for (rows, labels) in self.val.tokens.chunks(bs).zip(self.val.labels.chunks(bs)) {
                let batch = TokenBatch {
                    tokens: rows.to_vec(),
                    labels: labels.to_vec(),
                };
                let masks: Vec<Vec<bool>> = rows
                    .iter()
                    .map(|_| per_channel_mask(&layout, count, &mut rng))
                    .collect();
                let mb = masked_batch(&layout, &batch, &masks, &self.device)?;
                let logits = self.model.forward(&mb.inputs, &mb.cond)?;
                let (loss, acc) = masked_cross_entropy(&logits, &mb.targets, &mb.weights, 0.0)?;
                loss_sum += loss.to_scalar::<f32>()? as f64 * rows.len() as f64;
                acc_sum += acc * rows.len() as f64;
                n += rows.len();
            }
            let n = n.max(1) as f64;
            m.push(format!("{prefix}loss@{ratio}"), loss_sum / n);
            m.push(format!("{prefix}acc@{ratio}"), acc_sum / n);
        }
        Ok(m)
    }
}

/// Training batches drawn from cache rows in the shared deterministic order.
pub struct TokenLoader {
    order: crate::data::order::SampleOrder,
    tokens: std::sync::Arc<Vec<Vec<u32>>>,
    labels: std::sync::Arc<Vec<u32>>,
    batch_size: usize,
    rows: std::ops::Range<usize>,
    step: usize,
}

impl TokenLoader {
    pub fn new(
        rows: Vec<usize>,
        tokens: std::sync::Arc<Vec<Vec<u32>>>,
        labels: std::sync::Arc<Vec<u32>>,
        batch_size: usize,
        seed: u64,
        start_step: usize,
    ) -> Self {
        Self {
            order: crate::data::order::SampleOrder::new(rows, seed),
            tokens,
            labels,
            batch_size,
            rows: 0..batch_size,
            step: start_step,
        }
    }

    /// Produces only rows `rows` of each batch (one rank's shard).
    pub fn with_rows(mut self, rows: std::ops::Range<usize>) -> Self {
        self.rows = rows;
        self
    }
}

impl Iterator for TokenLoader {
    type Item = Result<TokenBatch>;
    fn next(&mut self) -> Option<Self::Item> {
        let visits = self
            .order
            .rows(self.step, self.batch_size, self.rows.clone());
        self.step += 1;
        Some(Ok(TokenBatch {
            tokens: visits.iter().map(|v| self.tokens[v.item].clone()).collect(),
            labels: visits.iter().map(|v| self.labels[v.item]).collect(),
        }))
    }
}
