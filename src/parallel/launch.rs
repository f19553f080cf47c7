//! Starting the ranks of a data-parallel run: one thread and one device each.

use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::Device;

use crate::parallel::local::ABORTED;
use crate::parallel::{Communicator, LocalGroup, Placement, Shard};

/// The devices of `ranks` ranks when the run asked for `first`: GPUs 0..ranks−1 for a CUDA
/// device (each rank its own GPU), the CPU `ranks` times (threads, each rank with its share of
/// the cores: [`cpu_threads_per_rank`]).
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

/// How the ranks exchange tensors: NCCL between GPUs in an `nccl` build (unless
/// `MOVQ_COMM=host`; always across processes), else through host memory ([`LocalGroup`]).
enum Transport {
    Host(Vec<Arc<LocalGroup>>),
    #[cfg(feature = "nccl")]
    Nccl(candle_core::cuda_backend::cudarc::nccl::safe::Id),
}

fn transport(devices: &[Device], placement: &Placement) -> Result<Transport> {
    #[cfg(feature = "nccl")]
    {
        let forced_host = crate::compute::switches().host_comm;
        let gpus = devices.iter().all(Device::is_cuda);
        if placement.spans_processes() && !gpus {
            bail!("ranks on several hosts run on GPUs (--device cuda)");
        }
        if gpus && (placement.spans_processes() || !forced_host) {
            return Ok(Transport::Nccl(group_id(placement)?));
        }
    }
    if placement.spans_processes() {
        bail!("ranks on several hosts need NCCL: build with `--features nccl`");
    }
    let groups = LocalGroup::new(devices.len());
    Ok(Transport::Host(groups.into_iter().map(Arc::new).collect()))
}

/// The NCCL group id: made here when this process holds rank 0 (and published for the other
/// processes), else read from where that process published it.
#[cfg(feature = "nccl")]
fn group_id(p: &Placement) -> Result<candle_core::cuda_backend::cudarc::nccl::safe::Id> {
    use crate::parallel::placement::{publish_id, read_id, ID_BYTES};
    use candle_core::cuda_backend::cudarc::nccl::safe::Id;
    if !p.spans_processes() {
        return Ok(crate::parallel::nccl::new_id()?);
    }
    let bytes = if p.holds_rank_zero() && crate::compute::switches().nccl_id.is_none() {
        let id = crate::parallel::nccl::new_id()?;
        let mut bytes = [0u8; ID_BYTES];
        for (b, c) in bytes.iter_mut().zip(id.internal()) {
            *b = *c as u8;
        }
        publish_id(p, &bytes)?;
        bytes
    } else {
        read_id(p, std::time::Duration::from_secs(600))?
    };
    Ok(Id::uninit(bytes.map(|b| b as std::ffi::c_char)))
}

type Joined = (Arc<dyn Communicator>, Option<Arc<LocalGroup>>);

/// Aborts its group when dropped armed (a rank that returned an error or panicked).
struct AbortOnDrop(Option<Arc<LocalGroup>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(group) = &self.0 {
            group.abort();
        }
    }
}

fn join(t: &Transport, local: usize, p: &Placement, dev: &Device) -> Result<Joined> {
    let _ = (p, dev);
    match t {
        Transport::Host(groups) => Ok((groups[local].clone(), Some(groups[local].clone()))),
        #[cfg(feature = "nccl")]
        Transport::Nccl(id) => {
            let rank = p.first_rank + local;
            let g = crate::parallel::nccl::NcclGroup::join(dev, rank, p.world, *id)?;
            Ok((Arc::new(g), None))
        }
    }
}

/// Runs `f(shard, device)` for each of this process's ranks (`placement`), each on its own
/// thread (on this one for a single rank), and returns the first one's result. With host transport a rank that fails makes the others'
/// collectives fail too, so that none waits forever; the error returned is the first failing
/// rank's own. (NCCL has no such abort: a rank that fails there can leave the others waiting
/// until Ctrl-C.)
pub fn run_ranks<T: Send>(
    devices: &[Device],
    placement: &Placement,
    f: impl Fn(Shard, &Device) -> Result<T> + Sync,
) -> Result<T> {
    if placement.world == 1 {
        return f(Shard::single(), &devices[0]);
    }
    let world = placement.world;
    let local = devices.len();
    let transport = transport(devices, placement)?;
    let (f, transport) = (&f, &transport);
    let mut results: Vec<Result<T>> = std::thread::scope(|s| {
        let threads: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(rank, dev)| {
                std::thread::Builder::new()
                    .name(format!("movq-rank-{rank}"))
                    .spawn_scoped(s, move || {
                        let (comm, abort) = join(transport, rank, placement, dev)?;
                        // aborts the group if this rank fails or panics
                        let mut guard = AbortOnDrop(abort);
                        let out = on_own_threads(dev, local, || f(Shard::new(comm, dev), dev));
                        if out.is_ok() {
                            guard.0 = None;
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
    if placement.spans_processes() && placement.holds_rank_zero() {
        // a later run must not read this run's id
        if let Some(file) = &placement.id_file {
            let _ = std::fs::remove_file(file);
        }
    }
    if let Some(i) = results.iter().position(own_error) {
        let e = results.swap_remove(i).err().expect("an error");
        let rank = placement.first_rank + i;
        return Err(e.context(format!("rank {rank} of {world}")));
    }
    results.swap_remove(0)
}

/// Runs `f` for one of this process's `local` ranks: a CPU rank in a thread pool of its own
/// with its share of the cores, so that the ranks' parallel passes do not queue behind each
/// other's in the one global pool; a GPU rank as it is.
fn on_own_threads<T: Send>(
    dev: &Device,
    local: usize,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    if !dev.is_cpu() {
        return f();
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cpu_threads_per_rank(local))
        .thread_name(|i| format!("movq-cpu-{i}"))
        .build()?;
    pool.install(f)
}

/// The threads of each of `local` CPU ranks: the process's CPU threads (`RAYON_NUM_THREADS`,
/// else one per core: [`crate::compute::configure_cpu_threads`]) shared out, at least one.
pub fn cpu_threads_per_rank(local: usize) -> usize {
    (rayon::current_num_threads() / local.max(1)).max(1)
}
