//! movq: the MoVQ tokenizer (multichannel VQ autoencoder with a spatially modulated decoder) and
//! its training, as a library behind the `movq` binary.

pub mod cli;
pub mod commands;
pub mod config;
pub mod data;
pub mod device;
pub mod dist;
pub mod fsutil;
pub mod gpu;
pub mod metrics;
pub mod nn;
pub mod profile;
pub mod rng;
pub mod train;
pub mod transformer;
pub mod vq;
