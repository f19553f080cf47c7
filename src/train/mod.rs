//! Training machinery shared by both stages.

pub mod accumulate;
pub mod ema;
pub mod fid_probe;
pub mod init;
pub mod metrics;
pub mod optim;
pub mod run_dir;
pub mod runner;
pub mod runs;
pub mod schedule;
pub mod setup;
pub mod tensorboard;

pub use metrics::Metrics;
pub use run_dir::RunDir;
pub use runner::{run, LoopOptions, Outcome, Stage, StepContext};
