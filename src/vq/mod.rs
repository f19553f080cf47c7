//! Stage 1: the MoVQ autoencoder and its training.

pub mod decoder;
pub mod diffusers;
pub mod discriminator;
pub mod encoder;
pub mod entropy;
pub mod foreign;
pub mod level;
pub mod losses;
pub mod model;
pub mod movqgan;
pub mod quantizer;
pub mod rotation;
pub mod stage;

pub use model::MoVq;
