//! Conversions between image buffers and tensors, grids, and PNG output.

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use image::{Rgb, RgbImage};

/// Model value in [-1, 1] → uint8 as the metrics define it: `round((x + 1)·127.5)`, clamped.
pub fn to_u8(x: f32) -> u8 {
    ((x + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8
}

/// uint8 → model value in [-1, 1].
pub fn from_u8(v: u8) -> f32 {
    v as f32 / 127.5 - 1.0
}

/// Appends an image as planar CHW values in [-1, 1].
pub fn push_chw(img: &RgbImage, out: &mut Vec<f32>) {
    let (w, h) = img.dimensions();
    let raw = img.as_raw();
    for c in 0..3 {
        for i in 0..(w * h) as usize {
            out.push(from_u8(raw[3 * i + c]));
        }
    }
}

/// Same-sized images → `[B, 3, H, W]` in [-1, 1].
pub fn images_to_tensor(images: &[RgbImage], device: &Device) -> Result<Tensor> {
    let (w, h) = images.first().context("no images to stack")?.dimensions();
    let mut data = Vec::with_capacity(images.len() * 3 * (w * h) as usize);
    for img in images {
        push_chw(img, &mut data);
    }
    Ok(Tensor::from_vec(
        data,
        (images.len(), 3, h as usize, w as usize),
        device,
    )?)
}

/// `[B, 3, H, W]` in [-1, 1] → images; `[B, 1, H, W]` → grey images (R = G = B).
pub fn tensor_to_images(t: &Tensor) -> Result<Vec<RgbImage>> {
    let (b, c, h, w) = t.dims4()?;
    anyhow::ensure!(c == 3 || c == 1, "expected 1 or 3 channels, got {c}");
    let t = if c == 1 {
        t.repeat((1, 3, 1, 1))?
    } else {
        t.clone()
    };
    let data: Vec<f32> = t
        .to_device(&Device::Cpu)?
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let plane = h * w;
    Ok((0..b)
        .map(|i| {
            let base = i * 3 * plane;
            RgbImage::from_fn(w as u32, h as u32, |x, y| {
                let p = y as usize * w + x as usize;
                Rgb([
                    to_u8(data[base + p]),
                    to_u8(data[base + plane + p]),
                    to_u8(data[base + 2 * plane + p]),
                ])
            })
        })
        .collect())
}

/// Rows of images (each row may differ in length) laid out on a grey background with `pad`
/// pixels between cells; each row is as tall as its tallest image and each column as wide as
/// its widest, and an image sits at its cell's top left.
pub fn grid(rows: &[Vec<RgbImage>], pad: u32) -> RgbImage {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut widths = vec![1u32; cols];
    for row in rows {
        for (c, img) in row.iter().enumerate() {
            widths[c] = widths[c].max(img.width());
        }
    }
    let heights: Vec<u32> = rows
        .iter()
        .map(|r| r.iter().map(|i| i.height()).max().unwrap_or(1))
        .collect();
    let total_w = pad + widths.iter().map(|w| w + pad).sum::<u32>();
    let total_h = pad + heights.iter().map(|h| h + pad).sum::<u32>();
    let mut out = RgbImage::from_pixel(total_w, total_h, Rgb([128, 128, 128]));
    let mut y = pad;
    for (row, h) in rows.iter().zip(&heights) {
        let mut x = pad;
        for (img, w) in row.iter().zip(&widths) {
            image::imageops::replace(&mut out, img, x as i64, y as i64);
            x += w + pad;
        }
        y += h + pad;
    }
    out
}

/// A list of images as a near-square grid.
pub fn square_grid(images: &[RgbImage], pad: u32) -> RgbImage {
    let cols = (images.len() as f64).sqrt().ceil().max(1.0) as usize;
    let rows: Vec<Vec<RgbImage>> = images.chunks(cols).map(|c| c.to_vec()).collect();
    grid(&rows, pad)
}

/// Saves a PNG atomically (temp name + rename).
pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .with_context(|| format!("cannot encode {}", path.display()))?;
    crate::fsutil::write_atomic(path, &bytes)
}

/// Opens an image file as RGB (greyscale and alpha are converted).
pub fn open_rgb(path: &Path) -> Result<RgbImage> {
    let img = image::ImageReader::open(path)
        .with_context(|| format!("cannot open image {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read image {}", path.display()))?
        .decode()
        .with_context(|| format!("cannot decode image {}", path.display()))?;
    Ok(img.to_rgb8())
}
