//! Gradient accumulation (`train.accumulate`): each rank's rows of a batch run as N
//! micro-batches, forward and backward one after the other, their gradients summed before the
//! one optimizer step. Every loss is weighted by its micro-batch's share of the whole batch, so
//! the sum is the whole batch's gradient (what one batch of N·B gives, within rounding).

use std::ops::Range;

use anyhow::Result;

use crate::train::optim::Grads;

/// `rows` split into `n` consecutive micro-batches whose sizes differ by at most one (fewer
/// when there are fewer rows than `n`).
pub fn micro_batches(rows: usize, n: usize) -> Vec<Range<usize>> {
    let n = n.clamp(1, rows.max(1));
    let (size, extra) = (rows / n, rows % n);
    let mut start = 0;
    (0..n)
        .map(|i| {
            let len = size + usize::from(i < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .collect()
}

/// A running sum of gradients.
#[derive(Default)]
pub struct GradSum(Option<Grads>);

impl GradSum {
    pub fn add(&mut self, g: Grads) -> Result<()> {
        self.0 = Some(match self.0.take() {
            None => g,
            Some(acc) => acc.add_scaled(&g, 1.0)?,
        });
        Ok(())
    }

    /// The sum; `None` when nothing was added.
    pub fn total(self) -> Option<Grads> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_batches_cover_the_rows_in_order() {
        assert_eq!(micro_batches(8, 1), vec![0..8]);
        assert_eq!(micro_batches(8, 4), vec![0..2, 2..4, 4..6, 6..8]);
        assert_eq!(micro_batches(7, 3), vec![0..3, 3..5, 5..7]);
        assert_eq!(micro_batches(2, 4), vec![0..1, 1..2]);
    }
}
