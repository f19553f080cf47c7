//! `movq fid A [B]`: Fréchet Inception Distance between two image sets (folders, `idx:` sets,
//! built-in sets) or saved statistics files; `--save-stats` keeps a set's statistics for reuse.

use std::process::ExitCode;

use anyhow::{bail, Result};
use serde_json::json;

use crate::cli::FidArgs;
use crate::device;
use crate::metrics::fid::{frechet_distance, load_inception, stats_of_source};

pub fn run(a: FidArgs) -> Result<ExitCode> {
    if a.batch_size == 0 {
        bail!("--batch-size must be positive");
    }
    if a.b.is_none() && a.save_stats.is_none() {
        bail!("give two image sets (or statistics files) to compare, or --save-stats FILE");
    }
    let device = device::select(&a.common.device)?;
    let net = load_inception(a.inception_weights.as_deref(), &device)?;
    let sa = stats_of_source(&a.a, &net, a.limit, a.batch_size)?;
    if let Some(out) = &a.save_stats {
        sa.save(out)?;
        eprintln!(
            "saved the statistics of {} images of {} to {}",
            sa.count,
            a.a,
            out.display()
        );
    }
    if let Some(b) = &a.b {
        let sb = stats_of_source(b, &net, a.limit, a.batch_size)?;
        let fid = frechet_distance(&sa, &sb)?;
        let out = json!({"fid": fid, "a": a.a, "a_images": sa.count, "b": b, "b_images": sb.count});
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(ExitCode::SUCCESS)
}
