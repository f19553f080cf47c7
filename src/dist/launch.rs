//! Starting the ranks of a data-parallel run: one thread and one device each.

use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::Device;

use crate::dist::local::ABORTED;
use crate::dist::{LocalGroup, Shard};

/// The devices of `ranks` ranks when the run asked for `first`: GPUs 0..ranks−1 for a CUDA
/// device (each rank its own GPU), the CPU `ranks` times (threads; for testing, no faster).
pub fn rank_devices(first: &Device, ranks: usize) -> Result<Vec<Device>> {
    match (ranks, first) {
        (0, _) => bail!("--ranks must be at least 1"),
        (1, d) => Ok(vec![d.clone()]),
        (n, Device::Cpu) => Ok(vec![Device::Cpu; n]),
        (n, Device::Cuda(_)) => (0..n)
            .map(|i| {
                crate::device::select(&format!("cuda:{i}")).map_err(|e| {
                    anyhow::anyhow!("--ranks {n} needs {n} GPUs, one per rank; GPU {i}: {e:#}")
                })
            })
            .collect(),
        (_, d) => bail!("--ranks: {d:?} is not supported (cpu or cuda)"),
    }
}

/// Runs `f(shard, device)` for every rank, each on its own thread (on this one for a single
/// rank), and returns rank 0's result. A rank that fails makes the others' collectives fail
/// too, so that none waits forever; the error returned is the first failing rank's own.
pub fn run_ranks<T: Send>(
    devices: &[Device],
    f: impl Fn(Shard, &Device) -> Result<T> + Sync,
) -> Result<T> {
    if devices.len() == 1 {
        return f(Shard::single(), &devices[0]);
    }
    let groups: Vec<Arc<LocalGroup>> = LocalGroup::new(devices.len())
        .into_iter()
        .map(Arc::new)
        .collect();
    let f = &f;
    let mut results: Vec<Result<T>> = std::thread::scope(|s| {
        let threads: Vec<_> = groups
            .iter()
            .zip(devices)
            .enumerate()
            .map(|(rank, (group, dev))| {
                let group = group.clone();
                std::thread::Builder::new()
                    .name(format!("movq-rank-{rank}"))
                    .spawn_scoped(s, move || {
                        let out = f(Shard::new(group.clone()), dev);
                        if out.is_err() {
                            group.abort();
                        }
                        out
                    })
            })
            .collect();
        threads
            .into_iter()
            .enumerate()
            .map(|(rank, t)| match t {
                Ok(t) => t
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("rank {rank} panicked"))),
                Err(e) => Err(anyhow::anyhow!("cannot start rank {rank}: {e}")),
            })
            .collect()
    });
    let own_error = |r: &Result<T>| {
        r.as_ref()
            .err()
            .is_some_and(|e| !format!("{e:#}").contains(ABORTED))
    };
    if let Some(i) = results.iter().position(own_error) {
        let e = results.swap_remove(i).err().expect("an error");
        return Err(e.context(format!("rank {i} of {}", devices.len())));
    }
    results.swap_remove(0)
}
