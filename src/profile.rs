//! Opt-in timing of where a step's time goes: `MOVQ_PROFILE=1` makes every instrumented op
//! synchronise the device before and after itself and add its wall time to a per-name total.
//! Synchronising serialises the GPU, so profiled runs are slower; the shares are what count.
//! Off (the default), a scope is one load of the process's switches.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use candle_core::{Device, Result};

static TOTALS: Mutex<BTreeMap<String, (f64, usize)>> = Mutex::new(BTreeMap::new());

pub fn enabled() -> bool {
    crate::compute::switches().profile
}

/// Runs `f`, adding its synchronised wall time to `name()`'s total when profiling is on.
pub fn scope<T>(
    name: impl FnOnce() -> String,
    device: &Device,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    if !enabled() {
        return f();
    }
    device.synchronize()?;
    let t = Instant::now();
    let out = f()?;
    device.synchronize()?;
    let dt = t.elapsed().as_secs_f64();
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    let e = totals.entry(name()).or_insert((0.0, 0));
    e.0 += dt;
    e.1 += 1;
    Ok(out)
}

/// The totals so far (name, seconds, calls), largest first; clears them.
pub fn take() -> Vec<(String, f64, usize)> {
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    let mut v: Vec<_> = std::mem::take(&mut *totals)
        .into_iter()
        .map(|(k, (s, n))| (k, s, n))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}
