//! SSIM as scikit-image computes it with `gaussian_weights=True, sigma=1.5,
//! use_sample_covariance=False, data_range=1.0`: images scaled to [0, 1], an 11-tap Gaussian
//! window (σ = 1.5, truncated at 3.5σ) applied separably with mirror ("reflect") borders,
//! K1 = 0.01, K2 = 0.03, the SSIM map averaged after cropping 5 pixels at each border, computed
//! per channel and averaged.

use image::RgbImage;

const SIGMA: f64 = 1.5;
const RADIUS: usize = 5;
const C1: f64 = 0.01 * 0.01;
const C2: f64 = 0.03 * 0.03;

fn kernel() -> [f64; 2 * RADIUS + 1] {
    let mut k = [0f64; 2 * RADIUS + 1];
    for (i, v) in k.iter_mut().enumerate() {
        let x = i as f64 - RADIUS as f64;
        *v = (-0.5 * x * x / (SIGMA * SIGMA)).exp();
    }
    let s: f64 = k.iter().sum();
    k.map(|v| v / s)
}

/// Half-sample symmetric index (scipy's `reflect`: d c b a | a b c d | d c b a).
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let period = 2 * n;
    let mut i = i.rem_euclid(period);
    if i >= n {
        i = period - 1 - i;
    }
    i as usize
}

/// Separable Gaussian filter of a `w × h` plane.
fn blur(src: &[f64], w: usize, h: usize, k: &[f64]) -> Vec<f64> {
    let r = RADIUS as isize;
    let mut tmp = vec![0f64; w * h];
    for y in 0..h {
        for x in 0..w {
            tmp[y * w + x] = (-r..=r)
                .map(|d| k[(d + r) as usize] * src[y * w + reflect(x as isize + d, w)])
                .sum();
        }
    }
    let mut out = vec![0f64; w * h];
    for y in 0..h {
        for x in 0..w {
            out[y * w + x] = (-r..=r)
                .map(|d| k[(d + r) as usize] * tmp[reflect(y as isize + d, h) * w + x])
                .sum();
        }
    }
    out
}

fn ssim_plane(a: &[f64], b: &[f64], w: usize, h: usize) -> f64 {
    let k = kernel();
    let prod = |p: &[f64], q: &[f64]| p.iter().zip(q).map(|(x, y)| x * y).collect::<Vec<_>>();
    let ux = blur(a, w, h, &k);
    let uy = blur(b, w, h, &k);
    let uxx = blur(&prod(a, a), w, h, &k);
    let uyy = blur(&prod(b, b), w, h, &k);
    let uxy = blur(&prod(a, b), w, h, &k);
    let mut sum = 0f64;
    let mut n = 0usize;
    for y in RADIUS..h - RADIUS {
        for x in RADIUS..w - RADIUS {
            let i = y * w + x;
            let (mx, my) = (ux[i], uy[i]);
            let vx = uxx[i] - mx * mx;
            let vy = uyy[i] - my * my;
            let vxy = uxy[i] - mx * my;
            let s = ((2.0 * mx * my + C1) * (2.0 * vxy + C2))
                / ((mx * mx + my * my + C1) * (vx + vy + C2));
            sum += s;
            n += 1;
        }
    }
    sum / n as f64
}

/// Smallest side SSIM accepts (the 11-pixel window must fit).
pub const MIN_SIDE: u32 = 2 * RADIUS as u32 + 1;

/// Mean SSIM over the three channels of two same-sized images of at least 11×11 pixels.
pub fn ssim(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(
        a.dimensions(),
        b.dimensions(),
        "ssim needs same-sized images"
    );
    let (w, h) = a.dimensions();
    assert!(
        w >= MIN_SIDE && h >= MIN_SIDE,
        "ssim needs images of at least 11×11 pixels"
    );
    let (w, h) = (w as usize, h as usize);
    let plane = |img: &RgbImage, c: usize| -> Vec<f64> {
        img.as_raw()
            .iter()
            .skip(c)
            .step_by(3)
            .map(|&v| v as f64 / 255.0)
            .collect()
    };
    (0..3)
        .map(|c| ssim_plane(&plane(a, c), &plane(b, c), w, h))
        .sum::<f64>()
        / 3.0
}
