//! Deterministic random streams derived from the run seed.
//!
//! Every random decision (augmentation of a sample, masking at a step, a dead-code restart) draws
//! from a generator seeded by `(seed, purpose, counters)`, never from a long-lived stream, so a
//! resumed run makes exactly the decisions the uninterrupted run would have made.

use rand::rngs::StdRng;
use rand::SeedableRng;

/// SplitMix64 finaliser: a well-mixed 64-bit hash of `x`.
pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Hash of a sequence of words.
pub fn mix(words: &[u64]) -> u64 {
    mix_iter(words.iter().copied())
}

/// [`mix`] of words produced one at a time (nothing is collected).
pub fn mix_iter(words: impl IntoIterator<Item = u64>) -> u64 {
    words
        .into_iter()
        .fold(0x5EED, |acc, w| splitmix(acc ^ splitmix(w)))
}

/// Purposes, so different uses of the same counters never share a stream.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Init = 1,
    Shuffle = 2,
    Augment = 3,
    Step = 4,
    Data = 5,
    Sample = 6,
}

/// A generator for `purpose` at the given counters.
pub fn rng_for(seed: u64, purpose: Stream, counters: &[u64]) -> StdRng {
    let mut words = vec![seed, purpose as u64];
    words.extend_from_slice(counters);
    StdRng::seed_from_u64(mix(&words))
}
