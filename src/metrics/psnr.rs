//! PSNR on uint8 RGB images: `10·log10(255² / MSE)` over all pixels and channels.

use image::RgbImage;

/// PSNR in dB of two same-sized images (`+∞` when identical).
pub fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(
        a.dimensions(),
        b.dimensions(),
        "psnr needs same-sized images"
    );
    let se: f64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    let mse = se / a.as_raw().len() as f64;
    10.0 * (255.0f64.powi(2) / mse).log10()
}
