use anyhow::Result;
use largo::data::text::{prepare_text, CleanOptions, TokenizerSpec, Unknown};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum What {
    /// Clean, tokenise and split a text corpus for language models.
    Text(TextArgs),
}

#[derive(clap::Args)]
pub struct TextArgs {
    /// Text files, or directories of them (each file is one document).
    #[arg(long = "input", required = true)]
    inputs: Vec<PathBuf>,
    /// char, bpe:<vocab size> (byte-level BPE trained here), or a tokenizer.json.
    #[arg(long, default_value = "char")]
    tokenizer: String,
    /// Share of the text held out for validation, in whole documents.
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// Unicode NFC normalisation.
    #[arg(long)]
    nfc: bool,
    #[arg(long)]
    lowercase: bool,
    /// Seeds the choice of validation documents.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    #[arg(long)]
    out: PathBuf,
    /// Characters a given character-level tokenizer lacks: `error` (refuse the text, naming
    /// them) or `skip` (drop them and report how many of each).
    #[arg(long, value_enum, default_value = "error")]
    unknown: UnknownArg,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UnknownArg {
    Error,
    Skip,
}

impl From<UnknownArg> for Unknown {
    fn from(u: UnknownArg) -> Self {
        match u {
            UnknownArg::Error => Unknown::Error,
            UnknownArg::Skip => Unknown::Skip,
        }
    }
}

/// The error for characters a vocabulary lacks, with the flag that drops them.
pub fn hint_unknown(e: largo::Error, unknown: UnknownArg) -> anyhow::Error {
    let msg = e.to_string();
    if unknown == UnknownArg::Error && msg.contains("characters the vocabulary lacks") {
        anyhow::anyhow!("{msg} (--unknown skip drops them)")
    } else {
        e.into()
    }
}

pub fn run(what: What) -> Result<()> {
    let What::Text(a) = what;
    let spec: TokenizerSpec = a.tokenizer.parse()?;
    let clean = CleanOptions {
        nfc: a.nfc,
        lowercase: a.lowercase,
    };
    let s = prepare_text(
        &a.inputs,
        &spec,
        a.val_fraction,
        &clean,
        a.seed,
        &a.out,
        a.unknown.into(),
    )
    .map_err(|e| hint_unknown(e, a.unknown))?;
    if !s.skipped.is_empty() {
        eprintln!("{}", s.skipped.describe());
    }
    let m = &s.meta;
    println!(
        "{}: vocabulary {} ({}), train {} tokens from {} documents, val {} tokens from {} ({}), ids as {}",
        a.out.display(),
        m.vocab_size,
        m.tokenizer,
        m.train_tokens,
        m.train_documents.len(),
        m.val_tokens,
        m.val_documents.len(),
        m.val_documents.join(", "),
        m.dtype
    );
    Ok(())
}
