//! Typed configuration: the model, its losses, training and data options.
//!
//! Every struct denies unknown fields, so a misspelled key is an error rather than a silently
//! ignored setting. Derived sizes (latent grid, token count, embedding width) are methods and
//! never stored twice. `validate` checks the relations serde cannot express and names the field
//! and value at fault.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::compute::Precision;

/// Built-in presets (the files of `configs/`), usable by name as `--config NAME`.
pub const PRESETS: &[(&str, &str)] = &[
    ("tiny", include_str!("../configs/tiny.json")),
    ("shapes", include_str!("../configs/shapes.json")),
    ("ffhq-256", include_str!("../configs/ffhq-256.json")),
    ("imagenet-256", include_str!("../configs/imagenet-256.json")),
    (
        "kandinsky-movq",
        include_str!("../configs/kandinsky-movq.json"),
    ),
    ("fashion-32", include_str!("../configs/fashion-32.json")),
    (
        "fashion-32-full",
        include_str!("../configs/fashion-32-full.json"),
    ),
    (
        "fashion-32-f2",
        include_str!("../configs/fashion-32-f2.json"),
    ),
];

/// The full configuration of a stage-1 run, written as `config.json` into the run directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Seed of the weights, the data order and every other random choice.
    #[serde(default)]
    pub seed: u64,
    pub model: VqConfig,
    pub loss: LossConfig,
    pub train: TrainConfig,
    #[serde(default)]
    pub data: DataConfig,
    /// Stage 2: the masked transformer trained on this tokenizer's codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transformer: Option<TransformerSection>,
}

/// Stage 2: the bidirectional transformer and how it trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerSection {
    pub model: TransformerConfig,
    pub train: TrainConfig,
    /// Label smoothing of the masked-token cross-entropy.
    #[serde(default = "default_label_smoothing")]
    pub label_smoothing: f64,
    /// Probability of replacing the class by "no class" (for classifier-free guidance).
    #[serde(default = "default_class_dropout")]
    pub class_dropout: f64,
    /// Mask ratios at which validation reports masked-token loss and accuracy.
    #[serde(default = "default_val_mask_ratios")]
    pub val_mask_ratios: Vec<f64>,
    /// Run each batch's forward and backward in chunks of this many sequences, adding up the
    /// gradients: the same optimizer step with less activation memory (absent = whole batch).
    #[serde(default)]
    pub micro_batch: Option<usize>,
    /// Train on horizontally mirrored copies of the images too (absent: the stage-1 run's
    /// `data.flip`). Off for data whose objects all face one way, such as Fashion-MNIST's
    /// shoes: with it on, the transformer learns to draw mirrored ones as often as real ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flip: Option<bool>,
}

fn default_label_smoothing() -> f64 {
    0.1
}
fn default_class_dropout() -> f64 {
    0.1
}
fn default_val_mask_ratios() -> Vec<f64> {
    vec![0.5, 0.95]
}

/// Size of the transformer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerConfig {
    pub layers: usize,
    pub width: usize,
    pub heads: usize,
    /// Hidden width of each block's MLP.
    pub mlp: usize,
}

impl TransformerSection {
    pub fn validate(&self) -> Result<()> {
        let m = &self.model;
        for (name, v) in [
            ("transformer.model.layers", m.layers),
            ("transformer.model.width", m.width),
            ("transformer.model.heads", m.heads),
            ("transformer.model.mlp", m.mlp),
        ] {
            if v == 0 {
                bail!("{name} must be positive, got 0");
            }
        }
        if !m.width.is_multiple_of(m.heads) {
            bail!(
                "transformer.model.heads ({}) must divide transformer.model.width ({})",
                m.heads,
                m.width
            );
        }
        self.train
            .validate()
            .context("in the transformer section")?;
        if self.micro_batch == Some(0) {
            bail!("transformer.micro_batch must be positive, got 0");
        }
        if !self.train.freeze.is_empty() {
            bail!("transformer.train.freeze: the transformer has no parts to freeze (train.freeze is for stage 1)");
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            bail!(
                "transformer.label_smoothing must be in [0, 1), got {}",
                self.label_smoothing
            );
        }
        if !(0.0..=1.0).contains(&self.class_dropout) {
            bail!(
                "transformer.class_dropout must be in [0, 1], got {}",
                self.class_dropout
            );
        }
        if let Some(r) = self
            .val_mask_ratios
            .iter()
            .find(|r| !(0.0..=1.0).contains(*r) || **r == 0.0)
        {
            bail!("transformer.val_mask_ratios must lie in (0, 1], got {r}");
        }
        Ok(())
    }
}

/// Shape of the MoVQ autoencoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VqConfig {
    /// Image side in pixels (square images).
    pub resolution: usize,
    /// Base width of the encoder/decoder.
    pub ch: usize,
    /// Width multiplier per level; the number of levels sets f = 2^(levels-1).
    pub ch_mult: Vec<usize>,
    pub num_res_blocks: usize,
    /// Feature-map sides (in pixels of that level) that get a self-attention block.
    #[serde(default)]
    pub attn_resolutions: Vec<usize>,
    /// Channels of the encoder output / decoder input.
    pub z_channels: usize,
    /// GroupNorm groups in every normalization (32 in the paper).
    #[serde(default = "default_norm_groups")]
    pub norm_groups: usize,
    /// GroupNorm groups inside the decoder's SpatialNorms, when they differ from `norm_groups`
    /// (diffusers' SpatialNorm always uses 32; set by `movq import diffusers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spatial_norm_groups: Option<usize>,
    /// The decoder's normalizations: `spatial` (MoVQ: modulated by the quantized latent) or
    /// `group` (VQGAN: plain GroupNorm, for the paper's ablation).
    #[serde(default)]
    pub decoder_norm: DecoderNorm,
    /// Channels of the images the model reads and writes: 3 (RGB) or 1 (greyscale). Absent in
    /// a preset: set from the data when a run starts (1 for IDX sets and all-greyscale
    /// folders) and recorded in the run's config; absent in an older run's config: 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_channels: Option<usize>,
    pub quantizer: QuantizerConfig,
}

/// The normalization of the decoder's blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DecoderNorm {
    /// GroupNorm modulated by the quantized latent (MoVQ).
    #[default]
    Spatial,
    /// Plain GroupNorm (VQGAN).
    Group,
}

fn default_norm_groups() -> usize {
    32
}

/// The multichannel vector quantizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizerConfig {
    /// `c`: chunks per latent position, each quantized against the one shared codebook.
    pub channels: usize,
    /// `K`: number of codes.
    pub codebook_size: usize,
    /// Dimension of one code.
    pub code_dim: usize,
    /// Commitment weight β.
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// How the codebook learns.
    #[serde(default)]
    pub update: CodebookUpdate,
    /// Compare and look up l2-normalised vectors (cosine similarity codebook).
    #[serde(default)]
    pub l2_normalize: bool,
    /// Replace codes whose running usage falls below a threshold by current encoder outputs.
    #[serde(default)]
    pub restart_dead_codes: Option<DeadCodeRestart>,
    /// How the reconstruction's gradient passes the quantizer to the encoder: `ste`
    /// (straight-through, the default) or `rotation` (the rotation trick).
    #[serde(default, skip_serializing_if = "is_default")]
    pub gradient: QuantizerGradient,
    /// Weight of the entropy penalty on code usage (0: off): per-vector assignment entropy
    /// minus the entropy of the batch's mean assignment.
    #[serde(default, skip_serializing_if = "is_default")]
    pub entropy_weight: f64,
    /// Temperature τ of the penalty's soft assignments `softmax(−‖e − c‖² / τ)`.
    #[serde(default = "one", skip_serializing_if = "is_one_f64")]
    pub entropy_temperature: f64,
}

/// How the gradient passes the quantizer (`quantizer.gradient`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum QuantizerGradient {
    /// Straight-through: the gradient at the code is copied to the encoder's vector.
    #[default]
    Ste,
    /// The rotation trick (Fifty et al., 2024): the gradient rotated from the code's direction
    /// to the vector's and rescaled by their norms' ratio.
    Rotation,
}

fn default_beta() -> f64 {
    0.25
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CodebookUpdate {
    /// Codebook loss through gradients (VQ-VAE / VQGAN).
    #[default]
    Gradient,
    /// Exponential moving averages of assignments; no codebook loss.
    Ema { decay: f64, epsilon: f64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadCodeRestart {
    /// A code whose running (EMA, decay 0.99) count per step is below this is dead.
    pub threshold: f64,
    /// Check every this many training steps.
    pub every: usize,
}

impl VqConfig {
    /// Image channels: 3 unless the config says otherwise.
    pub fn image_channels(&self) -> usize {
        self.image_channels.unwrap_or(3)
    }

    /// GroupNorm groups of the decoder's SpatialNorms.
    pub fn decoder_norm_groups(&self) -> usize {
        self.spatial_norm_groups.unwrap_or(self.norm_groups)
    }

    /// Downsampling factor f = 2^(levels-1).
    pub fn downsample_factor(&self) -> usize {
        1 << (self.ch_mult.len() - 1)
    }

    /// Side of the latent grid.
    pub fn latent_size(&self) -> usize {
        self.resolution / self.downsample_factor()
    }

    /// Width of the quantized latent: channels × code_dim.
    pub fn embed_dim(&self) -> usize {
        self.quantizer.channels * self.quantizer.code_dim
    }

    /// Number of tokens per image: h·w·c.
    pub fn tokens_per_image(&self) -> usize {
        self.latent_size() * self.latent_size() * self.quantizer.channels
    }

    pub fn validate(&self) -> Result<()> {
        if self.ch_mult.is_empty() {
            bail!("model.ch_mult must list at least one level");
        }
        if let Some(m) = self.ch_mult.iter().find(|&&m| m == 0) {
            bail!("model.ch_mult entries must be positive, got {m}");
        }
        let f = self.downsample_factor();
        if self.resolution == 0 || !self.resolution.is_multiple_of(f) {
            bail!(
                "model.resolution ({}) must be a positive multiple of the downsampling factor {f} (2^(levels-1))",
                self.resolution
            );
        }
        for (name, v) in [
            ("model.ch", self.ch),
            ("model.z_channels", self.z_channels),
            ("model.norm_groups", self.norm_groups),
            ("model.quantizer.channels", self.quantizer.channels),
            (
                "model.quantizer.codebook_size",
                self.quantizer.codebook_size,
            ),
            ("model.quantizer.code_dim", self.quantizer.code_dim),
        ] {
            if v == 0 {
                bail!("{name} must be positive, got 0");
            }
        }
        for width in self.ch_mult.iter().map(|m| m * self.ch) {
            if !width.is_multiple_of(self.norm_groups) {
                bail!(
                    "model.norm_groups ({}) must divide every block width, but not {width} (ch {} × ch_mult)",
                    self.norm_groups,
                    self.ch
                );
            }
            if let Some(g) = self.spatial_norm_groups {
                if g == 0 || !width.is_multiple_of(g) {
                    bail!(
                        "model.spatial_norm_groups ({g}) must divide every block width, but not {width}"
                    );
                }
            }
        }
        if let Some(c) = self.image_channels {
            if c != 1 && c != 3 {
                bail!("model.image_channels must be 1 (greyscale) or 3 (RGB), got {c}");
            }
        }
        let q = &self.quantizer;
        if !non_negative(q.beta) {
            bail!("model.quantizer.beta must be non-negative, got {}", q.beta);
        }
        if let CodebookUpdate::Ema { decay, epsilon } = q.update {
            if !(0.0..1.0).contains(&decay) {
                bail!("model.quantizer.update.ema.decay must be in [0, 1), got {decay}");
            }
            if !positive(epsilon) {
                bail!("model.quantizer.update.ema.epsilon must be positive, got {epsilon}");
            }
        }
        if !non_negative(q.entropy_weight) {
            bail!(
                "model.quantizer.entropy_weight must be non-negative, got {}",
                q.entropy_weight
            );
        }
        if !positive(q.entropy_temperature) {
            bail!(
                "model.quantizer.entropy_temperature must be positive, got {}",
                q.entropy_temperature
            );
        }
        if let Some(r) = &q.restart_dead_codes {
            if r.every == 0 {
                bail!("model.quantizer.restart_dead_codes.every must be positive, got 0");
            }
            if !non_negative(r.threshold) {
                bail!(
                    "model.quantizer.restart_dead_codes.threshold must be non-negative, got {}",
                    r.threshold
                );
            }
        }
        Ok(())
    }
}

/// Stage-1 loss terms (VQGAN recipe).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossConfig {
    #[serde(default)]
    pub reconstruction: ReconstructionLoss,
    /// Weight of the perceptual (LPIPS) term; skipped with a notice while no perceptual network
    /// is available.
    #[serde(default)]
    pub perceptual_weight: f64,
    /// Weight of the quantizer's codebook + β·commitment loss.
    #[serde(default = "one")]
    pub codebook_weight: f64,
    /// The PatchGAN adversarial term; absent = no discriminator.
    #[serde(default)]
    pub discriminator: Option<DiscriminatorConfig>,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReconstructionLoss {
    #[default]
    L1,
    L2,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscriminatorConfig {
    /// First step at which the adversarial term is on.
    pub start: usize,
    /// Base weight of the generator's adversarial term.
    #[serde(default = "default_disc_weight")]
    pub weight: f64,
    /// VQGAN's adaptive weight (gradient-norm ratio at the decoder's last layer) or fixed.
    #[serde(default = "yes")]
    pub adaptive: bool,
    /// Strided conv layers of the PatchGAN.
    #[serde(default = "default_disc_layers")]
    pub layers: usize,
    /// Width of the first discriminator layer.
    #[serde(default = "default_disc_ch")]
    pub ch: usize,
    /// Discriminator learning rate as a multiple of the generator's.
    #[serde(default = "one")]
    pub lr_ratio: f64,
}

fn default_disc_weight() -> f64 {
    0.8
}
fn yes() -> bool {
    true
}
fn default_disc_layers() -> usize {
    3
}
fn default_disc_ch() -> usize {
    64
}

/// Optimisation and loop settings shared by every stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub steps: usize,
    pub batch_size: usize,
    /// Base learning rate.
    pub lr: f64,
    /// How the base learning rate is scaled.
    #[serde(default)]
    pub lr_scaling: LrScaling,
    #[serde(default)]
    pub warmup_steps: usize,
    /// Cosine decay floor as a fraction of the peak learning rate (1 = constant after warmup).
    #[serde(default = "one")]
    pub min_lr_ratio: f64,
    #[serde(default)]
    pub optimizer: OptimizerKind,
    #[serde(default = "default_betas")]
    pub betas: (f64, f64),
    #[serde(default)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value (absent = no clipping).
    #[serde(default)]
    pub grad_clip: Option<f64>,
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// Validate every this many steps (0 = only at the end).
    #[serde(default)]
    pub val_every: usize,
    /// Images used per validation.
    #[serde(default = "default_val_images")]
    pub val_images: usize,
    /// Write a preview every this many steps (0 = never) to `RUN/samples/step-N.png` (and to
    /// TensorBoard): stage 1 reconstructs fixed validation images, stage 2 samples one image
    /// per class with a fixed seed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sample_every: usize,
    /// Measure FID every this many steps and at the end (0 = never; needs `--fid-ref STATS`):
    /// stage 1 the rFID of its validation images' reconstructions, stage 2 the FID of
    /// `fid_samples` samples (classes in turn, 12 steps, a fixed seed).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fid_every: usize,
    /// Samples a stage-2 FID measurement generates.
    #[serde(
        default = "default_fid_samples",
        skip_serializing_if = "is_default_fid_samples"
    )]
    pub fid_samples: usize,
    /// Write TensorBoard event files to `RUN/tb/` (every logged metric, validation and
    /// previews); on by default.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub tensorboard: bool,
    /// Save a checkpoint every this many steps (0 = only at the end).
    #[serde(default)]
    pub checkpoint_every: usize,
    /// Keep this many most recent checkpoints (0 = keep all).
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// `f32`, or `bf16` mixed precision (f32 master weights and optimizer state; CUDA only).
    #[serde(default)]
    pub precision: Precision,
    /// Allow TF32 tensor cores for f32 matmuls on CUDA.
    #[serde(default)]
    pub tf32: bool,
    /// Exponential moving average of the weights with this decay (warmed up as
    /// `min(decay, (1 + n) / (10 + n))` after n updates), kept in f32 beside them and saved with
    /// every checkpoint; inference uses it by default. Absent or 0: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema_decay: Option<f64>,
    /// Gradient accumulation: each rank's rows of a batch run as this many micro-batches, their
    /// gradients summed before one optimizer step (`batch_size` stays the whole batch). 1: off.
    #[serde(default = "one_usize", skip_serializing_if = "is_one")]
    pub accumulate: usize,
    /// Parts of the stage-1 model that do not train (no gradients, no optimizer state, no
    /// codebook maintenance for the quantizer): `--freeze encoder,quantizer` fine-tunes the
    /// decoder alone. The transformer has no parts to freeze.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freeze: Vec<ModelPart>,
}

/// A part of the stage-1 model, for `train.freeze`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelPart {
    /// The encoder and its projection to the code space (`encoder.*`, `quant_conv.*`).
    Encoder,
    /// The codebook (`quantize.*`).
    Quantizer,
    /// The projection back and the modulated decoder (`post_quant_conv.*`, `decoder.*`).
    Decoder,
}

impl ModelPart {
    /// The parameter-name prefixes of this part.
    pub fn prefixes(self) -> &'static [&'static str] {
        match self {
            ModelPart::Encoder => &["encoder.", "quant_conv."],
            ModelPart::Quantizer => &["quantize."],
            ModelPart::Decoder => &["decoder.", "post_quant_conv."],
        }
    }

    /// Parses `encoder,quantizer`-style lists (`--freeze`).
    pub fn parse_list(list: &str) -> Result<Vec<ModelPart>> {
        let mut parts = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let part = match name {
                "encoder" => ModelPart::Encoder,
                "quantizer" => ModelPart::Quantizer,
                "decoder" => ModelPart::Decoder,
                other => bail!(
                    "--freeze {list}: unknown part `{other}` (the parts: encoder, quantizer, decoder)"
                ),
            };
            if !parts.contains(&part) {
                parts.push(part);
            }
        }
        parts.sort();
        Ok(parts)
    }
}

impl TrainConfig {
    /// The EMA decay, when the EMA is on.
    pub fn ema(&self) -> Option<f64> {
        self.ema_decay.filter(|&d| d > 0.0)
    }
}

fn one_usize() -> usize {
    1
}
fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}
fn is_one_f64(x: &f64) -> bool {
    *x == 1.0
}
fn is_one(n: &usize) -> bool {
    *n == 1
}
fn is_true(b: &bool) -> bool {
    *b
}
fn default_fid_samples() -> usize {
    1000
}
fn is_default_fid_samples(n: &usize) -> bool {
    *n == default_fid_samples()
}
fn is_zero(n: &usize) -> bool {
    *n == 0
}
fn default_betas() -> (f64, f64) {
    (0.5, 0.9)
}
fn default_log_every() -> usize {
    10
}
fn default_val_images() -> usize {
    64
}
fn default_keep() -> usize {
    3
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LrScaling {
    /// Use `lr` as given.
    #[default]
    None,
    /// `lr × batch_size` (taming-transformers' convention).
    Batch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    #[default]
    Adam,
    #[serde(rename = "adamw")]
    AdamW,
}

impl TrainConfig {
    /// The peak learning rate after scaling.
    pub fn peak_lr(&self) -> f64 {
        match self.lr_scaling {
            LrScaling::None => self.lr,
            LrScaling::Batch => self.lr * self.batch_size as f64,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            bail!("train.steps must be positive, got 0");
        }
        if self.batch_size == 0 {
            bail!("train.batch_size must be positive, got 0");
        }
        if self.fid_every > 0 && self.fid_samples < 2 {
            bail!(
                "train.fid_samples must be at least 2 (FID needs a covariance), got {}",
                self.fid_samples
            );
        }
        if self.sample_every > 0 && self.val_images == 0 {
            bail!("train.sample_every needs validation images to show, but train.val_images is 0");
        }
        if self.freeze.len() == 3 {
            bail!(
                "train.freeze lists every part (encoder, quantizer, decoder): nothing would train"
            );
        }
        if self.accumulate == 0 {
            bail!("train.accumulate must be positive (1 = no accumulation), got 0");
        }
        if !self.batch_size.is_multiple_of(self.accumulate) {
            bail!(
                "train.accumulate ({}) must divide train.batch_size ({})",
                self.accumulate,
                self.batch_size
            );
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("train.lr must be a positive number, got {}", self.lr);
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            bail!(
                "train.min_lr_ratio must be in [0, 1], got {}",
                self.min_lr_ratio
            );
        }
        let (b1, b2) = self.betas;
        if !(0.0..1.0).contains(&b1) || !(0.0..1.0).contains(&b2) {
            bail!("train.betas must both be in [0, 1), got ({b1}, {b2})");
        }
        if !non_negative(self.weight_decay) {
            bail!(
                "train.weight_decay must be non-negative, got {}",
                self.weight_decay
            );
        }
        if let Some(c) = self.grad_clip {
            if !positive(c) {
                bail!("train.grad_clip must be positive, got {c}");
            }
        }
        if self.log_every == 0 {
            bail!("train.log_every must be positive, got 0");
        }
        if let Some(d) = self.ema_decay {
            if !(0.0..1.0).contains(&d) {
                bail!("train.ema_decay must be in [0, 1), got {d}");
            }
        }
        Ok(())
    }
}

/// Data pipeline options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Fraction of the images held out for validation (deterministic by file name).
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    /// Random horizontal flips during training.
    #[serde(default = "yes")]
    pub flip: bool,
    /// Image decoding threads (0 = one per core).
    #[serde(default)]
    pub workers: usize,
    /// Batches prepared ahead of the model.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// Keep resized images in memory when the whole set fits in this many MiB.
    #[serde(default = "default_cache_mib")]
    pub cache_mib: usize,
}

fn default_val_fraction() -> f64 {
    0.02
}
fn default_prefetch() -> usize {
    2
}
fn default_cache_mib() -> usize {
    2048
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            val_fraction: default_val_fraction(),
            flip: true,
            workers: 0,
            prefetch: default_prefetch(),
            cache_mib: default_cache_mib(),
        }
    }
}

impl DataConfig {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.val_fraction) {
            bail!(
                "data.val_fraction must be in [0, 1), got {}",
                self.val_fraction
            );
        }
        if self.prefetch == 0 {
            bail!("data.prefetch must be positive, got 0");
        }
        Ok(())
    }

    /// Decoding threads to use.
    pub fn worker_threads(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        }
    }
}

impl RunConfig {
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.train.validate()?;
        self.data.validate()?;
        if let Some(t) = &self.transformer {
            t.validate()?;
        }
        if let Some(d) = &self.loss.discriminator {
            if d.layers == 0 || d.ch == 0 {
                bail!("loss.discriminator.layers and .ch must be positive");
            }
            if !non_negative(d.weight) || !positive(d.lr_ratio) {
                bail!("loss.discriminator.weight must be ≥ 0 and lr_ratio > 0");
            }
            let min = 3 << d.layers;
            if self.model.resolution < min {
                bail!(
                    "loss.discriminator.layers ({}) is too deep for model.resolution {}: a {}-layer PatchGAN needs images of at least {min} pixels",
                    d.layers, self.model.resolution, d.layers
                );
            }
        }
        if !non_negative(self.loss.perceptual_weight) || !non_negative(self.loss.codebook_weight) {
            bail!("loss.perceptual_weight and loss.codebook_weight must be non-negative");
        }
        Ok(())
    }

    /// Reads and validates a config file; errors name the file and the field.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let cfg: RunConfig =
            serde_json::from_str(text).with_context(|| format!("invalid config {origin}"))?;
        cfg.validate()
            .with_context(|| format!("invalid config {origin}"))?;
        Ok(cfg)
    }

    /// A config file path, or the name of a built-in preset.
    /// A new stage-1 run's config: `--config` (required), with `--seed` and `--freeze` applied.
    pub fn for_new_run(
        spec: Option<&str>,
        seed: Option<u64>,
        freeze: Option<&str>,
    ) -> Result<Self> {
        let spec = spec.context(
            "--config is required for a new run (a file or a preset name such as tiny); --resume continues an existing one",
        )?;
        let mut cfg = Self::resolve(spec)?;
        cfg.seed = seed.unwrap_or(cfg.seed);
        if let Some(parts) = freeze {
            cfg.train.freeze = ModelPart::parse_list(parts)?;
        }
        Ok(cfg)
    }

    pub fn resolve(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        if path.exists() {
            return Self::load(path);
        }
        match PRESETS.iter().find(|(name, _)| *name == spec) {
            Some((name, text)) => Self::parse(text, &format!("preset {name}")),
            None => bail!(
                "--config {spec}: no such file, and not a preset (presets: {})",
                PRESETS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising plain data structs cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// `x ≥ 0` and not NaN.
fn non_negative(x: f64) -> bool {
    x >= 0.0
}

/// `x > 0` and not NaN.
fn positive(x: f64) -> bool {
    x > 0.0
}

/// The configuration of a stage-2 run, written as its `config.json`. The frozen stage-1 model
/// is copied into the run's `vq/` folder, so the run directory alone is enough to sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerRunConfig {
    pub seed: u64,
    /// The stage-1 run the tokenizer was taken from (for the record).
    pub vq_run: String,
    /// Class names (empty = unconditional); `--class` accepts a name or an index.
    pub classes: Vec<String>,
    /// The `--data` it was trained on (for the record, and the examples `movq serve` offers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_spec: Option<String>,
    pub data: DataConfig,
    pub transformer: TransformerSection,
}

impl TransformerSection {
    /// The transformer section a stage-2 run on the tokens of a stage-1 run (config `vq_cfg`)
    /// uses: from `--config spec` (whose tokenizer must match that run's) or from the stage-1
    /// run's own config.
    pub fn for_tokens_of(spec: Option<&str>, vq_cfg: &RunConfig) -> Result<Self> {
        let Some(spec) = spec else {
            return vq_cfg.transformer.clone().context(
                "the stage-1 run's config has no `transformer` section; pass --config with one (for example --config tiny)",
            );
        };
        let cfg = RunConfig::resolve(spec)?;
        let (want, got) = (&vq_cfg.model, &cfg.model);
        for (field, w, g) in [
            (
                "model.quantizer.codebook_size",
                want.quantizer.codebook_size,
                got.quantizer.codebook_size,
            ),
            (
                "model.quantizer.channels",
                want.quantizer.channels,
                got.quantizer.channels,
            ),
            ("latent size", want.latent_size(), got.latent_size()),
        ] {
            if w != g {
                bail!("--config {spec}: its {field} ({g}) disagrees with the stage-1 run's ({w}); the transformer must be trained on that run's tokens");
            }
        }
        cfg.transformer
            .with_context(|| format!("--config {spec} has no `transformer` section"))
    }
}

impl TransformerRunConfig {
    /// A new stage-2 run's config: on the tokens of the stage-1 run at `vq_run` (config
    /// `vq_cfg`), for the classes of the `--data spec`, with the transformer section of `--config`
    /// or of that run, and `--seed` (default: that run's).
    pub fn for_new_run(
        vq_run: &std::path::Path,
        vq_cfg: &RunConfig,
        data_spec: &str,
        classes: impl FnOnce(u64) -> Result<Vec<String>>,
        config: Option<&str>,
        seed: Option<u64>,
    ) -> Result<Self> {
        let seed = seed.unwrap_or(vq_cfg.seed);
        Ok(Self {
            seed,
            vq_run: vq_run.display().to_string(),
            classes: classes(seed)?,
            data_spec: Some(data_spec.to_string()),
            data: vq_cfg.data.clone(),
            transformer: TransformerSection::for_tokens_of(config, vq_cfg)?,
        })
    }

    /// Whether the transformer trains on mirrored copies of the images too.
    pub fn flip(&self) -> bool {
        self.transformer.flip.unwrap_or(self.data.flip)
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let cfg: Self =
            serde_json::from_str(text).with_context(|| format!("invalid config {origin}"))?;
        cfg.transformer
            .validate()
            .with_context(|| format!("invalid config {origin}"))?;
        Ok(cfg)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// A run's `config.json`, as the run directory and the shared training setup see it: parsed
/// and validated from text, written back, with a seed and a training section.
pub trait RunSettings: Sized + Clone {
    /// Parses and validates config text; `origin` names it in errors.
    fn parse(text: &str, origin: &str) -> Result<Self>;
    fn to_json(&self) -> String;
    fn validate(&self) -> Result<()>;
    fn seed(&self) -> u64;
    /// The section that trains this run's model.
    fn train(&self) -> &TrainConfig;
    fn train_mut(&mut self) -> &mut TrainConfig;
}

impl RunSettings for RunConfig {
    fn parse(text: &str, origin: &str) -> Result<Self> {
        RunConfig::parse(text, origin)
    }
    fn to_json(&self) -> String {
        RunConfig::to_json(self)
    }
    fn validate(&self) -> Result<()> {
        RunConfig::validate(self)
    }
    fn seed(&self) -> u64 {
        self.seed
    }
    fn train(&self) -> &TrainConfig {
        &self.train
    }
    fn train_mut(&mut self) -> &mut TrainConfig {
        &mut self.train
    }
}

impl RunSettings for TransformerRunConfig {
    fn parse(text: &str, origin: &str) -> Result<Self> {
        TransformerRunConfig::parse(text, origin)
    }
    fn to_json(&self) -> String {
        TransformerRunConfig::to_json(self)
    }
    fn validate(&self) -> Result<()> {
        self.transformer.validate()
    }
    fn seed(&self) -> u64 {
        self.seed
    }
    fn train(&self) -> &TrainConfig {
        &self.transformer.train
    }
    fn train_mut(&mut self) -> &mut TrainConfig {
        &mut self.transformer.train
    }
}
