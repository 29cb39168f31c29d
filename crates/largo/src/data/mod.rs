//! Data: readers, cleaning, splits and batches.

pub mod augment;
pub mod chat_template;
pub mod finetune;
pub mod idx;
pub mod image;
pub mod image_folder;
pub mod llm_tokenizer;
pub mod mnist;
pub mod text;
