//! Models built from `nn` layers, each a config struct plus small modules.

pub mod mlp;
pub mod transformer_lm;

pub use mlp::{Mlp, MlpConfig};
pub mod store;
pub use transformer_lm::{GptConfig, LmSpec, Positions, SeedTransformerConfig, TransformerLm};
