//! Models built from `nn` layers, each a config struct plus small modules.

pub mod mlp;

pub use mlp::{Mlp, MlpConfig};
pub mod store;
