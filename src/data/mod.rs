//! Data: image folders, the built-in procedural set, transforms, loaders and image I/O.

pub mod chart;
pub mod classes;
pub mod dataset;
pub mod folder;
pub mod idx;
pub mod image;
pub mod inputs;
pub mod label;
pub mod loader;
pub mod order;
pub mod samples;
pub mod shapes;
pub mod source;
pub mod training_set;
pub mod transform;

pub use dataset::Dataset;
