//! Weights trained elsewhere: their quantizer, and their tensors matched to movq's parameters
//! (every movq parameter must be found under its foreign name with its shape, and every foreign
//! tensor must be used; otherwise one error lists the missing, mis-shaped and unknown names).

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use candle_core::Tensor;

use crate::config::{CodebookUpdate, QuantizerConfig, QuantizerGradient};

/// The quantizer of VQGAN-style models trained elsewhere: one codebook searched by L2 distance,
/// learned by gradient (β 0.25, as in VQGAN), no dead-code restarts.
pub fn single_codebook(codebook_size: usize, code_dim: usize) -> QuantizerConfig {
    QuantizerConfig {
        channels: 1,
        codebook_size,
        code_dim,
        beta: 0.25,
        update: CodebookUpdate::Gradient,
        l2_normalize: false,
        restart_dead_codes: None,
        gradient: QuantizerGradient::Ste,
        entropy_weight: 0.0,
        entropy_temperature: 1.0,
    }
}

/// movq's parameters (name → shape) filled from `source`, where `theirs` gives the foreign name
/// of a movq parameter. A 2-D Linear weight `[O, I]` fills a 1×1 convolution `[O, I, 1, 1]`.
pub fn map_tensors(
    wanted: &[(String, Vec<usize>)],
    mut source: BTreeMap<String, Tensor>,
    theirs: impl Fn(&str) -> String,
) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::with_capacity(wanted.len());
    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    for (name, shape) in wanted {
        let theirs = theirs(name);
        match source.remove(&theirs) {
            None => missing.push(theirs),
            Some(t) => {
                let t = if t.dims().len() == 2 && shape.len() == 4 {
                    t.reshape(shape.as_slice())?
                } else {
                    t
                };
                if t.dims() != shape.as_slice() {
                    mismatched.push(format!("{theirs} {:?} (movq {name} {shape:?})", t.dims()));
                } else {
                    out.push((name.clone(), t));
                }
            }
        }
    }
    if !missing.is_empty() || !mismatched.is_empty() || !source.is_empty() {
        let mut msg = String::from("the checkpoint does not match the config");
        if !missing.is_empty() {
            msg += &format!("; missing: {}", missing.join(", "));
        }
        if !mismatched.is_empty() {
            msg += &format!("; wrong shape: {}", mismatched.join(", "));
        }
        if !source.is_empty() {
            let unknown: Vec<&str> = source.keys().map(String::as_str).collect();
            msg += &format!("; unknown: {}", unknown.join(", "));
        }
        bail!(msg);
    }
    Ok(out)
}
