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
    /// Seed of every random choice (weights, data order, augmentation).
    #[arg(long, global = true)]
    pub seed: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train the stage-1 MoVQ autoencoder.
    TrainVq(TrainVqArgs),
    /// Reconstruct images with a trained model (encode → quantize → decode).
    Reconstruct(ReconstructArgs),
    /// Reconstruction metrics over a folder: PSNR, SSIM, codebook usage and perplexity.
    Eval(EvalArgs),
    /// PSNR and SSIM of two same-sized images, as JSON.
    Compare(CompareArgs),
}

#[derive(Debug, Args)]
pub struct TrainVqArgs {
    /// Config file, or a preset name (tiny, ffhq-256, imagenet-256, kandinsky-movq).
    #[arg(long)]
    pub config: Option<String>,
    /// Image folder (recursive; class subfolders are used as labels) or builtin:shapes[:N].
    #[arg(long)]
    pub data: String,
    /// Run directory to create (or to continue with --resume).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in --out exactly where its latest checkpoint left off.
    #[arg(long)]
    pub resume: bool,
    /// Override train.steps (total steps, also when resuming).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Override train.batch_size.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Override train.lr (base learning rate).
    #[arg(long)]
    pub lr: Option<f64>,
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
    /// Masked-token reconstruction by a stage-2 model (needs a transformer run).
    #[arg(long)]
    pub mask_ratio: Option<String>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Trained run directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Image folder or builtin:shapes[:N].
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
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Reference image.
    pub a: PathBuf,
    /// Image to score against the reference.
    pub b: PathBuf,
}
