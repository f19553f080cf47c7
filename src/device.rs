//! Device selection: the one place where the `cuda` feature shows.

use anyhow::{bail, Result};
use candle_core::Device;

/// Parses `auto`, `cpu`, `cuda` or `cuda:N` into a device.
pub fn select(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    match spec.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(auto()),
        "cuda" => cuda(0),
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => cuda(n),
            _ => bail!("--device {spec}: expected auto, cpu, cuda or cuda:N"),
        },
    }
}

#[cfg(feature = "cuda")]
fn auto() -> Device {
    Device::new_cuda(0).unwrap_or(Device::Cpu)
}

#[cfg(not(feature = "cuda"))]
fn auto() -> Device {
    Device::Cpu
}

#[cfg(feature = "cuda")]
fn cuda(n: usize) -> Result<Device> {
    Device::new_cuda(n).map_err(|e| anyhow::anyhow!("--device cuda:{n}: no usable CUDA GPU ({e})"))
}

#[cfg(not(feature = "cuda"))]
fn cuda(n: usize) -> Result<Device> {
    bail!(
        "--device cuda:{n}: this movq binary was built without CUDA support; rebuild it with \
         `cargo build --release --features cuda` (see the README's GPU section) or use --device cpu"
    )
}

/// A short description for messages.
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        d => format!("{:?}", d.location()),
    }
}
