//! `largo import`, `largo export` and `largo inspect`: PyTorch and Hugging Face files in and out.

use anyhow::Result;
use largo::models::inspect::{gguf_file_of, inspect, inspect_gguf, GgufInspection};
use largo::models::interop::{export, import, parse_arch, Rename};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ImportArgs {
    /// mlp, cnn, resnet18, resnet34, resnet50 (or resnet: any depth, read from the weights),
    /// gpt or encoder-lm (the `nn.TransformerEncoder` language model of PyTorch's tutorial);
    /// the earlier names seed-mlp and seed-transformer work too.
    #[arg(long)]
    arch: String,
    /// A `torch.save(model.state_dict())` file (.pt/.pth/.bin) or a .safetensors file.
    #[arg(long)]
    weights: PathBuf,
    /// Sizes not fixed by the tensor shapes (head counts, max_len, …), as JSON or TOML.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A tokenizer.json to store with a language model (needed to generate text).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// The largo model directory to write.
    #[arg(long)]
    out: PathBuf,
    /// Map the file's tensor names to largo's by prefix, e.g. `--rename net.fc.=decoder.`
    /// (repeatable; the first matching prefix applies).
    #[arg(long, value_name = "OLD=NEW")]
    rename: Vec<String>,
}

fn parse_renames(given: &[String]) -> Result<Vec<Rename>> {
    Ok(given
        .iter()
        .map(|s| s.parse())
        .collect::<largo::Result<_>>()?)
}

pub fn run_import(a: ImportArgs) -> Result<()> {
    let arch = parse_arch(&a.arch)?;
    let renames = parse_renames(&a.rename)?;
    let r = import(
        arch,
        &a.weights,
        a.config.as_deref(),
        a.tokenizer.as_deref(),
        &a.out,
        &renames,
    )?;
    println!(
        "imported {} ({} parameters) from {} into {}",
        r.info.arch(),
        r.params,
        a.weights.display(),
        a.out.display()
    );
    for n in &r.renamed {
        println!("  renamed: {n}");
    }
    for d in &r.dropped {
        println!("  not a parameter: {d}");
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// A largo model directory, or a run directory (uses its best/ model).
    #[arg(long)]
    model: PathBuf,
    /// The safetensors file to write, with PyTorch state_dict names.
    #[arg(long)]
    out: PathBuf,
    /// Write names as your program has them, by prefix, e.g. `--rename decoder.=fc.`
    /// (repeatable; the first matching prefix applies).
    #[arg(long, value_name = "OLD=NEW")]
    rename: Vec<String>,
}

pub fn run_export(a: ExportArgs) -> Result<()> {
    let renames = parse_renames(&a.rename)?;
    let dir = largo::models::store::resolve_model_dir(&a.model)?;
    let r = export(&dir, &a.out, &renames)?;
    println!("wrote {} tensors to {}", r.tensors, a.out.display());
    for n in &r.renamed {
        println!("  renamed: {n}");
    }
    println!(
        "load in PyTorch: model.load_state_dict(safetensors.torch.load_file({:?}))",
        a.out.display().to_string()
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct InspectArgs {
    /// A largo model or run directory, a Hugging Face BERT directory, or a GGUF file (or a
    /// directory holding one).
    #[arg(long)]
    model: PathBuf,
    /// The whole description as one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run_inspect(a: InspectArgs) -> Result<()> {
    if let Some(file) = gguf_file_of(&a.model)? {
        let i = inspect_gguf(&file)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&i)?);
        } else {
            print_gguf(&i);
        }
        return Ok(());
    }
    let i = inspect(&a.model)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&i)?);
        return Ok(());
    }
    println!("model:        {}", i.dir.display());
    println!("format:       {} ({})", i.format, i.arch);
    println!("weights:      {}", i.weights_file.display());
    let dtypes: Vec<String> = i.dtypes.iter().map(|(d, n)| format!("{d} ×{n}")).collect();
    println!("dtypes:       {}", dtypes.join(", "));
    match &i.tokenizer {
        Some(t) => println!("tokenizer:    {} ({} tokens)", t.model, t.vocab_size),
        None => println!("tokenizer:    none"),
    }
    if let Some(p) = &i.pooling {
        println!("pooling:      {p}");
    }
    println!("config:       {}", serde_json::to_string(&i.config)?);
    println!("parameters:   {}", i.total_params);
    let width = i.modules.iter().map(|m| m.0.len()).max().unwrap_or(0);
    for (m, n) in &i.modules {
        println!("  {m:<width$}  {n:>12}");
    }
    Ok(())
}

fn print_gguf(i: &GgufInspection) {
    let or_none = |s: &Option<String>| s.clone().unwrap_or_else(|| "(none)".into());
    println!("model:        {}", i.file.display());
    println!(
        "format:       gguf v{} ({})",
        i.version,
        or_none(&i.architecture)
    );
    println!("name:         {}", or_none(&i.name));
    println!("tensors:      {}", i.tensors);
    println!("parameters:   {}", i.total_params);
    println!("tensor types:");
    for (t, n, bytes) in &i.tensor_types {
        println!(
            "  {t:<6} {n:>5} tensors  {:>10.2} MiB",
            *bytes as f64 / (1024.0 * 1024.0)
        );
    }
    println!("metadata:     {} keys", i.metadata.len());
    let width = i.metadata.iter().map(|m| m.0.len()).max().unwrap_or(0);
    for (key, _, value) in &i.metadata {
        println!("  {key:<width$}  {value}");
    }
}
