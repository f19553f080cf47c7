//! Starting the ranks of a data-parallel run: one thread and one device each.

use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::Device;

use crate::dist::local::ABORTED;
use crate::dist::{Communicator, LocalGroup, Shard};

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

/// How the ranks of this host exchange tensors: NCCL between GPUs in an `nccl` build (unless
/// `MOVQ_COMM=host`), else through host memory ([`LocalGroup`]).
enum Transport {
    Host(Vec<Arc<LocalGroup>>),
    #[cfg(feature = "nccl")]
    Nccl(candle_core::cuda_backend::cudarc::nccl::safe::Id),
}

fn transport(devices: &[Device]) -> Result<Transport> {
    let host = || {
        Transport::Host(
            LocalGroup::new(devices.len())
                .into_iter()
                .map(Arc::new)
                .collect(),
        )
    };
    #[cfg(feature = "nccl")]
    {
        let forced_host = std::env::var("MOVQ_COMM").is_ok_and(|v| v == "host");
        if devices.iter().all(Device::is_cuda) && !forced_host {
            return Ok(Transport::Nccl(crate::dist::nccl::new_id()?));
        }
    }
    Ok(host())
}

/// One rank's communicator and, for host transport, the handle that aborts the group.
type Joined = (Arc<dyn Communicator>, Option<Arc<LocalGroup>>);

fn join(t: &Transport, rank: usize, world: usize, dev: &Device) -> Result<Joined> {
    let _ = (world, dev);
    match t {
        Transport::Host(groups) => Ok((groups[rank].clone(), Some(groups[rank].clone()))),
        #[cfg(feature = "nccl")]
        Transport::Nccl(id) => {
            let g = crate::dist::nccl::NcclGroup::join(dev, rank, world, *id)?;
            Ok((Arc::new(g), None))
        }
    }
}

/// Runs `f(shard, device)` for every rank, each on its own thread (on this one for a single
/// rank), and returns rank 0's result. With host transport a rank that fails makes the others'
/// collectives fail too, so that none waits forever; the error returned is the first failing
/// rank's own. (NCCL has no such abort: a rank that fails there can leave the others waiting
/// until Ctrl-C.)
pub fn run_ranks<T: Send>(
    devices: &[Device],
    f: impl Fn(Shard, &Device) -> Result<T> + Sync,
) -> Result<T> {
    if devices.len() == 1 {
        return f(Shard::single(), &devices[0]);
    }
    let world = devices.len();
    let transport = transport(devices)?;
    let (f, transport) = (&f, &transport);
    let mut results: Vec<Result<T>> = std::thread::scope(|s| {
        let threads: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(rank, dev)| {
                std::thread::Builder::new()
                    .name(format!("movq-rank-{rank}"))
                    .spawn_scoped(s, move || {
                        let (comm, abort) = join(transport, rank, world, dev)?;
                        let out = f(Shard::new(comm, dev), dev);
                        if let (Err(_), Some(group)) = (&out, abort) {
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
        return Err(e.context(format!("rank {i} of {world}")));
    }
    results.swap_remove(0)
}
