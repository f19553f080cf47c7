//! LPIPS v0.1 (Zhang et al. 2018): the distance between two images as the spatially averaged,
//! linearly weighted squared difference of channel-normalised features of a pretrained network
//! (AlexNet or VGG16), summed over five layers.
//!
//! Weights: `lpips-alex.safetensors` / `lpips-vgg.safetensors`, written by `scripts/get-weights`
//! into the movq cache (`MOVQ_CACHE`, default `~/.cache/movq`): `net.N.weight` `[O, I, k, k]`,
//! `net.N.bias`, `lin.N.weight` `[1, C, 1, 1]`. The backbone is recognised from the file
//! (AlexNet's first kernel is 11×11) and the channel counts are read from it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::metrics::cache_dir;
use candle_core::{DType, Device, Tensor, D};

/// Which pretrained backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backbone {
    Alex,
    Vgg,
}

impl Backbone {
    fn file_name(self) -> &'static str {
        match self {
            Backbone::Alex => "lpips-alex.safetensors",
            Backbone::Vgg => "lpips-vgg.safetensors",
        }
    }
}

/// Where the weights of `backbone` are looked for when no file is given.
pub fn default_weights(backbone: Backbone) -> PathBuf {
    cache_dir().join(backbone.file_name())
}

/// `explicit` if given (it must exist), else the default location if the file is there.
pub fn locate(explicit: Option<&Path>, backbone: Backbone) -> Result<Option<PathBuf>> {
    match explicit {
        Some(p) if p.is_file() => Ok(Some(p.to_path_buf())),
        Some(p) => bail!(
            "LPIPS weights {} not found; `bash scripts/get-weights` writes them to {}",
            p.display(),
            cache_dir().display()
        ),
        None => {
            let p = default_weights(backbone);
            Ok(p.is_file().then_some(p))
        }
    }
}

/// How to get the weights, for messages.
pub fn missing_note(backbone: Backbone) -> String {
    format!(
        "LPIPS weights not found at {} (run `bash scripts/get-weights`, or pass --lpips-weights FILE)",
        default_weights(backbone).display()
    )
}

/// The smallest image side LPIPS takes as it is.
pub const MIN_SIDE: usize = 32;

#[derive(Debug, Clone)]
pub struct Lpips {
    backbone: Backbone,
    /// (weight, bias, stride, padding) per convolution.
    convs: Vec<(Tensor, Tensor, usize, usize)>,
    /// `[1, C, 1, 1]` per tapped layer.
    lins: Vec<Tensor>,
    shift: Tensor,
    scale: Tensor,
}

impl Lpips {
    /// Loads a weight file (frozen: no gradient is kept for the network's weights).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let mut tensors = candle_core::safetensors::load(path, device)
            .with_context(|| format!("cannot read LPIPS weights {}", path.display()))?;
        let mut take = |name: String| -> Result<Tensor> {
            tensors
                .remove(&name)
                .with_context(|| format!("{}: no tensor {name}", path.display()))
                .and_then(|t| Ok(t.to_dtype(DType::F32)?.detach()))
        };
        let mut raw = Vec::new();
        for i in 0.. {
            match take(format!("net.{i}.weight")) {
                Ok(w) => raw.push((w, take(format!("net.{i}.bias"))?)),
                Err(_) => break,
            }
        }
        let lins = (0..5)
            .map(|j| take(format!("lin.{j}.weight")))
            .collect::<Result<Vec<_>>>()?;
        let backbone = match raw.first().map(|(w, _)| w.dim(3)).transpose()? {
            Some(11) if raw.len() == 5 => Backbone::Alex,
            Some(3) if raw.len() == 13 => Backbone::Vgg,
            _ => bail!(
                "{}: neither the AlexNet (5 convolutions, 11×11 first) nor the VGG16 (13 3×3 convolutions) layout",
                path.display()
            ),
        };
        let convs = raw
            .into_iter()
            .enumerate()
            .map(|(i, (w, b))| {
                let k = w.dim(3)?;
                let (stride, pad) = match (backbone, i) {
                    (Backbone::Alex, 0) => (4, 2),
                    _ => (1, k / 2),
                };
                Ok((w, b, stride, pad))
            })
            .collect::<Result<Vec<_>>>()?;
        let col = |v: [f32; 3]| Tensor::new(&v, device)?.reshape((1, 3, 1, 1));
        Ok(Self {
            backbone,
            convs,
            lins,
            shift: col([-0.030, -0.088, -0.188])?,
            scale: col([0.458, 0.448, 0.450])?,
        })
    }

    pub fn backbone(&self) -> Backbone {
        self.backbone
    }

    /// The five tapped ReLU outputs for `x` `[B, 3, H, W]` (already scaled).
    fn features(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let mut taps = Vec::with_capacity(5);
        let mut h = x.clone();
        for (i, (w, b, stride, pad)) in self.convs.iter().enumerate() {
            let n = b.dim(0)?;
            h = h
                .conv2d(w, *pad, *stride, 1, 1)?
                .broadcast_add(&b.reshape((1, n, 1, 1))?)?
                .relu()?;
            match self.backbone {
                Backbone::Alex => {
                    taps.push(h.clone());
                    if i < 2 {
                        h = h.max_pool2d_with_stride(3, 2)?;
                    }
                }
                Backbone::Vgg => {
                    if [1, 3, 6, 9, 12].contains(&i) {
                        taps.push(h.clone());
                        if i != 12 {
                            h = h.max_pool2d_with_stride(2, 2)?;
                        }
                    }
                }
            }
        }
        Ok(taps)
    }

    /// LPIPS between `x` and `y` (`[B, 3, H, W]` in [-1, 1]) → `[B]`; differentiable in the
    /// images (for the perceptual loss). Images smaller than [`MIN_SIDE`] (AlexNet's pooling
    /// needs 32 pixels) are first enlarged by the smallest whole factor that reaches it, nearest
    /// neighbour.
    pub fn distance(&self, x: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        if h.min(w) < MIN_SIDE {
            let k = MIN_SIDE.div_ceil(h.min(w).max(1));
            let up = |t: &Tensor| t.upsample_nearest2d(h * k, w * k);
            return self.distance(&up(x)?, &up(y)?);
        }
        // a greyscale image is seen as RGB with three equal channels
        let prep = |t: &Tensor| -> candle_core::Result<Tensor> {
            let t = if t.dim(1)? == 1 {
                t.repeat((1, 3, 1, 1))?
            } else {
                t.clone()
            };
            t.to_dtype(DType::F32)?
                .broadcast_sub(&self.shift)?
                .broadcast_div(&self.scale)
        };
        let fx = self.features(&prep(x)?)?;
        let fy = self.features(&prep(y)?)?;
        let unit = |f: &Tensor| -> candle_core::Result<Tensor> {
            // ‖f‖ + 1e-10 as in the reference; the 1e-20 under the root keeps the gradient finite
            // where every channel is zero (it changes no value above 1e-10)
            let norm = ((f.sqr()?.sum_keepdim(1)? + 1e-20)?.sqrt()? + 1e-10)?;
            f.broadcast_div(&norm)
        };
        let mut total: Option<Tensor> = None;
        for ((a, b), lin) in fx.iter().zip(&fy).zip(&self.lins) {
            let d = (unit(a)? - unit(b)?)?.sqr()?;
            let layer = d
                .broadcast_mul(lin)?
                .sum(1)? // [B, H, W]
                .flatten_from(1)?
                .mean(D::Minus1)?; // [B]
            total = Some(match total {
                None => layer,
                Some(t) => (t + layer)?,
            });
        }
        total.ok_or_else(|| candle_core::Error::Msg("LPIPS has no layers".into()))
    }
}

/// The LPIPS network of `backbone` on `device`, from `explicit` or the movq cache; `None` (with
/// a note on stderr) when its weights are not installed and no file was named.
pub fn load_optional(
    backbone: Backbone,
    explicit: Option<&Path>,
    device: &Device,
) -> Result<Option<Lpips>> {
    match locate(explicit, backbone)? {
        Some(path) => Ok(Some(Lpips::load(&path, device)?)),
        None => {
            eprintln!("note: LPIPS left out: {}", missing_note(backbone));
            Ok(None)
        }
    }
}

/// LPIPS between two same-sized images (uint8, as the other metrics see them).
pub fn image_distance(
    net: &Lpips,
    a: &image::RgbImage,
    b: &image::RgbImage,
    device: &Device,
) -> Result<f64> {
    use crate::data::image::images_to_tensor;
    let d = net.distance(
        &images_to_tensor(std::slice::from_ref(a), device)?,
        &images_to_tensor(std::slice::from_ref(b), device)?,
    )?;
    Ok(d.to_vec1::<f32>()?[0] as f64)
}
