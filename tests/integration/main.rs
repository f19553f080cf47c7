//! All integration tests, compiled into one binary.

#[macro_use]
mod harness;

mod class_fidelity;
mod cli;
mod devices;
mod diffusers;
mod edit;
mod ema;
mod fid;
mod gpu_kernels;
mod idx;
mod kernels;
mod lpips;
mod metrics;
mod model;
mod model_options;
mod movqgan;
mod parallel;
mod stage2;
mod training;
mod workflow;
