//! Ranks on the GPUs of one host connected by NCCL (the `nccl` feature): all-reduce and
//! broadcast run on the device, on each rank's own stream, without a trip through host memory.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::CudaView;
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::cuda_backend::CudaStorageSlice;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor,
};

use crate::parallel::Communicator;

/// One rank's NCCL communicator.
pub struct NcclGroup {
    comm: Comm,
}

// SAFETY: a rank's communicator is created on that rank's thread and only used from there
// (the Shard that holds it never leaves the thread); NCCL orders its calls on the rank's stream.
unsafe impl Send for NcclGroup {}
unsafe impl Sync for NcclGroup {}

/// A fresh group id (made once, handed to every rank).
pub fn new_id() -> Result<Id> {
    Id::new().map_err(|e| candle_core::Error::Msg(format!("NCCL: cannot make a group id: {e:?}")))
}

impl NcclGroup {
    /// Rank `rank` of `world` on `dev` (a CUDA device); blocks until every rank has joined.
    pub fn join(dev: &Device, rank: usize, world: usize, id: Id) -> Result<Self> {
        let Device::Cuda(cuda) = dev else {
            candle_core::bail!("NCCL ranks run on CUDA devices, not {dev:?}");
        };
        let comm = Comm::from_rank(cuda.cuda_stream(), rank, world, id).map_err(|e| {
            candle_core::Error::Msg(format!("NCCL: rank {rank} of {world} cannot join: {e:?}"))
        })?;
        Ok(Self { comm })
    }
}

/// A collective on one f32 tensor, as a custom op (it produces a fresh device buffer).
enum Collective<'a> {
    Sum(&'a Comm),
    Broadcast(&'a Comm, usize),
}

impl CustomOp1 for Collective<'_> {
    fn name(&self) -> &'static str {
        "movq-nccl"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("NCCL collectives run on CUDA tensors only")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let CudaStorageSlice::F32(x) = &s.slice else {
            candle_core::bail!("NCCL collectives here take f32 tensors");
        };
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("NCCL collectives take contiguous tensors");
        };
        let x: CudaView<'_, f32> = x.slice(a..b);
        let dev = s.device().clone();
        // SAFETY: NCCL writes every element of the result.
        let mut out = unsafe { dev.alloc::<f32>(b - a)? };
        let failed = |e| candle_core::Error::Msg(format!("NCCL: {e:?}"));
        match self {
            Collective::Sum(c) => {
                c.all_reduce(&x, &mut out, &ReduceOp::Sum).map_err(failed)?;
            }
            Collective::Broadcast(c, root) => {
                let send = (c.rank() == *root).then_some(&x);
                c.broadcast(send, &mut out, *root as i32).map_err(failed)?;
            }
        }
        Ok((
            CudaStorage {
                slice: CudaStorageSlice::F32(out),
                device: dev,
            },
            l.shape().clone(),
        ))
    }
}

impl NcclGroup {
    fn run(&self, t: &Tensor, op: &Collective<'_>) -> Result<Tensor> {
        let dt = t.dtype();
        t.to_dtype(DType::F32)?
            .contiguous()?
            .apply_op1_no_bwd(op)?
            .to_dtype(dt)
    }
}

impl Communicator for NcclGroup {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn world(&self) -> usize {
        self.comm.world_size()
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        self.run(t, &Collective::Sum(&self.comm))
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        if root >= self.world() {
            candle_core::bail!("broadcast from rank {root} of {}", self.world());
        }
        self.run(t, &Collective::Broadcast(&self.comm, root))
    }
}
