//! `largo`: a thin command line over the largo library.

mod bench;
mod chat;
mod classify;
mod embed;
mod eval;
mod explain;
mod finetune;
mod generate;
mod interop;
mod merge;
mod prepare;
mod report;
mod serve;
mod sweep;
mod train;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "largo",
    version,
    about = "Build, train, evaluate and serve neural networks"
)]
struct Cli {
    /// Threads for every kernel (one pool); default: all cores.
    #[arg(long, global = true, default_value_t = 0)]
    threads: usize,
    /// Precision of matrix products, as PyTorch's `set_float32_matmul_precision`: `highest`
    /// (f32), `high` (each operand as two bfloat16, three bf16 products, sums in f32) or
    /// `medium` (operands rounded to bfloat16, sums in f32); high and medium run on AMX tiles,
    /// f32 on CPUs without them.
    #[arg(long, global = true, default_value = "highest", value_parser = parse_precision)]
    matmul_precision: largo::backend::MatmulPrecision,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prepare data: clean, tokenise and split text.
    #[command(subcommand)]
    Prepare(prepare::What),
    /// Train a model from a TOML config (default: a small GPT on the bundled Shakespeare).
    Train(train::Args),
    /// Fine-tune a pretrained LLM (GGUF or Hugging Face) with LoRA on text or chat JSONL: a
    /// training run whose model is a PEFT adapter.
    Finetune(finetune::Args),
    /// Evaluate: loss and perplexity (language models); accuracy, per-class precision/recall/F1
    /// and the confusion matrix (classifiers).
    Eval(eval::Args),
    /// Explain a model: attention maps, pixel saliency, token attributions.
    #[command(subcommand)]
    Explain(explain::What),
    /// Generate text with a trained language model or a pretrained LLM (GGUF, Hugging Face).
    Generate(generate::Args),
    /// Chat with a pretrained LLM in its own chat template (interactive, or one --message).
    Chat(chat::Args),
    /// Classify digit images (PNG/JPEG) with a trained MLP.
    Classify(classify::Args),
    /// Sentence embeddings from a Hugging Face / sentence-transformers BERT model, as JSON lines.
    Embed(embed::Args),
    /// Convert a PyTorch state_dict (torch.save file or safetensors) into a largo model directory.
    Import(interop::ImportArgs),
    /// Write a model's parameters as safetensors with PyTorch state_dict names.
    Export(interop::ExportArgs),
    /// Describe a model directory: architecture, parameters per module, dtypes, tokenizer.
    Inspect(interop::InspectArgs),
    /// Merge a LoRA adapter into its base: a GGUF (f16, q8_0, …) that llama.cpp loads, or a
    /// Hugging Face directory.
    Merge(merge::Args),
    /// Serve models over HTTP with an OpenAI-compatible API (/v1/chat/completions,
    /// /v1/completions, /v1/embeddings).
    Serve(serve::Args),
    /// Measure speed: `gemm`, `mlp`, `gpt`, `cnn` (training), `generate`, `embed`, `llm`,
    /// `finetune` (LoRA on a pretrained model) or `serve` (HTTP load).
    Bench(bench::Args),
    /// Hyper-parameter sweep: a grid or random search of training runs, with successive halving.
    Sweep(sweep::Args),
    /// Write a self-contained HTML report of a run or a sweep.
    Report(report::Args),
}

fn parse_precision(s: &str) -> Result<largo::backend::MatmulPrecision, String> {
    s.parse().map_err(|e: largo::Error| e.to_string())
}

/// Lets glibc's malloc keep freed blocks of up to 32 MiB, and up to 1 GiB free at the heap's top,
/// for the next allocation instead of handing them back to the kernel. A training or inference
/// step frees and allocates the same buffers every step; handed back, each new one is faulted in
/// again page by page, and with two threads every first write to a page costs a TLB shootdown
/// (ResNet-18 at 32×32: 152,000 page faults in a 3-second `bench cnn` by default, 43,000 with
/// this, the first touches of its 165 MB).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes two malloc thresholds; called before any other thread starts.
    // The values are within the ranges glibc accepts (the mmap threshold at most 32 MiB on
    // 64-bit); a refused value leaves glibc's default, which is only slower.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

fn main() -> ExitCode {
    // SAFETY: restoring the default SIGPIPE action before any thread starts; a closed pipe
    // (`largo … | head`) then ends the process quietly, as other Unix tools do, instead of
    // making every print fail.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LARGO_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(e) = largo::init_threads(largo::train::dist::threads_per_rank(cli.threads)) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    // A misspelt LARGO_ISA would otherwise leave the kernels at the CPU's best unnoticed.
    if let Err(e) = largo::backend::cpu::isa::requested() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    largo::backend::set_matmul_precision(cli.matmul_precision);
    // Training and benchmarks print it in their own lines; elsewhere say it once on stderr
    // when it is not f32, since outputs then differ from f32 ones in the third digit.
    let logs_own = matches!(
        cli.command,
        Command::Train(_) | Command::Finetune(_) | Command::Bench(_)
    );
    if cli.matmul_precision != largo::backend::MatmulPrecision::Highest && !logs_own {
        eprintln!("{}", largo::backend::describe_matmul_precision());
    }
    // Commands run on one of the pool's threads (`largo::on_pool`); `serve` keeps its own
    // threads, which hand the requests' work to the pool.
    let on_pool = !matches!(cli.command, Command::Serve(_));
    let run = move || match cli.command {
        Command::Prepare(w) => prepare::run(w),
        Command::Train(a) => train::run(a),
        Command::Finetune(a) => finetune::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Explain(w) => explain::run(w),
        Command::Generate(a) => generate::run(a),
        Command::Classify(a) => classify::run(a),
        Command::Embed(a) => embed::run(a),
        Command::Import(a) => interop::run_import(a),
        Command::Export(a) => interop::run_export(a),
        Command::Inspect(a) => interop::run_inspect(a),
        Command::Merge(a) => merge::run(a),
        Command::Serve(a) => serve::run_serve(a),
        Command::Bench(a) => bench::run(a),
        Command::Sweep(a) => sweep::run(a),
        Command::Report(a) => report::run(a),
    };
    let res = if on_pool { largo::on_pool(run) } else { run() };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
