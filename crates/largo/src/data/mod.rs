//! Data: readers, cleaning, splits and batches.

pub mod gguf_tokenizer;
pub mod idx;
pub mod image;
pub mod mnist;
pub mod text;
