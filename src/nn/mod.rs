//! Building blocks shared by the networks.

pub mod attention;
pub mod conv;
pub mod cpu_conv;
pub mod cpu_group_norm;
pub mod custom_grad;
pub mod layers;
pub mod params;
pub mod precision;
pub mod resample;
pub mod resnet;
pub mod safetensors_io;
pub mod side_grads;
pub mod softmax;
pub mod spatial_norm;
pub mod standardize;
