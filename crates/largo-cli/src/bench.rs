use anyhow::{bail, Context, Result};
use largo::bench::load::{self, LoadConfig, Workload};
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

/// Model directory of `embed` when no --model is given.
const DEFAULT_EMBED_MODEL: &str = "../shared/models/all-MiniLM-L6-v2";

#[derive(Clone, Copy, clap::ValueEnum)]
enum What {
    /// GEMM GFLOP/s for square and real model shapes, per provider.
    Gemm,
    /// MLP (784-128-10, AdamW) training samples/s.
    Mlp,
    /// GPT (4 layers, d 256, 8 heads, ff 1024) training tokens/s and peak RSS.
    Gpt,
    /// Image classifiers (PyTorch's MNIST example net, ResNet-18 at 32×32 and 224×224):
    /// training samples/s, inference images/s, peak RSS; `tools/bench_cnn.py` is PyTorch's side.
    Cnn,
    /// GPT generation tokens/s, batch 1, 200 tokens, KV cache.
    Generate,
    /// Sentence embeddings/s of a BERT model (--model) on sentences of 10-60 words.
    Embed,
    /// A pretrained LLM (--model FILE.gguf or a Hugging Face directory): prompt processing of
    /// 512 tokens and generation of 128, tokens/s as llama-bench -p 512 -n 128 reports them.
    Llm,
    /// LoRA fine-tuning of a pretrained LLM (--model): r 8 on all seven projections, batches
    /// of --batch × --context random tokens, AdamW; tokens/s, GFLOP/s and peak RSS.
    /// `tools/bench_finetune.py` is PEFT's side.
    Finetune,
    /// HTTP load on a server: requests/s, tokens/s, latency percentiles, errors and the
    /// server's peak RSS, for embeddings and/or completions (see --url, --model, --clients).
    Serve,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum WorkloadChoice {
    Embeddings,
    Completions,
    /// Streamed chat completions of a pretrained LLM: a shared ~300-token system prompt and a
    /// ~200-token user message per request; time to first token and between tokens.
    Chat,
    /// Embeddings, then completions.
    Both,
}

/// Options of `bench serve`.
#[derive(clap::Args)]
#[command(next_help_heading = "bench serve")]
struct ServeLoadArgs {
    /// A running server (e.g. http://127.0.0.1:8000); without it, the bench starts `largo
    /// serve` itself with the --model options and stops it at the end.
    #[arg(long, conflicts_with = "models")]
    url: Option<String>,
    /// Process id of the --url server, to report its peak RSS.
    #[arg(long, requires = "url")]
    server_pid: Option<u32>,
    /// Concurrent clients, each with its own keep-alive connection.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds of load per workload.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    #[arg(long, value_enum, default_value = "both")]
    workload: WorkloadChoice,
    /// Model for embeddings (default: the first embeddings model in /v1/models).
    #[arg(long)]
    embed_model: Option<String>,
    /// Model for completions (default: the first completions model in /v1/models).
    #[arg(long)]
    lm_model: Option<String>,
    /// Texts per embeddings request.
    #[arg(long, default_value_t = 1)]
    inputs_per_request: usize,
    /// `max_tokens` of each completion.
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// One JSON object per workload instead of text (`bench llm`: one object with pp512,
    /// tg128, load_s, peak_rss_mb, gen_gb_s, cpu, reps).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct Args {
    #[arg(value_enum)]
    what: What,
    /// Batch size for `mlp`.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Timed steps for `mlp`.
    #[arg(long, default_value_t = 300)]
    steps: usize,
    /// Vocabulary of the GPT benchmarks (73: the character set of the comparison corpus).
    #[arg(long, default_value_t = 73)]
    vocab: usize,
    /// `bench gpt` and `bench cnn`: where a training step's time goes instead of the speed: each
    /// op kind's milliseconds per step (GEMMs by shape), GFLOP/s, and its parallel efficiency
    /// (time at 1 thread ÷ threads × time at all); this many steps are profiled at each thread
    /// count
    #[arg(long, value_name = "STEPS", num_args = 0..=1, default_missing_value = "10")]
    profile: Option<usize>,
    /// `bench cnn --profile`: profile inference (eval-mode forwards of the batch) instead of
    /// training steps.
    #[arg(long, requires = "profile")]
    inference: bool,
    /// `embed`: the model directory (default ../shared/models/all-MiniLM-L6-v2). `serve`:
    /// [NAME=]DIR of a model for the bench to serve; repeat for several.
    #[arg(long = "model")]
    models: Vec<String>,
    /// Folder of .txt files the `embed` and `serve` sentences are cut from.
    #[arg(long, default_value = "data/shakespeare")]
    corpus: PathBuf,
    /// Sentences for `embed`, and the request texts of `serve` (used round-robin).
    #[arg(long, default_value_t = 512)]
    sentences: usize,
    /// Batch size: `embed` (default 32), `finetune` (default 4).
    #[arg(long)]
    batch: Option<usize>,
    /// `llm`: repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// `bench finetune`: tokens per sequence.
    #[arg(long, default_value_t = 256)]
    context: usize,
    /// `bench finetune`: the adapters' rank.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// `bench finetune`: recompute each block's activations during backward.
    #[arg(long)]
    checkpointing: bool,
    /// `bench finetune`: seconds of timed steps (after one warm-up step).
    #[arg(long, default_value_t = 60.0)]
    finetune_seconds: f64,
    /// `bench cnn`: one case (mnist_net, resnet18_32 or resnet18_224) instead of all three, so
    /// each peak RSS is its own.
    #[arg(long)]
    case: Option<String>,
    /// `bench cnn`: seconds of timed steps per measurement.
    #[arg(long, default_value_t = 10.0)]
    cnn_seconds: f64,
    /// Pretrained LLMs: expand every quantised GGUF weight to f32 and run f32 matmuls
    /// (transformers' numbers: for parity checks and exact f32 arithmetic). By default the
    /// weights stay quantised and run on the integer kernels, activations rounded to 8 bits
    /// per block as llama.cpp does.
    #[arg(long)]
    dequantize: bool,
    #[command(flatten)]
    serve: ServeLoadArgs,
}

pub fn run(a: Args) -> Result<()> {
    let threads = largo::bench::threads();
    let precision = largo::backend::matmul_precision().name();
    match a.what {
        What::Gemm => print!("{}", largo::bench::render_gemm(&largo::bench::bench_gemm())),
        What::Mlp => {
            let sps = largo::bench::bench_mlp(a.batch_size.max(1), a.steps.max(1))?;
            println!(
                "largo mlp train: {sps:.0} samples/s (batch {}, {threads} threads, gemm {})",
                a.batch_size,
                largo::backend::active_provider().name()
            );
        }
        What::Gpt if a.profile.is_some() => {
            let p = largo::bench::bench_gpt_profile(a.vocab.max(2), a.profile.unwrap_or(10))?;
            println!(
                "largo gpt train profile: {}; {threads} threads, matmul precision {precision}, {} steps of 16x128 at each thread count",
                largo::bench::cpu_description(),
                p.steps
            );
            print!("{}", largo::bench::render_profile(&p));
        }
        What::Gpt => {
            let (tps, rss) = largo::bench::bench_gpt_train(a.vocab.max(2))?;
            println!("largo gpt train: {tps:.0} tokens/s (median of steps 3-22, batch 16x128, {threads} threads, matmul precision {precision})");
            println!("peak RSS: {rss:.0} MB");
        }
        What::Cnn if a.profile.is_some() => {
            let case = a.case.as_deref().unwrap_or("resnet18_32");
            let (p, batch) =
                largo::bench::bench_cnn_profile(case, a.profile.unwrap_or(10), a.inference)?;
            let (what, steps) = if a.inference {
                ("inference", "forwards")
            } else {
                ("train", "steps")
            };
            println!(
                "largo cnn {case} {what} profile: {}; {threads} threads, matmul precision {precision}, {} {steps} of batch {batch} at each thread count",
                largo::bench::cpu_description(),
                p.steps
            );
            print!("{}", largo::bench::render_profile(&p));
        }
        What::Cnn => {
            let cases: Vec<&str> = match &a.case {
                Some(c) => vec![c.as_str()],
                None => largo::bench::CNN_CASES.to_vec(),
            };
            for case in cases {
                let r = largo::bench::bench_cnn(case, a.cnn_seconds.max(0.1))?;
                let [c, h, w] = r.input;
                println!(
                    "largo cnn {}: train {:.1} samples/s, inference {:.1} images/s (batch {}, {c}×{h}×{w}, {threads} threads, matmul precision {precision}); peak RSS {:.0} MB",
                    r.case,
                    r.train_samples_per_s,
                    r.infer_images_per_s,
                    r.batch,
                    largo::bench::peak_rss_mb()
                );
            }
        }
        What::Generate => {
            let tps = largo::bench::bench_gpt_generate(a.vocab.max(2), 200)?;
            println!("largo gpt generate: {tps:.0} tokens/s (200 tokens, batch 1, KV cache, {threads} threads)");
        }
        What::Embed => {
            let dir = a.models.first().map_or(DEFAULT_EMBED_MODEL, String::as_str);
            let encoder =
                largo::models::sentence::SentenceEncoder::load(std::path::Path::new(dir))?;
            let sentences = largo::bench::bench_sentences(&a.corpus, a.sentences.max(1))?;
            let batch = a.batch.unwrap_or(32).max(1);
            let sps = largo::bench::bench_embed(&encoder, &sentences, batch, 3)?;
            println!(
                "largo embed: {sps:.1} sentences/s ({} sentences of 10-60 words, batch {}, {threads} threads, matmul precision {precision})",
                sentences.len(),
                batch
            );
            println!("peak RSS: {:.0} MB", largo::bench::peak_rss_mb());
        }
        What::Llm => {
            let files = pretrained(&a.models, "llm")?;
            let r = largo::bench::bench_llm(&files, a.reps, a.dequantize)?;
            if a.serve.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "largo llm {}: pp512 {:.1} tokens/s, tg128 {:.1} tokens/s (median of {}, {} threads, weights {})",
                    files.path().display(),
                    r.pp512,
                    r.tg128,
                    r.reps,
                    r.threads,
                    r.weights
                );
                println!(
                    "load {:.2} s, peak RSS {:.0} MB, {:.1} GB/s of weights during generation (memory reads at {:.1} GB/s); {}",
                    r.load_s, r.peak_rss_mb, r.gen_gb_s, r.mem_gb_s, r.cpu
                );
            }
        }
        What::Finetune => {
            let files = pretrained(&a.models, "finetune")?;
            let batch = a.batch.unwrap_or(4).max(1);
            let r = largo::bench::bench_finetune(
                &files,
                a.dequantize,
                batch,
                a.context,
                a.rank,
                a.checkpointing,
                a.finetune_seconds,
            )?;
            if a.serve.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "largo finetune {} (weights {}): {:.1} tokens/s, {:.1} GFLOP/s; batch {} × {}, r {}, checkpointing {}; {} steps in {:.1} s",
                    files.path().display(),
                    r.weights,
                    r.tokens_per_s,
                    r.gflop_s,
                    r.batch,
                    r.context,
                    r.r,
                    r.checkpointing,
                    r.steps,
                    r.seconds
                );
                println!(
                    "load {:.2} s, peak RSS {:.0} MB, {} threads; {}",
                    r.load_s, r.peak_rss_mb, r.threads, r.cpu
                );
            }
        }
        What::Serve => {
            let texts = largo::bench::bench_sentences(&a.corpus, a.sentences.max(1))?;
            let chat = largo::bench::bench_chat_texts(&a.corpus, a.sentences.max(1))?;
            bench_serve(&a.serve, &a.models, texts, chat, threads)?;
        }
    }
    Ok(())
}

/// The pretrained model of `bench llm` / `bench finetune`: the first --model.
fn pretrained(models: &[String], bench: &str) -> Result<largo::models::llama_load::LlmFiles> {
    let Some(path) = models.first() else {
        bail!("bench {bench} needs --model FILE.gguf or a Hugging Face directory");
    };
    let path = std::path::Path::new(path);
    largo::models::llama_load::LlmFiles::find(path)?.with_context(|| {
        format!(
            "{}: neither a GGUF file nor a Hugging Face directory of a Llama-family model",
            path.display()
        )
    })
}

/// A `largo serve` child of this same binary, started by the bench and stopped with SIGTERM.
struct ServerProcess {
    child: std::process::Child,
    addr: String,
    /// Kept open until the child exits: it prints `stopped` when it does, and a closed pipe
    /// would kill it with SIGPIPE instead.
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl ServerProcess {
    fn start(models: &[String], threads: usize) -> Result<Self> {
        let exe = std::env::current_exe().context("cannot find the largo binary")?;
        let mut cmd = std::process::Command::new(exe);
        cmd.args(["--threads", &threads.to_string(), "serve"])
            .args(["--host", "127.0.0.1", "--port", "0"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped());
        for m in models {
            cmd.args(["--model", m]);
        }
        let mut child = cmd.spawn().context("cannot start largo serve")?;
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .map(str::to_string);
        let Some(addr) = addr else {
            let status = child.wait()?;
            bail!("largo serve did not start ({status}); its errors are above");
        };
        Ok(ServerProcess {
            child,
            addr,
            stdout,
        })
    }

    /// SIGTERM, then up to 30 s to drain before a hard kill.
    fn stop(mut self) -> Result<()> {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) only sends a signal; `pid` is our own child, not yet reaped (its
        // `Child` is alive here), so the id cannot have been reused by another process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                let mut rest = String::new();
                let _ = std::io::Read::read_to_string(&mut self.stdout, &mut rest);
                if !status.success() {
                    bail!("largo serve exited with {status} after SIGTERM");
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        bail!("largo serve did not stop within 30 s of SIGTERM; killed")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Only reached on error paths before `stop` (which waits); never leave a server behind.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn bench_serve(
    a: &ServeLoadArgs,
    models: &[String],
    texts: Vec<String>,
    chat: (String, Vec<String>),
    threads: usize,
) -> Result<()> {
    if a.clients == 0 || a.inputs_per_request == 0 || a.max_tokens == 0 {
        bail!("--clients, --inputs-per-request and --max-tokens must be ≥ 1");
    }
    if !(a.seconds > 0.0 && a.seconds.is_finite()) {
        bail!("--seconds must be > 0");
    }
    let (server, addr, server_pid) = match &a.url {
        Some(url) => (None, load::parse_url(url)?, a.server_pid),
        None if models.is_empty() => {
            bail!("bench serve needs --url of a running server or --model NAME=DIR to serve")
        }
        None => {
            let s = ServerProcess::start(models, threads)?;
            let (addr, pid) = (s.addr.clone(), s.child.id());
            (Some(s), addr, Some(pid))
        }
    };
    let workloads: &[Workload] = match a.workload {
        WorkloadChoice::Embeddings => &[Workload::Embeddings],
        WorkloadChoice::Completions => &[Workload::Completions],
        WorkloadChoice::Chat => &[Workload::Chat],
        WorkloadChoice::Both => &[Workload::Embeddings, Workload::Completions],
    };
    if !a.json {
        let who = match (&a.url, server_pid) {
            (Some(_), _) => "server".to_string(),
            (None, Some(pid)) => format!("largo serve (pid {pid}, {threads} threads)"),
            (None, None) => unreachable!("a started server has a pid"),
        };
        println!("largo bench serve: {who} at http://{addr}");
    }
    for &workload in workloads {
        let chosen = match workload {
            Workload::Embeddings => a.embed_model.clone(),
            Workload::Completions | Workload::Chat => a.lm_model.clone(),
        };
        let model = match chosen {
            Some(m) => m,
            None => match load::discover_model(&addr, workload)? {
                Some(m) => m,
                // `both` runs what the server offers; an explicit workload must be served.
                None if workloads.len() > 1 => {
                    if !a.json {
                        println!("== {}: no such model served; skipped", workload.name());
                    }
                    continue;
                }
                None => bail!("http://{addr} serves no {} model", workload.name()),
            },
        };
        let cfg = LoadConfig {
            addr: addr.clone(),
            workload,
            model,
            clients: a.clients,
            duration: Duration::from_secs_f64(a.seconds),
            texts: if workload == Workload::Chat {
                chat.1.clone()
            } else {
                texts.clone()
            },
            inputs_per_request: a.inputs_per_request,
            max_tokens: a.max_tokens,
            system: chat.0.clone(),
        };
        let mut report = load::run_load(&cfg)?;
        // VmHWM is the peak since the server started, so after `both` it covers both loads.
        report.server_peak_rss_mb = server_pid.and_then(largo::bench::peak_rss_mb_of);
        if a.json {
            println!("{}", report.to_json());
        } else {
            print!("{}", report.render());
        }
    }
    if let Some(s) = server {
        s.stop()?;
    }
    Ok(())
}
