//! Which masked tokens a MaskGIT step keeps.
//!
//! MaskGIT keeps the tokens the model is most confident of (plus annealed Gumbel noise), which
//! fills in one region — mostly easy background — before the next. The Halton order (Besnier et
//! al., ICLR 2025) fixes the order of positions in advance instead: positions are visited as the
//! 2-D Halton sequence (bases 2 and 3) first falls in their cells, so each step's tokens are
//! spread evenly over the grid and few of them are neighbours drawn at once.

use crate::transformer::tokens::TokenLayout;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenOrder {
    /// The most confident predictions first (MaskGIT).
    Confidence,
    /// A fixed order of positions, spread evenly over the grid (the Halton sequence).
    Halton,
}

/// The radical inverse of `i` in `base`: its digits mirrored about the point, in [0, 1).
fn radical_inverse(mut i: u64, base: u64) -> f64 {
    let (mut x, mut scale) = (0.0, 1.0 / base as f64);
    while i > 0 {
        x += (i % base) as f64 * scale;
        i /= base;
        scale /= base as f64;
    }
    x
}

/// The visiting order of an `h`×`w` grid: `ranks[p]` is when position `p` (row-major) is first
/// hit by the Halton points (row from base 2, column from base 3), 0 for the first.
pub fn halton_ranks(h: usize, w: usize) -> Vec<usize> {
    let n = h * w;
    let mut ranks = vec![usize::MAX; n];
    let mut next = 0;
    let mut i = 0u64;
    while next < n {
        let row = (radical_inverse(i, 2) * h as f64) as usize;
        let col = (radical_inverse(i, 3) * w as f64) as usize;
        let p = row.min(h - 1) * w + col.min(w - 1);
        if ranks[p] == usize::MAX {
            ranks[p] = next;
            next += 1;
        }
        i += 1;
    }
    ranks
}

/// A priority per sequence index for `order` (higher is kept earlier), or `None` for the
/// confidence order. Every channel of a position shares its turn, channel 0 first.
pub fn priorities(order: TokenOrder, layout: &TokenLayout) -> Option<Vec<f32>> {
    match order {
        TokenOrder::Confidence => None,
        TokenOrder::Halton => {
            let ranks = halton_ranks(layout.h, layout.w);
            let c = layout.channels;
            let mut prio = vec![0f32; layout.seq_len()];
            for (pos, &r) in ranks.iter().enumerate() {
                for ch in 0..c {
                    prio[layout.index(pos, ch)] = -((r * c + ch) as f32);
                }
            }
            Some(prio)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halton_ranks_visit_every_position_once() {
        for (h, w) in [(1, 1), (6, 6), (16, 16), (3, 5)] {
            let mut r = halton_ranks(h, w);
            r.sort_unstable();
            assert_eq!(r, (0..h * w).collect::<Vec<_>>());
        }
    }

    #[test]
    fn the_first_quarter_of_a_halton_order_covers_every_quadrant() {
        let r = halton_ranks(16, 16);
        let first: Vec<usize> = (0..256).filter(|&p| r[p] < 64).collect();
        for (qy, qx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            let n = first
                .iter()
                .filter(|&&p| (p / 16) / 8 == qy && (p % 16) / 8 == qx)
                .count();
            assert!(
                (12..=20).contains(&n),
                "quadrant ({qy},{qx}) holds {n} of 64"
            );
        }
    }
}
