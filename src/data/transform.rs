//! Resizing and cropping to the model's square resolution.

use image::imageops::{self, FilterType};
use image::RgbImage;
use rand::Rng;

/// The size of a `w × h` image resized so that its shorter side is `side` (aspect ratio kept).
pub fn shorter_side_size(w: u32, h: u32, side: u32) -> (u32, u32) {
    if w <= h {
        (
            side,
            ((h as u64 * side as u64 + w as u64 / 2) / w as u64).max(side as u64) as u32,
        )
    } else {
        (
            ((w as u64 * side as u64 + h as u64 / 2) / h as u64).max(side as u64) as u32,
            side,
        )
    }
}

/// Resizes so that the shorter side equals `side` (aspect ratio kept).
pub fn resize_shorter(img: &RgbImage, side: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if w.min(h) == side {
        return img.clone();
    }
    let (nw, nh) = shorter_side_size(w, h, side);
    imageops::resize(img, nw, nh, FilterType::CatmullRom)
}

/// The evaluation view of a mask drawn over a `w × h` image: the mask brought to that size,
/// then resized and centre-cropped as [`eval_view`] does the image, with nearest sampling (a
/// mask stays a mask).
pub fn mask_view(mask: &RgbImage, w: u32, h: u32, side: u32) -> RgbImage {
    let mut m = mask.clone();
    if m.dimensions() != (w, h) {
        m = imageops::resize(&m, w, h, FilterType::Nearest);
    }
    if w.min(h) != side {
        let (nw, nh) = shorter_side_size(w, h, side);
        m = imageops::resize(&m, nw, nh, FilterType::Nearest);
    }
    let (mw, mh) = m.dimensions();
    Crop::center(mw, mh, side).apply(&m, side)
}

/// Where to crop and whether to mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crop {
    pub x: u32,
    pub y: u32,
    pub flip: bool,
}

impl Crop {
    /// The centre crop of a `w × h` image (evaluation).
    pub fn center(w: u32, h: u32, side: u32) -> Self {
        Self {
            x: (w - side) / 2,
            y: (h - side) / 2,
            flip: false,
        }
    }

    /// A random crop, mirrored with probability ½ when `flip` (training).
    pub fn random(w: u32, h: u32, side: u32, flip: bool, rng: &mut impl Rng) -> Self {
        Self {
            x: rng.random_range(0..=w - side),
            y: rng.random_range(0..=h - side),
            flip: flip && rng.random_bool(0.5),
        }
    }

    /// Applies the crop to an image whose shorter side is already `side`.
    pub fn apply(&self, img: &RgbImage, side: u32) -> RgbImage {
        let out = imageops::crop_imm(img, self.x, self.y, side, side).to_image();
        if self.flip {
            imageops::flip_horizontal(&out)
        } else {
            out
        }
    }
}

/// The evaluation view: shorter side resized to `side`, then the centre `side × side` crop.
pub fn eval_view(img: &RgbImage, side: u32) -> RgbImage {
    let img = resize_shorter(img, side);
    let (w, h) = img.dimensions();
    Crop::center(w, h, side).apply(&img, side)
}
