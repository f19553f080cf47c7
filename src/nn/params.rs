//! A parameter store: a `VarBuilder` backend with seeded, PyTorch-style initialisation.
//!
//! candle's own `VarMap` draws initial weights from an unseeded generator; this store draws them
//! from a `StdRng` seeded by the run, in model-construction order, so the same seed always builds
//! the same model. Names follow the `vb.pp(..)` paths, so a checkpoint reads like the struct tree.
//! Tensors whose path contains a `buffers` segment are state, not parameters: they are saved and
//! loaded but never handed to an optimizer.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{bail, DType, Device, Result, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::nn::safetensors_io;

struct Inner {
    vars: BTreeMap<String, Var>,
    rng: StdRng,
}

/// Named variables of one network (or of several sharing a namespace).
#[derive(Clone)]
pub struct ParamStore {
    inner: Arc<Mutex<Inner>>,
    device: Device,
    /// Inference only: layers get detached views of the variables, so a forward pass records no
    /// graph and frees each activation as soon as it is used.
    frozen: bool,
    /// Name prefixes of the variables that do not train (`train.freeze`): layers get detached
    /// views of them, and they are not [`ParamStore::trainable`].
    frozen_parts: Arc<Vec<String>>,
}

/// True for non-trainable state such as EMA statistics.
pub fn is_buffer(name: &str) -> bool {
    name.split('.').any(|s| s == "buffers")
}

impl ParamStore {
    pub fn new(seed: u64, device: &Device) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                vars: BTreeMap::new(),
                rng: StdRng::seed_from_u64(seed),
            })),
            device: device.clone(),
            frozen: false,
            frozen_parts: Arc::default(),
        }
    }

    /// The same store with the variables under `prefixes` frozen. Set before the layers are
    /// built: they take their views of the variables then.
    pub fn with_frozen_parts(mut self, prefixes: &[&str]) -> Self {
        self.frozen_parts = Arc::new(prefixes.iter().map(|p| p.to_string()).collect());
        self
    }

    /// Whether the variable `name` is frozen by [`ParamStore::with_frozen_parts`].
    pub fn is_frozen_part(&self, name: &str) -> bool {
        self.frozen_parts
            .iter()
            .any(|p| name.starts_with(p.as_str()))
    }

    /// A store for inference: same variables (loadable as usual), but the tensors handed to the
    /// layers are detached, so no autograd graph keeps activations alive.
    pub fn frozen(seed: u64, device: &Device) -> Self {
        Self {
            frozen: true,
            ..Self::new(seed, device)
        }
    }

    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// The variable `name` as a layer sees it: detached in a frozen store or part.
    pub fn view(&self, name: &str, var: &Var) -> Tensor {
        if self.frozen || self.is_frozen_part(name) {
            var.as_tensor().detach()
        } else {
            var.as_tensor().clone()
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A `VarBuilder` (f32) that creates its variables in this store.
    pub fn var_builder(&self) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), DType::F32, self.device.clone())
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Trainable variables with their names, sorted by name (buffers and frozen parts left out).
    pub fn trainable(&self) -> Vec<(String, Var)> {
        self.lock()
            .vars
            .iter()
            .filter(|(n, _)| !is_buffer(n) && !self.is_frozen_part(n))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    }

    /// Every tensor (parameters and buffers), sorted by name.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.lock()
            .vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect()
    }

    pub fn get_var(&self, name: &str) -> Option<Var> {
        self.lock().vars.get(name).cloned()
    }

    /// Number of scalar parameters (buffers excluded).
    pub fn num_parameters(&self) -> usize {
        self.trainable().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Overwrites every variable with the tensor of the same name. Every variable must be
    /// present with its exact shape; extra tensors are an error too, so a checkpoint of another
    /// configuration never loads half-way.
    pub fn load_tensors(&self, tensors: &BTreeMap<String, Tensor>, origin: &str) -> Result<()> {
        let inner = self.lock();
        for (name, var) in inner.vars.iter() {
            let Some(t) = tensors.get(name) else {
                bail!("{origin} has no tensor `{name}` (expected shape {:?}): it was written for another model configuration", var.dims());
            };
            if t.dims() != var.dims() {
                bail!(
                    "{origin}: tensor `{name}` has shape {:?} but this model's configuration needs {:?}",
                    t.dims(),
                    var.dims()
                );
            }
        }
        if let Some(extra) = tensors.keys().find(|k| !inner.vars.contains_key(*k)) {
            bail!("{origin} has a tensor `{extra}` this model does not have: it was written for another model configuration");
        }
        for (name, var) in inner.vars.iter() {
            var.set(
                &tensors[name]
                    .to_dtype(var.dtype())?
                    .to_device(&self.device)?,
            )?;
        }
        Ok(())
    }

    /// Overwrites each variable that `tensors` holds under its name (shapes must match: an
    /// error names the first that does not); returns the names of the variables it lacks, which
    /// keep their initial values.
    pub fn load_matching(
        &self,
        tensors: &BTreeMap<String, Tensor>,
        origin: &str,
    ) -> Result<Vec<String>> {
        let inner = self.lock();
        let mut missing = Vec::new();
        for (name, var) in inner.vars.iter() {
            match tensors.get(name) {
                Some(t) if t.dims() != var.dims() => bail!(
                    "{origin}: tensor `{name}` has shape {:?} but this model's configuration needs {:?}",
                    t.dims(),
                    var.dims()
                ),
                Some(t) => var.set(&t.to_dtype(var.dtype())?.to_device(&self.device)?)?,
                None => missing.push(name.clone()),
            }
        }
        Ok(missing)
    }

    pub fn load_file(&self, path: &Path) -> Result<()> {
        let (tensors, _) = safetensors_io::read(path, &self.device)?;
        self.load_tensors(&tensors, &path.display().to_string())
    }

    fn init_tensor(&self, rng: &mut StdRng, shape: &Shape, init: Init) -> Result<Tensor> {
        let n = shape.elem_count();
        let values: Vec<f32> = match init {
            Init::Const(c) => vec![c as f32; n],
            Init::Uniform { lo, up } => (0..n).map(|_| rng.random_range(lo..=up) as f32).collect(),
            Init::Randn { mean, stdev } => (0..n)
                .map(|_| (mean + stdev * standard_normal(rng)) as f32)
                .collect(),
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
                match dist {
                    candle_nn::init::NormalOrUniform::Uniform => {
                        let b = 3f64.sqrt() * std;
                        (0..n).map(|_| rng.random_range(-b..=b) as f32).collect()
                    }
                    candle_nn::init::NormalOrUniform::Normal => (0..n)
                        .map(|_| (std * standard_normal(rng)) as f32)
                        .collect(),
                }
            }
        };
        Tensor::from_vec(values, shape.clone(), &self.device)
    }
}

/// One draw of N(0, 1) by Box–Muller (kept here so the stream depends only on `rand`'s core).
pub fn standard_normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

impl candle_nn::var_builder::SimpleBackend for ParamStore {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut inner = self.lock();
        if let Some(v) = inner.vars.get(name) {
            if v.shape() != &s {
                bail!(
                    "parameter `{name}` requested with shape {s:?} but exists with {:?}",
                    v.shape()
                );
            }
            return self.view(name, v).to_dtype(dtype)?.to_device(dev);
        }
        let t = self.init_tensor(&mut inner.rng, &s, h)?;
        let var = Var::from_tensor(&t)?;
        inner.vars.insert(name.to_string(), var.clone());
        self.view(name, &var).to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        match self.lock().vars.get(name) {
            Some(v) => self.view(name, v).to_dtype(dtype)?.to_device(dev),
            None => bail!("no parameter `{name}`"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.lock().vars.contains_key(name)
    }
}
