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

/// Bytes of GPU memory in use on `device` as the driver reports it (all allocations of every
/// process on that GPU); `None` on the CPU.
#[cfg(feature = "cuda")]
pub fn memory_in_use(device: &Device) -> Option<usize> {
    let cuda = device.as_cuda_device().ok()?;
    let (free, total) = cuda.cuda_stream().context().mem_get_info().ok()?;
    Some(total - free)
}

#[cfg(not(feature = "cuda"))]
pub fn memory_in_use(_device: &Device) -> Option<usize> {
    None
}

/// The highest [`memory_in_use`] seen while it lives, sampled every millisecond on a thread.
pub struct PeakMemory {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl PeakMemory {
    /// Starts sampling; `None` on the CPU.
    pub fn start(device: &Device) -> Option<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        memory_in_use(device)?;
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (flag, dev) = (stop.clone(), device.clone());
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(memory_in_use(&dev).unwrap_or(0));
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            peak.max(memory_in_use(&dev).unwrap_or(0))
        });
        Some(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops sampling and returns the peak in bytes.
    pub fn finish(mut self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

impl Drop for PeakMemory {
    /// A probe dropped without [`PeakMemory::finish`] still stops its thread.
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
