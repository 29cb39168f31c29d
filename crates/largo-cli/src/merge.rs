//! `largo merge`: a LoRA adapter merged into its base, written as a GGUF or a Hugging Face
//! directory.

use anyhow::Result;
use largo::models::llama_merge::{merge, MergeType};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The base model: a GGUF file, or a Hugging Face directory (Llama, Qwen2).
    #[arg(long)]
    model: PathBuf,
    /// The PEFT adapter directory (adapter_config.json, adapter_model.safetensors) or a
    /// `largo finetune` run; not needed when --model is a fine-tuning run itself.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Where to write: a `.gguf` file (needs a GGUF base; llama.cpp loads it) or a Hugging
    /// Face directory (model.safetensors, config.json, the base's tokenizer files).
    #[arg(long)]
    out: PathBuf,
    /// The matrices' type: f16 (default for .gguf), q8_0, bf16 or f32 (default for a
    /// directory, which takes f32, f16 or bf16).
    #[arg(long = "type", value_name = "TYPE", value_parser = parse_type)]
    ty: Option<MergeType>,
    /// Replace OUT if it exists.
    #[arg(long)]
    force: bool,
}

fn parse_type(s: &str) -> Result<MergeType, String> {
    s.parse().map_err(|e: largo::Error| e.to_string())
}

pub fn run(a: Args) -> Result<()> {
    let report = merge(&a.model, a.adapter.as_deref(), &a.out, a.ty, a.force)?;
    println!(
        "wrote {}: {} tensors ({}), {:.2} MiB; {} adapted matrices merged",
        report.path.display(),
        report.tensors,
        report.type_summary(),
        report.bytes as f64 / (1024.0 * 1024.0),
        report.adapted_matrices
    );
    if !report.files.is_empty() {
        println!("  files: {}", report.files.join(", "));
    }
    if !report.tokenizer {
        eprintln!(
            "note: no tokenizer was written to {}: the base has none (no tokenizer files, no \
             GGUF tokenizer metadata); copy tokenizer.json and tokenizer_config.json from the \
             model's Hugging Face repository",
            report.path.display()
        );
    }
    Ok(())
}
