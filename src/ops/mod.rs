//! The ops the networks are built of, one file per concept. Each op decides, from the compute
//! policy ([`crate::compute`]) and its inputs, whether one of movq's fused kernels runs (CUDA:
//! [`crate::gpu`], CPU: [`crate::cpu`]) or candle's composed ops do; the composed path is the
//! kernels' reference in the tests. An op owns its contract: the kernels implement it and take
//! its argument types (`block::Block`, `adam::AdamStep`, `token_choice::TokenChoice`).

pub mod adam;
pub mod attention;
pub mod block;
pub mod conv;
pub mod conv_gemm;
pub mod custom_grad;
pub mod embedding;
pub mod group_norm;
pub mod layer_norm;
pub mod linear;
pub mod softmax;
pub mod standardize;
pub mod token_choice;
