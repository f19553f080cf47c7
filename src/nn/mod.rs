//! Building blocks shared by the networks: layers holding their parameters (whose computation
//! is in [`crate::ops`]), normalizations, attention, resampling and residual blocks.

pub mod attention;
pub mod layers;
pub mod params;
pub mod resample;
pub mod resnet;
pub mod safetensors_io;
pub mod spatial_norm;
