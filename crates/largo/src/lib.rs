//! largo: build, train, evaluate, explain and serve neural networks on its own engine.
//!
//! The modules follow the pipeline: `data` → `nn` (layers over the `backend` kernels) →
//! `models` → `train` → `eval` → `sweep` (whole training runs compared) → `explain` →
//! `generate` → `serve`, with `report` and `bench` on top; `config`, `io` and `draw` (the
//! pictures' font, PNG encoding and axes) serve them all. A stage imports earlier stages only,
//! never a later one: what training's validation and evaluation share sits below both (a
//! model's own scoring pass, `Mlp::score`; `train::lm::evaluate_lm`).

pub mod backend;
pub mod bench;
pub mod config;
pub mod data;
pub mod draw;
pub mod error;
pub mod eval;
pub mod explain;
pub mod generate;
pub mod io;
pub mod models;
pub mod nn;
pub mod report;
pub mod rng;
pub mod serve;
pub mod sweep;
pub mod tensor;
pub mod train;

pub use error::{Error, Result};

/// Sizes the one rayon pool that every kernel (GEMM included) runs on. 0 means all cores.
pub fn init_threads(threads: usize) -> Result<()> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        // The size of a main thread's stack: `on_pool` runs whole commands on these threads.
        .stack_size(8 << 20)
        .build_global()
        .map_err(|e| Error::Invalid(format!("cannot set up {threads} threads: {e}")))
}

/// Runs `work` on one of the pool's threads and waits for it. Kernels called from a pool thread
/// share their work with the other pool threads directly; called from outside, each hands its
/// work over to the pool and sleeps until it is done, a wake-up and a sleep per kernel, and the
/// caller is one more thread competing for the cores.
pub fn on_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| work())
}

#[cfg(test)]
mod tests {
    /// The work runs on a thread of the pool the kernels use (not on the caller's), and its
    /// result comes back.
    #[test]
    fn on_pool_runs_the_work_on_a_pool_thread() {
        assert_eq!(rayon::current_thread_index(), None);
        let (index, answer) = super::on_pool(|| (rayon::current_thread_index(), 6 * 7));
        assert!(index.is_some_and(|i| i < rayon::current_num_threads()));
        assert_eq!(answer, 42);
    }
}
