//! `builtin:shapes`: a procedural, labelled image set that needs no download.
//!
//! Image `i` is a coloured shape (circle, square, triangle or diamond) on a background whose
//! colour runs linearly from one side to the other, with position, size and shade drawn from a
//! generator seeded by `(seed, i)`, rendered at any resolution with 4×4 supersampling. The
//! class is shape × colour (16 classes, shape-major: `circle-red`, `circle-green`, …).

use image::{Rgb, RgbImage};
use rand::Rng;

use crate::rng::{rng_for, Stream};

/// The four silhouettes. Geometry is in units of the image side, around a centre, with a size
/// `r` (a circle's radius; the other shapes are scaled to look about as large).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Diamond,
}

impl Shape {
    pub const ALL: [Shape; 4] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Diamond,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Diamond => "diamond",
        }
    }

    /// Whether the point `(dx, dy)` from the centre (y down) lies inside the shape of size `r`.
    pub fn contains(self, dx: f32, dy: f32, r: f32) -> bool {
        match self {
            Shape::Circle => dx * dx + dy * dy <= r * r,
            Shape::Square => dx.abs() <= r * 0.85 && dy.abs() <= r * 0.85,
            // apex up at −r, base at +0.8·r, 1.08·r wide on each side at the base
            Shape::Triangle => dy <= r * 0.8 && dy >= -r && dx.abs() <= (dy + r) * 0.6,
            Shape::Diamond => dx.abs() + dy.abs() <= r,
        }
    }

    /// Area of the shape of size `r`, as a multiple of `r²`.
    pub fn area_factor(self) -> f32 {
        match self {
            Shape::Circle => std::f32::consts::PI,
            Shape::Square => 1.7 * 1.7,
            Shape::Triangle => 0.5 * 2.16 * 1.8,
            Shape::Diamond => 2.0,
        }
    }

    /// How far below the centre the shape's centroid lies, as a multiple of `r` (the
    /// triangle's centroid is a third of its height above its base).
    pub fn centroid_dy(self) -> f32 {
        match self {
            Shape::Triangle => 0.8 - 1.8 / 3.0,
            _ => 0.0,
        }
    }
}

/// The four colours, as RGB in [0, 1] before each image's shade.
pub const COLOURS: &[(&str, [f32; 3])] = &[
    ("red", [0.85, 0.15, 0.15]),
    ("green", [0.15, 0.75, 0.25]),
    ("blue", [0.15, 0.3, 0.9]),
    ("yellow", [0.95, 0.85, 0.1]),
];

/// Number of classes: shapes × colours.
pub const CLASSES: usize = Shape::ALL.len() * COLOURS.len();

/// The class id of a shape and colour index.
pub fn class_of(shape: Shape, colour: usize) -> u32 {
    (Shape::ALL.iter().position(|&s| s == shape).unwrap_or(0) * COLOURS.len() + colour) as u32
}

/// Default number of images.
pub const DEFAULT_COUNT: usize = 2048;

/// Everything random about one image.
#[derive(Debug, Clone)]
pub struct Scene {
    pub shape: Shape,
    pub colour: usize,
    /// The shape's colour (the class colour times a shade).
    pub fg: [f32; 3],
    /// Background colours at the start and the end of its ramp.
    pub bg: [[f32; 3]; 2],
    /// The ramp runs along x (else along y).
    pub horizontal: bool,
    pub r: f32,
    pub cx: f32,
    pub cy: f32,
}

impl Scene {
    /// The class id (shape-major).
    pub fn label(&self) -> u32 {
        class_of(self.shape, self.colour)
    }

    /// Background colour at `(x, y)` in units of the side.
    pub fn background(&self, x: f32, y: f32) -> [f32; 3] {
        let t = if self.horizontal { x } else { y };
        std::array::from_fn(|k| self.bg[0][k] + (self.bg[1][k] - self.bg[0][k]) * t)
    }

    /// Renders the scene at `side × side` with 4×4 supersampling.
    pub fn render(&self, side: u32) -> RgbImage {
        const SS: u32 = 4;
        let s = side as f32;
        RgbImage::from_fn(side, side, |px, py| {
            let mut acc = [0f32; 3];
            for sy in 0..SS {
                for sx in 0..SS {
                    let x = (px as f32 + (sx as f32 + 0.5) / SS as f32) / s;
                    let y = (py as f32 + (sy as f32 + 0.5) / SS as f32) / s;
                    let c = if self.shape.contains(x - self.cx, y - self.cy, self.r) {
                        self.fg
                    } else {
                        self.background(x, y)
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

#[derive(Debug, Clone)]
pub struct Shapes {
    pub count: usize,
    pub seed: u64,
}

impl Shapes {
    pub fn class_names() -> Vec<String> {
        Shape::ALL
            .iter()
            .flat_map(|s| {
                COLOURS
                    .iter()
                    .map(move |(c, _)| format!("{}-{c}", s.name()))
            })
            .collect()
    }

    pub fn label(&self, i: usize) -> u32 {
        self.scene(i).label()
    }

    /// What image `i` shows.
    pub fn scene(&self, i: usize) -> Scene {
        let mut rng = rng_for(self.seed, Stream::Data, &[i as u64]);
        let label = rng.random_range(0..CLASSES);
        let (shape, colour) = (Shape::ALL[label / COLOURS.len()], label % COLOURS.len());
        let shade: f32 = rng.random_range(0.8..1.1);
        let fg = COLOURS[colour].1.map(|c| (c * shade).clamp(0.0, 1.0));
        let bg_a: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.05..0.45));
        let bg_b: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.5..0.95));
        let horizontal = rng.random_bool(0.5);
        // at least 0.56 of the side across: 13 px at the quickstart's 24 px, so that a 4×
        // downsampling tokenizer keeps the silhouette (with 0.18..0.34 its reconstructions of
        // the smallest shapes lost it: 48 % against 85 % class accuracy after 600 steps)
        let r: f32 = rng.random_range(0.28..0.40);
        let cx: f32 = rng.random_range(r..1.0 - r);
        let cy: f32 = rng.random_range(r..1.0 - r);
        Scene {
            shape,
            colour,
            fg,
            bg: [bg_a, bg_b],
            horizontal,
            r,
            cx,
            cy,
        }
    }

    /// Renders image `i` at `side × side`.
    pub fn render(&self, i: usize, side: u32) -> RgbImage {
        self.scene(i).render(side)
    }
}

impl crate::data::source::ImageSource for Shapes {
    fn len(&self) -> usize {
        self.count
    }
    fn classes(&self) -> Vec<String> {
        Shapes::class_names()
    }
    fn label(&self, i: usize) -> Option<u32> {
        Some(Shapes::label(self, i))
    }
    fn name(&self, i: usize) -> String {
        format!("shapes/{i:06}")
    }
    fn fingerprint(&self) -> Vec<u64> {
        vec![self.count as u64, self.seed]
    }
    fn load_resized(&self, i: usize, side: u32) -> anyhow::Result<RgbImage> {
        Ok(self.render(i, side))
    }
    fn load_native(&self, i: usize) -> anyhow::Result<RgbImage> {
        Ok(self.render(i, 256))
    }
    fn analytic_classes(&self) -> bool {
        true
    }
}
