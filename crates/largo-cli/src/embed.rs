use anyhow::{bail, Context, Result};
use largo::models::sentence::SentenceEncoder;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face / sentence-transformers BERT directory (config.json, model.safetensors or
    /// pytorch_model.bin, tokenizer.json; modules.json and 1_Pooling/ when present).
    #[arg(long)]
    model: PathBuf,
    /// Texts to embed (after those of --input).
    texts: Vec<String>,
    /// A file with one JSON string or {"text": …} object per line ("-" for standard input).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Sequences per forward pass (texts are grouped by length first).
    #[arg(long, default_value_t = 32)]
    batch: usize,
}

#[derive(serde::Serialize)]
struct Line<'a> {
    index: usize,
    embedding: &'a [f32],
}

/// One text per line: a JSON string or an object with a string field "text".
fn read_inputs(path: &Path) -> Result<Vec<String>> {
    let content = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?
    };
    let mut texts = Vec::new();
    for (i, line) in content.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let where_ = || format!("{}:{}", path.display(), i + 1);
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: not JSON", where_()))?;
        match value {
            serde_json::Value::String(s) => texts.push(s),
            serde_json::Value::Object(o) => match o.get("text") {
                Some(serde_json::Value::String(s)) => texts.push(s.clone()),
                _ => bail!("{}: expected a string field \"text\"", where_()),
            },
            _ => bail!(
                "{}: expected a JSON string or an object {{\"text\": …}}",
                where_()
            ),
        }
    }
    Ok(texts)
}

pub fn run(a: Args) -> Result<()> {
    let mut texts = match &a.input {
        Some(p) => read_inputs(p)?,
        None => Vec::new(),
    };
    texts.extend(a.texts.iter().cloned());
    if texts.is_empty() {
        bail!("nothing to embed: give texts as arguments or --input FILE");
    }
    if a.batch == 0 {
        bail!("--batch must be ≥ 1");
    }
    let encoder = SentenceEncoder::load(&a.model)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let embeddings = encoder.embed(&refs, a.batch)?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    for (index, e) in embeddings.iter().enumerate() {
        let line = serde_json::to_string(&Line {
            index,
            embedding: e,
        })?;
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(())
}
