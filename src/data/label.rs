//! Captions for figures, drawn with a small built-in bitmap font (no font files), and nearest
//! upscaling of small tiles.

use image::{imageops, Rgb, RgbImage};

/// Glyphs 5 pixels wide and 7 high above the baseline with 2 rows below it (descenders), one string of `#`/`.` per row: digits, lower-case letters
/// (upper case is drawn as lower case) and some punctuation.
fn glyph(c: char) -> Option<[&'static str; 9]> {
    Some(match c.to_ascii_lowercase() {
        '0' => [
            ".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###.", ".....", ".....",
        ],
        '1' => [
            "..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###.", ".....", ".....",
        ],
        '2' => [
            ".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####", ".....", ".....",
        ],
        '3' => [
            "####.", "....#", "....#", ".###.", "....#", "....#", "####.", ".....", ".....",
        ],
        '4' => [
            "...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#.", ".....", ".....",
        ],
        '5' => [
            "#####", "#....", "####.", "....#", "....#", "#...#", ".###.", ".....", ".....",
        ],
        '6' => [
            ".###.", "#....", "#....", "####.", "#...#", "#...#", ".###.", ".....", ".....",
        ],
        '7' => [
            "#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#...", ".....", ".....",
        ],
        '8' => [
            ".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###.", ".....", ".....",
        ],
        '9' => [
            ".###.", "#...#", "#...#", ".####", "....#", "....#", ".###.", ".....", ".....",
        ],
        '.' => [
            ".....", ".....", ".....", ".....", ".....", ".##..", ".##..", ".....", ".....",
        ],
        '/' => [
            "....#", "....#", "...#.", "..#..", ".#...", "#....", "#....", ".....", ".....",
        ],
        '%' => [
            "##..#", "##..#", "...#.", "..#..", ".#...", "#..##", "#..##", ".....", ".....",
        ],
        ' ' => [
            ".....", ".....", ".....", ".....", ".....", ".....", ".....", ".....", ".....",
        ],
        'i' => [
            "..#..", ".....", ".##..", "..#..", "..#..", "..#..", ".###.", ".....", ".....",
        ],
        'n' => [
            ".....", ".....", "####.", "#...#", "#...#", "#...#", "#...#", ".....", ".....",
        ],
        'p' => [
            ".....", ".....", "####.", "#...#", "#...#", "#...#", "####.", "#....", "#....",
        ],
        'u' => [
            ".....", ".....", "#...#", "#...#", "#...#", "#..##", ".##.#", ".....", ".....",
        ],
        't' => [
            ".#...", ".#...", "###..", ".#...", ".#...", ".#..#", "..##.", ".....", ".....",
        ],
        'v' => [
            ".....", ".....", "#...#", "#...#", "#...#", ".#.#.", "..#..", ".....", ".....",
        ],
        's' => [
            ".....", ".....", ".####", "#....", ".###.", "....#", "####.", ".....", ".....",
        ],
        'a' => [
            ".....", ".....", ".###.", "....#", ".####", "#...#", ".####", ".....", ".....",
        ],
        'b' => [
            "#....", "#....", "####.", "#...#", "#...#", "#...#", "####.", ".....", ".....",
        ],
        'c' => [
            ".....", ".....", ".####", "#....", "#....", "#....", ".####", ".....", ".....",
        ],
        'd' => [
            "....#", "....#", ".####", "#...#", "#...#", "#...#", ".####", ".....", ".....",
        ],
        'e' => [
            ".....", ".....", ".###.", "#...#", "#####", "#....", ".###.", ".....", ".....",
        ],
        'f' => [
            "..##.", ".#...", "###..", ".#...", ".#...", ".#...", ".#...", ".....", ".....",
        ],
        'g' => [
            ".....", ".....", ".####", "#...#", "#...#", "#...#", ".####", "....#", ".###.",
        ],
        'h' => [
            "#....", "#....", "####.", "#...#", "#...#", "#...#", "#...#", ".....", ".....",
        ],
        'j' => [
            "...#.", ".....", "..##.", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##..",
        ],
        'k' => [
            "#....", "#....", "#..#.", "#.#..", "##...", "#.#..", "#..#.", ".....", ".....",
        ],
        'l' => [
            ".##..", "..#..", "..#..", "..#..", "..#..", "..#..", ".###.", ".....", ".....",
        ],
        'm' => [
            ".....", ".....", "##.#.", "#.#.#", "#.#.#", "#.#.#", "#.#.#", ".....", ".....",
        ],
        'o' => [
            ".....", ".....", ".###.", "#...#", "#...#", "#...#", ".###.", ".....", ".....",
        ],
        'q' => [
            ".....", ".....", ".####", "#...#", "#...#", "#...#", ".####", "....#", "....#",
        ],
        'r' => [
            ".....", ".....", "#.##.", "##..#", "#....", "#....", "#....", ".....", ".....",
        ],
        'w' => [
            ".....", ".....", "#...#", "#...#", "#.#.#", "#.#.#", ".#.#.", ".....", ".....",
        ],
        'x' => [
            ".....", ".....", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", ".....", ".....",
        ],
        'y' => [
            ".....", ".....", "#...#", "#...#", "#...#", "#...#", ".####", "....#", ".###.",
        ],
        'z' => [
            ".....", ".....", "#####", "...#.", "..#..", ".#...", "#####", ".....", ".....",
        ],
        '-' => [
            ".....", ".....", ".....", "#####", ".....", ".....", ".....", ".....", ".....",
        ],
        '_' => [
            ".....", ".....", ".....", ".....", ".....", ".....", "#####", ".....", ".....",
        ],
        ':' => [
            ".....", ".##..", ".##..", ".....", ".##..", ".##..", ".....", ".....", ".....",
        ],
        ',' => [
            ".....", ".....", ".....", ".....", ".....", ".##..", ".##..", "..#..", ".#...",
        ],
        '=' => [
            ".....", ".....", "#####", ".....", "#####", ".....", ".....", ".....", ".....",
        ],
        '(' => [
            "..#..", ".#...", "#....", "#....", "#....", ".#...", "..#..", ".....", ".....",
        ],
        ')' => [
            "..#..", "...#.", "....#", "....#", "....#", "...#.", "..#..", ".....", ".....",
        ],
        '+' => [
            ".....", "..#..", "..#..", "#####", "..#..", "..#..", ".....", ".....", ".....",
        ],
        '@' => [
            ".###.", "#...#", "#.###", "#.#.#", "#.###", "#....", ".###.", ".....", ".....",
        ],
        _ => return None,
    })
}

/// Width in pixels of one line of `text` drawn at `scale`.
pub fn text_width(text: &str, scale: u32) -> u32 {
    let n = text.chars().filter(|&c| glyph(c).is_some()).count() as u32;
    (n * 6 * scale).saturating_sub(scale)
}

/// Height in pixels of one line of text drawn at `scale` (the glyphs with their descenders,
/// without spacing).
pub fn text_height(scale: u32) -> u32 {
    9 * scale
}

/// Draws one line of `text` with its top-left corner at (`x`, `y`), glyphs scaled by `scale`,
/// clipped to `img`; characters without a glyph are left out.
pub fn draw_text(img: &mut RgbImage, x: i64, y: i64, text: &str, scale: u32, color: Rgb<u8>) {
    let advance = 6 * scale as i64;
    for (k, g) in text.chars().filter_map(glyph).enumerate() {
        for (gy, row) in g.iter().enumerate() {
            for (gx, ch) in row.chars().enumerate() {
                if ch != '#' {
                    continue;
                }
                for dy in 0..scale as i64 {
                    for dx in 0..scale as i64 {
                        let px = x + k as i64 * advance + gx as i64 * scale as i64 + dx;
                        let py = y + gy as i64 * scale as i64 + dy;
                        if px >= 0
                            && py >= 0
                            && (px as u32) < img.width()
                            && (py as u32) < img.height()
                        {
                            img.put_pixel(px as u32, py as u32, color);
                        }
                    }
                }
            }
        }
    }
}

/// `text` (lines split at `\n`) in white on a dark strip at least `width` pixels wide, glyphs
/// scaled by `scale`, each line centred; characters without a glyph are left out.
pub fn caption(text: &str, width: u32, scale: u32) -> RgbImage {
    let lines: Vec<&str> = text.split('\n').collect();
    let text_w = lines
        .iter()
        .map(|l| text_width(l, scale))
        .max()
        .unwrap_or(0);
    let line_h = 11 * scale;
    let mut img = RgbImage::from_pixel(
        width.max(text_w),
        line_h * lines.len() as u32,
        Rgb([40, 40, 40]),
    );
    for (n, line) in lines.iter().enumerate() {
        let x0 = (img.width() - text_width(line, scale)) / 2;
        let y0 = n as u32 * line_h + scale;
        draw_text(
            &mut img,
            x0 as i64,
            y0 as i64,
            line,
            scale,
            Rgb([235, 235, 235]),
        );
    }
    img
}

/// `img` scaled up by the smallest whole factor that makes its shorter side at least `min_side`
/// pixels (nearest neighbour: the pixels stay visible as pixels).
pub fn upscale(img: &RgbImage, min_side: u32) -> RgbImage {
    let side = img.width().min(img.height()).max(1);
    let factor = min_side.div_ceil(side).max(1);
    if factor == 1 {
        return img.clone();
    }
    imageops::resize(
        img,
        img.width() * factor,
        img.height() * factor,
        imageops::FilterType::Nearest,
    )
}

/// `img` with `text` captioned above it, as large as fits its width (up to 3× the font).
pub fn captioned(img: &RgbImage, text: &str) -> RgbImage {
    let longest = text
        .split('\n')
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(1)
        .max(1) as u32;
    let scale = (img.width() / (6 * longest)).clamp(1, 3);
    let cap = caption(text, img.width(), scale);
    let mut out = RgbImage::from_pixel(cap.width(), cap.height() + img.height(), Rgb([40, 40, 40]));
    imageops::replace(&mut out, &cap, 0, 0);
    imageops::replace(
        &mut out,
        img,
        ((cap.width() - img.width()) / 2) as i64,
        cap.height() as i64,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_draw_their_glyphs() {
        let blank = caption("", 20, 1);
        let text = caption("0.95\n12/36", 20, 2);
        let lit = |i: &RgbImage| i.pixels().filter(|p| p.0[0] > 200).count();
        assert_eq!(lit(&blank), 0);
        assert!(lit(&text) > 100);
        // two lines of 9-row glyphs (descenders included) and 2 rows of spacing, at scale 2
        assert_eq!(text.height(), 2 * 11 * 2);
        assert_eq!(text_width("0.95", 2), 4 * 12 - 2);
        assert_eq!(text_width("A-z", 1), text_width("a-z", 1));
        assert!(text.width() >= 5 * 12 - 2);
        assert_eq!(upscale(&RgbImage::new(24, 24), 96).width(), 96);
        assert_eq!(upscale(&RgbImage::new(32, 32), 96).width(), 96);
        assert_eq!(upscale(&RgbImage::new(128, 128), 96).width(), 128);
    }
}
