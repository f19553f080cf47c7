use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = movq::cli::Cli::parse();
    match movq::commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", movq::commands::describe_failure(&err));
            if let Some(bt) = movq::commands::backtrace(&err) {
                eprintln!("{bt}");
            }
            ExitCode::FAILURE
        }
    }
}
