//! The entropy penalty on code usage (`quantizer.entropy_weight`), as in MaskGIT's and MAGVIT's
//! tokenizers: soft assignments `p(k | e) = softmax_k(−‖e − c_k‖² / τ)` of each encoder vector
//! to the codes; the penalty is the mean per-vector entropy (low when each vector clearly picks
//! one code) minus the entropy of the mean assignment (high when the batch spreads over the whole
//! codebook): `mean_n H(p(·|e_n)) − H(mean_n p(·|e_n))`. Its gradient reaches the encoder and
//! the codebook. Computed over the vectors of one forward pass (a rank's micro-batch).

use candle_core::{Result, Tensor, D};
use candle_nn::ops::log_softmax;

/// The penalty for vectors `e` `[N, d]` against the codebook `[K, d]` at temperature `tau`.
pub fn entropy_penalty(e: &Tensor, codebook: &Tensor, tau: f64) -> Result<Tensor> {
    // ‖e − c‖² = ‖e‖² − 2·e·c + ‖c‖²
    let e_sq = e.sqr()?.sum_keepdim(D::Minus1)?; // [N, 1]
    let c_sq = codebook.sqr()?.sum(D::Minus1)?.unsqueeze(0)?; // [1, K]
    let dist = e_sq
        .broadcast_add(&c_sq)?
        .broadcast_sub(&(e.matmul(&codebook.t()?)? * 2.0)?)?;
    let log_p = log_softmax(&(dist * (-1.0 / tau))?, D::Minus1)?;
    let p = log_p.exp()?;
    let per_vector = (&p * &log_p)?.sum(D::Minus1)?.neg()?.mean_all()?;
    let mean_p = p.mean(0)?;
    let usage = (&mean_p * (mean_p.clone() + 1e-12)?.log()?)?
        .sum_all()?
        .neg()?;
    per_vector - usage
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The penalty computed directly in f64 (the reference for values and finite differences).
    fn reference(e: &[f64], c: &[f64], d: usize, tau: f64) -> f64 {
        let (n, k) = (e.len() / d, c.len() / d);
        let mut mean = vec![0.0; k];
        let mut per = 0.0;
        for i in 0..n {
            let logits: Vec<f64> = (0..k)
                .map(|j| {
                    let dist: f64 = (0..d).map(|t| (e[i * d + t] - c[j * d + t]).powi(2)).sum();
                    -dist / tau
                })
                .collect();
            let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
            let p: Vec<f64> = logits.iter().map(|l| (l - m).exp() / z).collect();
            per -= p.iter().map(|x| x * x.ln()).sum::<f64>() / n as f64;
            for j in 0..k {
                mean[j] += p[j] / n as f64;
            }
        }
        per + mean.iter().map(|x| x * (x + 1e-12).ln()).sum::<f64>()
    }

    #[test]
    fn the_penalty_and_its_gradients_match_a_direct_computation() {
        let dev = Device::Cpu;
        let (n, k, d, tau) = (6, 4, 3, 0.7);
        let vals = |len: usize, seed: u64| -> Vec<f64> {
            (0..len)
                .map(|i| (((i as u64 * 2654435761 + seed * 7919) % 1000) as f64 / 1000.0) - 0.5)
                .collect()
        };
        let (ev, cv) = (vals(n * d, 1), vals(k * d, 2));
        let e = Var::from_vec(ev.clone(), (n, d), &dev).unwrap();
        let c = Var::from_vec(cv.clone(), (k, d), &dev).unwrap();
        let penalty = entropy_penalty(e.as_tensor(), c.as_tensor(), tau).unwrap();
        let value = penalty.to_scalar::<f64>().unwrap();
        assert!((value - reference(&ev, &cv, d, tau)).abs() < 1e-10);
        let grads = penalty.backward().unwrap();
        // central differences of the reference, for every input of both tensors
        let h = 1e-6;
        for (var, base, is_e) in [(&e, &ev, true), (&c, &cv, false)] {
            let got: Vec<f64> = grads
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for i in 0..base.len() {
                let at = |delta: f64| {
                    let mut v = base.clone();
                    v[i] += delta;
                    if is_e {
                        reference(&v, &cv, d, tau)
                    } else {
                        reference(&ev, &v, d, tau)
                    }
                };
                let want = (at(h) - at(-h)) / (2.0 * h);
                assert!(
                    (got[i] - want).abs() < 1e-6,
                    "{} {i}: {} against {want}",
                    if is_e { "e" } else { "codebook" },
                    got[i]
                );
            }
        }
    }
}
