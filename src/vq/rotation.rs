//! The rotation trick (Fifty et al., 2024, "Restructuring Vector Quantization with the Rotation
//! Trick"): instead of copying the gradient at the code `q` straight through to the encoder's
//! vector `e` (the straight-through estimator), the forward pass computes `q` as
//! `λ·R·e`, with `R` the rotation taking `e`'s direction to `q`'s and `λ = ‖q‖/‖e‖` both
//! treated as constants. The value is `q`; the gradient reaching `e` is `λ·Rᵀ·g`, so it keeps the
//! angle between `e` and `q`: points of one Voronoi cell that lie on different sides of the code
//! are pushed apart or together instead of all moving alike.
//!
//! `R = I − 2·r·rᵀ + 2·q̂·êᵀ` with `r = (ê + q̂)/‖ê + q̂‖`: the rotation in the plane of `ê` and
//! `q̂` that takes `ê` to `q̂` (identity on the rest), applied without forming the matrix:
//! `R·e = e − 2·r·(r·e) + 2·q̂·(ê·e)`.

use candle_core::{Result, Tensor, D};

/// Guards the divisions against zero vectors (and `e = −q`, where `r` is undefined).
const EPS: f64 = 1e-12;

/// `e` `[N, d]` rotated and rescaled onto `q` `[N, d]` row by row: the value is `q` (up to
/// rounding), the gradient reaching `e` is `λ·Rᵀ·g`. `q` receives no gradient.
pub fn rotate_onto(e: &Tensor, q: &Tensor) -> Result<Tensor> {
    let q = q.detach();
    let norm = |t: &Tensor| -> Result<Tensor> { t.sqr()?.sum_keepdim(D::Minus1)?.sqrt()? + EPS };
    let e_const = e.detach();
    let (e_norm, q_norm) = (norm(&e_const)?, norm(&q)?);
    let e_hat = e_const.broadcast_div(&e_norm)?;
    let q_hat = q.broadcast_div(&q_norm)?;
    let sum = (&e_hat + &q_hat)?;
    let r = sum.broadcast_div(&norm(&sum)?)?;
    let lambda = q_norm.broadcast_div(&e_norm)?;
    // R·e with R, λ constant: e − 2·r·(r·e) + 2·q̂·(ê·e)
    let r_dot = (e * &r)?.sum_keepdim(D::Minus1)?;
    let e_dot = (e * &e_hat)?.sum_keepdim(D::Minus1)?;
    let rotated =
        ((e - (r.broadcast_mul(&r_dot)? * 2.0)?)? + (q_hat.broadcast_mul(&e_dot)? * 2.0)?)?;
    rotated.broadcast_mul(&lambda)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// `λ·R` of one row, as an explicit `d × d` matrix in f64.
    fn explicit(e: &[f64], q: &[f64]) -> Vec<Vec<f64>> {
        let n = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let (ne, nq) = (n(e), n(q));
        let eh: Vec<f64> = e.iter().map(|x| x / ne).collect();
        let qh: Vec<f64> = q.iter().map(|x| x / nq).collect();
        let s: Vec<f64> = eh.iter().zip(&qh).map(|(a, b)| a + b).collect();
        let ns = n(&s);
        let r: Vec<f64> = s.iter().map(|x| x / ns).collect();
        let d = e.len();
        (0..d)
            .map(|i| {
                (0..d)
                    .map(|j| {
                        let id = if i == j { 1.0 } else { 0.0 };
                        nq / ne * (id - 2.0 * r[i] * r[j] + 2.0 * qh[i] * eh[j])
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_value_is_the_code_and_the_gradient_is_the_transposed_rotation() {
        let dev = Device::Cpu;
        let (n, d) = (5, 4);
        let vals = |seed: u64| -> Vec<f64> {
            (0..n * d)
                .map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f64 / 500.0) - 1.0)
                .collect()
        };
        let (ev, qv, gv) = (vals(1), vals(2), vals(3));
        let e = Var::from_vec(ev.clone(), (n, d), &dev).unwrap();
        let q = Tensor::from_vec(qv.clone(), (n, d), &dev).unwrap();
        let g = Tensor::from_vec(gv.clone(), (n, d), &dev).unwrap();
        let out = rotate_onto(e.as_tensor(), &q).unwrap();
        // forward: the code itself
        let diff = (&out - &q).unwrap().abs().unwrap().max_all().unwrap();
        let diff = diff.to_scalar::<f64>().unwrap();
        assert!(diff < 1e-9, "forward differs from the code by {diff}");
        // backward of Σ g·out: λ·Rᵀ·g per row
        let grads = (&out * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let got: Vec<f64> = grads
            .get(e.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for row in 0..n {
            let m = explicit(&ev[row * d..][..d], &qv[row * d..][..d]);
            for j in 0..d {
                let want: f64 = (0..d).map(|i| m[i][j] * gv[row * d + i]).sum();
                assert!(
                    (got[row * d + j] - want).abs() < 1e-9,
                    "row {row} component {j}: {} against {want}",
                    got[row * d + j]
                );
            }
        }
        // unlike the straight-through estimator's g itself
        let ste_like = got.iter().zip(&gv).all(|(a, b)| (a - b).abs() < 1e-6);
        assert!(!ste_like);
        // f32 works and an opposite pair stays finite
        let e = Tensor::new(&[[1f32, 0.0]], &dev).unwrap();
        let q = Tensor::new(&[[-2f32, 0.0]], &dev).unwrap();
        let out = rotate_onto(&e, &q).unwrap();
        assert_eq!(out.dtype(), DType::F32);
        assert!(out.to_vec2::<f32>().unwrap()[0]
            .iter()
            .all(|v| v.is_finite()));
    }
}
