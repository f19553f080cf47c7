//! An exponential moving average of a model's weights, kept in f32 beside them.
//!
//! After each optimizer step `n` (counting from 0) every trainable parameter θ moves its
//! average `e ← d·e + (1 − d)·θ` with `d = min(decay, (1 + n) / (10 + n))`: the usual warm-up, so
//! that early averages do not drag the initial weights along. The average is saved with every
//! checkpoint as a complete set of model tensors (`step-N.ema.safetensors`: the averaged
//! parameters, and the buffers such as the codebook's usage as they are), so inference loads it
//! as it loads the raw weights.

use candle_core::{Result, Tensor, Var};

use crate::nn::params::ParamStore;

pub struct Ema {
    decay: f64,
    /// `(name, average)` per trainable parameter, in the store's order.
    shadow: Vec<(String, Tensor)>,
}

impl Ema {
    /// An average starting at the store's current weights.
    pub fn new(decay: f64, store: &ParamStore) -> Result<Self> {
        let shadow = store
            .trainable()
            .into_iter()
            .map(|(n, v)| Ok((n, v.as_tensor().detach().copy()?)))
            .collect::<Result<_>>()?;
        Ok(Self { decay, shadow })
    }

    /// The configured decay.
    pub fn decay(&self) -> f64 {
        self.decay
    }

    /// The decay of update `n` (0-based).
    pub fn decay_at(&self, n: usize) -> f64 {
        self.decay.min((1.0 + n as f64) / (10.0 + n as f64))
    }

    /// Moves the average towards the store's weights after optimizer step `n` (0-based).
    pub fn update(&mut self, store: &ParamStore, n: usize) -> Result<()> {
        let d = self.decay_at(n);
        let params: Vec<(String, Var)> = store.trainable();
        for ((name, avg), (pname, var)) in self.shadow.iter_mut().zip(&params) {
            debug_assert_eq!(name, pname);
            *avg = ((&*avg * d)? + (var.as_tensor().detach() * (1.0 - d))?)?;
        }
        Ok(())
    }

    /// Every tensor of the model with the averages in place of the trainable parameters.
    pub fn model_tensors(&self, store: &ParamStore) -> Vec<(String, Tensor)> {
        store
            .tensors()
            .into_iter()
            .map(|(n, t)| match self.shadow.iter().find(|(s, _)| *s == n) {
                Some((_, avg)) => (n, avg.clone()),
                None => (n, t),
            })
            .collect()
    }

    /// Restores the averages from a saved set of model tensors.
    pub fn load(
        &mut self,
        saved: &std::collections::BTreeMap<String, Tensor>,
        origin: &str,
    ) -> Result<()> {
        for (name, avg) in &mut self.shadow {
            let t = saved.get(name).ok_or_else(|| {
                candle_core::Error::Msg(format!("{origin}: no EMA tensor {name}"))
            })?;
            if t.dims() != avg.dims() {
                candle_core::bail!(
                    "{origin}: EMA tensor {name} is {:?}, expected {:?}",
                    t.dims(),
                    avg.dims()
                );
            }
            *avg = t.to_device(avg.device())?.to_dtype(avg.dtype())?;
        }
        Ok(())
    }

    /// Sets the store's trainable weights to the averages, returning the raw ones to restore
    /// with [`Ema::restore`] (validation of the averaged model).
    pub fn swap_in(&self, store: &ParamStore) -> Result<Vec<Tensor>> {
        let params = store.trainable();
        let mut raw = Vec::with_capacity(params.len());
        for ((_, avg), (_, var)) in self.shadow.iter().zip(&params) {
            raw.push(var.as_tensor().detach().copy()?);
            var.set(avg)?;
        }
        Ok(raw)
    }

    /// `validate("")` of the model as it is, followed, with an average, by `validate("ema_")` of
    /// the model with the averaged weights (the raw ones put back after).
    pub fn validate_both(
        ema: Option<&Ema>,
        store: &ParamStore,
        validate: impl Fn(&str) -> anyhow::Result<crate::train::Metrics>,
    ) -> anyhow::Result<crate::train::Metrics> {
        let mut m = validate("")?;
        if ema.is_some() {
            for (n, v) in Ema::with_average(ema, store, || validate("ema_"))?.iter() {
                m.push(n, v);
            }
        }
        Ok(m)
    }

    /// `f()` run with the averaged weights in the store where there is an average (the raw ones
    /// put back after), else with the weights as they are.
    pub fn with_average<T>(
        ema: Option<&Ema>,
        store: &ParamStore,
        f: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let Some(ema) = ema else { return f() };
        let raw = ema.swap_in(store)?;
        let out = f();
        Ema::restore(store, &raw)?;
        out
    }

    /// Puts back the weights [`Ema::swap_in`] returned.
    pub fn restore(store: &ParamStore, raw: &[Tensor]) -> Result<()> {
        for ((_, var), t) in store.trainable().iter().zip(raw) {
            var.set(t)?;
        }
        Ok(())
    }
}
