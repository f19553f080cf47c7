//! Mask schedules γ: [0, 1] → [0, 1] (fraction still masked at time r), and MaskGIT's per-step
//! counts.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MaskSchedule {
    /// γ(r) = cos(πr/2)
    #[default]
    Cosine,
    /// γ(r) = 1 − r
    Linear,
    /// γ(r) = 1 − r²
    Square,
    /// γ(r) = 1 − r³
    Cubic,
}

impl MaskSchedule {
    pub fn gamma(self, r: f64) -> f64 {
        let r = r.clamp(0.0, 1.0);
        match self {
            MaskSchedule::Cosine => (std::f64::consts::FRAC_PI_2 * r).cos(),
            MaskSchedule::Linear => 1.0 - r,
            MaskSchedule::Square => 1.0 - r * r,
            MaskSchedule::Cubic => 1.0 - r * r * r,
        }
    }

    /// The time r at which γ(r) = `fraction`.
    pub fn inverse(self, fraction: f64) -> f64 {
        let m = fraction.clamp(0.0, 1.0);
        match self {
            MaskSchedule::Cosine => m.acos() / std::f64::consts::FRAC_PI_2,
            MaskSchedule::Linear => 1.0 - m,
            MaskSchedule::Square => (1.0 - m).sqrt(),
            MaskSchedule::Cubic => (1.0 - m).cbrt(),
        }
    }
}

/// How many of `len` tokens are still masked after each of `steps` steps, starting from
/// `masked` masked tokens: `⌊len·γ(τ_t)⌋` with `τ_t = r₀ + (1 − r₀)·(t+1)/T` where `γ(r₀)` is the
/// starting masked fraction (`r₀ = 0` for a fully masked start); at least one fewer than the step
/// before, and 0 after the last step.
pub fn masked_counts(
    len: usize,
    masked: usize,
    steps: usize,
    schedule: MaskSchedule,
) -> Vec<usize> {
    if masked == 0 || steps == 0 {
        return vec![0; steps];
    }
    let r0 = schedule.inverse(masked as f64 / len as f64);
    let mut prev = masked;
    (0..steps)
        .map(|t| {
            let n = if t + 1 == steps {
                0
            } else {
                let tau = r0 + (1.0 - r0) * (t + 1) as f64 / steps as f64;
                ((len as f64 * schedule.gamma(tau)).floor() as usize).min(prev.saturating_sub(1))
            };
            prev = n;
            n
        })
        .collect()
}
