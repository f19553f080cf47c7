//! Stage 2: the bidirectional masked transformer over MoVQ tokens, MaskGIT sampling and masked
//! reconstruction.

pub mod cache;
pub mod editing;
pub mod guidance;
pub mod maskgit;
pub mod masking;
pub mod model;
pub mod order;
pub mod refine;
pub mod schedule;
pub mod stage;
pub mod tokens;
pub mod training_tokens;

pub use model::MaskTransformer;
pub use tokens::TokenLayout;
