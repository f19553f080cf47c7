//! Line charts as PNG images (`movq plot`): one panel per metric, stacked, each with its axes,
//! "nice" ticks, a title and a legend; series drawn solid (training) or dashed with markers
//! (validation). Drawn directly into an `RgbImage` with the built-in bitmap font.

use image::{Rgb, RgbImage};

use crate::data::label::{draw_text, text_height, text_width};

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// A solid line (training metrics, logged often).
    Solid,
    /// A dashed line with a square at each point (validation).
    Dashed,
}

/// One line of a panel.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub color: Rgb<u8>,
    pub style: Style,
    /// `(step, value)`, in order of steps.
    pub points: Vec<(f64, f64)>,
}

/// One metric's panel.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub series: Vec<Series>,
}

/// Distinct colours for runs, in order.
pub const PALETTE: [Rgb<u8>; 8] = [
    Rgb([31, 119, 180]),
    Rgb([214, 39, 40]),
    Rgb([44, 160, 44]),
    Rgb([255, 127, 14]),
    Rgb([148, 103, 189]),
    Rgb([140, 86, 75]),
    Rgb([227, 119, 194]),
    Rgb([23, 190, 207]),
];

const WIDTH: u32 = 760;
const PANEL_H: u32 = 260;
const SCALE: u32 = 2;
const LEFT: u32 = 90;
const RIGHT: u32 = 40;
const TOP: u32 = 36;
const BOTTOM: u32 = 34;
const INK: Rgb<u8> = Rgb([40, 40, 40]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);

/// The panels stacked into one image, with the legend (every distinct label) at the bottom.
pub fn render(panels: &[Panel]) -> RgbImage {
    let mut legend: Vec<(String, Rgb<u8>, Style)> = Vec::new();
    for s in panels.iter().flat_map(|p| &p.series) {
        if !legend.iter().any(|(l, _, _)| *l == s.label) {
            legend.push((s.label.clone(), s.color, s.style));
        }
    }
    let row_h = text_height(SCALE) + 8;
    let legend_h = 12 + legend.len() as u32 * row_h;
    let mut img = RgbImage::from_pixel(
        WIDTH,
        PANEL_H * panels.len() as u32 + legend_h,
        Rgb([255, 255, 255]),
    );
    for (i, p) in panels.iter().enumerate() {
        draw_panel(&mut img, p, i as u32 * PANEL_H);
    }
    let mut y = PANEL_H * panels.len() as u32 + 6;
    for (label, color, style) in &legend {
        let mid = (y + text_height(SCALE) / 2) as f64;
        let (x0, x1) = (LEFT as f64, LEFT as f64 + 40.0);
        line(
            &mut img,
            (x0, mid),
            (x1, mid),
            *color,
            *style == Style::Dashed,
        );
        if *style == Style::Dashed {
            marker(&mut img, (x0 + 20.0, mid), *color);
        }
        draw_text(&mut img, LEFT as i64 + 52, y as i64, label, SCALE, INK);
        y += row_h;
    }
    img
}

/// Lowest and highest of `values`, widened when they are equal.
fn range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return None;
    }
    Some(if lo == hi {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo - pad, hi + pad)
    } else {
        (lo, hi)
    })
}

/// About `n` round tick values inside `[lo, hi]`: 1, 2 or 5 × 10^k apart, the spacing whose
/// count of intervals comes nearest `n`.
pub fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let n = n.max(1) as f64;
    let raw = (hi - lo) / n;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .min_by(|a, b| {
            let off = |s: f64| ((hi - lo) / s - n).abs();
            off(*a).total_cmp(&off(*b))
        })
        .unwrap_or(mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// A tick label: short, without trailing zeros (`0.25`, `1200`, `15k`, `2e-05`).
pub fn tick_label(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if a >= 1e4 {
        let k = v / 1e3;
        if (k - k.round()).abs() < 1e-9 {
            format!("{}k", k.round())
        } else {
            format!("{k:.1}k")
        }
    } else if a < 1e-3 {
        format!("{v:.0e}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn draw_panel(img: &mut RgbImage, p: &Panel, y0: u32) {
    let (x_lo, x_hi) =
        range(p.series.iter().flat_map(|s| s.points.iter().map(|q| q.0))).unwrap_or((0.0, 1.0));
    let (y_lo, y_hi) =
        range(p.series.iter().flat_map(|s| s.points.iter().map(|q| q.1))).unwrap_or((0.0, 1.0));
    let (l, r) = (LEFT as f64, (WIDTH - RIGHT) as f64);
    let (t, b) = ((y0 + TOP) as f64, (y0 + PANEL_H - BOTTOM) as f64);
    let px = |x: f64| l + (x - x_lo) / (x_hi - x_lo) * (r - l);
    let py = |y: f64| b - (y - y_lo) / (y_hi - y_lo) * (b - t);
    draw_text(img, LEFT as i64, y0 as i64 + 10, &p.title, SCALE, INK);
    for v in ticks(y_lo, y_hi, 5) {
        let y = py(v);
        line(img, (l, y), (r, y), GRID, false);
        let label = tick_label(v);
        let w = text_width(&label, SCALE) as i64;
        draw_text(img, l as i64 - 8 - w, y as i64 - 7, &label, SCALE, INK);
    }
    for v in ticks(x_lo, x_hi, 6) {
        let x = px(v);
        line(img, (x, b), (x, b + 5.0), INK, false);
        let label = tick_label(v);
        let w = text_width(&label, SCALE) as i64;
        draw_text(img, x as i64 - w / 2, b as i64 + 9, &label, SCALE, INK);
    }
    line(img, (l, t), (l, b), INK, false);
    line(img, (l, b), (r, b), INK, false);
    for s in &p.series {
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|q| q.1.is_finite())
            .map(|&(x, y)| (px(x), py(y)))
            .collect();
        for w in pts.windows(2) {
            thick_line(img, w[0], w[1], s.color, s.style == Style::Dashed);
        }
        if s.style == Style::Dashed || pts.len() == 1 {
            for &q in &pts {
                marker(img, q, s.color);
            }
        }
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

/// A one-pixel line from `a` to `b`; dashed: 6 pixels on, 4 off.
fn line(img: &mut RgbImage, a: (f64, f64), b: (f64, f64), c: Rgb<u8>, dashed: bool) {
    let n = (b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil().max(1.0) as usize;
    for i in 0..=n {
        if dashed && i % 10 >= 6 {
            continue;
        }
        let f = i as f64 / n as f64;
        let (x, y) = (a.0 + (b.0 - a.0) * f, a.1 + (b.1 - a.1) * f);
        put(img, x.round() as i64, y.round() as i64, c);
    }
}

/// A two-pixel line.
fn thick_line(img: &mut RgbImage, a: (f64, f64), b: (f64, f64), c: Rgb<u8>, dashed: bool) {
    for (dx, dy) in [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)] {
        line(img, (a.0 + dx, a.1 + dy), (b.0 + dx, b.1 + dy), c, dashed);
    }
}

/// A filled 5×5 square centred on `q`.
fn marker(img: &mut RgbImage, q: (f64, f64), c: Rgb<u8>) {
    let (x, y) = (q.0.round() as i64, q.1.round() as i64);
    for dy in -2..=2 {
        for dx in -2..=2 {
            put(img, x + dx, y + dy, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_inside_the_range() {
        assert_eq!(
            ticks(0.0, 1.0, 5),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        assert_eq!(ticks(13.0, 97.0, 4), vec![20.0, 40.0, 60.0, 80.0]);
        assert_eq!(
            ticks(0.0, 1200.0, 6),
            (0..=6).map(|k| k as f64 * 200.0).collect::<Vec<_>>()
        );
        assert_eq!(tick_label(0.25), "0.25");
        assert_eq!(tick_label(1200.0), "1200");
        assert_eq!(tick_label(15000.0), "15k");
        assert_eq!(tick_label(0.00002), "2e-5");
    }

    #[test]
    fn each_series_is_drawn_in_its_colour() {
        let panel = Panel {
            title: "loss".into(),
            series: vec![
                Series {
                    label: "a train".into(),
                    color: PALETTE[0],
                    style: Style::Solid,
                    points: vec![(0.0, 1.0), (10.0, 0.5), (20.0, 0.2)],
                },
                Series {
                    label: "a val".into(),
                    color: PALETTE[1],
                    style: Style::Dashed,
                    points: vec![(10.0, 0.6), (20.0, 0.4)],
                },
            ],
        };
        let img = render(&[panel]);
        assert_eq!(img.width(), WIDTH);
        let count = |c: Rgb<u8>| img.pixels().filter(|p| **p == c).count();
        assert!(count(PALETTE[0]) > 200 && count(PALETTE[1]) > 50);
        assert_eq!(count(PALETTE[2]), 0);
    }
}
