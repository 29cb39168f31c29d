use anyhow::{bail, Context, Result};
use largo::models::llama::KvType;
use largo::serve::{run, ModelSpec, ServeConfig};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// A model directory, or NAME=DIR; repeat to serve several (routed by the request's "model").
    /// Language models and digit classifiers (largo), BERT embedding models (Hugging Face /
    /// sentence-transformers), and pretrained LLMs: a `.gguf` file, a directory holding one, or
    /// a Hugging Face Llama/Qwen2 directory (chat completions with the model's template).
    #[arg(long = "model", required = true)]
    models: Vec<String>,
    /// A LoRA adapter (PEFT's layout, or a `largo finetune` run) on a pretrained --model,
    /// served as the model `BASE:NAME` (unmerged; each adapter loads its own copy of the base):
    /// `[BASE:]NAME=DIR`, or DIR (NAME: its directory's name). BASE may be left out when one
    /// --model is given. Repeatable.
    #[arg(long = "adapter", value_name = "[BASE:]NAME=DIR")]
    adapters: Vec<String>,
    /// Address to bind; 127.0.0.1 keeps the server local.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port (printed at start).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Environment variable holding the API key; when set and non-empty, /v1/ routes require
    /// `Authorization: Bearer <key>`.
    #[arg(long, default_value = "LARGO_API_KEY")]
    api_key_env: String,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Largest `max_tokens` a completion may ask for.
    #[arg(long, default_value_t = 2048)]
    max_tokens: u64,
    /// Generations decoded together, sharing each batched step (continuous batching).
    #[arg(long, default_value_t = 32)]
    max_concurrent: usize,
    /// Requests that may wait beyond those being worked on; past this, 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Tokens per embedding batch: concurrent requests are packed together up to this.
    #[arg(long, default_value_t = 8192)]
    batch_tokens: usize,
    /// Seconds before a request is answered 504.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Pretrained LLMs: MiB of KV cache shared by all generations (and the prefix cache); a
    /// request starts when its worst case (prompt + max_tokens) fits, else it waits.
    #[arg(long, default_value_t = 256.0)]
    kv_cache_mb: f64,
    /// Pretrained LLMs: how the KV cache stores keys and values; f16 (llama.cpp's default)
    /// holds twice the positions in the same memory and is read twice as fast as f32.
    #[arg(long, value_enum, default_value = "f16")]
    kv_cache_type: KvCacheType,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum KvCacheType {
    F16,
    F32,
}

impl From<KvCacheType> for KvType {
    fn from(t: KvCacheType) -> Self {
        match t {
            KvCacheType::F16 => KvType::F16,
            KvCacheType::F32 => KvType::F32,
        }
    }
}

/// `--adapter [BASE:]NAME=DIR` (or DIR) against the --model entries in `models`.
fn adapter_spec(spec: &str, models: &[ModelSpec]) -> Result<ModelSpec> {
    let (label, dir) = match spec.split_once('=') {
        Some((l, d)) if !l.is_empty() => (Some(l), PathBuf::from(d)),
        _ => (None, PathBuf::from(spec)),
    };
    let dir_name = || {
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "adapter".into())
    };
    let (base, name) = match label.map(|l| l.split_once(':')) {
        Some(Some((b, n))) => (Some(b.to_string()), n.to_string()),
        Some(None) => (None, label.unwrap_or_default().to_string()),
        None => (None, dir_name()),
    };
    let bases: Vec<&ModelSpec> = models.iter().filter(|m| m.adapter.is_none()).collect();
    let base = match base {
        Some(b) => bases
            .into_iter()
            .find(|m| m.name == b)
            .with_context(|| format!("--adapter {spec}: no --model is named '{b}'"))?,
        None if bases.len() == 1 => bases[0],
        None => bail!(
            "--adapter {spec}: name its base among the --model names, as --adapter BASE:{name}=DIR"
        ),
    };
    Ok(ModelSpec {
        name: format!("{}:{name}", base.name),
        path: base.path.clone(),
        adapter: Some(dir),
    })
}

pub fn run_serve(a: Args) -> Result<()> {
    let mut models = Vec::new();
    for m in &a.models {
        let (name, dir) = match m.split_once('=') {
            Some((n, d)) if !n.is_empty() => (n.to_string(), PathBuf::from(d)),
            _ => {
                let dir = PathBuf::from(m);
                let name = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "model".into());
                (name, dir)
            }
        };
        models.push(ModelSpec {
            name,
            path: dir,
            adapter: None,
        });
    }
    for spec in &a.adapters {
        models.push(adapter_spec(spec, &models)?);
    }
    let api_key = std::env::var(&a.api_key_env).ok().filter(|k| !k.is_empty());
    if a.max_concurrent == 0 || a.max_queue == 0 {
        bail!("--max-concurrent and --max-queue must be ≥ 1");
    }
    if !(a.kv_cache_mb.is_finite() && a.kv_cache_mb > 0.0) {
        bail!(
            "--kv-cache-mb must be a positive number, got {}",
            a.kv_cache_mb
        );
    }
    let cfg = ServeConfig {
        host: a.host,
        port: a.port,
        api_key,
        max_body_bytes: a.max_body_bytes,
        max_tokens: a.max_tokens.max(1),
        max_batch: 256,
        max_concurrent: a.max_concurrent,
        max_queue: a.max_queue,
        batch_tokens: a.batch_tokens.max(1),
        request_timeout: Duration::from_secs(a.timeout.max(1)),
        kv_cache_mb: a.kv_cache_mb,
        kv_cache_type: a.kv_cache_type.into(),
    };
    let names: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
    let keyed = cfg.api_key.is_some();
    run(&models, cfg, |addr| {
        println!(
            "serving {} on http://{addr}{}",
            names.join(", "),
            if keyed { " (API key required)" } else { "" }
        );
        let _ = std::io::stdout().flush();
    })?;
    println!("stopped");
    Ok(())
}
