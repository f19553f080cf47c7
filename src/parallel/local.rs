//! Ranks that are threads of one process, meeting in shared memory.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use candle_core::{DType, Result, Tensor};

use crate::parallel::Communicator;

/// What a collective was asked to do (every rank must ask the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sum,
    Broadcast(usize),
}

/// One collective in progress: each rank's contribution, then the result for all.
#[derive(Default)]
struct Round {
    /// Number of collectives completed so far.
    generation: u64,
    kind: Option<Kind>,
    deposits: Vec<Option<Vec<f32>>>,
    result: Arc<Vec<f32>>,
    /// A mismatch (lengths, kinds) seen in the round in progress.
    pending_error: Option<String>,
    /// The last completed round's mismatch, with that round's generation after completion:
    /// every rank of that round reports it.
    error: Option<(u64, String)>,
}

struct Shared {
    world: usize,
    round: Mutex<Round>,
    done: Condvar,
    /// Set when a rank gave up: the others stop waiting for it.
    aborted: AtomicBool,
}

/// What a rank's collective reports once another rank has given up.
pub const ABORTED: &str = "another rank stopped with an error";

/// A group of `world` ranks in this process; [`LocalGroup::new`] gives one handle per rank, to
/// be moved into that rank's thread.
pub struct LocalGroup {
    rank: usize,
    shared: Arc<Shared>,
}

/// How long a rank waits for the others before it gives up (longer than rank 0's validation
/// and checkpoints take; a rank that failed or panicked aborts the group at once instead).
const PATIENCE: Duration = Duration::from_secs(3600);

impl LocalGroup {
    /// Handles for ranks `0..world`.
    pub fn new(world: usize) -> Vec<LocalGroup> {
        let shared = Arc::new(Shared {
            world,
            round: Mutex::new(Round {
                deposits: vec![None; world],
                ..Default::default()
            }),
            done: Condvar::new(),
            aborted: AtomicBool::new(false),
        });
        (0..world)
            .map(|rank| LocalGroup {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }

    /// Gives up on the group (this rank failed): every rank's pending and later collectives
    /// return an error instead of waiting for it.
    pub fn abort(&self) {
        let _guard = self.shared.round.lock();
        self.shared.aborted.store(true, Ordering::SeqCst);
        self.shared.done.notify_all();
    }

    fn collective(&self, kind: Kind, values: Vec<f32>) -> Result<Vec<f32>> {
        let sh = &self.shared;
        let aborted = || sh.aborted.load(Ordering::SeqCst);
        let mut round = sh
            .round
            .lock()
            .expect("a rank panicked inside a collective");
        if aborted() {
            candle_core::bail!("{ABORTED}");
        }
        if round.kind.is_some_and(|k| k != kind) {
            round.pending_error = Some(format!(
                "ranks disagree on the collective: {:?} and {kind:?}",
                round.kind
            ));
        }
        round.kind = Some(kind);
        round.deposits[self.rank] = Some(values);
        let generation = round.generation;
        if round.deposits.iter().all(Option::is_some) {
            // the last rank to arrive combines, in rank order
            let deposits: Vec<Vec<f32>> = round
                .deposits
                .iter_mut()
                .map(|d| d.take().unwrap_or_default())
                .collect();
            let len = deposits[0].len();
            if round.pending_error.is_none() && deposits.iter().any(|d| d.len() != len) {
                let lens: Vec<usize> = deposits.iter().map(Vec::len).collect();
                round.pending_error =
                    Some(format!("ranks sent buffers of different lengths {lens:?}"));
            }
            let result = match kind {
                Kind::Sum => {
                    let mut acc = vec![0f32; len];
                    for d in deposits.iter().filter(|d| d.len() == len) {
                        for (a, v) in acc.iter_mut().zip(d) {
                            *a += v;
                        }
                    }
                    acc
                }
                Kind::Broadcast(root) => deposits.get(root).cloned().unwrap_or_default(),
            };
            round.result = Arc::new(result);
            round.kind = None;
            round.generation += 1;
            round.error = round.pending_error.take().map(|e| (generation + 1, e));
            sh.done.notify_all();
        } else {
            let (r, timeout) = sh
                .done
                .wait_timeout_while(round, PATIENCE, |r| {
                    r.generation == generation && !aborted()
                })
                .expect("a rank panicked inside a collective");
            round = r;
            if round.generation == generation && aborted() {
                candle_core::bail!("{ABORTED}");
            }
            if timeout.timed_out() {
                candle_core::bail!(
                    "rank {} waited {} s for the other ranks: one of them stopped",
                    self.rank,
                    PATIENCE.as_secs()
                );
            }
        }
        if let Some((g, e)) = &round.error {
            if *g == generation + 1 {
                let e = e.clone();
                candle_core::bail!("{e}");
            }
        }
        Ok(round.result.as_ref().clone())
    }
}

impl LocalGroup {
    /// `t` as f32 values, through `collective`, back as `t`'s shape, dtype and device.
    fn via_host(&self, t: &Tensor, kind: Kind) -> Result<Tensor> {
        let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let out = self.collective(kind, v)?;
        Tensor::from_vec(out, t.dims(), t.device())?.to_dtype(t.dtype())
    }
}

impl Communicator for LocalGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        self.via_host(t, Kind::Sum)
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        if root >= self.shared.world {
            candle_core::bail!("broadcast from rank {root} of {}", self.shared.world);
        }
        self.via_host(t, Kind::Broadcast(root))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_ranks<T: Send + 'static>(
        world: usize,
        f: impl Fn(LocalGroup) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let f = Arc::new(f);
        let handles: Vec<_> = LocalGroup::new(world)
            .into_iter()
            .map(|g| {
                let f = f.clone();
                std::thread::spawn(move || f(g))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn sums_and_broadcasts_reach_every_rank() {
        let out = on_ranks(3, |g| {
            let r = g.rank() as f32;
            let mut seen = Vec::new();
            let cpu = candle_core::Device::Cpu;
            for round in 0..50 {
                let t = Tensor::new(&[r, r * 10.0 + round as f32], &cpu).unwrap();
                seen.push(g.all_reduce_sum(&t).unwrap().to_vec1::<f32>().unwrap());
                let t = Tensor::new(&[r + round as f32], &cpu).unwrap();
                let b = g.broadcast(&t, 1).unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(b, vec![1.0 + round as f32]);
            }
            seen
        });
        for ranks in &out {
            for (round, s) in ranks.iter().enumerate() {
                assert_eq!(s, &vec![3.0, 30.0 + 3.0 * round as f32]);
            }
        }
    }

    #[test]
    fn an_aborted_group_stops_waiting() {
        let out = on_ranks(3, |g| {
            if g.rank() == 2 {
                g.abort();
                return Err("rank 2 failed".to_string());
            }
            g.collective(Kind::Sum, vec![1.0])
                .map_err(|e| e.to_string())
        });
        assert_eq!(out[2], Err("rank 2 failed".to_string()));
        for r in &out[..2] {
            let e = r.as_ref().unwrap_err();
            assert!(e.starts_with(ABORTED), "{e}");
        }
    }

    #[test]
    fn mismatched_lengths_are_an_error_on_every_rank() {
        let out = on_ranks(2, |g| {
            let n = 1 + g.rank();
            g.collective(Kind::Sum, vec![1.0; n])
                .map_err(|e| e.to_string())
        });
        for r in out {
            let e = r.unwrap_err();
            assert!(e.contains("different lengths"), "{e}");
        }
    }
}
