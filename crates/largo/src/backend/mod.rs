//! The kernel boundary. Everything numerical that a layer does goes through these functions;
//! layers and models never touch raw arithmetic loops themselves.
//!
//! There is one backend today, the CPU (`cpu/`), and its kernels take host slices:
//!
//! - element-wise and row-wise kernels (activations, layer norm, attention, dropout, loss,
//!   embeddings) are plain slice loops; the hot ones (activations, layer norm, the attention
//!   softmax, flash attention, column sums) are compiled again with AVX-512 F and with AVX2 +
//!   FMA, and the widest copy `cpu::isa` allows (the CPU's, capped by `LARGO_ISA`) runs;
//! - GEMM goes to the pure-Rust `gemm` crate (which picks its AVX-512 — with the default
//!   `gemm-avx512` feature —, AVX2/FMA or scalar kernels at run time) or, with the `mkl` cargo
//!   feature, to MKL's `cblas_sgemm`; at "medium"
//!   and "high" matmul precision, to bf16 GEMMs on AMX tiles (`cpu/amx.rs`) where the CPU has
//!   AMX-BF16. Either way the work is split over largo's one rayon pool.
//!
//! `profile` times the kernels by op kind while `largo bench gpt --profile` runs.
//!
//! No CUDA (or other accelerator) backend exists yet. One would be a sibling module,
//! `backend/cuda/`, implementing the same operations (same names, same argument order,
//! forward and backward) over device buffers, and selected here, at this one place, where
//! `cpu` is re-exported now.

pub mod cpu;
pub mod profile;

pub use cpu::*;
