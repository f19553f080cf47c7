//! A value computed without autograd, given a gradient of our own: the one custom op behind
//! `nn::softmax` and `nn::conv`, whose fused or faster kernels candle cannot differentiate (or
//! differentiates slowly).
//!
//! [`attach`] returns a copy of `value` (one device copy: a custom op must produce new storage)
//! that autograd treats as a function of `a` and `b`, with the gradients `backward` computes.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// `(a, b, grad of the output)` → gradients for `a` and `b`.
pub type Backward =
    dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> + Send + Sync;

struct Attached {
    name: &'static str,
    backward: Arc<Backward>,
}

impl CustomOp3 for Attached {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        value: &CpuStorage,
        l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((value.try_clone(l)?, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        value: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((value.try_clone(l)?, l.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (ga, gb) = (self.backward)(a, b, grad)?;
        Ok((ga, gb, None))
    }
}

/// `value` as a function of `a` and `b` whose gradients are `backward(a, b, grad)`. `value` must
/// be a fresh contiguous tensor (its storage is copied as laid out from offset 0).
pub fn attach(
    name: &'static str,
    a: &Tensor,
    b: &Tensor,
    value: &Tensor,
    backward: Arc<Backward>,
) -> Result<Tensor> {
    a.apply_op3(b, value, Attached { name, backward })
}
