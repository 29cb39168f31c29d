use crate::prepare::{hint_unknown, UnknownArg};
use anyhow::Result;
use largo::data::text::{drop_unknown, Skipped};
use largo::generate::llm::{generate_llm, Finish};
use largo::generate::{generate, Sampling};
use largo::models::llama_load::LlmFiles;
use largo::models::store::{load_lm, resolve_model_dir};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// The sampling options `generate` and `chat` share.
#[derive(clap::Args)]
pub struct SamplingArgs {
    /// New tokens to generate.
    #[arg(long, default_value_t = 300)]
    max_tokens: usize,
    /// 0: greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Sample among the k most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Nucleus sampling: the smallest set of tokens reaching this probability.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Seeds the sampling: the same seed gives the same text.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Stop when this text is generated (repeatable); it is not printed.
    #[arg(long)]
    stop: Vec<String>,
}

impl SamplingArgs {
    pub fn sampling(&self) -> Sampling {
        Sampling {
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
            stop: self.stop.clone(),
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// A language-model or run directory (its best/ model), a GGUF file (or a directory
    /// holding one), or a Hugging Face directory of a Llama-family model.
    #[arg(long)]
    model: PathBuf,
    /// Text to continue; a prompt longer than the context keeps its end.
    #[arg(long)]
    prompt: String,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Pretrained LLMs: a LoRA adapter (PEFT's layout, or a `largo finetune` run) applied on
    /// --model without merging.
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// Pretrained LLMs: expand every quantised GGUF weight to f32 and run f32 matmuls
    /// (transformers' numbers: for parity checks and exact f32 arithmetic). By default the
    /// weights stay quantised and run on the integer kernels, activations rounded to 8 bits
    /// per block as llama.cpp does.
    #[arg(long)]
    dequantize: bool,
    /// Prompt characters a character-level vocabulary lacks: `error` (refuse, naming them) or
    /// `skip` (drop them and report how many of each).
    #[arg(long, value_enum, default_value = "error")]
    unknown: UnknownArg,
}

pub fn run(a: Args) -> Result<()> {
    if let Some(files) = LlmFiles::find_with_adapter(&a.model, a.adapter.as_deref())? {
        return generate_pretrained(&a, &files);
    }
    let dir = resolve_model_dir(&a.model)?;
    let (model, _, tokenizer) = load_lm(&dir)?;
    let sampling = a.sampling.sampling();
    sampling.validate()?;
    let mut skipped = Skipped::default();
    let prompt = drop_unknown(&tokenizer, &a.prompt, a.unknown.into(), &mut skipped);
    if !skipped.is_empty() {
        eprintln!("{}", skipped.describe());
    }
    // A prompt the vocabulary cannot spell is refused before anything is printed.
    largo::data::text::encode(&tokenizer, &prompt).map_err(|e| hint_unknown(e, a.unknown))?;
    let start = Instant::now();
    let mut out = std::io::stdout().lock();
    write!(out, "{prompt}")?;
    let g = generate(&model, &tokenizer, &prompt, &sampling, |piece| {
        let _ = write!(out, "{piece}");
        let _ = out.flush();
        true
    })?;
    writeln!(out)?;
    if g.truncated > 0 {
        eprintln!(
            "warning: the prompt was longer than the context of {} tokens; its first {} tokens were dropped",
            model.spec.block_size, g.truncated
        );
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "[{} prompt tokens, {} new tokens in {secs:.2} s, {:.0} tokens/s{}]",
        g.prompt_tokens,
        g.new_tokens,
        g.new_tokens as f64 / secs,
        g.stopped_by
            .map(|s| format!(", stopped at {s:?}"))
            .unwrap_or_default()
    );
    Ok(())
}

/// A pretrained LLM (GGUF or a Hugging Face directory) continues the prompt as raw text (BOS
/// first when its tokenizer adds one), streaming, until an end token or --max-tokens.
fn generate_pretrained(a: &Args, files: &LlmFiles) -> Result<()> {
    let t = Instant::now();
    let model = files.load(a.dequantize)?;
    let tokenizer = files.load_tokenizer()?;
    eprintln!(
        "loaded {} in {:.2} s",
        files.describe(),
        t.elapsed().as_secs_f64()
    );
    let sampling = a.sampling.sampling();
    let prompt = tokenizer.encode(&a.prompt, true)?;
    let mut out = std::io::stdout().lock();
    write!(out, "{}", a.prompt)?;
    let g = generate_llm(&model, &tokenizer, &prompt, &sampling, |piece| {
        let _ = write!(out, "{piece}");
        let _ = out.flush();
        true
    })?;
    writeln!(out)?;
    eprintln!(
        "[{} prompt tokens in {:.2} s ({:.0} tokens/s), {} new tokens in {:.2} s ({:.1} tokens/s), {}]",
        g.prompt_tokens,
        g.prompt_secs,
        g.prompt_tokens as f64 / g.prompt_secs.max(1e-9),
        g.ids.len(),
        g.gen_secs,
        g.ids.len() as f64 / g.gen_secs.max(1e-9),
        match g.finish {
            Finish::Stop => "stopped",
            Finish::Length => "length",
        }
    );
    Ok(())
}
