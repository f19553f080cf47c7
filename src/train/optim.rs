//! Adam / AdamW over named variables, with global-norm gradient clipping and a state that can be
//! saved and restored exactly.

use std::collections::BTreeMap;

use candle_core::{backprop::GradStore, DType, Result, Tensor, Var};

use crate::config::{OptimizerKind, TrainConfig};

/// Gradients aligned with an optimizer's parameters (`None` where a parameter got none).
pub struct Grads(pub Vec<Option<Tensor>>);

impl Grads {
    /// `a + w·b`, elementwise per parameter.
    pub fn add_scaled(self, other: &Grads, w: f64) -> Result<Grads> {
        let out = self
            .0
            .into_iter()
            .zip(&other.0)
            .map(|(a, b)| match (a, b) {
                (Some(a), Some(b)) => Ok(Some((a + (b * w)?)?)),
                (Some(a), None) => Ok(Some(a)),
                (None, Some(b)) => Ok(Some((b * w)?)),
                (None, None) => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Grads(out))
    }

    /// The global l2 norm over all gradients.
    pub fn norm(&self) -> Result<f64> {
        let all: Vec<&Tensor> = self.0.iter().flatten().collect();
        Ok(crate::ops::adam::sum_of_squares(&all)?.sqrt())
    }
}

pub struct Adam {
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: usize,
    kind: OptimizerKind,
    betas: (f64, f64),
    weight_decay: f64,
    grad_clip: Option<f64>,
    eps: f64,
}

impl Adam {
    pub fn new(params: Vec<(String, Var)>, cfg: &TrainConfig) -> Result<Self> {
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        Ok(Self {
            m: params
                .iter()
                .map(|(_, v)| zeros(v))
                .collect::<Result<_>>()?,
            v: params
                .iter()
                .map(|(_, v)| zeros(v))
                .collect::<Result<_>>()?,
            params,
            t: 0,
            kind: cfg.optimizer,
            betas: cfg.betas,
            weight_decay: cfg.weight_decay,
            grad_clip: cfg.grad_clip,
            eps: 1e-8,
        })
    }

    /// Gradients of this optimizer's parameters from a backward pass.
    pub fn grads(&self, store: &GradStore) -> Grads {
        Grads(
            self.params
                .iter()
                .map(|(_, v)| store.get(v.as_tensor()).cloned())
                .collect(),
        )
    }

    /// Zero gradients for every parameter (a rank whose shard contributed nothing).
    pub fn zero_grads(&self) -> Result<Grads> {
        let zeros = self
            .params
            .iter()
            .map(|(_, v)| v.as_tensor().zeros_like().map(Some));
        Ok(Grads(zeros.collect::<Result<_>>()?))
    }

    /// Position of a parameter by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.params.iter().position(|(n, _)| n == name)
    }

    /// One update with learning rate `lr`; clips to the configured global norm first.
    /// Returns the gradient norm before clipping.
    pub fn step(&mut self, grads: &Grads, lr: f64) -> Result<f64> {
        let norm = grads.norm()?;
        let clip = match self.grad_clip {
            Some(max) if norm > max => max / (norm + 1e-6),
            _ => 1.0,
        };
        self.t += 1;
        let (b1, b2) = self.betas;
        let bias1 = 1.0 - b1.powi(self.t as i32);
        let bias2 = 1.0 - b2.powi(self.t as i32);
        // the same scalars for every tensor: one kernel per tensor on the GPU, the moments
        // updated in place
        let scalars = crate::ops::adam::AdamStep {
            lr: lr as f32,
            betas: (b1 as f32, b2 as f32),
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            decoupled: self.kind == OptimizerKind::AdamW,
            bias: (bias1 as f32, bias2 as f32),
            grad_scale: clip.min(1.0) as f32,
        };
        for (i, g) in grads.0.iter().enumerate() {
            let Some(g) = g else { continue };
            crate::ops::adam::step(
                &self.params[i].1,
                &mut self.m[i],
                &mut self.v[i],
                g,
                scalars,
            )?;
        }
        Ok(norm)
    }

    /// Moments as named tensors (`{prefix}.m.{param}`, `{prefix}.v.{param}`, `{prefix}.t`):
    /// copies, since the GPU step updates the moments in place.
    pub fn state(&self, prefix: &str) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(2 * self.params.len() + 1);
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((format!("{prefix}.m.{name}"), self.m[i].copy()?));
            out.push((format!("{prefix}.v.{name}"), self.v[i].copy()?));
        }
        let dev = self
            .m
            .first()
            .map_or(candle_core::Device::Cpu, |t| t.device().clone());
        out.push((format!("{prefix}.t"), Tensor::new(&[self.t as u32], &dev)?));
        Ok(out)
    }

    /// Restores the moments written by [`Adam::state`].
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, prefix: &str) -> Result<()> {
        let get = |key: String| -> Result<&Tensor> {
            tensors.get(&key).ok_or_else(|| {
                candle_core::Error::Msg(format!("optimizer state has no tensor `{key}`"))
            })
        };
        for (i, (name, var)) in self.params.iter().enumerate() {
            for (slot, key) in [
                (0, format!("{prefix}.m.{name}")),
                (1, format!("{prefix}.v.{name}")),
            ] {
                let t = get(key.clone())?;
                if t.dims() != var.dims() {
                    candle_core::bail!(
                        "optimizer state `{key}` has shape {:?}, expected {:?}",
                        t.dims(),
                        var.dims()
                    );
                }
                // a tensor of our own: the GPU step updates the moments in place
                let t = t.to_device(var.device())?.to_dtype(DType::F32)?.copy()?;
                if slot == 0 {
                    self.m[i] = t;
                } else {
                    self.v[i] = t;
                }
            }
        }
        self.t = get(format!("{prefix}.t"))?.to_vec1::<u32>()?[0] as usize;
        Ok(())
    }
}
