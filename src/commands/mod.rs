//! One module per subcommand: flags → config → work.

mod bench;
mod codec;
mod compare;
mod edit;
mod eval;
mod eval_samples;
mod failure;
mod fid;
mod import;
mod masked;
mod plot;
mod reconstruct;
mod sample;
mod serve;
mod train_transformer;
mod train_vq;

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{Cli, Command};

pub use crate::train::setup::EXIT_INTERRUPTED;
pub use failure::{backtrace, describe as describe_failure};

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let ranks = match &cli.command {
        Command::TrainVq(a) => a.train.ranks,
        Command::TrainTransformer(a) => a.train.ranks,
        _ => 1,
    };
    crate::compute::configure_cpu_threads(ranks);
    match cli.command {
        Command::TrainVq(a) => train_vq::run(a),
        Command::TrainTransformer(a) => train_transformer::run(a),
        Command::Sample(a) => sample::run(a),
        Command::Reconstruct(a) if a.mask_ratio.is_some() => masked::run(&a),
        Command::Reconstruct(a) => reconstruct::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Fid(a) => fid::run(a),
        Command::EvalSamples(a) => eval_samples::run(a),
        Command::Import(a) => import::run(a),
        Command::Encode(a) => codec::encode(a),
        Command::Decode(a) => codec::decode(a),
        Command::Plot(a) => plot::run(a),
        Command::Edit(a) => edit::run(a),
        Command::Serve(a) => serve::run(a),
    }
}
