//! Benchmarks behind `largo bench`: GEMM GFLOP/s, MLP and GPT training throughput, generation
//! and embedding speed. Numbers are medians of many timed repetitions after a warm-up.
//!
//! `load` is the HTTP load generator behind `largo bench serve`, which measures a running server
//! (largo's or another) from outside.

pub mod load;

use crate::backend::{cross_entropy_backward, cross_entropy_forward, Gemm, GemmProvider};
use crate::models::{Cnn, CnnConfig, ImageClassifier, Mlp, MlpConfig, ResNet, ResNetConfig};
use crate::nn::{Forward, Module};
use crate::rng::Rng;
use crate::train::optim::{OptimConfig, Optimizer};
use crate::Result;
use std::time::Instant;

/// The shapes `tools/bench_gemm.py` measures too: (label, m, n, k).
pub const GEMM_SHAPES: &[(&str, usize, usize, usize)] = &[
    ("square 512", 512, 512, 512),
    ("square 1024", 1024, 1024, 1024),
    ("square 2048", 2048, 2048, 2048),
    ("mlp fc1 fwd", 64, 128, 784),
    ("mlp fc1 dW", 128, 784, 64),
    ("gpt qkv", 2048, 768, 256),
    ("gpt mlp up", 2048, 1024, 256),
    ("gpt mlp down", 2048, 256, 1024),
    ("gpt lm-head", 2048, 73, 256),
    ("bert q/k/v", 1700, 384, 384),
    ("bert ffn up", 1700, 1536, 384),
    ("bert ffn down", 1700, 384, 1536),
];

pub struct GemmResult {
    pub provider: GemmProvider,
    pub label: &'static str,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub gflops: f64,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).expect("finite timings"));
    xs[xs.len() / 2]
}

/// Times `f` repeatedly for about `budget_s` seconds (at least `min_reps`), returns the median.
fn time_median(budget_s: f64, min_reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let start = Instant::now();
    let mut times = Vec::new();
    while times.len() < min_reps || start.elapsed().as_secs_f64() < budget_s {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
        if times.len() > 100_000 {
            break;
        }
    }
    median(times)
}

/// GFLOP/s of every shape for every provider compiled in.
pub fn bench_gemm() -> Vec<GemmResult> {
    let mut rng = Rng::new(0);
    let mut out = Vec::new();
    for provider in GemmProvider::all() {
        for &(label, m, n, k) in GEMM_SHAPES {
            let a: Vec<f32> = (0..m * k).map(|_| rng.normal()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.normal()).collect();
            let mut c = vec![0f32; m * n];
            let secs = time_median(0.3, 10, || {
                Gemm::nn(m, n, k).run_with(provider, &a, &b, &mut c)
            });
            out.push(GemmResult {
                provider,
                label,
                m,
                n,
                k,
                gflops: 2.0 * (m * n * k) as f64 / secs / 1e9,
            });
        }
    }
    out
}

pub fn render_gemm(results: &[GemmResult]) -> String {
    let mut s = format!(
        "largo gemm, {} threads\nprovider              shape              m     n     k   GFLOP/s\n",
        rayon::current_num_threads()
    );
    for r in results {
        s += &format!(
            "{:<21} {:<14} {:>5} {:>5} {:>5}  {:>8.1}\n",
            r.provider.name(),
            r.label,
            r.m,
            r.n,
            r.k,
            r.gflops
        );
    }
    s
}

/// Training samples/s of the MNIST MLP (784-128-10, AdamW) on random data, batch `batch`.
pub fn bench_mlp(batch: usize, steps: usize) -> Result<f64> {
    let cfg = MlpConfig::default();
    let mut model = Mlp::new(cfg.clone())?;
    let mut rng = Rng::new(1);
    model.init(&mut rng);
    let mut opt = Optimizer::new(OptimConfig::default());
    let batches = 100;
    let x: Vec<f32> = (0..batches * batch * cfg.input)
        .map(|_| rng.normal())
        .collect();
    let y: Vec<i64> = (0..batches * batch)
        .map(|_| rng.below(cfg.classes) as i64)
        .collect();
    let mut losses = vec![0f32; batch];
    let mut dlogits = vec![0f32; batch * cfg.classes];
    let mut times = Vec::with_capacity(steps);
    for s in 0..steps + 20 {
        let b = s % batches;
        let xb = &x[b * batch * cfg.input..(b + 1) * batch * cfg.input];
        let yb = &y[b * batch..(b + 1) * batch];
        let t = Instant::now();
        model.zero_grad();
        let logits = model.forward(xb, Forward::train(batch, 1, s as u64));
        cross_entropy_forward(logits, yb, cfg.classes, -100, 0.0, &mut losses)?;
        cross_entropy_backward(logits, yb, cfg.classes, -100, 0.0, 1.0, &mut dlogits)?;
        model.backward(&dlogits, true);
        opt.step(model.params_mut(), 1e-3);
        if s >= 20 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    Ok(batch as f64 / median(times))
}

/// The image classifiers `tools/bench_cnn.py` measures too: PyTorch's MNIST example net
/// (batch 64, 1×28×28), ResNet-18 on 32×32 (10 classes) and 224×224 (1000 classes), batch 16.
pub const CNN_CASES: [&str; 3] = ["mnist_net", "resnet18_32", "resnet18_224"];

pub struct CnnResult {
    pub case: &'static str,
    pub batch: usize,
    pub input: [usize; 3],
    pub train_samples_per_s: f64,
    pub infer_images_per_s: f64,
}

/// The batch of a [`CNN_CASES`] case: 64 for the MNIST net, 16 for ResNet-18 (as
/// `tools/bench_cnn.py`).
fn cnn_case_batch(case: &str) -> Result<usize> {
    match case {
        "mnist_net" => Ok(64),
        "resnet18_32" | "resnet18_224" => Ok(16),
        other => crate::bail!(
            "no CNN benchmark case '{other}': expected one of {}",
            CNN_CASES.join(", ")
        ),
    }
}

/// The training loop of `bench cnn`: one of [`CNN_CASES`] on a fixed random batch, SGD with
/// momentum as `tools/bench_cnn.py` trains.
struct CnnTrainer {
    case: &'static str,
    batch: usize,
    model: Box<dyn ImageClassifier>,
    opt: Optimizer,
    x: Vec<f32>,
    y: Vec<i64>,
    losses: Vec<f32>,
    dlogits: Vec<f32>,
    step: u64,
}

impl CnnTrainer {
    fn new(case: &str) -> Result<CnnTrainer> {
        let mut rng = Rng::new(1);
        let batch = cnn_case_batch(case)?;
        let (case, model): (&'static str, Box<dyn ImageClassifier>) = match case {
            "mnist_net" => {
                let mut m = Cnn::new(CnnConfig::default())?;
                m.init(&mut rng);
                ("mnist_net", Box::new(m))
            }
            "resnet18_32" | "resnet18_224" => {
                let small = case == "resnet18_32";
                let mut cfg = ResNetConfig::depth(18, if small { 10 } else { 1000 })?;
                if small {
                    cfg.image_size = [32, 32];
                }
                let mut m = ResNet::new(cfg)?;
                m.init(&mut rng);
                (
                    if small { "resnet18_32" } else { "resnet18_224" },
                    Box::new(m),
                )
            }
            other => unreachable!("cnn_case_batch accepted '{other}'"),
        };
        let classes = model.classes();
        let x: Vec<f32> = (0..batch * model.input_len())
            .map(|_| rng.normal())
            .collect();
        let y: Vec<i64> = (0..batch).map(|_| rng.below(classes) as i64).collect();
        Ok(CnnTrainer {
            case,
            batch,
            model,
            // tools/bench_cnn.py's recipe: SGD, momentum 0.9, lr 0.01.
            opt: Optimizer::new(OptimConfig {
                kind: "sgd".into(),
                lr: 0.01,
                momentum: 0.9,
                weight_decay: 0.0,
                ..OptimConfig::default()
            }),
            x,
            y,
            losses: vec![0f32; batch],
            dlogits: vec![0f32; batch * classes],
            step: 0,
        })
    }

    /// One training step; returns its seconds.
    fn step(&mut self) -> Result<f64> {
        let (batch, classes) = (self.batch, self.model.classes());
        let start = Instant::now();
        self.step += 1;
        self.model.zero_grad();
        let logits = self
            .model
            .forward(&self.x, Forward::train(batch, 1, self.step))?;
        cross_entropy_forward(logits, &self.y, classes, -100, 0.0, &mut self.losses)?;
        cross_entropy_backward(logits, &self.y, classes, -100, 0.0, 1.0, &mut self.dlogits)?;
        self.model.backward(&self.dlogits, true)?;
        self.opt.step(self.model.params_mut(), 0.01);
        Ok(start.elapsed().as_secs_f64())
    }

    /// One eval-mode forward of the batch; returns its seconds.
    fn infer(&mut self) -> Result<f64> {
        let start = Instant::now();
        self.model.forward(&self.x, Forward::eval(self.batch, 1))?;
        Ok(start.elapsed().as_secs_f64())
    }
}

/// Training samples/s (SGD steps) and inference images/s (eval forward) of one of
/// [`CNN_CASES`] on random data, each the median over about `seconds` of steps.
pub fn bench_cnn(case: &str, seconds: f64) -> Result<CnnResult> {
    let mut t = CnnTrainer::new(case)?;
    let mut failed = None;
    let train = time_median(seconds, 3, || {
        if let Err(e) = t.step() {
            failed.get_or_insert(e);
        }
    });
    let infer = time_median(seconds, 3, || {
        if let Err(e) = t.infer() {
            failed.get_or_insert(e);
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(CnnResult {
        case: t.case,
        batch: t.batch,
        input: t.model.input(),
        train_samples_per_s: t.batch as f64 / train,
        infer_images_per_s: t.batch as f64 / infer,
    })
}

/// Profiles `steps` training steps of a CNN case, or eval-mode forwards of its batch where
/// `inference` (after 3 warm-up ones), on the pool and on one thread; also returns the batch.
pub fn bench_cnn_profile(
    case: &str,
    steps: usize,
    inference: bool,
) -> Result<(StepProfile, usize)> {
    let batch = cnn_case_batch(case)?;
    let p = if inference {
        profile_steps(steps, || CnnTrainer::new(case), CnnTrainer::infer)?
    } else {
        profile_steps(steps, || CnnTrainer::new(case), CnnTrainer::step)?
    };
    Ok((p, batch))
}

/// Threads in the pool the kernels run on.
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// The GPT of `tools/bench_gpt.py`: 4 layers, d 256, 8 heads, MLP 1024, exact GELU, tied head.
pub fn bench_gpt_model(vocab: usize, block_size: usize) -> Result<crate::models::TransformerLm> {
    let cfg = crate::models::GptConfig {
        vocab_size: vocab,
        block_size,
        ..Default::default()
    };
    let mut m = crate::models::TransformerLm::new(cfg.spec())?;
    m.init(&mut Rng::new(0));
    Ok(m)
}

/// The training loop of `bench gpt`: batches of 16 × 128 random tokens, AdamW.
struct GptTrainer {
    model: crate::models::TransformerLm,
    opt: Optimizer,
    rng: Rng,
    rows: Vec<f32>,
    dlogits: Vec<f32>,
    vocab: usize,
    step: usize,
}

impl GptTrainer {
    const BATCH: usize = 16;
    const T: usize = 128;

    fn new(vocab: usize) -> Result<GptTrainer> {
        let (b, t) = (Self::BATCH, Self::T);
        Ok(GptTrainer {
            model: bench_gpt_model(vocab, t)?,
            opt: Optimizer::new(OptimConfig {
                lr: 3e-4,
                beta2: 0.95,
                weight_decay: 0.1,
                no_decay_1d: true,
                ..OptimConfig::default()
            }),
            rng: Rng::new(1),
            rows: vec![0f32; b * t],
            dlogits: vec![0f32; b * t * vocab],
            vocab,
            step: 0,
        })
    }

    /// One step (data drawn outside the timing); returns its seconds.
    fn step(&mut self) -> Result<f64> {
        let (b, t, vocab) = (Self::BATCH, Self::T, self.vocab);
        let x: Vec<u32> = (0..b * t).map(|_| self.rng.below(vocab) as u32).collect();
        let y: Vec<i64> = (0..b * t).map(|_| self.rng.below(vocab) as i64).collect();
        let start = Instant::now();
        let logits = self
            .model
            .forward(&x, Forward::train(b, t, self.step as u64))?;
        cross_entropy_forward(logits, &y, vocab, -100, 0.0, &mut self.rows)?;
        cross_entropy_backward(logits, &y, vocab, -100, 0.0, 1.0, &mut self.dlogits)?;
        self.model.backward(&self.dlogits);
        self.opt.step(self.model.params_mut(), 3e-4);
        {
            let _span = crate::backend::profile::span("zero grad");
            self.model.zero_grad();
        }
        self.step += 1;
        Ok(start.elapsed().as_secs_f64())
    }
}

/// GPT training tokens/s (median of steps 3–22 of 25, batch 16 × 128, AdamW) and peak RSS (MB).
pub fn bench_gpt_train(vocab: usize) -> Result<(f64, f64)> {
    let mut trainer = GptTrainer::new(vocab)?;
    let mut times = Vec::new();
    for step in 0..25 {
        let secs = trainer.step()?;
        if (3..23).contains(&step) {
            times.push(secs);
        }
    }
    let tokens = (GptTrainer::BATCH * GptTrainer::T) as f64;
    Ok((tokens / median(times), peak_rss_mb()))
}

/// One op kind of a profiled step: per-step means at the pool's threads and at one thread.
#[derive(Clone, Debug)]
pub struct ProfileRow {
    pub op: crate::backend::profile::Op,
    pub calls_per_step: f64,
    pub ms: f64,
    pub ms_one_thread: f64,
}

impl ProfileRow {
    /// GFLOP/s at the pool's threads (GEMMs only).
    pub fn gflops(&self) -> Option<f64> {
        let f = self.op.flops();
        (f > 0.0).then(|| f * self.calls_per_step / (self.ms * 1e6))
    }
}

/// Where a training step's time goes, at the pool's threads and at one.
#[derive(Clone, Debug)]
pub struct StepProfile {
    pub threads: usize,
    pub steps: usize,
    pub step_ms: f64,
    pub step_ms_one_thread: f64,
    /// Slowest first; GEMMs by shape, then kernels; time outside every span is not a row.
    pub rows: Vec<ProfileRow>,
}

impl StepProfile {
    /// Milliseconds per step outside every kernel span (glue, allocation, the model's own loops).
    pub fn other_ms(&self) -> (f64, f64) {
        let (a, b) = self
            .rows
            .iter()
            .fold((0.0, 0.0), |(a, b), r| (a + r.ms, b + r.ms_one_thread));
        (self.step_ms - a, self.step_ms_one_thread - b)
    }
}

/// Profiles `steps` GPT training steps (after 3 warm-up steps) on the pool, then on one thread.
pub fn bench_gpt_profile(vocab: usize, steps: usize) -> Result<StepProfile> {
    profile_steps(steps, || GptTrainer::new(vocab), GptTrainer::step)
}

/// Times `steps` steps of a fresh trainer (after 3 warm-up steps) with the profile on, on the
/// pool and then on a one-thread pool; rows slowest first.
fn profile_steps<T>(
    steps: usize,
    new: impl Fn() -> Result<T> + Sync,
    step: impl Fn(&mut T) -> Result<f64> + Sync,
) -> Result<StepProfile> {
    use crate::backend::profile;
    let run =
        |steps: usize| -> Result<(f64, std::collections::HashMap<profile::Op, profile::Tally>)> {
            let mut trainer = new()?;
            for _ in 0..3 {
                step(&mut trainer)?;
            }
            profile::start();
            let mut total = 0.0;
            for _ in 0..steps {
                match step(&mut trainer) {
                    Ok(s) => total += s,
                    Err(e) => {
                        profile::stop();
                        return Err(e);
                    }
                }
            }
            Ok((total, profile::stop()))
        };
    let steps = steps.max(1);
    let threads = threads();
    let (total, all) = run(steps)?;
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map_err(|e| crate::Error::Invalid(format!("a one-thread pool: {e}")))?;
    let (total1, single) = one.install(|| run(steps))?;
    let per = |secs: f64| 1e3 * secs / steps as f64;
    let mut rows: Vec<ProfileRow> = all
        .iter()
        .map(|(op, t)| ProfileRow {
            op: *op,
            calls_per_step: t.calls as f64 / steps as f64,
            ms: per(t.seconds),
            ms_one_thread: single.get(op).map_or(0.0, |t| per(t.seconds)),
        })
        .collect();
    rows.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    Ok(StepProfile {
        threads,
        steps,
        step_ms: per(total),
        step_ms_one_thread: per(total1),
        rows,
    })
}

/// The profile as a table: op, calls per step, ms per step, share of the step, GFLOP/s, ms at
/// one thread, parallel efficiency.
pub fn render_profile(p: &StepProfile) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<34} {:>6} {:>9} {:>6} {:>8} {:>10} {:>6}",
        "op", "calls", "ms/step", "share", "GFLOP/s", "1-thr ms", "eff"
    );
    let line = |out: &mut String, label: &str, calls: String, ms: f64, gf: String, ms1: f64| {
        let eff = ms1 / (p.threads as f64 * ms);
        let _ = writeln!(
            out,
            "{label:<34} {calls:>6} {ms:>9.2} {:>5.1}% {gf:>8} {ms1:>10.2} {eff:>6.2}",
            100.0 * ms / p.step_ms
        );
    };
    for r in &p.rows {
        let gf = r.gflops().map_or(String::new(), |g| format!("{g:.1}"));
        line(
            &mut out,
            &r.op.label(),
            format!("{:.0}", r.calls_per_step),
            r.ms,
            gf,
            r.ms_one_thread,
        );
    }
    let (other, other1) = p.other_ms();
    line(
        &mut out,
        "other (outside kernels)",
        String::new(),
        other,
        String::new(),
        other1,
    );
    let (gemm_ms, gemm_flops) = p
        .rows
        .iter()
        .filter(|r| r.op.flops() > 0.0)
        .fold((0.0, 0.0), |(ms, f), r| {
            (ms + r.ms, f + r.op.flops() * r.calls_per_step)
        });
    let _ = writeln!(
        out,
        "step: {:.1} ms at {} threads, {:.1} ms at 1 (efficiency {:.2}); GEMMs {:.1}% of the step at {:.1} GFLOP/s, their FLOPs over the whole step {:.1} GFLOP/s",
        p.step_ms,
        p.threads,
        p.step_ms_one_thread,
        p.step_ms_one_thread / (p.threads as f64 * p.step_ms),
        100.0 * gemm_ms / p.step_ms,
        gemm_flops / (gemm_ms * 1e6),
        gemm_flops / (p.step_ms * 1e6),
    );
    out
}

/// Generation tokens/s: batch 1, a 1-token prompt, `n` new tokens greedily, with the KV cache.
pub fn bench_gpt_generate(vocab: usize, n: usize) -> Result<f64> {
    let model = bench_gpt_model(vocab, n + 56)?;
    let mut cache = model.new_cache();
    let start = Instant::now();
    let mut logits = model.forward_cached(&[0], &mut cache)?;
    for _ in 1..n {
        let next = crate::tensor::argmax(&logits) as u32;
        logits = model.forward_cached(&[next], &mut cache)?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// The sentences of the embedding benchmark (the same recipe as `tools/bench_embed.py`): the
/// words of `corpus` files in name order; sentence i has 10 + 37i mod 51 words starting at word
/// 7919i mod (words − 61).
/// The chat workload's texts from the corpus: a system prompt of about 300 tokens shared by
/// every request (an instruction and 220 words), and `n` user messages of about 200 tokens
/// (150 words each, from spread-out places, and a question).
pub fn bench_chat_texts(corpus: &std::path::Path, n: usize) -> Result<(String, Vec<String>)> {
    let words = corpus_words(corpus)?;
    if words.len() < 1000 {
        crate::bail!("{}: too few words for the chat benchmark", corpus.display());
    }
    let system = format!(
        "You are a helpful assistant who knows these plays well. For reference: {}",
        words[..220].join(" ")
    );
    let users = (0..n)
        .map(|i| {
            let start = 220 + (i * 7919) % (words.len() - 371);
            format!(
                "{}\nWhat happens in this passage, and who speaks?",
                words[start..start + 150].join(" ")
            )
        })
        .collect();
    Ok((system, users))
}

/// Every word of the corpus's `.txt` files, in file-name order.
fn corpus_words(corpus: &std::path::Path) -> Result<Vec<String>> {
    let mut files: Vec<_> = std::fs::read_dir(corpus)
        .map_err(|e| crate::Error::io(corpus, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    let mut words = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|e| crate::Error::io(f, e))?;
        words.extend(text.split_whitespace().map(str::to_string));
    }
    Ok(words)
}

pub fn bench_sentences(corpus: &std::path::Path, n: usize) -> Result<Vec<String>> {
    let words = corpus_words(corpus)?;
    if words.len() < 200 {
        crate::bail!(
            "{}: too few words for the benchmark sentences",
            corpus.display()
        );
    }
    Ok((0..n)
        .map(|i| {
            let len = 10 + (i * 37) % 51;
            let start = (i * 7919) % (words.len() - 61);
            words[start..start + len].join(" ")
        })
        .collect())
}

/// Sentence-embedding throughput: one warm-up pass over 64 sentences, then the best of
/// `repeat` passes over all of them, `batch` at a time. Returns sentences/s.
pub fn bench_embed(
    encoder: &crate::models::sentence::SentenceEncoder,
    sentences: &[String],
    batch: usize,
    repeat: usize,
) -> Result<f64> {
    let refs: Vec<&str> = sentences.iter().map(String::as_str).collect();
    encoder.embed(&refs[..refs.len().min(64)], batch)?;
    let mut best = f64::INFINITY;
    for _ in 0..repeat.max(1) {
        let start = Instant::now();
        encoder.embed(&refs, batch)?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(refs.len() as f64 / best)
}

/// Peak resident set size (VmHWM) of this process, in MB; 0 where /proc cannot tell.
pub fn peak_rss_mb() -> f64 {
    peak_rss_mb_in("/proc/self/status").unwrap_or(0.0)
}

/// Peak resident set size (VmHWM) of process `pid` (a server under load), in MB; None where
/// /proc cannot tell.
pub fn peak_rss_mb_of(pid: u32) -> Option<f64> {
    peak_rss_mb_in(&format!("/proc/{pid}/status"))
}

fn peak_rss_mb_in(status: &str) -> Option<f64> {
    let status = std::fs::read_to_string(status).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// `largo bench llm`: llama-bench's two numbers (prompt processing of 512 tokens, generation
/// of 128 from an empty context, tokens/s, median of `reps`) and what they cost.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LlmBench {
    pub pp512: f64,
    /// The matrices' weight types (`f32`, `Q4_1 + Q8_0`, …).
    pub weights: String,
    pub tg128: f64,
    /// Seconds to load the model, ready to run.
    pub load_s: f64,
    pub peak_rss_mb: f64,
    /// Weight bytes read per generated token × tg128, GB/s.
    pub gen_gb_s: f64,
    /// This machine's memory read bandwidth with the same threads (streaming 256 MB, best
    /// of 3), GB/s: the ceiling for `gen_gb_s`.
    pub mem_gb_s: f64,
    pub cpu: String,
    pub reps: usize,
    pub threads: usize,
}

pub fn bench_llm(
    files: &crate::models::llama_load::LlmFiles,
    reps: usize,
    dequantize: bool,
) -> Result<LlmBench> {
    use crate::models::llama::LlamaCache;
    let t = std::time::Instant::now();
    let model = files.load(dequantize)?;
    let load_s = t.elapsed().as_secs_f64();
    let vocab = model.config.vocab_size as u32;
    // Token ids spread over the vocabulary (the speed does not depend on which).
    let ids: Vec<u32> = (0..512u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    for _ in 0..reps.max(1) {
        let mut cache = LlamaCache::new(&model.config);
        let t = std::time::Instant::now();
        model.forward(&ids, &mut cache, false)?;
        pp.push(512.0 / t.elapsed().as_secs_f64());
        let mut cache = LlamaCache::new(&model.config);
        let t = std::time::Instant::now();
        let mut next = ids[0];
        for _ in 0..128 {
            let logits = model.forward(&[next], &mut cache, false)?;
            next = crate::tensor::argmax(&logits) as u32;
        }
        tg.push(128.0 / t.elapsed().as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let tg128 = median(&mut tg);
    // Before the bandwidth probe, whose buffer would count.
    let peak_rss_mb = peak_rss_mb();
    Ok(LlmBench {
        pp512: median(&mut pp),
        weights: model.weight_types(),
        tg128,
        load_s,
        peak_rss_mb,
        gen_gb_s: model.weight_bytes() as f64 * tg128 / 1e9,
        mem_gb_s: memory_read_gb_s(),
        cpu: cpu_description(),
        reps: reps.max(1),
        threads: threads(),
    })
}

/// `largo bench finetune`: LoRA training steps (forward, backward, AdamW on the adapters) on
/// a pretrained model, batches of random tokens.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FinetuneBench {
    pub tokens_per_s: f64,
    /// 4 × base parameters × tokens/s: the frozen base's forward and input gradients (the
    /// LoRA terms, attention scores and optimiser left out), as tools/bench_finetune.py
    /// counts PEFT's.
    pub gflop_s: f64,
    /// Parameters of the base, a tied head counted twice (it is multiplied twice).
    pub base_params: usize,
    pub weights: String,
    pub batch: usize,
    pub context: usize,
    pub r: usize,
    pub checkpointing: bool,
    pub steps: usize,
    pub seconds: f64,
    pub load_s: f64,
    pub peak_rss_mb: f64,
    pub cpu: String,
    pub threads: usize,
}

/// Trains adapters of rank `r` on all seven projections of `files`' model for `seconds` after
/// one warm-up step; batches of `batch` × `context` random tokens.
pub fn bench_finetune(
    files: &crate::models::llama_load::LlmFiles,
    dequantize: bool,
    batch: usize,
    context: usize,
    r: usize,
    checkpointing: bool,
    seconds: f64,
) -> Result<FinetuneBench> {
    use crate::models::llama_train::LoraLlama;
    use crate::models::lora::{LoraConfig, LoraTarget};
    use crate::nn::Module;
    use crate::train::optim::{OptimConfig, Optimizer};
    let t = std::time::Instant::now();
    let base = files.load(dequantize)?;
    let load_s = t.elapsed().as_secs_f64();
    let weights = base.weight_types();
    let c = &base.config;
    let vocab = c.vocab_size;
    let matrices: usize = c.num_hidden_layers
        * (c.hidden_size * (c.q_dim() + 2 * c.kv_dim())
            + c.q_dim() * c.hidden_size
            + 3 * c.hidden_size * c.intermediate_size);
    // The embedding, and the head (the embedding again when tied): both are products.
    let base_params = matrices + 2 * vocab * c.hidden_size;
    let targets: Vec<&str> = LoraTarget::ALL.iter().map(|t| t.name()).collect();
    let lora = LoraConfig::new(r, 2.0 * r as f32, 0.0, &targets)?;
    let mut model = LoraLlama::new(base, lora, 0)?;
    model.checkpoint_activations = checkpointing;
    let mut opt = Optimizer::new(OptimConfig {
        lr: 2e-4,
        weight_decay: 0.0,
        ..OptimConfig::default()
    });
    let mut rng = crate::rng::Rng::new(0);
    let mut step = |model: &mut LoraLlama| -> Result<()> {
        let ids: Vec<u32> = (0..batch * context)
            .map(|_| rng.below(vocab) as u32)
            .collect();
        let labels: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let targets = crate::models::llama_train::shift_labels(&labels, batch)?;
        model.zero_grad();
        model.forward(&ids, &targets, batch, 0)?;
        model.backward()?;
        opt.step(model.params_mut(), 2e-4);
        Ok(())
    };
    step(&mut model)?;
    let (mut steps, t) = (0, std::time::Instant::now());
    while steps == 0 || t.elapsed().as_secs_f64() < seconds {
        step(&mut model)?;
        steps += 1;
    }
    let elapsed = t.elapsed().as_secs_f64();
    let tokens_per_s = (steps * batch * context) as f64 / elapsed;
    Ok(FinetuneBench {
        tokens_per_s,
        gflop_s: 4.0 * base_params as f64 * tokens_per_s / 1e9,
        base_params,
        weights,
        batch,
        context,
        r,
        checkpointing,
        steps,
        seconds: elapsed,
        load_s,
        peak_rss_mb: peak_rss_mb(),
        cpu: cpu_description(),
        threads: threads(),
    })
}

/// Memory read bandwidth: 256 MB (far beyond any cache) summed by every thread of the pool,
/// best of 3, GB/s.
pub fn memory_read_gb_s() -> f64 {
    use rayon::prelude::*;
    let words: Vec<u64> = (0..32u64 << 20).collect();
    let mut best = 0f64;
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let sum = words
            .par_chunks(1 << 16)
            .map(|c| c.iter().fold(0u64, |a, &b| a.wrapping_add(b)))
            .reduce(|| 0, u64::wrapping_add);
        std::hint::black_box(sum);
        best = best.max((words.len() * 8) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

/// The CPU's model name and the vector instruction sets largo dispatches on.
pub fn cpu_description() -> String {
    let name = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mut isa = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        for (flag, on) in [
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
            (
                "avx512vnni",
                std::arch::is_x86_feature_detected!("avx512vnni"),
            ),
            (
                "avx512bf16",
                std::arch::is_x86_feature_detected!("avx512bf16"),
            ),
            (
                "amx",
                crate::backend::cpu::gemm::GemmProvider::all()
                    .iter()
                    .any(|p| !p.is_f32()),
            ),
        ] {
            if on {
                isa.push(flag);
            }
        }
    }
    format!(
        "{name} ({}; {})",
        isa.join(", "),
        crate::backend::cpu::isa::describe()
    )
}
