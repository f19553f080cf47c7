//! Timing helpers shared by the benches.

use std::time::Instant;

use anyhow::Result;

/// Timed runs per figure: `MOVQ_BENCH_ITERS`, default 5.
pub fn iterations() -> usize {
    std::env::var("MOVQ_BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

/// Median seconds of `iters` timed calls of `f(i)` after one warm-up call.
pub fn median_time(iters: usize, mut f: impl FnMut(usize) -> Result<()>) -> Result<f64> {
    f(0)?;
    let mut times = Vec::with_capacity(iters);
    for i in 1..=iters {
        let t = Instant::now();
        f(i)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
