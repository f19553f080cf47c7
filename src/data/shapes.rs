//! `builtin:shapes`: a procedural, labelled image set that needs no download.
//!
//! Image `i` is a coloured shape (circle, square, triangle or diamond) on a two-tone background,
//! with position, size, rotation-free jitter and shades drawn from a generator seeded by
//! `(seed, i)`, rendered at any resolution with 4×4 supersampling. The class is
//! shape × colour (16 classes).

use image::{Rgb, RgbImage};
use rand::Rng;

use crate::rng::{rng_for, Stream};

pub const SHAPES: &[&str] = &["circle", "square", "triangle", "diamond"];
pub const COLOURS: &[(&str, [f32; 3])] = &[
    ("red", [0.85, 0.15, 0.15]),
    ("green", [0.15, 0.75, 0.25]),
    ("blue", [0.15, 0.3, 0.9]),
    ("yellow", [0.95, 0.85, 0.1]),
];

/// Default number of images.
pub const DEFAULT_COUNT: usize = 2048;

#[derive(Debug, Clone)]
pub struct Shapes {
    pub count: usize,
    pub seed: u64,
}

impl Shapes {
    pub fn class_names() -> Vec<String> {
        SHAPES
            .iter()
            .flat_map(|s| COLOURS.iter().map(move |(c, _)| format!("{s}-{c}")))
            .collect()
    }

    pub fn label(&self, i: usize) -> u32 {
        let mut rng = rng_for(self.seed, Stream::Data, &[i as u64]);
        rng.random_range(0..(SHAPES.len() * COLOURS.len())) as u32
    }

    /// Renders image `i` at `side × side`.
    pub fn render(&self, i: usize, side: u32) -> RgbImage {
        let mut rng = rng_for(self.seed, Stream::Data, &[i as u64]);
        let label = rng.random_range(0..(SHAPES.len() * COLOURS.len()));
        let (shape, colour) = (label / COLOURS.len(), label % COLOURS.len());
        let base = COLOURS[colour].1;
        let shade: f32 = rng.random_range(0.8..1.1);
        let fg = base.map(|c| (c * shade).clamp(0.0, 1.0));
        let bg_a: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.05..0.45));
        let bg_b: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.5..0.95));
        let horizontal = rng.random_bool(0.5);
        let r: f32 = rng.random_range(0.18..0.34);
        let cx: f32 = rng.random_range(r..1.0 - r);
        let cy: f32 = rng.random_range(r..1.0 - r);
        let inside = |x: f32, y: f32| -> bool {
            let (dx, dy) = (x - cx, y - cy);
            match shape {
                0 => dx * dx + dy * dy <= r * r,
                1 => dx.abs() <= r * 0.85 && dy.abs() <= r * 0.85,
                2 => dy <= r * 0.8 && dy >= -r && dx.abs() <= (dy + r) * 0.6,
                _ => dx.abs() + dy.abs() <= r,
            }
        };
        const SS: u32 = 4;
        let s = side as f32;
        RgbImage::from_fn(side, side, |px, py| {
            let mut acc = [0f32; 3];
            for sy in 0..SS {
                for sx in 0..SS {
                    let x = (px as f32 + (sx as f32 + 0.5) / SS as f32) / s;
                    let y = (py as f32 + (sy as f32 + 0.5) / SS as f32) / s;
                    let t = if horizontal { x } else { y };
                    let c = if inside(x, y) {
                        fg
                    } else {
                        std::array::from_fn(|k| bg_a[k] + (bg_b[k] - bg_a[k]) * t)
                    };
                    for k in 0..3 {
                        acc[k] += c[k];
                    }
                }
            }
            let n = (SS * SS) as f32;
            Rgb(acc.map(|v| (v / n * 255.0).round().clamp(0.0, 255.0) as u8))
        })
    }
}
