//! The kernel boundary. Everything numerical that a layer does goes through these functions;
//! layers and models never touch raw arithmetic loops themselves.
//!
//! Today there is one backend, the CPU (`cpu`), whose kernels take host slices. A CUDA backend
//! implements the same operations (same names, same argument order, forward and backward) over
//! device buffers; `nn` then selects it at this one place.

pub mod cpu;

pub use cpu::*;
