//! All integration tests, compiled into one binary.

#[macro_use]
mod harness;

mod cli;
mod devices;
mod diffusers;
mod dist;
mod fid;
mod gpu_kernels;
mod idx;
mod lpips;
mod metrics;
mod model;
mod movqgan;
mod stage2;
mod training;
