//! The multichannel vector quantizer of MoVQ.
//!
//! A latent `[B, c·d, h, w]` is viewed as `c` vectors of `d = code_dim` per position (chunk `j`
//! is channels `j·d .. (j+1)·d`); each vector is replaced by its nearest code of one shared
//! codebook `[K, d]`. With `c = 1` this is the plain VQGAN quantizer.

use candle_core::{DType, Result, Tensor, Var, D};
use candle_nn::{Init, VarBuilder};
use rand::Rng;

use crate::config::{CodebookUpdate, QuantizerConfig, QuantizerGradient};
use crate::nn::params::ParamStore;
use crate::vq::entropy::entropy_penalty;
use crate::vq::rotation::rotate_onto;

/// Decay of the running per-code usage that decides which codes are dead.
const USAGE_DECAY: f64 = 0.99;

#[derive(Debug, Clone)]
pub struct Quantizer {
    cfg: QuantizerConfig,
    /// `[K, d]`
    embedding: Var,
    /// Running assignment counts per code `[K]` (EMA, decay 0.99), for dead-code restarts.
    usage: Var,
    /// EMA codebook statistics: cluster sizes `[K]` and summed vectors `[K, d]`.
    ema: Option<(Var, Var)>,
    /// Inference only: the codebook is used detached (see [`ParamStore::frozen`]).
    frozen: bool,
}

/// What the quantizer returns for a latent batch.
#[derive(Debug, Clone)]
pub struct QuantOutput {
    /// `[B, c·d, h, w]`, quantized values with the straight-through gradient of the latent.
    pub zq: Tensor,
    /// `[B, c, h, w]` code indices (u32).
    pub indices: Tensor,
    /// Scalar codebook loss + β·commitment loss (β·commitment alone with EMA updates).
    pub loss: Tensor,
    /// `[B·c·h·w, d]` the (normalised, if configured) latent vectors, detached; for EMA updates
    /// and restarts.
    pub vectors: Tensor,
}

impl Quantizer {
    pub fn new(cfg: &QuantizerConfig, vb: VarBuilder, store: &ParamStore) -> Result<Self> {
        let (k, d) = (cfg.codebook_size, cfg.code_dim);
        let bound = 1.0 / k as f64;
        vb.get_with_hints(
            (k, d),
            "embedding.weight",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        vb.get_with_hints(k, "buffers.usage", Init::Const(0.0))?;
        let var = |name: &str| -> Result<Var> {
            let full = format!("{}.{name}", vb.prefix());
            store.get_var(&full).ok_or_else(|| {
                candle_core::Error::Msg(format!("missing quantizer variable {full}"))
            })
        };
        let ema = match cfg.update {
            CodebookUpdate::Gradient => None,
            CodebookUpdate::Ema { .. } => {
                vb.get_with_hints(k, "buffers.ema_cluster_size", Init::Const(1.0))?;
                let embed = var("embedding.weight")?;
                vb.get_with_hints((k, d), "buffers.ema_embed_sum", Init::Const(0.0))?;
                let sum = var("buffers.ema_embed_sum")?;
                sum.set(embed.as_tensor())?;
                Some((var("buffers.ema_cluster_size")?, sum))
            }
        };
        Ok(Self {
            cfg: cfg.clone(),
            embedding: var("embedding.weight")?,
            usage: var("buffers.usage")?,
            ema,
            frozen: store.is_frozen(),
        })
    }

    /// The codebook as used for lookups: `[K, d]`, l2-normalised when configured.
    pub fn codebook(&self) -> Result<Tensor> {
        let e = if self.frozen {
            self.embedding.as_tensor().detach()
        } else {
            self.embedding.as_tensor().clone()
        };
        if self.cfg.l2_normalize {
            l2_normalize(&e)
        } else {
            Ok(e)
        }
    }

    /// Index of the nearest code for each row of `vectors` `[N, d]` → `[N]` u32, with one matmul:
    /// `argmin_k ‖e_k‖²/2 − x·e_k`.
    pub fn nearest(vectors: &Tensor, codebook: &Tensor) -> Result<Tensor> {
        let half_sq = (codebook.sqr()?.sum(1)? * 0.5)?; // [K]
        let scores = vectors.matmul(&codebook.t()?)?; // [N, K]
        half_sq.broadcast_sub(&scores)?.argmin(D::Minus1)
    }

    /// `z`: `[B, c·d, h, w]` → quantized latent, indices and loss.
    pub fn forward(&self, z: &Tensor) -> Result<QuantOutput> {
        let (b, e, h, w) = z.dims4()?;
        let (c, d) = (self.cfg.channels, self.cfg.code_dim);
        if e != c * d {
            candle_core::bail!(
                "quantizer expects {} latent channels ({c} × {d}), got {e}",
                c * d
            );
        }
        let mut zf = z
            .reshape((b, c, d, h, w))?
            .permute((0, 1, 3, 4, 2))? // [B, c, h, w, d]
            .reshape((b * c * h * w, d))?;
        if self.cfg.l2_normalize {
            zf = l2_normalize(&zf)?;
        }
        let codebook = self.codebook()?;
        let indices = crate::profile::scope(
            || "quantizer search".into(),
            z.device(),
            || Self::nearest(&zf.detach(), &codebook.detach()),
        )?;
        let zq = crate::ops::embedding::embed(&codebook, &indices)?; // [N, d]
        let commitment = (&zf - zq.detach())?.sqr()?.mean_all()?;
        let mut loss = match self.ema {
            Some(_) => (commitment * self.cfg.beta)?,
            None => {
                let codebook_loss = (&zq - zf.detach())?.sqr()?.mean_all()?;
                (codebook_loss + (commitment * self.cfg.beta)?)?
            }
        };
        if self.cfg.entropy_weight > 0.0 {
            let penalty = entropy_penalty(&zf, &codebook, self.cfg.entropy_temperature)?;
            loss = (loss + (penalty * self.cfg.entropy_weight)?)?;
        }
        let zq_st = match self.cfg.gradient {
            QuantizerGradient::Ste => (&zf + (&zq - &zf)?.detach())?,
            QuantizerGradient::Rotation => rotate_onto(&zf, &zq)?,
        };
        let zq_st = zq_st
            .reshape((b, c, h, w, d))?
            .permute((0, 1, 4, 2, 3))? // [B, c, d, h, w]
            .reshape((b, e, h, w))?;
        Ok(QuantOutput {
            zq: zq_st,
            indices: indices.reshape((b, c, h, w))?,
            loss,
            vectors: zf.detach(),
        })
    }

    /// Latent `[B, c·d, h, w]` for code indices `[B, c, h, w]`.
    pub fn lookup(&self, indices: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = indices.dims4()?;
        let d = self.cfg.code_dim;
        let flat = indices.flatten_all()?.to_dtype(DType::U32)?;
        self.codebook()?
            .index_select(&flat, 0)?
            .reshape((b, c, h, w, d))?
            .permute((0, 1, 4, 2, 3))?
            .reshape((b, c * d, h, w))?
            .contiguous()
    }

    /// This rank's code statistics of a forward pass, packed in one f32 vector so that ranks
    /// sum them with one collective: the assignment count of every code `[K]`, then (EMA
    /// updates) the sum of the vectors assigned to it `[K·d]`.
    pub fn statistics(&self, out: &QuantOutput) -> Result<Tensor> {
        let k = self.cfg.codebook_size;
        let dev = out.vectors.device();
        let idx = out.indices.flatten_all()?;
        let n = idx.dim(0)?;
        let counts = Tensor::zeros(k, DType::F32, dev)?.index_add(
            &idx,
            &Tensor::ones(n, DType::F32, dev)?,
            0,
        )?;
        match &self.ema {
            Some((_, sum)) => {
                let sums = Tensor::zeros(sum.shape(), DType::F32, dev)?.index_add(
                    &idx,
                    &out.vectors,
                    0,
                )?;
                Tensor::cat(&[counts, sums.flatten_all()?], 0)
            }
            None => Ok(counts),
        }
    }

    /// Training-time codebook maintenance after a forward pass, from the whole batch's
    /// statistics (every rank's [`Self::statistics`], summed): running usage, the EMA codebook
    /// update, and (every `restart.every` steps, on the rank `restarts` says) restart of dead
    /// codes from this rank's `vectors`. Returns how many codes were restarted. Ranks that
    /// restart differently must then agree through [`Self::state`] / [`Self::set_state`].
    pub fn apply(
        &self,
        stats: &Tensor,
        vectors: &Tensor,
        step: usize,
        rng: &mut impl Rng,
        restarts: bool,
    ) -> Result<usize> {
        let k = self.cfg.codebook_size;
        let counts = stats.narrow(0, 0, k)?;
        let usage = ((self.usage.as_tensor() * USAGE_DECAY)? + (&counts * (1.0 - USAGE_DECAY))?)?;
        self.usage.set(&usage)?;
        if let (Some((size, sum)), CodebookUpdate::Ema { decay, epsilon }) =
            (&self.ema, &self.cfg.update)
        {
            let sums = stats.narrow(0, k, sum.elem_count())?.reshape(sum.shape())?;
            let new_size = ((size.as_tensor() * *decay)? + (&counts * (1.0 - decay))?)?;
            let new_sum = ((sum.as_tensor() * *decay)? + (sums * (1.0 - decay))?)?;
            let total = new_size.sum_all()?.to_scalar::<f32>()? as f64;
            let smoothed = ((((&new_size + *epsilon)? / (total + k as f64 * epsilon))?) * total)?;
            self.embedding
                .set(&new_sum.broadcast_div(&smoothed.unsqueeze(1)?)?)?;
            size.set(&new_size)?;
            sum.set(&new_sum)?;
        }
        match &self.cfg.restart_dead_codes {
            Some(r) if restarts && self.restart_due(step) => {
                self.restart_dead(vectors, r.threshold, rng)
            }
            _ => Ok(0),
        }
    }

    /// [`Self::apply`] with this batch's own statistics (a single process).
    pub fn update(&self, out: &QuantOutput, step: usize, rng: &mut impl Rng) -> Result<usize> {
        self.apply(&self.statistics(out)?, &out.vectors, step, rng, true)
    }

    /// Whether dead codes are restarted after step `step`.
    pub fn restart_due(&self, step: usize) -> bool {
        self.cfg
            .restart_dead_codes
            .as_ref()
            .is_some_and(|r| step > 0 && step.is_multiple_of(r.every))
    }

    /// The codebook's trained state (codes, usage, EMA statistics) as one f32 vector.
    pub fn state(&self) -> Result<Tensor> {
        let mut parts = vec![
            self.embedding.as_tensor().flatten_all()?,
            self.usage.as_tensor().clone(),
        ];
        if let Some((size, sum)) = &self.ema {
            parts.push(size.as_tensor().clone());
            parts.push(sum.as_tensor().flatten_all()?);
        }
        Tensor::cat(&parts, 0)
    }

    /// Restores what [`Self::state`] packed.
    pub fn set_state(&self, state: &Tensor) -> Result<()> {
        let mut at = 0;
        let mut take = |v: &Var| -> Result<()> {
            let n = v.elem_count();
            v.set(&state.narrow(0, at, n)?.reshape(v.shape())?)?;
            at += n;
            Ok(())
        };
        take(&self.embedding)?;
        take(&self.usage)?;
        if let Some((size, sum)) = &self.ema {
            take(size)?;
            take(sum)?;
        }
        Ok(())
    }

    fn restart_dead(&self, vectors: &Tensor, threshold: f64, rng: &mut impl Rng) -> Result<usize> {
        let usage: Vec<f32> = self.usage.as_tensor().to_vec1()?;
        let dead: Vec<usize> = (0..usage.len())
            .filter(|&i| (usage[i] as f64) < threshold)
            .collect();
        if dead.is_empty() {
            return Ok(0);
        }
        let n = vectors.dim(0)?;
        let d = self.cfg.code_dim;
        let rows: Vec<u32> = dead.iter().map(|_| rng.random_range(0..n) as u32).collect();
        let rows = Tensor::new(rows.as_slice(), vectors.device())?;
        let fresh: Vec<Vec<f32>> = vectors.index_select(&rows, 0)?.to_vec2()?;
        let mut embed: Vec<f32> = self.embedding.as_tensor().flatten_all()?.to_vec1()?;
        let mut usage = usage;
        for (code, v) in dead.iter().zip(&fresh) {
            embed[code * d..(code + 1) * d].copy_from_slice(v);
            usage[*code] = threshold as f32;
        }
        let dev = vectors.device();
        let embed = Tensor::from_vec(embed, (usage.len(), d), dev)?;
        self.embedding.set(&embed)?;
        self.usage.set(&Tensor::new(usage.as_slice(), dev)?)?;
        if let Some((size, sum)) = &self.ema {
            let mut sizes: Vec<f32> = size.as_tensor().to_vec1()?;
            for code in &dead {
                sizes[*code] = 1.0;
            }
            size.set(&Tensor::new(sizes.as_slice(), dev)?)?;
            sum.set(&embed.broadcast_mul(&size.as_tensor().unsqueeze(1)?)?)?;
        }
        Ok(dead.len())
    }
}

/// Rows scaled to unit l2 norm.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = (x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()? + 1e-12)?;
    x.broadcast_div(&norm)
}
