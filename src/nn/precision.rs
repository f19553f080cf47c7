//! Numeric precision of a run: plain f32, or bf16 mixed precision.
//!
//! Mixed precision keeps the f32 master weights and optimizer state; a network casts its input
//! to bf16 and every convolution and matmul then runs in bf16 (see [`crate::nn::layers`]),
//! while normalization statistics, softmax, losses and the quantizer's nearest-code search stay
//! in f32. The CPU has no fast bf16 path, so there bf16 falls back to f32.

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
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

/// Allows (or forbids) TF32 tensor-core arithmetic for f32 matmuls on CUDA devices.
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
