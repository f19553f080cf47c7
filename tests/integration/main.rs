//! All integration tests, compiled into one binary.

mod harness;

mod cli;
mod metrics;
mod model;
mod stage2;
mod training;
