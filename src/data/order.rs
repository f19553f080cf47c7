//! The order in which training samples are visited.
//!
//! Stream position `p = step·B + k` maps to item `perm_e[p mod n]` of epoch `e = p div n`, where
//! `perm_e` is a shuffle of the items seeded by `(seed, e)`. The order is a pure function of the
//! seed and the position, so a resumed run visits exactly what the uninterrupted run would have.

use rand::seq::SliceRandom;

use crate::rng::{rng_for, Stream};

/// One visit: the item, its epoch and its slot in that epoch (for per-sample randomness).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visit {
    pub item: usize,
    pub epoch: u64,
    pub slot: u64,
}

#[derive(Debug, Clone)]
pub struct SampleOrder {
    items: Vec<usize>,
    seed: u64,
    epoch: Option<(u64, Vec<usize>)>,
}

impl SampleOrder {
    /// `items` must not be empty.
    pub fn new(items: Vec<usize>, seed: u64) -> Self {
        Self {
            items,
            seed,
            epoch: None,
        }
    }

    /// The visit at stream position `p`.
    pub fn at(&mut self, p: u64) -> Visit {
        let n = self.items.len() as u64;
        let (epoch, slot) = (p / n, p % n);
        let perm = match &mut self.epoch {
            Some((e, perm)) if *e == epoch => perm,
            cached => {
                let mut perm = self.items.clone();
                perm.shuffle(&mut rng_for(self.seed, Stream::Shuffle, &[epoch]));
                &mut cached.insert((epoch, perm)).1
            }
        };
        Visit {
            item: perm[slot as usize],
            epoch,
            slot,
        }
    }

    /// The visits of training step `step` with batches of `batch` samples.
    pub fn batch(&mut self, step: usize, batch: usize) -> Vec<Visit> {
        self.rows(step, batch, 0..batch)
    }

    /// Rows `rows` of training step `step`'s batch of `batch` samples: one rank's shard. The
    /// order does not depend on how the batch is split, so a run resumed on another number of
    /// ranks visits what it would have visited.
    pub fn rows(&mut self, step: usize, batch: usize, rows: std::ops::Range<usize>) -> Vec<Visit> {
        let base = step as u64 * batch as u64;
        rows.map(|k| self.at(base + k as u64)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_epoch_visits_each_item_once() {
        let mut o = SampleOrder::new((10..17).collect(), 3);
        for e in 0..3u64 {
            let mut seen: Vec<usize> = (0..7).map(|k| o.at(e * 7 + k).item).collect();
            seen.sort_unstable();
            assert_eq!(seen, (10..17).collect::<Vec<_>>());
        }
        // a fresh order at a later position agrees (resume)
        let mut fresh = SampleOrder::new((10..17).collect(), 3);
        assert_eq!(fresh.at(15), o.at(15));
        assert_ne!(o.batch(0, 7), o.batch(1, 7));
    }

    #[test]
    fn shards_are_disjoint_and_make_up_the_batch() {
        let mut o = SampleOrder::new((0..23).collect(), 5);
        for step in 0..6 {
            let whole = o.batch(step, 8);
            for world in [1, 2, 4, 8] {
                let per = 8 / world;
                let joined: Vec<Visit> = (0..world)
                    .flat_map(|r| o.rows(step, 8, r * per..(r + 1) * per))
                    .collect();
                assert_eq!(joined, whole, "step {step}, {world} ranks");
            }
        }
    }
}
