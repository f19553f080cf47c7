//! The compute policy: where a command computes, in which precision, and whether movq's own
//! fused kernels run. Decided once per command from its flags, the run's config and the
//! environment; every `MOVQ_*` switch is read here, once per process.

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::Result;
use candle_core::{DType, Device};

use crate::config::TrainConfig;
use serde::{Deserialize, Serialize};

/// The environment switches (see the README's table), read once.
#[derive(Debug, Clone)]
pub struct Switches {
    /// `MOVQ_KERNELS=off`: candle's composed ops instead of movq's fused kernels (CPU and GPU),
    /// for comparison.
    pub fused_kernels: bool,
    /// `MOVQ_CONV=candle`: every convolution through candle's own `conv2d`.
    pub candle_conv: bool,
    /// `MOVQ_CUDNN_FIND=1`: cuDNN benchmarks its algorithms instead of trusting its heuristics.
    pub cudnn_find: bool,
    /// `MOVQ_PROFILE=1`: time the instrumented ops (each synchronises the device).
    pub profile: bool,
    /// `MOVQ_COMM=host`: ranks on GPUs exchange gradients through the host, not NCCL.
    pub host_comm: bool,
    /// `MOVQ_NCCL_ID`: the NCCL group id (hex) of a run over several processes.
    pub nccl_id: Option<String>,
    /// `MOVQ_CACHE`: where pretrained metric weights live (default `~/.cache/movq`).
    pub cache_dir: PathBuf,
}

impl Switches {
    fn read() -> Self {
        let var = |k: &str| std::env::var(k).ok();
        let is = |k: &str, v: &str| var(k).is_some_and(|x| x == v);
        Self {
            fused_kernels: !is("MOVQ_KERNELS", "off"),
            candle_conv: is("MOVQ_CONV", "candle"),
            cudnn_find: is("MOVQ_CUDNN_FIND", "1"),
            profile: var("MOVQ_PROFILE").is_some_and(|v| v != "0" && !v.is_empty()),
            host_comm: is("MOVQ_COMM", "host"),
            nccl_id: var("MOVQ_NCCL_ID"),
            cache_dir: match std::env::var_os("MOVQ_CACHE") {
                Some(p) => PathBuf::from(p),
                None => std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("."))
                    .join(".cache/movq"),
            },
        }
    }
}

/// The process's switches.
pub fn switches() -> &'static Switches {
    static SWITCHES: OnceLock<Switches> = OnceLock::new();
    SWITCHES.get_or_init(Switches::read)
}

/// Whether movq's fused kernels run for tensors on `dev`: the CPU kernels on the CPU, the CUDA
/// kernels on a CUDA device of a `cuda` build; unless `MOVQ_KERNELS=off`.
pub fn fused_kernels(dev: &Device) -> bool {
    switches().fused_kernels && (dev.is_cpu() || (cfg!(feature = "cuda") && dev.is_cuda()))
}

/// Whether convolutions run through cuDNN on `dev` (a `cudnn` build on a CUDA device, kernels
/// on, not `MOVQ_CONV=candle`).
pub fn cudnn(dev: &Device) -> bool {
    cfg!(feature = "cudnn") && dev.is_cuda() && fused_kernels(dev) && !switches().candle_conv
}

/// Settles how many threads candle's CPU kernels use, once, before any of them runs: the
/// `RAYON_NUM_THREADS` the user set, else one per core the process may use. candle reads this
/// variable at every matrix product and, when it is unset, parses `/proc/cpuinfo` each time.
///
/// With `ranks` CPU ranks in the process (`--ranks`), each rank already computes on its own
/// share of the cores, so candle's element-wise ops run in the calling rank's thread
/// (`CANDLE_NUM_THREADS=1`, unless the user set it): its one process-wide pool for them would
/// otherwise make the ranks queue for it and its workers take the cores the other ranks use.
pub fn configure_cpu_threads(ranks: usize) {
    // called at start-up, before any other thread exists
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    if ranks > 1 && std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// What the command line asks of the compute policy: `--device`, `--precision`, `--tf32`.
#[derive(Debug, Clone, Default)]
pub struct ComputeFlags {
    /// auto, cpu, cuda or cuda:N.
    pub device: String,
    pub precision: Option<Precision>,
    pub tf32: bool,
}

/// Where and in what precision a command computes.
#[derive(Debug, Clone)]
pub struct Compute {
    pub device: Device,
    /// The precision that runs (bf16 asked for on the CPU runs as f32, with a notice).
    pub precision: Precision,
    /// TF32 tensor cores for f32 matmuls on CUDA (cuBLAS's setting, process-wide).
    pub tf32: bool,
}

impl Compute {
    /// From the flags, with the run's `train` section supplying what they leave out
    /// (precision; TF32 when either asks for it).
    pub fn resolve(flags: &ComputeFlags, train: Option<&TrainConfig>) -> Result<Self> {
        Ok(Self::on_device(
            crate::device::select(&flags.device)?,
            flags,
            train,
        ))
    }

    /// A run's own policy on `device`: its `train` section's precision and TF32 (tests and
    /// benches).
    pub fn from_config(device: &Device, train: &TrainConfig) -> Self {
        Self::on_device(device.clone(), &ComputeFlags::default(), Some(train))
    }

    /// [`Self::resolve`] on a device already selected.
    pub fn on_device(device: Device, flags: &ComputeFlags, train: Option<&TrainConfig>) -> Self {
        let asked = flags
            .precision
            .or(train.map(|t| t.precision))
            .unwrap_or_default();
        let precision = asked.effective(&device);
        let tf32 = flags.tf32 || train.is_some_and(|t| t.tf32);
        set_tf32(tf32);
        Self {
            device,
            precision,
            tf32,
        }
    }

    /// The dtype activations are computed in.
    pub fn dtype(&self) -> DType {
        self.precision.compute_dtype(&self.device)
    }

    /// The same policy in f32.
    pub fn f32(&self) -> Self {
        Self {
            precision: Precision::F32,
            ..self.clone()
        }
    }

    /// The same policy on another device (one rank's, with `--ranks N`).
    pub fn on(&self, device: &Device) -> Self {
        Self {
            device: device.clone(),
            ..self.clone()
        }
    }
}

/// Numeric precision of a run: plain f32, or bf16 mixed precision.
///
/// Mixed precision keeps the f32 master weights and optimizer state; a network casts its input
/// to bf16 and every convolution and matmul then runs in bf16 (see [`crate::nn::layers`]),
/// while normalization statistics, softmax, losses and the quantizer's nearest-code search stay
/// in f32. The CPU has no fast bf16 path, so there bf16 falls back to f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 everywhere.
    #[default]
    F32,
    /// bf16 compute for convolutions, matmuls and attention; f32 weights, optimizer state,
    /// statistics and losses.
    Bf16,
}

impl Precision {
    /// The dtype activations are computed in on `device` (f32 on the CPU whatever was asked).
    pub fn compute_dtype(self, device: &Device) -> DType {
        match self {
            Precision::Bf16 if device.is_cuda() => DType::BF16,
            _ => DType::F32,
        }
    }

    /// The precision that will actually run on `device`, with a one-line notice when bf16 was
    /// asked for on the CPU.
    pub fn effective(self, device: &Device) -> Precision {
        if self == Precision::Bf16 && !device.is_cuda() {
            eprintln!("note: bf16 runs on CUDA devices only; computing in f32 on the CPU");
            return Precision::F32;
        }
        self
    }
}

/// Allows (or forbids) TF32 tensor-core arithmetic for f32 matmuls on CUDA devices (cuBLAS's
/// setting, for the whole process).
pub fn set_tf32(allow: bool) {
    candle_core::cuda::set_gemm_reduced_precision_f32(allow);
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}
