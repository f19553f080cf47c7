//! Editing with the masked transformer (MaskGIT's inpainting, outpainting and class-conditional
//! editing): a canvas of tokens, some known and some to regenerate, completed by MaskGIT
//! decoding with the known tokens fixed.
//!
//! - The token rule: a latent position is regenerated when its cell (the `f × f` pixels it
//!   decodes to) overlaps the pixel mask, in every quantizer channel; `dilate` grows the set by
//!   that many positions in each direction (including diagonals).
//! - A canvas larger than the trained grid (outpainting) is filled by windows of the trained
//!   size, slid in raster order (top to bottom, left to right within a row of windows) with a
//!   stride of half a window, the last window of a row or column aligned to the canvas edge.
//!   Each window is completed from every token known at that moment — the input's and those
//!   filled by earlier windows — and only its unknown tokens are written.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use image::GrayImage;
use rand::Rng;

use crate::transformer::maskgit::{complete, SamplerOptions};
use crate::transformer::{MaskTransformer, TokenLayout};

/// A grid of `h × w` positions with `c` tokens each; unknown tokens hold the mask id.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenCanvas {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    /// Row-major `(y, x, channel)`.
    pub tokens: Vec<u32>,
}

impl TokenCanvas {
    /// The canvas of code indices `[1, c, h, w]`.
    pub fn from_indices(indices: &Tensor) -> Result<Self> {
        let (b, c, h, w) = indices.dims4()?;
        if b != 1 {
            bail!("a token canvas holds one image, got {b}");
        }
        let tokens = indices
            .to_dtype(candle_core::DType::U32)?
            .squeeze(0)?
            .permute((1, 2, 0))?
            .flatten_all()?
            .to_device(&Device::Cpu)?
            .to_vec1()?;
        Ok(Self { h, w, c, tokens })
    }

    /// Code indices `[1, c, h, w]` on `device`.
    pub fn to_indices(&self, device: &Device) -> Result<Tensor> {
        Ok(
            Tensor::from_vec(self.tokens.clone(), (self.h, self.w, self.c), device)?
                .permute((2, 0, 1))?
                .unsqueeze(0)?
                .contiguous()?,
        )
    }

    fn at(&self, y: usize, x: usize, ch: usize) -> usize {
        (y * self.w + x) * self.c + ch
    }

    /// Marks every channel of the positions where `positions` (row-major `h × w`) is true as
    /// unknown.
    pub fn forget(&mut self, positions: &[bool], mask_id: u32) {
        for (p, _) in positions.iter().enumerate().filter(|(_, m)| **m) {
            for ch in 0..self.c {
                self.tokens[p * self.c + ch] = mask_id;
            }
        }
    }

    /// The canvas grown by whole positions on each side, the new ones unknown.
    pub fn extend(&self, margins: Margins, mask_id: u32) -> Self {
        let (h, w) = (
            self.h + margins.top + margins.bottom,
            self.w + margins.left + margins.right,
        );
        let mut out = Self {
            h,
            w,
            c: self.c,
            tokens: vec![mask_id; h * w * self.c],
        };
        for y in 0..self.h {
            for x in 0..self.w {
                for ch in 0..self.c {
                    let to = out.at(y + margins.top, x + margins.left, ch);
                    out.tokens[to] = self.tokens[self.at(y, x, ch)];
                }
            }
        }
        out
    }

    /// Positions (row-major) with at least one unknown token.
    pub fn unknown_positions(&self, mask_id: u32) -> Vec<bool> {
        self.tokens
            .chunks(self.c)
            .map(|t| t.contains(&mask_id))
            .collect()
    }

    /// Completes every unknown token with MaskGIT decoding conditioned on `cond`, the known
    /// ones fixed: in one pass when the canvas has the trained size, else by sliding windows
    /// (see the module's notes). Random draws come from `rng`.
    pub fn fill(
        &mut self,
        model: &MaskTransformer,
        cond: u32,
        opts: &SamplerOptions,
        rng: &mut impl Rng,
        device: &Device,
    ) -> Result<()> {
        let layout: TokenLayout = *model.layout();
        if self.c != layout.channels || self.h < layout.h || self.w < layout.w {
            bail!(
                "a {}×{}×{} token canvas does not hold the model's {}×{}×{} grid",
                self.h,
                self.w,
                self.c,
                layout.h,
                layout.w,
                layout.channels
            );
        }
        let mask_id = layout.mask_id();
        for y0 in window_starts(self.h, layout.h) {
            for x0 in window_starts(self.w, layout.w) {
                let mut row = Vec::with_capacity(layout.seq_len());
                for y in y0..y0 + layout.h {
                    for x in x0..x0 + layout.w {
                        for ch in 0..self.c {
                            row.push(self.tokens[self.at(y, x, ch)]);
                        }
                    }
                }
                if !row.contains(&mask_id) {
                    continue;
                }
                let mut rows = vec![row];
                complete(model, &mut rows, &[cond], opts, rng, device)?;
                let mut k = 0;
                for y in y0..y0 + layout.h {
                    for x in x0..x0 + layout.w {
                        for ch in 0..self.c {
                            let i = self.at(y, x, ch);
                            self.tokens[i] = rows[0][k];
                            k += 1;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Start offsets of windows of `size` over `n` positions: every half window, the last one
/// aligned to the end.
pub fn window_starts(n: usize, size: usize) -> Vec<usize> {
    let stride = (size / 2).max(1);
    let mut starts: Vec<usize> = (0..=n.saturating_sub(size)).step_by(stride).collect();
    let last = n.saturating_sub(size);
    if starts.last() != Some(&last) {
        starts.push(last);
    }
    starts
}

/// Positions added on each side of a canvas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Margins {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

impl Margins {
    /// Parses `right=64,bottom=32` (pixels; each side at most once) into whole positions of
    /// `factor` pixels, rounding up.
    pub fn parse(spec: &str, factor: usize) -> Result<Self> {
        let mut m = Margins::default();
        let mut seen = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((side, px)) = part.split_once('=') else {
                bail!("--extend {spec}: `{part}` is not side=pixels (sides: top, bottom, left, right)");
            };
            let px: usize = px.trim().parse().map_err(|_| {
                anyhow::anyhow!("--extend {spec}: `{px}` is not a number of pixels")
            })?;
            let side = side.trim();
            if seen.contains(&side.to_string()) {
                bail!("--extend {spec}: `{side}` is given twice");
            }
            seen.push(side.to_string());
            let n = px.div_ceil(factor);
            match side {
                "top" => m.top = n,
                "bottom" => m.bottom = n,
                "left" => m.left = n,
                "right" => m.right = n,
                other => bail!(
                    "--extend {spec}: unknown side `{other}` (sides: top, bottom, left, right)"
                ),
            }
        }
        if m == Margins::default() {
            bail!("--extend {spec}: nothing to extend (give side=pixels, e.g. right=64)");
        }
        Ok(m)
    }
}

/// The token rule: position `(y, x)` of an `h × w` grid is regenerated when its `f × f` cell
/// of `mask` (white: any value ≥ 128) has a marked pixel; then grown by `dilate` positions.
pub fn token_mask(mask: &GrayImage, f: usize, h: usize, w: usize, dilate: usize) -> Vec<bool> {
    let mut out = vec![false; h * w];
    for (px, py, v) in mask.enumerate_pixels() {
        let (y, x) = (py as usize / f, px as usize / f);
        if v.0[0] >= 128 && y < h && x < w {
            out[y * w + x] = true;
        }
    }
    if dilate == 0 {
        return out;
    }
    let mut grown = out.clone();
    for y in 0..h {
        for x in 0..w {
            if !out[y * w + x] {
                continue;
            }
            for yy in y.saturating_sub(dilate)..(y + dilate + 1).min(h) {
                for xx in x.saturating_sub(dilate)..(x + dilate + 1).min(w) {
                    grown[yy * w + xx] = true;
                }
            }
        }
    }
    grown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_is_masked_when_its_cell_overlaps_the_mask() {
        // 8×8 pixels, f = 4: one white pixel in the cell of position (1, 0)
        let mut mask = GrayImage::new(8, 8);
        mask.put_pixel(2, 5, image::Luma([200]));
        mask.put_pixel(7, 0, image::Luma([100])); // below 128: not marked
        assert_eq!(
            token_mask(&mask, 4, 2, 2, 0),
            vec![false, false, true, false]
        );
        assert_eq!(token_mask(&mask, 4, 2, 2, 1), vec![true; 4]);
    }

    #[test]
    fn windows_cover_the_canvas_with_half_a_window_of_overlap() {
        assert_eq!(window_starts(8, 8), vec![0]);
        assert_eq!(window_starts(12, 8), vec![0, 4]);
        assert_eq!(window_starts(13, 8), vec![0, 4, 5]);
        assert_eq!(window_starts(6, 3), vec![0, 1, 2, 3]);
    }

    #[test]
    fn margins_round_up_to_whole_positions() {
        let m = Margins::parse("right=64, bottom=30", 16).unwrap();
        assert_eq!((m.top, m.bottom, m.left, m.right), (0, 2, 0, 4));
        for bad in ["right", "middle=3", "left=x", "top=4,top=8", ""] {
            assert!(Margins::parse(bad, 4).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_extended_canvas_keeps_the_original_tokens_in_place() {
        let c = TokenCanvas {
            h: 2,
            w: 2,
            c: 2,
            tokens: (0..8).collect(),
        };
        let m = Margins {
            top: 1,
            left: 1,
            ..Margins::default()
        };
        let e = c.extend(m, 99);
        assert_eq!((e.h, e.w), (3, 3));
        assert_eq!(e.tokens[e.at(1, 1, 0)], 0);
        assert_eq!(e.tokens[e.at(2, 2, 1)], 7);
        assert_eq!(e.unknown_positions(99).iter().filter(|u| **u).count(), 5);
    }
}
