//! Learning-rate schedule: linear warmup, then cosine decay to `min_ratio · peak`.

/// Learning rate for the (0-based) `step` of `total`.
pub fn lr_at(step: usize, total: usize, peak: f64, warmup: usize, min_ratio: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let decay_steps = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / decay_steps as f64).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    peak * (min_ratio + (1.0 - min_ratio) * cosine)
}

#[cfg(test)]
mod tests {
    use super::lr_at;

    #[test]
    fn warmup_then_cosine() {
        assert!((lr_at(0, 100, 1.0, 10, 0.1) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, 100, 1.0, 10, 0.1) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, 100, 1.0, 10, 0.1) - 1.0).abs() < 1e-12);
        assert!((lr_at(100, 100, 1.0, 10, 0.1) - 0.1).abs() < 1e-12);
        let mid = lr_at(55, 100, 1.0, 10, 0.0);
        assert!((mid - 0.5).abs() < 1e-12, "{mid}");
        // min_ratio 1 = constant after warmup
        assert_eq!(lr_at(70, 100, 2.0, 0, 1.0), 2.0);
    }
}
