//! Data: image folders, the built-in procedural set, transforms, loaders and image I/O.

pub mod dataset;
pub mod folder;
pub mod idx;
pub mod image;
pub mod loader;
pub mod order;
pub mod shapes;
pub mod transform;

pub use dataset::Dataset;
