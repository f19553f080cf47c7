//! Command-line definitions (clap derive). Parsing only; the work is in `commands`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "movq",
    version,
    about = "Train and sample MoVQ: a multichannel VQ tokenizer with a spatially modulated decoder",
    after_help = "Exit codes: 0 success, 1 error, 2 bad command line, 130 interrupted (a checkpoint was saved)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Where to run: auto (CUDA when built with it and a GPU is present), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", global = true)]
    pub device: String,
    /// Seed of every random choice: a new run's weights, data order and augmentation; the
    /// sampler's and masks' draws of the inference commands (default 0).
    #[arg(long, global = true)]
    pub seed: Option<u64>,
    /// Numeric precision: f32, or bf16 mixed precision (CUDA; f32 on the CPU). Default: the
    /// config's train.precision.
    #[arg(long, global = true, value_enum)]
    pub precision: Option<PrecisionArg>,
    /// Allow TF32 tensor cores for f32 matmuls on CUDA (also `train.tf32` in the config).
    #[arg(long, global = true)]
    pub tf32: bool,
    /// Which of a trained run's weights to use: ema (their moving average, the default where
    /// the run keeps one: train.ema_decay) or raw.
    #[arg(long, global = true, value_enum)]
    pub weights: Option<WeightsArg>,
}

/// `--weights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightsArg {
    Ema,
    Raw,
}

/// Which LPIPS network, and where its weights are.
#[derive(Debug, Clone, Args)]
pub struct LpipsFlags {
    /// LPIPS backbone for the perceptual metric (alex, the metric's usual choice, or vgg).
    #[arg(long, value_enum, default_value = "alex")]
    pub lpips: LpipsNet,
    /// LPIPS weights file (default: lpips-<net>.safetensors in MOVQ_CACHE or ~/.cache/movq,
    /// written by scripts/get-weights). Without weights LPIPS is left out with a note.
    #[arg(long)]
    pub lpips_weights: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LpipsNet {
    Alex,
    Vgg,
}

impl LpipsFlags {
    /// The LPIPS network these flags ask for, on `device` (`None`, with a note, when its weights
    /// are not installed and no file was named).
    pub fn load(
        &self,
        device: &candle_core::Device,
    ) -> anyhow::Result<Option<crate::metrics::lpips::Lpips>> {
        use crate::metrics::lpips::Backbone;
        let backbone = match self.lpips {
            LpipsNet::Alex => Backbone::Alex,
            LpipsNet::Vgg => Backbone::Vgg,
        };
        crate::metrics::lpips::load_optional(backbone, self.lpips_weights.as_deref(), device)
    }
}

/// Flags of both training commands.
#[derive(Debug, Clone, Args)]
pub struct TrainFlags {
    /// Continue the run in --out exactly where its latest checkpoint left off.
    #[arg(long)]
    pub resume: bool,
    /// Start a new run from another run's weights (its latest checkpoint, the moving average
    /// where it keeps one) or from a model file: fine-tuning, with a fresh optimizer. The
    /// config must describe the same architecture.
    #[arg(long, value_name = "RUN|CHECKPOINT")]
    pub init: Option<PathBuf>,
    /// Statistics of real images (`movq fid DATA --save-stats STATS`) that the FID measured
    /// every train.fid_every steps is computed against.
    #[arg(long, value_name = "STATS")]
    pub fid_ref: Option<PathBuf>,
    /// Override the total training steps (also when resuming, to train further).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Override the batch size.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Override the base learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Data-parallel ranks, each with 1/N of every batch (the batch size must split evenly):
    /// with --device cuda, GPUs 0..N-1, one per rank; on the CPU, N threads with 1/N of the
    /// cores each (on 2 cores, --ranks 2 trains small models faster than one rank).
    /// Gradients are summed over the ranks before one identical step; rank 0 writes. A run
    /// resumes on any number of ranks.
    #[arg(long, default_value_t = 1)]
    pub ranks: usize,
    /// Ranks of the whole run over several hosts (default: --ranks); this process holds
    /// --first-rank..--first-rank+--ranks. Needs NCCL (`--features nccl`) and --nccl-id.
    #[arg(long)]
    pub world_size: Option<usize>,
    /// This process's first global rank (runs over several hosts).
    #[arg(long, default_value_t = 0)]
    pub first_rank: usize,
    /// File (on a filesystem every host sees) where the process holding rank 0 publishes the NCCL
    /// group id and the others read it; or give every process MOVQ_NCCL_ID.
    #[arg(long)]
    pub nccl_id: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train the stage-1 MoVQ autoencoder.
    TrainVq(TrainVqArgs),
    /// Train the stage-2 masked transformer on a frozen stage-1 tokenizer.
    TrainTransformer(TrainTransformerArgs),
    /// Generate images with MaskGIT iterative decoding.
    Sample(SampleArgs),
    /// Reconstruct images with a trained model (encode → quantize → decode).
    Reconstruct(ReconstructArgs),
    /// Reconstruction metrics over a folder: PSNR, SSIM, codebook usage and perplexity.
    Eval(EvalArgs),
    /// PSNR and SSIM of two same-sized images, as JSON.
    Compare(CompareArgs),
    /// Throughput and peak GPU memory on the PyTorch reference benchmark's workloads.
    Bench(BenchArgs),
    /// Fréchet Inception Distance between two image sets or saved statistics.
    Fid(FidArgs),
    /// Class fidelity of samples: accuracy on builtin:shapes, per-class FID on labelled data.
    EvalSamples(EvalSamplesArgs),
    /// Import weights trained elsewhere as a movq run directory.
    Import(ImportArgs),
    /// Images → continuous latents and code indices (one safetensors file).
    Encode(EncodeArgs),
    /// Latents (.safetensors or .npy) or code indices → images.
    Decode(DecodeLatentsArgs),
    /// Training curves of one or more runs as a PNG (from their metrics.jsonl).
    Plot(PlotArgs),
    /// Inpainting, outpainting and class-conditional editing with a stage-2 run.
    Edit(EditArgs),
    /// A local web page to paint a mask and edit images (and its JSON API).
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Stage-2 run directory (train-transformer).
    #[arg(long)]
    pub model: PathBuf,
    /// Address to listen on (127.0.0.1: this machine only).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct EditArgs {
    /// Stage-2 run directory (train-transformer).
    #[arg(long)]
    pub model: PathBuf,
    /// The image to edit, or a folder of images (with --mask a folder of masks of the same
    /// file names).
    #[arg(long)]
    pub input: PathBuf,
    /// Inpainting: an image whose white pixels (≥ 128 in any channel) mark what to regenerate
    /// (or a folder of them).
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// Outpainting: grow the canvas, e.g. right=64,bottom=32 (pixels, rounded up to whole
    /// tokens), and generate the new border.
    #[arg(long, value_name = "SIDE=PIXELS,…")]
    pub extend: Option<String>,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Class the regenerated region is conditioned on (index or name; default: none).
    #[arg(long)]
    pub class: Option<String>,
    /// MaskGIT decoding steps.
    #[arg(long, default_value_t = 12)]
    pub steps: usize,
    /// Completions per image, with seeds S, S+1, …
    #[arg(long, default_value_t = 4)]
    pub samples: usize,
    /// Grow the token mask by this many positions in every direction.
    #[arg(long, default_value_t = 0)]
    pub dilate: usize,
    /// Put the input's pixels back outside the regenerated region (feathered over one token).
    #[arg(long)]
    pub paste: bool,
    #[command(flatten)]
    pub decode: DecodeArgs,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Run directories (stage 1 or 2), overlaid in one colour each.
    #[arg(required = true, value_name = "RUN")]
    pub runs: Vec<PathBuf>,
    /// The PNG to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Metrics, one panel each, comma-separated (default: loss, and psnr or acc where logged);
    /// training values solid, validation dashed, the moving average's validation as "val ema".
    #[arg(long)]
    pub metrics: Option<String>,
}

#[derive(Debug, Args)]
pub struct EncodeArgs {
    /// Stage-1 run directory (or a stage-2 run: its tokenizer).
    #[arg(long)]
    pub model: PathBuf,
    /// An image file, a folder of images (recursive), or builtin:shapes:N.
    #[arg(long)]
    pub input: String,
    /// Output .safetensors: latents [N, embed_dim, h, w] (f32) and indices [N, c, h, w] (u32),
    /// the input names in the metadata.
    #[arg(long)]
    pub out: PathBuf,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct DecodeLatentsArgs {
    /// Stage-1 run directory (or a stage-2 run: its tokenizer).
    #[arg(long)]
    pub model: PathBuf,
    /// Latents [N, embed_dim, h, w] as .npy, or a .safetensors file with a `latents` (or
    /// `indices` [N, c, h, w]) tensor, as `movq encode` writes.
    #[arg(long)]
    pub latents: PathBuf,
    /// Output folder: NNNNN.png per image and grid.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Snap the latents to their nearest codes first (by default they are decoded as they are,
    /// like diffusers' force_not_quantize).
    #[arg(long)]
    pub quantize: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(subcommand)]
    pub source: ImportSource,
}

#[derive(Debug, Subcommand)]
pub enum ImportSource {
    /// A diffusers VQModel with norm_type "spatial" (the Kandinsky 2.x MoVQ, the `movq` folder of
    /// kandinsky-community/kandinsky-2-2-decoder).
    Diffusers {
        /// diffusion_pytorch_model.safetensors
        #[arg(long)]
        weights: PathBuf,
        /// The config.json beside it.
        #[arg(long)]
        config: PathBuf,
        /// Run directory to create.
        #[arg(long)]
        out: PathBuf,
        /// Image side movq runs the model at (default: the config's sample_size, which diffusers
        /// treats as a hint only; Kandinsky 2.2 decodes 512 or 768 px).
        #[arg(long)]
        resolution: Option<usize>,
    },
    /// An original MoVQGAN checkpoint (PyTorch Lightning .ckpt with taming-transformers names,
    /// e.g. ai-forever's movqgan_67M.ckpt), or a bare state dict with those names. The shape is
    /// read off the tensors; the discriminator and perceptual tensors (loss.*) are left out.
    Movqgan {
        /// The .ckpt (or .pt / .pth) file.
        #[arg(long)]
        ckpt: PathBuf,
        /// Run directory to create.
        #[arg(long)]
        out: PathBuf,
        /// Image side movq runs the model at (attention levels are named by their resolution).
        #[arg(long, default_value_t = 256)]
        resolution: usize,
        /// GroupNorm groups (not stored in the checkpoint; MoVQGAN and Kandinsky use 32).
        #[arg(long, default_value_t = 32)]
        norm_groups: usize,
    },
}

#[derive(Debug, Args)]
pub struct FidArgs {
    /// An image folder, idx:PATH[:test], builtin:shapes[:N], or a statistics file (.safetensors).
    pub a: String,
    /// The set to compare with (same forms).
    pub b: Option<String>,
    /// Save the first set's statistics (mean and covariance of its Inception features) here.
    #[arg(long)]
    pub save_stats: Option<PathBuf>,
    /// Use at most this many images of each set.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Images per Inception forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Inception weights (default: fid-inception.safetensors in MOVQ_CACHE or ~/.cache/movq,
    /// written by scripts/get-weights).
    #[arg(long)]
    pub inception_weights: Option<PathBuf>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct EvalSamplesArgs {
    /// Folder of samples: one subfolder per class, named after it (as `movq sample --class all`
    /// writes), or any folder of images with --class. grid.png files are skipped.
    pub samples: PathBuf,
    /// The data the samples imitate: builtin:shapes (scored by an analytic classifier, no
    /// weights needed), or a labelled image folder or idx: set (per-class FID against its
    /// images; needs the Inception weights).
    #[arg(long)]
    pub data: String,
    /// Every sample was asked to be this class (name or index).
    #[arg(long)]
    pub class: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Images per Inception forward pass (FID).
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Inception weights (default: fid-inception.safetensors in the movq cache).
    #[arg(long)]
    pub inception_weights: Option<PathBuf>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchSection {
    All,
    Reference,
    Small,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Precisions to measure, comma separated (bf16 is skipped on the CPU).
    #[arg(long, default_value = "f32,bf16")]
    pub precisions: String,
    /// Run only the workloads whose "KIND CONFIG BATCH" contains this text (e.g. "vq-train").
    #[arg(long)]
    pub only: Option<String>,
    /// Which workloads: the reference's large models, the small ones (the fashion-32 preset's
    /// tokenizer and transformer), or both.
    #[arg(long, value_enum, default_value_t = BenchSection::All)]
    pub section: BenchSection,
    /// Timed calls at least.
    #[arg(long, default_value_t = 3)]
    pub min_iters: usize,
    /// Keep timing until this many seconds have passed (at most 20 calls or 20 s).
    #[arg(long, default_value_t = 2.0)]
    pub target_seconds: f64,
    /// Tiny stand-ins for every workload (a quick check that they all run, e.g. on the CPU).
    #[arg(long)]
    pub smoke: bool,
    /// Also append the JSON lines to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct TrainVqArgs {
    /// Config file, or a preset name (shapes, tiny, ffhq-256, imagenet-256, kandinsky-movq,
    /// fashion-32, fashion-32-full, fashion-32-f2); required for a new run (with --resume the run's own config.json is used).
    #[arg(long)]
    pub config: Option<String>,
    /// Image folder (recursive; class subfolders are used as labels), idx:PATH[:test] (MNIST-style
    /// IDX files, e.g. Fashion-MNIST) or builtin:shapes[:N].
    #[arg(long)]
    pub data: String,
    /// Run directory to create (or to continue with --resume).
    #[arg(long)]
    pub out: PathBuf,
    /// Parts of the model that do not train, e.g. `encoder,quantizer` to fine-tune the decoder
    /// alone (sets train.freeze; parts: encoder, quantizer, decoder).
    #[arg(long, value_name = "PARTS")]
    pub freeze: Option<String>,
    #[command(flatten)]
    pub train: TrainFlags,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct TrainTransformerArgs {
    /// Trained stage-1 run directory (read only).
    #[arg(long)]
    pub vq: PathBuf,
    /// Image folder (class subfolders make the model class-conditional), idx:PATH[:test] or
    /// builtin:shapes[:N].
    #[arg(long)]
    pub data: String,
    /// Stage-2 run directory to create (or to continue with --resume).
    #[arg(long)]
    pub out: PathBuf,
    /// Config file or preset whose `transformer` section to use (default: the stage-1 run's).
    #[arg(long)]
    pub config: Option<String>,
    #[command(flatten)]
    pub train: TrainFlags,
    #[command(flatten)]
    pub common: Common,
}

/// MaskGIT decoding options shared by `sample` and masked `reconstruct`.
#[derive(Debug, Clone, Args)]
pub struct DecodeArgs {
    /// Sampling temperature of the token distribution.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Scale of the Gumbel noise on the confidence, annealed linearly to 0 over the steps.
    #[arg(long, default_value_t = 4.5)]
    pub choice_temperature: f64,
    /// Min-p truncation: draw each token among the codes at least this fraction as likely as the
    /// most likely one (after the temperature); 0 draws from every code.
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f64,
    /// Mask schedule γ.
    #[arg(long, value_enum, default_value_t = ScheduleArg::Cosine)]
    pub schedule: ScheduleArg,
    /// Classifier-free guidance scale s: logits = (1+s)·cond − s·uncond.
    #[arg(long, default_value_t = 0.0)]
    pub cfg_scale: f64,
    /// How the guidance scale runs over the decoding steps.
    #[arg(long, value_enum, default_value_t = GuidanceArg::Constant)]
    pub cfg_schedule: GuidanceArg,
    /// Which predictions each step keeps.
    #[arg(long, value_enum, default_value_t = OrderArg::Confidence)]
    pub order: OrderArg,
    /// Rounds of refinement after the last step: each masks the decoded tokens least likely
    /// given the rest and puts back the model's most likely code for each (0: none).
    #[arg(long, default_value_t = 0)]
    pub refine: usize,
    /// The share of the decoded tokens each refinement round re-predicts.
    #[arg(long, default_value_t = 0.1)]
    pub refine_fraction: f64,
}

#[derive(Debug, Args)]
pub struct SampleArgs {
    /// Trained stage-2 run directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Output folder for the PNGs and grid.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Decoding steps T.
    #[arg(long, default_value_t = 12)]
    pub steps: usize,
    /// Class index or name (default: unconditional, the "no class" token); `all`: every class in
    /// turn, each into a subfolder named after it, with a grid of one row per class.
    #[arg(long)]
    pub class: Option<String>,
    /// Number of images (per class with --class all).
    #[arg(long, default_value_t = 16)]
    pub num: usize,
    /// Images generated together.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Take the most likely token instead of sampling (and no confidence noise): deterministic.
    #[arg(long)]
    pub top1: bool,
    #[command(flatten)]
    pub decode: DecodeArgs,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct ReconstructArgs {
    /// Trained run directory.
    #[arg(long)]
    pub model: PathBuf,
    /// An image file, a folder of images (recursive), or builtin:shapes:N.
    #[arg(long)]
    pub input: String,
    /// Output folder for reconstructions, grid.png and metrics.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Masked-token reconstruction by the stage-2 model: the fraction of tokens hidden per
    /// channel (0..1), or a comma-separated list for the paper's figure A.1.
    #[arg(long)]
    pub mask_ratio: Option<String>,
    /// Decoding steps of the random completions (masked reconstruction).
    #[arg(long, default_value_t = 8)]
    pub steps: usize,
    /// Random completions per image (masked reconstruction).
    #[arg(long, default_value_t = 3)]
    pub samples: usize,
    /// Class index or name used as conditioning (masked reconstruction; default: none).
    #[arg(long)]
    pub class: Option<String>,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[command(flatten)]
    pub lpips: LpipsFlags,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Trained run directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Image folder, idx:PATH[:test] or builtin:shapes[:N].
    #[arg(long)]
    pub data: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Evaluate at most this many images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Also report rFID: the reconstructions' Inception statistics against these (a dataset
    /// spec, or a statistics file from `movq fid --save-stats`).
    #[arg(long)]
    pub fid_ref: Option<String>,
    /// Inception weights for --fid-ref (default: the movq cache).
    #[arg(long)]
    pub inception_weights: Option<PathBuf>,
    #[command(flatten)]
    pub lpips: LpipsFlags,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Reference image.
    pub a: PathBuf,
    /// Image to score against the reference.
    pub b: PathBuf,
    #[command(flatten)]
    pub lpips: LpipsFlags,
    /// Where LPIPS runs: auto (CUDA when built with it and a GPU is present), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// `--precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PrecisionArg {
    /// f32 everywhere.
    F32,
    /// bf16 compute for convolutions, matmuls and attention; f32 weights, optimizer state,
    /// statistics and losses.
    Bf16,
}

impl From<PrecisionArg> for crate::compute::Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::F32 => Self::F32,
            PrecisionArg::Bf16 => Self::Bf16,
        }
    }
}

impl Common {
    /// `--precision` as the domain's precision.
    pub fn precision(&self) -> Option<crate::compute::Precision> {
        self.precision.map(Into::into)
    }

    /// How these flags ask to open a trained run.
    pub fn run(&self) -> crate::train::runs::RunFlags {
        use crate::train::runs::Weights;
        crate::train::runs::RunFlags {
            compute: self.compute(),
            weights: self.weights.map(|w| match w {
                WeightsArg::Ema => Weights::Ema,
                WeightsArg::Raw => Weights::Raw,
            }),
        }
    }

    /// What these flags ask of the compute policy.
    pub fn compute(&self) -> crate::compute::ComputeFlags {
        crate::compute::ComputeFlags {
            device: self.device.clone(),
            precision: self.precision(),
            tf32: self.tf32,
        }
    }
}

/// `--schedule`: the mask schedule γ of MaskGIT decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScheduleArg {
    /// γ(r) = cos(πr/2)
    Cosine,
    /// γ(r) = 1 − r
    Linear,
    /// γ(r) = 1 − r²
    Square,
    /// γ(r) = 1 − r³
    Cubic,
}

/// `--cfg-schedule`: how classifier-free guidance is spread over the decoding steps (also the
/// edit API's `cfg_schedule`, "constant" by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuidanceArg {
    #[default]
    /// The full --cfg-scale at every step
    Constant,
    /// Rising linearly to --cfg-scale: step t of T uses s·(t+1)/T (MUSE)
    Linear,
}

impl From<GuidanceArg> for crate::transformer::guidance::GuidanceSchedule {
    fn from(g: GuidanceArg) -> Self {
        match g {
            GuidanceArg::Constant => Self::Constant,
            GuidanceArg::Linear => Self::Linear,
        }
    }
}

/// `--order`: which of its predictions a MaskGIT step keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OrderArg {
    /// The most confident ones, with annealed Gumbel noise (MaskGIT)
    Confidence,
    /// The next positions of a fixed order spread evenly over the grid (the Halton sequence)
    Halton,
}

impl From<OrderArg> for crate::transformer::order::TokenOrder {
    fn from(o: OrderArg) -> Self {
        match o {
            OrderArg::Confidence => Self::Confidence,
            OrderArg::Halton => Self::Halton,
        }
    }
}

impl From<ScheduleArg> for crate::transformer::schedule::MaskSchedule {
    fn from(s: ScheduleArg) -> Self {
        match s {
            ScheduleArg::Cosine => Self::Cosine,
            ScheduleArg::Linear => Self::Linear,
            ScheduleArg::Square => Self::Square,
            ScheduleArg::Cubic => Self::Cubic,
        }
    }
}

impl TrainFlags {
    /// The training request these flags make, for a run in `out` with `--config` `config`.
    pub fn request<'a>(
        &'a self,
        out: &'a std::path::Path,
        config: Option<&'a str>,
        common: &Common,
    ) -> anyhow::Result<crate::train::setup::TrainRequest<'a>> {
        Ok(crate::train::setup::TrainRequest {
            out,
            config,
            resume: self.resume,
            init: self.init.as_deref(),
            fid_ref: self.fid_ref.as_deref(),
            seed: common.seed,
            steps: self.steps,
            batch_size: self.batch_size,
            lr: self.lr,
            compute: common.compute(),
            placement: crate::parallel::Placement::new(
                self.ranks,
                self.world_size,
                self.first_rank,
                self.nccl_id.clone(),
            )?,
            ranks: self.ranks,
        })
    }
}
