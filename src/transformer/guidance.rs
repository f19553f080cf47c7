//! How classifier-free guidance is spread over MaskGIT's decoding steps.
//!
//! With a constant schedule every step mixes the conditional and unconditional logits at the
//! full scale s. With a linear one, step t of T (0-based) uses s·(t+1)/T, as MUSE does: the
//! first steps, which settle most of the grid, are guided least, and the last at s. On the
//! quickstart's shapes a constant scale of 4 let some classes' colour spread over the whole
//! image (samples with no recognisable shape); see docs/quickstart.md.

/// The guidance scale's course over the decoding steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GuidanceSchedule {
    /// The full scale at every step.
    #[default]
    Constant,
    /// `s·(t+1)/T` at step `t` of `T`: from `s/T` up to `s`.
    Linear,
}

impl GuidanceSchedule {
    /// The guidance scale at step `t` of `steps`, for the scale `scale`.
    pub fn scale_at(self, scale: f64, t: usize, steps: usize) -> f64 {
        match self {
            GuidanceSchedule::Constant => scale,
            GuidanceSchedule::Linear => scale * (t + 1).min(steps) as f64 / steps.max(1) as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_keeps_the_scale_and_linear_rises_to_it() {
        for t in 0..12 {
            assert_eq!(GuidanceSchedule::Constant.scale_at(4.0, t, 12), 4.0);
        }
        let lin: Vec<f64> = (0..4)
            .map(|t| GuidanceSchedule::Linear.scale_at(4.0, t, 4))
            .collect();
        assert_eq!(lin, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(GuidanceSchedule::Linear.scale_at(3.0, 0, 1), 3.0);
    }
}
