//! movq: the MoVQ tokenizer (multichannel VQ autoencoder with a spatially modulated decoder) and
//! its training, as a library behind the `movq` binary.

pub mod cli;
pub mod commands;
pub mod compute;
pub mod config;
pub mod cpu;
pub mod data;
pub mod device;
pub mod fsutil;
pub mod gpu;
pub mod metrics;
pub mod nn;
pub mod ops;
pub mod parallel;
pub mod profile;
pub mod rng;
pub mod train;
pub mod transformer;
pub mod vq;

/// One allocator for the binary, the tests and the benches (they link this library): mimalloc
/// keeps freed pages for reuse where glibc's malloc maps and unmaps each large tensor buffer, and
/// the kernel then spends the CPU paths' time zeroing fresh pages. Settled here so a bench
/// measures what `movq` runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
