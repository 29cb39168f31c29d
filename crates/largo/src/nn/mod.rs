//! Layers: structs that own their parameters and call the backend's forward and backward.
//!
//! A model is a tree of these. Its `forward` stores what `backward` needs in buffers it owns,
//! `backward` adds into each parameter's `grad`, and the optimiser walks `params_mut()`. No tape.

mod attention;
mod block;
mod embedding;
mod layernorm;
mod linear;

pub use attention::{KvCache, MultiHeadAttention};
pub use block::{Block, BlockStyle};
pub use embedding::Embedding;
pub use layernorm::LayerNorm;
pub use linear::Linear;

use crate::tensor::Tensor;

/// A trainable tensor and its gradient (same length; summed over micro-batches until zeroed).
#[derive(Clone, Debug)]
pub struct Param {
    pub value: Tensor,
    pub grad: Vec<f32>,
}

impl Param {
    pub fn zeros(shape: &[usize]) -> Self {
        let value = Tensor::zeros(shape);
        let grad = vec![0.0; value.numel()];
        Param { value, grad }
    }

    pub fn zero_grad(&mut self) {
        self.grad.fill(0.0);
    }
}

/// A backward hook: a model's `backward_with` calls it with a watermark w and its parameters
/// (`params_mut` order) whenever every parameter ≥ w has its final gradient of that backward;
/// data-parallel training starts their all-reduce then.
pub type GradsReady<'a> = dyn FnMut(usize, &mut [(String, &mut Param)]) + 'a;

/// Anything with parameters, named as PyTorch's `state_dict` names them, in a fixed order.
pub trait Module {
    fn params(&self) -> Vec<(String, &Param)>;
    fn params_mut(&mut self) -> Vec<(String, &mut Param)>;

    fn zero_grad(&mut self) {
        for (_, p) in self.params_mut() {
            p.zero_grad();
        }
    }

    /// Frees every gradient buffer: a model loaded only for inference needs none.
    fn drop_grads(&mut self) {
        for (_, p) in self.params_mut() {
            p.grad = Vec::new();
        }
    }

    fn num_params(&self) -> usize {
        self.params().iter().map(|(_, p)| p.value.numel()).sum()
    }
}

/// Prefixes a child's names: `fc1` + `weight` → `fc1.weight`.
pub fn prefixed<'a, P>(prefix: &str, items: Vec<(String, P)>) -> Vec<(String, P)>
where
    P: 'a,
{
    items
        .into_iter()
        .map(|(n, p)| (format!("{prefix}.{n}"), p))
        .collect()
}

/// Activation functions selectable by configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Relu,
    /// Exact GELU (erf), PyTorch's `nn.GELU()`.
    Gelu,
    /// tanh-approximated GELU, PyTorch's `nn.GELU(approximate="tanh")`.
    GeluTanh,
}

impl Activation {
    pub fn forward(self, x: &[f32], y: &mut [f32]) {
        use crate::backend as b;
        match self {
            Activation::Relu => b::relu_forward(x, y),
            Activation::Gelu => b::gelu_erf_forward(x, y),
            Activation::GeluTanh => b::gelu_tanh_forward(x, y),
        }
    }

    /// `y = f(y)` on the calling thread, on the first `cols` values of each `stride`-long row
    /// of `y` (a GEMM epilogue's block).
    pub fn rows_in_place(self, y: &mut [f32], cols: usize, stride: usize) {
        use crate::backend as b;
        match self {
            Activation::Relu => b::relu_rows(y, cols, stride),
            Activation::Gelu => b::gelu_erf_rows(y, cols, stride),
            Activation::GeluTanh => b::gelu_tanh_rows(y, cols, stride),
        }
    }

    /// `x` is the activation's input saved from forward.
    pub fn backward(self, x: &[f32], dy: &[f32], dx: &mut [f32]) {
        use crate::backend as b;
        match self {
            Activation::Relu => b::relu_backward(x, dy, dx),
            Activation::Gelu => b::gelu_erf_backward(x, dy, dx),
            Activation::GeluTanh => b::gelu_tanh_backward(x, dy, dx),
        }
    }
}
