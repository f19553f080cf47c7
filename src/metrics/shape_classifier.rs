//! An analytic classifier for `builtin:shapes` images: no learned weights.
//!
//! 1. **Background.** The background is a linear colour ramp along x or along y. For each
//!    direction, a per-channel line `a + b·t` is fitted by least squares to the pixels that fit it
//!    best (trimmed: refitted to the best 55 %, then to every pixel within a margin of the line);
//!    the direction whose trimmed residual is smaller wins.
//! 2. **Foreground.** Pixels far from the background line are the shape; its colour is their
//!    median. Each pixel then gets a coverage `α ∈ [0, 1]`: where it lies on the segment from
//!    the background colour to the shape colour (anti-aliased edges come out fractional).
//! 3. **Colour.** The shape colour's direction (brightness divided out, since shades vary) is
//!    compared with the four class colours by cosine similarity.
//! 4. **Silhouette.** From the coverage's area and centroid, each of the four shapes is placed
//!    with the size that gives that area, rendered (3×3 supersampling) at small shifts and
//!    scales, sharp and blurred (a decoder's edges are soft: a blurred square is still a square,
//!    and must not match a sharp circle better), and compared with the coverage; the shape with
//!    the smallest difference wins.
//!
//! An image with no shape-like blob (too small or large an area, a colour far from every class
//! colour, or a silhouette that matches no shape well) gets no class: noise is not classified.

use image::RgbImage;

use crate::data::shapes::{class_of, Shape, COLOURS};

/// Smallest cosine similarity between the shape colour and its class colour.
const MIN_COLOUR_SIMILARITY: f32 = 0.85;
/// Largest silhouette difference (Σ|α − template| over the area) that still names a shape.
const MAX_SILHOUETTE_ERROR: f32 = 0.6;
/// A pixel belongs to the shape's core when this far (RGB distance in [0, 1]) from the ramp.
const FOREGROUND_DISTANCE: f32 = 0.2;

/// What the classifier saw in one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The class id (shape-major, as `builtin:shapes` numbers them), when a shape was found.
    pub class: Option<u32>,
    /// The nearest colour and its cosine similarity.
    pub colour: usize,
    pub colour_similarity: f32,
    /// The best-fitting shape and its silhouette difference (0 = perfect).
    pub shape: Shape,
    pub silhouette_error: f32,
    /// The shape's area as a fraction of the image.
    pub area: f32,
}

/// A least-squares line per channel over `t`: `value ≈ a + b·t`.
#[derive(Debug, Clone, Copy)]
struct Ramp {
    a: [f32; 3],
    b: [f32; 3],
}

impl Ramp {
    fn at(&self, t: f32) -> [f32; 3] {
        std::array::from_fn(|k| self.a[k] + self.b[k] * t)
    }

    /// Fits the ramp to the pixels `keep` selects.
    fn fit(px: &[[f32; 3]], t: &[f32], keep: &[bool]) -> Ramp {
        let (mut n, mut st, mut stt) = (0f64, 0f64, 0f64);
        let (mut sv, mut stv) = ([0f64; 3], [0f64; 3]);
        for ((p, &t), _) in px.iter().zip(t).zip(keep).filter(|(_, &k)| k) {
            let t = t as f64;
            n += 1.0;
            st += t;
            stt += t * t;
            for k in 0..3 {
                sv[k] += p[k] as f64;
                stv[k] += t * p[k] as f64;
            }
        }
        let det = n * stt - st * st;
        let mut ramp = Ramp {
            a: [0.0; 3],
            b: [0.0; 3],
        };
        for k in 0..3 {
            if det.abs() < 1e-9 {
                ramp.a[k] = (sv[k] / n.max(1.0)) as f32;
            } else {
                ramp.b[k] = ((n * stv[k] - st * sv[k]) / det) as f32;
                ramp.a[k] = ((sv[k] - ramp.b[k] as f64 * st) / n) as f32;
            }
        }
        ramp
    }
}

fn distance(p: &[f32; 3], q: &[f32; 3]) -> f32 {
    (0..3).map(|k| (p[k] - q[k]).powi(2)).sum::<f32>().sqrt()
}

/// The share (%) of an image's pixels that are surely background: shapes cover at most half.
const BACKGROUND_SHARE: usize = 40;

/// The background ramp along `t` and its trimmed mean residual. The first fit uses the image's
/// outer ring only (a shape stays inside the image, so the ring is mostly background even when
/// the shape fills half of it), the later ones every pixel close to the previous fit.
fn fit_background(px: &[[f32; 3]], t: &[f32], side: usize) -> (Ramp, f32) {
    let n = px.len();
    let ring = (side / 16).max(1);
    let mut keep: Vec<bool> = (0..n)
        .map(|i| {
            let (x, y) = (i % side, i / side);
            x.min(y).min(side - 1 - x).min(side - 1 - y) < ring
        })
        .collect();
    let residuals = |ramp: &Ramp| -> Vec<f32> {
        px.iter()
            .zip(t)
            .map(|(p, &t)| distance(p, &ramp.at(t)))
            .collect()
    };
    // trimmed: the ring's pixels nearest to a first fit, where a shape touches the ring
    let mut ramp = Ramp::fit(px, t, &keep);
    let ring_residuals = residuals(&ramp);
    let mut on_ring: Vec<f32> = ring_residuals
        .iter()
        .zip(&keep)
        .filter(|(_, &k)| k)
        .map(|(&r, _)| r)
        .collect();
    on_ring.sort_by(f32::total_cmp);
    let cut = on_ring[on_ring.len() * 3 / 4];
    for (k, r) in keep.iter_mut().zip(&ring_residuals) {
        *k = *k && *r <= cut;
    }
    ramp = Ramp::fit(px, t, &keep);
    let margin = 0.08f32;
    for _ in 0..2 {
        keep = residuals(&ramp).iter().map(|&d| d <= margin).collect();
        if keep.iter().filter(|&&k| k).count() >= n / 5 {
            ramp = Ramp::fit(px, t, &keep);
        }
    }
    let mut sorted = residuals(&ramp);
    sorted.sort_by(f32::total_cmp);
    let best = &sorted[..(n * BACKGROUND_SHARE / 100).max(1)];
    (ramp, best.iter().sum::<f32>() / best.len() as f32)
}

/// Coverage of each pixel of a `side × side` image by `shape` of size `r` centred at
/// `(cx, cy)` (units of the side), with 3×3 supersampling.
fn template(shape: Shape, side: usize, r: f32, cx: f32, cy: f32) -> Vec<f32> {
    const SS: usize = 3;
    let s = side as f32;
    let mut out = vec![0f32; side * side];
    // only the shape's bounding square needs sampling
    let lo = |c: f32| (((c - 1.1 * r) * s).floor().max(0.0)) as usize;
    let hi = |c: f32| (((c + 1.1 * r) * s).ceil().min(s)) as usize;
    for py in lo(cy)..hi(cy) {
        for px in lo(cx)..hi(cx) {
            let mut inside = 0;
            for sy in 0..SS {
                for sx in 0..SS {
                    let x = (px as f32 + (sx as f32 + 0.5) / SS as f32) / s;
                    let y = (py as f32 + (sy as f32 + 0.5) / SS as f32) / s;
                    inside += shape.contains(x - cx, y - cy, r) as usize;
                }
            }
            out[py * side + px] = inside as f32 / (SS * SS) as f32;
        }
    }
    out
}

/// Gaussian blurs (σ in pixels) the templates are also compared at.
const BLURS: [f32; 2] = [0.7, 1.3];

/// `img` (`side × side`) blurred by a separable Gaussian of `sigma` pixels (edges clamped).
fn blur(img: &[f32], side: usize, sigma: f32) -> Vec<f32> {
    let r = (2.5 * sigma).ceil() as isize;
    let k: Vec<f32> = (-r..=r)
        .map(|d| (-(d * d) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = k.iter().sum();
    let k: Vec<f32> = k.iter().map(|v| v / sum).collect();
    let pass = |src: &[f32], horizontal: bool| -> Vec<f32> {
        let mut out = vec![0f32; side * side];
        for y in 0..side {
            for x in 0..side {
                let mut acc = 0f32;
                for (j, w) in k.iter().enumerate() {
                    let d = j as isize - r;
                    let (sx, sy) = if horizontal {
                        (x as isize + d, y as isize)
                    } else {
                        (x as isize, y as isize + d)
                    };
                    let clamp = |v: isize| v.clamp(0, side as isize - 1) as usize;
                    acc += w * src[clamp(sy) * side + clamp(sx)];
                }
                out[y * side + x] = acc;
            }
        }
        out
    };
    pass(&pass(img, true), false)
}

/// The best silhouette difference of `shape` against the coverage `alpha` with area `area`
/// (pixels) and centroid `(mx, my)` (units of the side).
fn silhouette_error(shape: Shape, alpha: &[f32], side: usize, area: f32, mx: f32, my: f32) -> f32 {
    let s = side as f32;
    let r0 = (area / shape.area_factor()).sqrt() / s;
    let mut best = f32::INFINITY;
    for scale in [0.92f32, 1.0, 1.08] {
        let r = r0 * scale;
        for oy in [-0.5f32, 0.0, 0.5] {
            for ox in [-0.5f32, 0.0, 0.5] {
                let cx = mx + ox / s;
                let cy = my - shape.centroid_dy() * r + oy / s;
                let sharp = template(shape, side, r, cx, cy);
                let blurred = BLURS.iter().map(|&sigma| blur(&sharp, side, sigma));
                for t in std::iter::once(sharp.clone()).chain(blurred) {
                    let diff: f32 = alpha.iter().zip(&t).map(|(a, b)| (a - b).abs()).sum();
                    best = best.min(diff / area.max(1.0));
                }
            }
        }
    }
    best
}

/// Classifies one image (any square size; the shapes need about 16 pixels or more a side).
pub fn classify(img: &RgbImage) -> Verdict {
    let (w, h) = img.dimensions();
    let side = w.min(h) as usize;
    let img = if w != h {
        image::imageops::crop_imm(
            img,
            (w - side as u32) / 2,
            (h - side as u32) / 2,
            side as u32,
            side as u32,
        )
        .to_image()
    } else {
        img.clone()
    };
    let s = side as f32;
    let px: Vec<[f32; 3]> = img
        .pixels()
        .map(|p| p.0.map(|v| v as f32 / 255.0))
        .collect();
    let coord = |i: usize| (((i % side) as f32 + 0.5) / s, ((i / side) as f32 + 0.5) / s);
    let tx: Vec<f32> = (0..px.len()).map(|i| coord(i).0).collect();
    let ty: Vec<f32> = (0..px.len()).map(|i| coord(i).1).collect();
    let (rx, ex) = fit_background(&px, &tx, side);
    let (ry, ey) = fit_background(&px, &ty, side);
    let (ramp, t) = if ex <= ey { (rx, &tx) } else { (ry, &ty) };
    let bg: Vec<[f32; 3]> = t.iter().map(|&t| ramp.at(t)).collect();

    let mut verdict = Verdict {
        class: None,
        colour: 0,
        colour_similarity: 0.0,
        shape: Shape::Circle,
        silhouette_error: f32::INFINITY,
        area: 0.0,
    };
    // the shape colour: the median of the pixels far from the ramp
    let core: Vec<&[f32; 3]> = px
        .iter()
        .zip(&bg)
        .filter(|(p, b)| distance(p, b) > FOREGROUND_DISTANCE)
        .map(|(p, _)| p)
        .collect();
    if core.len() < 4 {
        return verdict;
    }
    let fg: [f32; 3] = std::array::from_fn(|k| {
        let mut v: Vec<f32> = core.iter().map(|p| p[k]).collect();
        v.sort_by(f32::total_cmp);
        v[v.len() / 2]
    });
    let norm = |c: &[f32; 3]| (c.iter().map(|v| v * v).sum::<f32>()).sqrt().max(1e-6);
    let (colour, similarity) = COLOURS
        .iter()
        .map(|(_, c)| (0..3).map(|k| c[k] * fg[k]).sum::<f32>() / (norm(c) * norm(&fg)))
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, 0.0));
    verdict.colour = colour;
    verdict.colour_similarity = similarity;

    // coverage: the position of each pixel on the segment background → shape colour
    let alpha: Vec<f32> = px
        .iter()
        .zip(&bg)
        .map(|(p, b)| {
            let d: [f32; 3] = std::array::from_fn(|k| fg[k] - b[k]);
            let dd: f32 = d.iter().map(|v| v * v).sum();
            if dd < 0.01 {
                return 0.0;
            }
            let a = (0..3).map(|k| (p[k] - b[k]) * d[k]).sum::<f32>() / dd;
            a.clamp(0.0, 1.0)
        })
        .collect();
    let area: f32 = alpha.iter().sum();
    verdict.area = area / (s * s);
    let (mut mx, mut my) = (0f32, 0f32);
    for (i, a) in alpha.iter().enumerate() {
        let (x, y) = coord(i);
        mx += a * x;
        my += a * y;
    }
    if area < 1.0 {
        return verdict;
    }
    let (mx, my) = (mx / area, my / area);
    let (shape, error) = Shape::ALL
        .iter()
        .map(|&sh| (sh, silhouette_error(sh, &alpha, side, area, mx, my)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((Shape::Circle, f32::INFINITY));
    verdict.shape = shape;
    verdict.silhouette_error = error;
    // the data's shapes cover 15 %–50 % of the image
    let plausible_area = (0.07..0.65).contains(&verdict.area);
    if plausible_area && similarity >= MIN_COLOUR_SIMILARITY && error <= MAX_SILHOUETTE_ERROR {
        verdict.class = Some(class_of(shape, colour));
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shapes::Shapes;

    #[test]
    fn a_rendered_shape_is_classified() {
        let set = Shapes { count: 64, seed: 7 };
        let right = (0..64)
            .filter(|&i| classify(&set.render(i, 32)).class == Some(set.label(i)))
            .count();
        assert!(right >= 60, "{right} of 64");
    }
}
