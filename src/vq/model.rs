//! The MoVQ autoencoder: encoder → quant_conv → multichannel quantizer → post_quant_conv →
//! spatially modulated decoder.

use candle_core::{DType, Module, Result, Tensor};

use crate::config::VqConfig;
use crate::nn::layers::{conv1x1, Conv2d};
use crate::nn::params::ParamStore;
use crate::vq::decoder::Decoder;
use crate::vq::encoder::Encoder;
use crate::vq::quantizer::{QuantOutput, Quantizer};

#[derive(Debug, Clone)]
pub struct MoVq {
    encoder: Encoder,
    quant_conv: Conv2d,
    quantize: Quantizer,
    post_quant_conv: Conv2d,
    decoder: Decoder,
    cfg: VqConfig,
    /// Compute dtype of the encoder and decoder (f32, or bf16 for mixed precision).
    dtype: DType,
}

impl MoVq {
    /// Builds the model in `store` (new seeded weights, or the existing variables of that name).
    pub fn new(cfg: &VqConfig, store: &ParamStore) -> Result<Self> {
        let vb = store.var_builder();
        let e = cfg.embed_dim();
        Ok(Self {
            encoder: Encoder::new(cfg, vb.pp("encoder"))?,
            quant_conv: conv1x1(cfg.z_channels, e, vb.pp("quant_conv"))?,
            quantize: Quantizer::new(&cfg.quantizer, vb.pp("quantize"), store)?,
            post_quant_conv: conv1x1(e, cfg.z_channels, vb.pp("post_quant_conv"))?,
            decoder: Decoder::new(cfg, vb.pp("decoder"))?,
            cfg: cfg.clone(),
            dtype: DType::F32,
        })
    }

    /// The same model computing its encoder and decoder in `dtype` (weights, quantizer and
    /// outputs stay f32).
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    pub fn config(&self) -> &VqConfig {
        &self.cfg
    }

    pub fn quantizer(&self) -> &Quantizer {
        &self.quantize
    }

    /// RGB images `[B, 3, H, W]` as the model reads them: unchanged for an RGB model, the mean
    /// of the three channels for a greyscale one (greyscale data arrives with R = G = B).
    pub fn image_input(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        let (r, ic) = (self.cfg.resolution, self.cfg.image_channels());
        if h != r || w != r || (c != 3 && c != ic) {
            candle_core::bail!(
                "the model takes [B, {ic}, {r}, {r}] images, got [_, {c}, {h}, {w}]"
            );
        }
        if c == ic {
            Ok(x.clone())
        } else {
            x.mean_keepdim(1)
        }
    }

    /// Image `[B, 3 or image_channels, H, W]` in [-1, 1] → continuous latent
    /// `[B, embed_dim, h, w]`.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.image_input(x)?;
        let h = self.encoder.forward(&x.to_dtype(self.dtype)?)?;
        self.quant_conv.forward(&h)?.to_dtype(DType::F32)
    }

    /// Quantized latent `[B, embed_dim, h, w]` → image `[B, image_channels, H, W]` (f32).
    pub fn decode(&self, zq: &Tensor) -> Result<Tensor> {
        let zq = zq.to_dtype(self.dtype)?;
        self.decoder
            .forward(&self.post_quant_conv.forward(&zq)?, &zq)?
            .to_dtype(DType::F32)
    }

    /// Code indices `[B, c, h, w]` → image.
    pub fn decode_indices(&self, indices: &Tensor) -> Result<Tensor> {
        self.decode(&self.quantize.lookup(indices)?)
    }

    /// Inference reconstruction: encode → quantize → decode the codes themselves (no
    /// straight-through arithmetic, so it equals `decode_indices` of the same indices).
    pub fn reconstruct(&self, x: &Tensor) -> Result<(Tensor, QuantOutput)> {
        let q = self.quantize.forward(&self.encode(x)?)?;
        Ok((self.decode_indices(&q.indices)?, q))
    }

    /// encode → quantize → decode (training: the decoder sees the straight-through latent);
    /// returns the reconstruction and the quantizer's output.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, QuantOutput)> {
        let q = self.quantize.forward(&self.encode(x)?)?;
        Ok((self.decode(&q.zq)?, q))
    }
}
