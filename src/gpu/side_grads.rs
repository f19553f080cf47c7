//! Parameter gradients that reach the optimizer beside candle's graph: an op that runs its own
//! backward pass for a whole sub-network (the fused transformer blocks, `gpu::block` on CUDA
//! and `cpu::block` on the CPU) hands back only its input's gradient through the graph and leaves its
//! parameters' gradients here; the model moves them into the backward pass's gradient store
//! ([`SideGrads::drain_into`]).

use std::sync::{Arc, Mutex};

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor};

/// A shared list of (parameter, gradient) pairs; clones share it.
#[derive(Debug, Clone, Default)]
pub struct SideGrads(Arc<Mutex<Vec<(Tensor, Tensor)>>>);

impl SideGrads {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `grad` as a gradient of `param` (the parameter's own tensor: its id is the key).
    pub fn push(&self, param: &Tensor, grad: Tensor) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((param.clone(), grad));
    }

    /// Moves every gradient gathered so far into `store`, summed with what it already holds for
    /// the same parameter.
    pub fn drain_into(&self, store: &mut GradStore) -> Result<()> {
        let pending = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        for (param, grad) in pending {
            let sum = match store.get(&param) {
                Some(g) => (g + grad.to_dtype(g.dtype())?)?,
                None => grad,
            };
            store.insert(&param, sum);
        }
        Ok(())
    }
}
