//! CPU kernels: each op's forward and backward side by side (llm.c's layout).

pub mod activation;
pub mod attention;
pub mod dropout;
pub mod embedding;
pub mod gemm;
pub mod layernorm;
pub mod loss;
pub mod math;

pub use activation::*;
pub use attention::*;
pub use dropout::*;
pub use embedding::*;
pub use gemm::*;
pub use layernorm::*;
pub use loss::*;

/// Rows per rayon task for row-wise kernels: big enough to amortise scheduling.
pub(crate) fn rows_per_task(cols: usize) -> usize {
    (16 * 1024 / cols.max(1)).max(1)
}
