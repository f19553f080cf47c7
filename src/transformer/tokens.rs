//! Token layout of stage 2.
//!
//! Stage-1 indices `[B, c, h, w]` flatten to a sequence of `L = h·w·c` tokens in (row, column,
//! channel) order: token `i` is channel `i mod c` of position `i div c`, and position `p` is row
//! `p div w`, column `p mod w`. The vocabulary is the `K` codes plus one `[MASK]` id, `K`.
//! Conditioning is one extra token before the sequence, from its own table of `n_classes + 1`
//! ids: a class, or the "no class" id `n_classes`.

use candle_core::{DType, Device, Result, Tensor};

/// Sizes of the token grid and vocabularies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLayout {
    pub h: usize,
    pub w: usize,
    pub channels: usize,
    pub codebook_size: usize,
    pub n_classes: usize,
}

impl TokenLayout {
    /// "128 tokens per image (8×8×2), 10 classes" (or "…, unconditional").
    pub fn describe(&self) -> String {
        let classes = match self.n_classes {
            0 => "unconditional".to_string(),
            n => format!("{n} classes"),
        };
        format!(
            "{} tokens per image ({}×{}×{}), {classes}",
            self.seq_len(),
            self.h,
            self.w,
            self.channels
        )
    }

    /// The layout of a stage-1 model's codes with `n_classes` classes.
    pub fn of(vq: &crate::config::VqConfig, n_classes: usize) -> Self {
        Self {
            h: vq.latent_size(),
            w: vq.latent_size(),
            channels: vq.quantizer.channels,
            codebook_size: vq.quantizer.codebook_size,
            n_classes,
        }
    }

    /// Sequence length `h·w·c` (the conditioning token not counted).
    pub fn seq_len(&self) -> usize {
        self.h * self.w * self.channels
    }

    /// Spatial positions per channel.
    pub fn positions(&self) -> usize {
        self.h * self.w
    }

    /// The `[MASK]` id.
    pub fn mask_id(&self) -> u32 {
        self.codebook_size as u32
    }

    /// Input vocabulary: codes + `[MASK]`.
    pub fn vocab_size(&self) -> usize {
        self.codebook_size + 1
    }

    /// The "no class" conditioning id.
    pub fn no_class(&self) -> u32 {
        self.n_classes as u32
    }

    /// Sequence index of channel `ch` at spatial position `pos`.
    pub fn index(&self, pos: usize, ch: usize) -> usize {
        pos * self.channels + ch
    }

    /// Indices `[B, c, h, w]` → rows of `L` tokens.
    pub fn to_sequences(&self, indices: &Tensor) -> Result<Vec<Vec<u32>>> {
        let (b, c, h, w) = indices.dims4()?;
        if (c, h, w) != (self.channels, self.h, self.w) {
            candle_core::bail!(
                "token grid is [{c}, {h}, {w}] but the transformer expects [{}, {}, {}]",
                self.channels,
                self.h,
                self.w
            );
        }
        let seq = indices
            .to_dtype(DType::U32)?
            .permute((0, 2, 3, 1))?
            .reshape((b, h * w * c))?;
        seq.to_device(&Device::Cpu)?.to_vec2()
    }

    /// Rows of `L` tokens → indices `[B, c, h, w]`.
    pub fn to_indices(&self, rows: &[Vec<u32>], device: &Device) -> Result<Tensor> {
        let flat: Vec<u32> = rows.iter().flatten().copied().collect();
        Tensor::from_vec(flat, (rows.len(), self.h, self.w, self.channels), device)?
            .permute((0, 3, 1, 2))?
            .contiguous()
    }
}
