//! Layers: structs that own their parameters and call the backend's forward and backward.
//!
//! A model is a tree of these. Its `forward` stores what `backward` needs in buffers it owns,
//! `backward` adds into each parameter's `grad`, and the optimiser walks `params_mut()` (see
//! [`Module`]). No tape. Forward passes take a [`Forward`]: batch shape, padding, train or eval.

mod attention;
mod block;
mod conv;
mod embedding;
mod layernorm;
mod linear;

pub use attention::{KvCache, MultiHeadAttention};
pub use block::{Block, BlockStyle};
pub use conv::{AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv2d, Conv2dOptions, MaxPool2d};
pub use embedding::Embedding;
pub use layernorm::LayerNorm;
pub use linear::Linear;

use crate::tensor::Tensor;
use crate::{Error, Result};

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
///
/// A module lists its parameters once, with `params!`: a destructuring pattern of `Self`
/// and a body that calls `v.param(name, p)` for each own parameter and `v.child(prefix, m)`
/// for each sub-module, in `state_dict` order. The macro makes that one listing both walks,
/// `walk_params` (over `&Param`) and `walk_params_mut` (over `&mut Param`); buffers (state saved
/// but not trained) are listed in the same body with `v.buffer(name, b)` and `v.count(name, c)`,
/// which only a walk that asks for them sees (`buffers`, `load_buffers`). The pattern binds
/// the fields by shared or by mutable reference (match ergonomics), and the two visitors,
/// [`Params`] and [`ParamsMut`], have the same methods. Everything else — `params`,
/// `params_mut`, `zero_grad`, … — is built on the walks.
pub trait Module {
    /// Visits every parameter, in order; see `params!`.
    fn walk_params<'a>(&'a self, v: &mut Params<'a, '_>);
    /// The same walk with mutable access (one listing for both: `params!`).
    fn walk_params_mut<'a>(&'a mut self, v: &mut ParamsMut<'a, '_>);

    /// Calls `f(name, p)` for every parameter, in order.
    fn visit_params<'a>(&'a self, f: &mut dyn FnMut(&str, &'a Param)) {
        self.walk_params(&mut Params::new(f));
    }

    /// Calls `f(name, p)` for every parameter, in order, with mutable access.
    fn visit_params_mut<'a>(&'a mut self, f: &mut dyn FnMut(&str, &'a mut Param)) {
        self.walk_params_mut(&mut ParamsMut::new(f));
    }

    fn params(&self) -> Vec<(String, &Param)> {
        let mut v = Vec::new();
        self.visit_params(&mut |name, p| v.push((name.to_string(), p)));
        v
    }

    fn params_mut(&mut self) -> Vec<(String, &mut Param)> {
        let mut v = Vec::new();
        self.visit_params_mut(&mut |name, p| v.push((name.to_string(), p)));
        v
    }

    fn zero_grad(&mut self) {
        self.visit_params_mut(&mut |_, p| p.zero_grad());
    }

    /// Frees every gradient buffer: a model loaded only for inference needs none.
    fn drop_grads(&mut self) {
        self.visit_params_mut(&mut |_, p| p.grad = Vec::new());
    }

    /// Number of parameter tensors (the length of `params()`).
    fn num_tensors(&self) -> usize {
        let mut n = 0;
        self.visit_params(&mut |_, _| n += 1);
        n
    }

    /// Number of scalar parameters.
    fn num_params(&self) -> usize {
        let mut n = 0;
        self.visit_params(&mut |_, p| n += p.value.numel());
        n
    }

    /// Every buffer (state that is not trained but saved: batch norm's running statistics), in
    /// order, as `state_dict` names and tensors; a count is a 0-dimensional tensor.
    fn buffers(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        let mut ignore = |_: &str, _: &Param| {};
        let mut on_buffer = |name: &str, b: BufferRef<'_>| {
            let t = match b {
                BufferRef::Values(v) => Tensor {
                    shape: vec![v.len()],
                    data: v.to_vec(),
                },
                BufferRef::Count(c) => Tensor {
                    shape: Vec::new(),
                    data: vec![c as f32],
                },
            };
            out.push((name.to_string(), t));
        };
        self.walk_params(&mut Params::with_buffers(&mut ignore, &mut on_buffer));
        out
    }

    /// Sets every buffer from `take(name, shape)` (shape [len], or [] for a count); the first
    /// error stops the walk and is returned.
    fn load_buffers(
        &mut self,
        take: &mut dyn FnMut(&str, &[usize]) -> Result<Tensor>,
    ) -> Result<()> {
        let mut result = Ok(());
        let mut ignore = |_: &str, _: &mut Param| {};
        let mut on_buffer = |name: &str, b: BufferMut<'_>| {
            if result.is_err() {
                return;
            }
            result = match b {
                BufferMut::Values(v) => take(name, &[v.len()]).map(|t| *v = t.data),
                BufferMut::Count(c) => take(name, &[]).and_then(|t| {
                    let x = t.data[0];
                    if x >= 0.0 && x.fract() == 0.0 {
                        *c = x as u64;
                        Ok(())
                    } else {
                        Err(Error::Invalid(format!(
                            "{name} = {x}: expected a count (an integer ≥ 0)"
                        )))
                    }
                }),
            };
        };
        self.walk_params_mut(&mut ParamsMut::with_buffers(&mut ignore, &mut on_buffer));
        result
    }

    /// Number of buffer tensors (the length of `buffers()`).
    fn num_buffers(&self) -> usize {
        self.buffers().len()
    }
}

/// A buffer as the shared walk sees it.
pub enum BufferRef<'a> {
    Values(&'a [f32]),
    Count(u64),
}

/// A buffer as the mutable walk sees it.
pub enum BufferMut<'a> {
    Values(&'a mut Vec<f32>),
    Count(&'a mut u64),
}

/// Implements [`Module`]'s two walks from one listing:
///
/// ```text
/// impl Module for Linear {
///     params!(Self { weight, bias, .. }, v => {
///         v.param("weight", weight);
///         if let Some(b) = bias {
///             v.param("bias", b);
///         }
///     });
/// }
/// ```
///
/// The pattern binds `&Param` in `walk_params` and `&mut Param` in `walk_params_mut`, so the
/// body must only pass the bindings on (to `v.param`, `v.child`, `v.derived`, or a pattern).
/// A layer that keeps something derived from its parameters names, after the body,
/// `before_mut: f` with `f(&mut Self)` dropping it: the mutable walk calls it first, since
/// whoever walks with mutable access (an optimizer step, a checkpoint load) may change them.
macro_rules! params {
    ($this:pat, $v:ident => $body:block) => {
        $crate::nn::params!($this, $v => $body, before_mut: |_| {});
    };
    ($this:pat, $v:ident => $body:block, before_mut: $before_mut:expr) => {
        fn walk_params<'a>(&'a self, $v: &mut $crate::nn::Params<'a, '_>) {
            let $this = self;
            $body
        }
        fn walk_params_mut<'a>(&'a mut self, $v: &mut $crate::nn::ParamsMut<'a, '_>) {
            let before_mut: fn(&mut Self) = $before_mut;
            before_mut(self);
            let $this = self;
            $body
        }
    };
}
pub(crate) use params;

/// What a walk that asks for buffers calls with each (shared and mutable walk).
type OnBuffer<'a, 'f> = &'f mut dyn FnMut(&str, BufferRef<'a>);
type OnBufferMut<'a, 'f> = &'f mut dyn FnMut(&str, BufferMut<'a>);

/// The shared walk's visitor: full dotted names (`fc1` + `weight` → `fc1.weight`) to `f`, and
/// the buffers' to `on_buffer` when the walk asks for them.
pub struct Params<'a, 'f> {
    name: String,
    f: &'f mut dyn FnMut(&str, &'a Param),
    on_buffer: Option<OnBuffer<'a, 'f>>,
}

/// The mutable walk's visitor: the same methods as [`Params`].
pub struct ParamsMut<'a, 'f> {
    name: String,
    f: &'f mut dyn FnMut(&str, &'a mut Param),
    on_buffer: Option<OnBufferMut<'a, 'f>>,
}

impl<'a, 'f> Params<'a, 'f> {
    pub fn new(f: &'f mut dyn FnMut(&str, &'a Param)) -> Self {
        Params {
            name: String::new(),
            f,
            on_buffer: None,
        }
    }

    /// A walk that also visits the buffers.
    pub fn with_buffers(
        f: &'f mut dyn FnMut(&str, &'a Param),
        on_buffer: &'f mut dyn FnMut(&str, BufferRef<'a>),
    ) -> Self {
        Params {
            name: String::new(),
            f,
            on_buffer: Some(on_buffer),
        }
    }

    /// A buffer of values (a running mean), named like a parameter.
    pub fn buffer(&mut self, name: &str, b: &'a [f32]) {
        self.visit_buffer(name, BufferRef::Values(b));
    }

    /// A count kept as a buffer (`num_batches_tracked`).
    pub fn count(&mut self, name: &str, c: &'a u64) {
        self.visit_buffer(name, BufferRef::Count(*c));
    }

    fn visit_buffer(&mut self, name: &str, b: BufferRef<'a>) {
        if let Some(f) = self.on_buffer.as_mut() {
            let len = self.name.len();
            self.name.push_str(name);
            f(&self.name, b);
            self.name.truncate(len);
        }
    }

    pub fn param(&mut self, name: &str, p: &'a Param) {
        let len = self.name.len();
        self.name.push_str(name);
        (self.f)(&self.name, p);
        self.name.truncate(len);
    }

    /// A sub-module's parameters, named `prefix.<its name>`.
    pub fn child<M: Module + ?Sized>(&mut self, prefix: &str, m: &'a M) {
        let len = self.name.len();
        self.name.push_str(prefix);
        self.name.push('.');
        m.walk_params(self);
        self.name.truncate(len);
    }

    /// A cache derived from the parameters: kept by a shared walk.
    pub fn derived<T>(&mut self, _cache: &Option<T>) {}
}

impl<'a, 'f> ParamsMut<'a, 'f> {
    pub fn new(f: &'f mut dyn FnMut(&str, &'a mut Param)) -> Self {
        ParamsMut {
            name: String::new(),
            f,
            on_buffer: None,
        }
    }

    /// A walk that also visits the buffers.
    pub fn with_buffers(
        f: &'f mut dyn FnMut(&str, &'a mut Param),
        on_buffer: &'f mut dyn FnMut(&str, BufferMut<'a>),
    ) -> Self {
        ParamsMut {
            name: String::new(),
            f,
            on_buffer: Some(on_buffer),
        }
    }

    /// A buffer of values (a running mean), named like a parameter.
    pub fn buffer(&mut self, name: &str, b: &'a mut Vec<f32>) {
        self.visit_buffer(name, BufferMut::Values(b));
    }

    /// A count kept as a buffer (`num_batches_tracked`).
    pub fn count(&mut self, name: &str, c: &'a mut u64) {
        self.visit_buffer(name, BufferMut::Count(c));
    }

    fn visit_buffer(&mut self, name: &str, b: BufferMut<'a>) {
        if let Some(f) = self.on_buffer.as_mut() {
            let len = self.name.len();
            self.name.push_str(name);
            f(&self.name, b);
            self.name.truncate(len);
        }
    }

    pub fn param(&mut self, name: &str, p: &'a mut Param) {
        let len = self.name.len();
        self.name.push_str(name);
        (self.f)(&self.name, p);
        self.name.truncate(len);
    }

    /// A sub-module's parameters, named `prefix.<its name>`.
    pub fn child<M: Module + ?Sized>(&mut self, prefix: &str, m: &'a mut M) {
        let len = self.name.len();
        self.name.push_str(prefix);
        self.name.push('.');
        m.walk_params_mut(self);
        self.name.truncate(len);
    }

    /// A cache derived from the parameters (packed weights): cleared, since whoever walks the
    /// parameters mutably may change them.
    pub fn derived<T>(&mut self, cache: &mut Option<T>) {
        *cache = None;
    }
}

/// What one forward pass runs on and how: the batch's shape, its key padding, and whether it
/// trains (dropout on, masks drawn from `dropout_seed`) or evaluates.
#[derive(Clone, Copy, Debug)]
pub struct Forward<'a> {
    pub batch: usize,
    /// Positions per sequence (1 for a model of single examples, such as the MLP).
    pub time: usize,
    /// [B,T]: non-zero marks a padded position that attention ignores.
    pub key_padding: Option<&'a [u8]>,
    pub train: bool,
    pub dropout_seed: u64,
}

impl<'a> Forward<'a> {
    /// Inference: no dropout, no padding.
    pub fn eval(batch: usize, time: usize) -> Self {
        Forward {
            batch,
            time,
            key_padding: None,
            train: false,
            dropout_seed: 0,
        }
    }

    /// Training: dropout masks drawn from `dropout_seed`.
    pub fn train(batch: usize, time: usize, dropout_seed: u64) -> Self {
        Forward {
            train: true,
            dropout_seed,
            ..Forward::eval(batch, time)
        }
    }

    /// The same pass with key padding [B,T] (non-zero: padded).
    pub fn padded(self, key_padding: &'a [u8]) -> Self {
        Forward {
            key_padding: Some(key_padding),
            ..self
        }
    }

    /// The same pass with another dropout seed (a sub-module's own masks).
    pub fn reseeded(self, dropout_seed: u64) -> Self {
        Forward {
            dropout_seed,
            ..self
        }
    }

    /// Batch × time: the rows of a [B,T,C] activation.
    pub fn rows(&self) -> usize {
        self.batch * self.time
    }
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
