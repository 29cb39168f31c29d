//! Models built from `nn` layers, each a config struct plus small modules.

pub mod bert;
pub mod inspect;
pub mod interop;
pub mod mlp;
pub mod sentence;
pub mod transformer_lm;

pub use mlp::{Mlp, MlpConfig};
pub mod store;
pub use transformer_lm::{GptConfig, LmSpec, Positions, SeedTransformerConfig, TransformerLm};
