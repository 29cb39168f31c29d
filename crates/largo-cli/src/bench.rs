use anyhow::Result;

#[derive(Clone, Copy, clap::ValueEnum)]
enum What {
    /// GEMM GFLOP/s for square and real model shapes, per provider.
    Gemm,
    /// MLP (784-128-10, AdamW) training samples/s.
    Mlp,
    /// GPT (4 layers, d 256, 8 heads, ff 1024) training tokens/s and peak RSS.
    Gpt,
    /// GPT generation tokens/s, batch 1, 200 tokens, KV cache.
    Generate,
    /// Sentence embeddings/s of a BERT model (--model) on sentences of 10-60 words.
    Embed,
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
    /// Model directory for `embed`.
    #[arg(long, default_value = "../shared/models/all-MiniLM-L6-v2")]
    model: std::path::PathBuf,
    /// Folder of .txt files the `embed` sentences are cut from.
    #[arg(long, default_value = "data/shakespeare")]
    corpus: std::path::PathBuf,
    /// Sentences for `embed`.
    #[arg(long, default_value_t = 512)]
    sentences: usize,
    /// Batch size for `embed`.
    #[arg(long, default_value_t = 32)]
    batch: usize,
}

pub fn run(a: Args) -> Result<()> {
    let threads = largo::bench::threads();
    match a.what {
        What::Gemm => print!("{}", largo::bench::render_gemm(&largo::bench::bench_gemm())),
        What::Mlp => {
            let sps = largo::bench::bench_mlp(a.batch_size.max(1), a.steps.max(1))?;
            println!(
                "largo mlp train: {sps:.0} samples/s (batch {}, {threads} threads, gemm {})",
                a.batch_size,
                largo::backend::gemm_provider()
            );
        }
        What::Gpt => {
            let (tps, rss) = largo::bench::bench_gpt_train(a.vocab.max(2))?;
            println!("largo gpt train: {tps:.0} tokens/s (median of steps 3-22, batch 16x128, {threads} threads)");
            println!("peak RSS: {rss:.0} MB");
        }
        What::Generate => {
            let tps = largo::bench::bench_gpt_generate(a.vocab.max(2), 200)?;
            println!("largo gpt generate: {tps:.0} tokens/s (200 tokens, batch 1, KV cache, {threads} threads)");
        }
        What::Embed => {
            let encoder = largo::models::sentence::SentenceEncoder::load(&a.model)?;
            let sentences = largo::bench::bench_sentences(&a.corpus, a.sentences.max(1))?;
            let sps = largo::bench::bench_embed(&encoder, &sentences, a.batch.max(1), 3)?;
            println!(
                "largo embed: {sps:.1} sentences/s ({} sentences of 10-60 words, batch {}, {threads} threads)",
                sentences.len(),
                a.batch
            );
            println!("peak RSS: {:.0} MB", largo::bench::peak_rss_mb());
        }
    }
    Ok(())
}
