//! Data-parallel training: ranks that each take a shard of every batch and add up their
//! gradients before one identical optimizer step.
//!
//! A [`Communicator`] is one rank's handle on its group. [`LocalGroup`] connects ranks that are
//! threads of this process (any device: each reduction goes through host memory, summed in rank
//! order, so results are bitwise the same on every rank and from run to run); it is what the CPU
//! tests and `--ranks N` use. On the CPU each rank runs its parallel passes in a thread pool of
//! its own, on its share of the cores: on two cores `--ranks 2` trains the quickstart's
//! transformer 1.23× as fast as one rank, whose small matrices keep two threads waiting on each
//! other.
//!
//! The convention that makes a sharded step equal the whole-batch step: each rank scales its
//! loss to its share of the whole batch's loss (a stage's mean over `B/W` samples is multiplied
//! by `1/W`; the transformer weights each row by its share of the batch's masked tokens), and
//! [`all_reduce_grads`] *sums* the gradients.

pub mod launch;
pub mod local;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod placement;

pub use launch::{cpu_threads_per_rank, rank_devices, run_ranks};
pub use local::LocalGroup;
pub use placement::Placement;

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};

use crate::train::optim::Grads;

/// One rank's handle on a group of `world()` ranks. Every rank must make the same calls in the
/// same order, with tensors of the same shape and dtype (each call is a collective).
pub trait Communicator: Send + Sync {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// The elementwise sum over the ranks of `t`, on `t`'s device.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;
    /// Rank `root`'s `t`, on every rank.
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor>;
}

/// This rank's place in the group (rank 0 of 1 without one) and its device.
#[derive(Clone)]
pub struct Shard {
    pub comm: Option<Arc<dyn Communicator>>,
    device: Device,
}

impl Shard {
    /// The single-process case.
    pub fn single() -> Self {
        Self {
            comm: None,
            device: Device::Cpu,
        }
    }

    /// A rank of `comm`'s group, computing on `device`.
    pub fn new(comm: Arc<dyn Communicator>, device: &Device) -> Self {
        Self {
            comm: Some(comm),
            device: device.clone(),
        }
    }

    pub fn rank(&self) -> usize {
        self.comm.as_ref().map_or(0, |c| c.rank())
    }

    pub fn world(&self) -> usize {
        self.comm.as_ref().map_or(1, |c| c.world())
    }

    /// Whether this rank writes checkpoints, metrics and progress.
    pub fn is_main(&self) -> bool {
        self.rank() == 0
    }

    /// This rank's rows of a batch of `batch` rows.
    pub fn rows(&self, batch: usize) -> std::ops::Range<usize> {
        let per = batch / self.world();
        self.rank() * per..(self.rank() + 1) * per
    }

    /// The sums over the ranks of a few numbers (metrics, counts); the numbers themselves
    /// without a group.
    pub fn sum(&self, values: &[f64]) -> Result<Vec<f64>> {
        match &self.comm {
            None => Ok(values.to_vec()),
            Some(c) => {
                let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
                let t = c.all_reduce_sum(&Tensor::new(v.as_slice(), &self.device)?)?;
                Ok(t.to_vec1::<f32>()?.into_iter().map(f64::from).collect())
            }
        }
    }

    /// Rank `root`'s numbers, on every rank (exact up to 2²⁴).
    pub fn broadcast(&self, values: &[f64], root: usize) -> Result<Vec<f64>> {
        match &self.comm {
            None => Ok(values.to_vec()),
            Some(c) => {
                let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
                let t = c.broadcast(&Tensor::new(v.as_slice(), &self.device)?, root)?;
                Ok(t.to_vec1::<f32>()?.into_iter().map(f64::from).collect())
            }
        }
    }

    /// The elementwise sum over the ranks of `t`; `t` itself without a group.
    pub fn sum_tensor(&self, t: &Tensor) -> Result<Tensor> {
        match &self.comm {
            None => Ok(t.clone()),
            Some(c) => c.all_reduce_sum(t),
        }
    }

    /// Rank `root`'s `t` on every rank; `t` itself without a group.
    pub fn broadcast_tensor(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        match &self.comm {
            None => Ok(t.clone()),
            Some(c) => c.broadcast(t, root),
        }
    }

    /// Whether any rank says yes (every rank gets the same answer).
    pub fn any(&self, yes: bool) -> Result<bool> {
        Ok(self.sum(&[yes as u8 as f64])?[0] > 0.0)
    }
}

/// Checks that a batch of `batch` samples splits evenly over `world` ranks, and each rank's rows
/// into `accumulate` micro-batches.
pub fn check_batch(batch: usize, world: usize, accumulate: usize) -> anyhow::Result<()> {
    if world == 0 || !batch.is_multiple_of(world) || batch < world {
        anyhow::bail!(
            "the batch size {batch} does not split evenly over {world} ranks; pick a multiple of {world}"
        );
    }
    if !(batch / world).is_multiple_of(accumulate.max(1)) {
        anyhow::bail!(
            "each rank's {} rows of the batch size {batch} do not split into train.accumulate = \
             {accumulate} micro-batches; pick a batch size that is a multiple of {}",
            batch / world,
            world * accumulate
        );
    }
    Ok(())
}

/// The gradients summed over the ranks, in one flat f32 all-reduce (after a small one that
/// checks that every rank has gradients for the same parameters). Without a group: `grads` as
/// they are.
pub fn all_reduce_grads(shard: &Shard, grads: Grads) -> Result<Grads> {
    if shard.world() == 1 {
        return Ok(grads);
    }
    let present: Vec<f64> = grads.0.iter().map(|g| g.is_some() as u8 as f64).collect();
    let counts = shard.sum(&present)?;
    let world = shard.world() as f64;
    if let Some(i) = counts
        .iter()
        .zip(&present)
        .position(|(&c, &p)| c != p * world)
    {
        candle_core::bail!(
            "parameter {i} has a gradient on some ranks only: every rank must run the same model"
        );
    }
    let flat: Vec<Tensor> = grads
        .0
        .iter()
        .flatten()
        .map(|g| g.to_dtype(DType::F32)?.flatten_all())
        .collect::<Result<_>>()?;
    if flat.is_empty() {
        return Ok(grads);
    }
    let summed = shard.sum_tensor(&Tensor::cat(&flat, 0)?)?;
    let mut at = 0;
    let out = grads
        .0
        .iter()
        .map(|g| {
            g.as_ref()
                .map(|g| {
                    let n = g.elem_count();
                    let t = summed.narrow(0, at, n)?.reshape(g.dims())?;
                    at += n;
                    t.to_dtype(g.dtype())
                })
                .transpose()
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Grads(out))
}
