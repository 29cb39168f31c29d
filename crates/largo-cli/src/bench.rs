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
    }
    Ok(())
}
