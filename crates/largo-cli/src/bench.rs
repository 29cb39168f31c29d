use anyhow::Result;

#[derive(Clone, Copy, clap::ValueEnum)]
enum What {
    /// GEMM GFLOP/s for square and real model shapes.
    Gemm,
    /// MLP (784-128-10, AdamW) training samples/s.
    Mlp,
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
}

pub fn run(a: Args) -> Result<()> {
    match a.what {
        What::Gemm => print!("{}", largo::bench::render_gemm(&largo::bench::bench_gemm())),
        What::Mlp => {
            let sps = largo::bench::bench_mlp(a.batch_size.max(1), a.steps.max(1))?;
            println!(
                "largo mlp train: {sps:.0} samples/s (batch {}, {} threads, gemm {})",
                a.batch_size,
                largo::bench::threads(),
                largo::backend::gemm_provider()
            );
        }
    }
    Ok(())
}
