//! The MNIST MLP classifier: fc1 (784→128) → ReLU → fc2 (128→10), any depth and width.
//!
//! `y = W⁽ᴸ⁾·σ(…σ(W⁽¹⁾·x + b⁽¹⁾)…) + b⁽ᴸ⁾`, returning logits; the loss applies the softmax.
//! Parameter names are PyTorch's: `fc1.weight`, `fc1.bias`, `fc2.weight`, …

use crate::backend::{dropout_backward, dropout_forward};
use crate::nn::{params, Activation, Forward, GradsReady, Linear, Module};
use crate::rng::Rng;
use crate::tensor::ensure_len;
use crate::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpConfig {
    pub input: usize,
    /// Width of each hidden layer; its length is the number of hidden layers.
    pub hidden: Vec<usize>,
    pub classes: usize,
    /// Dropout after each hidden activation (training only).
    pub dropout: f32,
    pub activation: Activation,
}

impl Default for MlpConfig {
    fn default() -> Self {
        MlpConfig {
            input: 784,
            hidden: vec![128],
            classes: 10,
            dropout: 0.0,
            activation: Activation::Relu,
        }
    }
}

impl MlpConfig {
    pub fn validate(&self) -> Result<()> {
        if self.input == 0 || self.classes < 2 || self.hidden.contains(&0) {
            bail!("model: input and hidden sizes must be ≥ 1 and classes ≥ 2, got {self:?}");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("model.dropout must be in [0, 1), got {}", self.dropout);
        }
        Ok(())
    }
}

/// Buffers kept between forward and backward, sized for the current batch.
#[derive(Default, Debug, Clone)]
struct Activations {
    batch: usize,
    input: Vec<f32>,
    /// Pre-activation of each hidden layer (what the activation's backward needs).
    pre: Vec<Vec<f32>>,
    /// Output of each hidden layer after activation and dropout (the next layer's input).
    out: Vec<Vec<f32>>,
    logits: Vec<f32>,
    /// Backward: the gradient of the current layer's output …
    d_out: Vec<f32>,
    /// … and of its input (the previous layer's output), before the activation's backward.
    d_in: Vec<f32>,
    dropout_seed: u64,
}

#[derive(Clone, Debug)]
pub struct Mlp {
    pub config: MlpConfig,
    /// fc1 … fcL; the last one maps to the classes.
    pub layers: Vec<Linear>,
    acts: Activations,
}

impl Mlp {
    pub fn new(config: MlpConfig) -> Result<Self> {
        config.validate()?;
        let mut sizes = vec![config.input];
        sizes.extend(&config.hidden);
        sizes.push(config.classes);
        let layers = sizes
            .windows(2)
            .map(|w| Linear::new(w[0], w[1], true))
            .collect();
        Ok(Mlp {
            config,
            layers,
            acts: Activations::default(),
        })
    }

    /// PyTorch's default init, drawn in parameter order fc1.weight, fc1.bias, fc2.weight, …
    pub fn init(&mut self, rng: &mut Rng) {
        for l in &mut self.layers {
            l.init_pytorch(rng);
        }
    }

    /// x: [rows, input] → logits: [rows, classes], rows = `pass.rows()` independent examples
    /// (`Forward::eval(n, 1)`). In training, dropout masks come from `pass.dropout_seed`.
    pub fn forward(&mut self, x: &[f32], pass: Forward) -> &[f32] {
        let (batch, train, dropout_seed) = (pass.rows(), pass.train, pass.dropout_seed);
        let cfg = &self.config;
        let a = &mut self.acts;
        let n_hidden = cfg.hidden.len();
        a.batch = batch;
        a.dropout_seed = dropout_seed;
        ensure_len(&mut a.input, batch * cfg.input);
        a.input.copy_from_slice(&x[..batch * cfg.input]);
        a.pre.resize(n_hidden, Vec::new());
        a.out.resize(n_hidden, Vec::new());
        let p = if train { cfg.dropout } else { 0.0 };
        for (l, layer) in self.layers.iter().enumerate() {
            let n = batch * layer.out_features;
            let x: &[f32] = if l == 0 { &a.input } else { &a.out[l - 1] };
            if l == n_hidden {
                ensure_len(&mut a.logits, n);
                layer.forward(x, batch, &mut a.logits);
                break;
            }
            let mut pre = std::mem::take(&mut a.pre[l]);
            ensure_len(&mut pre, n);
            layer.forward(x, batch, &mut pre);
            let out = &mut a.out[l];
            ensure_len(out, n);
            cfg.activation.forward(&pre, out);
            dropout_forward(out, p, layer_seed(dropout_seed, l));
            a.pre[l] = pre;
        }
        &a.logits
    }

    /// Back-propagates dlogits [batch, classes] from the last forward, adding into every grad.
    pub fn backward(&mut self, dlogits: &[f32], train: bool) {
        self.backward_to(dlogits, train, None, None);
    }

    /// [`Mlp::backward`] that reports its progress: after each layer (last first) it calls
    /// `on_ready(w, params)` with a watermark w: every parameter with index ≥ w in `params`
    /// (`params_mut` order: fc1.weight, fc1.bias, fc2.weight, …) has its final gradient of
    /// this backward; the last call has w = 0. Data-parallel training starts the gradient
    /// all-reduce of a bucket as soon as the watermark has passed it.
    pub fn backward_with(&mut self, dlogits: &[f32], train: bool, on_ready: &mut GradsReady<'_>) {
        self.backward_to(dlogits, train, None, Some(on_ready));
    }

    /// Gradient of Σ dlogits·logits with respect to the input x [batch, input] of the last
    /// (inference) forward: what saliency maps need. Parameter gradients are left at zero.
    pub fn input_grad(&mut self, dlogits: &[f32]) -> Vec<f32> {
        let mut dx = vec![0.0; self.acts.batch * self.config.input];
        self.backward_to(dlogits, false, Some(&mut dx), None);
        self.zero_grad();
        dx
    }

    fn backward_to(
        &mut self,
        dlogits: &[f32],
        train: bool,
        mut dx: Option<&mut [f32]>,
        mut on_ready: Option<&mut GradsReady<'_>>,
    ) {
        // Layer l's parameters start at index 2·l (weight and bias each).
        let mut report = |m: &mut Self, l: usize| {
            if let Some(f) = on_ready.as_mut() {
                let start = m.layers[..l].iter().map(|x| x.num_tensors()).sum();
                f(start, &mut m.params_mut());
            }
        };
        let mut acts = std::mem::take(&mut self.acts);
        let a = &mut acts;
        let batch = a.batch;
        let n_hidden = self.config.hidden.len();
        let p = if train { self.config.dropout } else { 0.0 };
        ensure_len(&mut a.d_out, dlogits.len());
        a.d_out.copy_from_slice(dlogits);
        for l in (0..=n_hidden).rev() {
            let layer = &mut self.layers[l];
            let x: &[f32] = if l == 0 { &a.input } else { &a.out[l - 1] };
            if l == 0 {
                layer.backward(x, &a.d_out, batch, dx.as_deref_mut());
                report(self, 0);
                break;
            }
            // d_in = d(out of layer l-1), then through dropout; the activation's backward makes it
            // the next d_out.
            ensure_len(&mut a.d_in, batch * layer.in_features);
            layer.backward(x, &a.d_out, batch, Some(&mut a.d_in));
            report(self, l);
            dropout_backward(&mut a.d_in, p, layer_seed(a.dropout_seed, l - 1));
            ensure_len(&mut a.d_out, a.d_in.len());
            self.config
                .activation
                .backward(&a.pre[l - 1], &a.d_in, &mut a.d_out);
        }
        self.acts = acts;
    }
}

fn layer_seed(seed: u64, layer: usize) -> u64 {
    seed.wrapping_add((layer as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

impl super::ImageClassifier for Mlp {
    /// One grey image of `input` pixels (28×28 for MNIST; the MLP sees them flat).
    fn input(&self) -> [usize; 3] {
        let side = (self.config.input as f64).sqrt() as usize;
        if side * side == self.config.input {
            [1, side, side]
        } else {
            [1, 1, self.config.input]
        }
    }

    fn classes(&self) -> usize {
        self.config.classes
    }

    fn forward(&mut self, x: &[f32], pass: Forward) -> Result<&[f32]> {
        let need = pass.rows() * self.config.input;
        if x.len() < need {
            bail!(
                "mlp: a batch of {} needs {need} values, got {}",
                pass.rows(),
                x.len()
            );
        }
        Ok(Mlp::forward(self, x, pass))
    }

    fn backward(&mut self, dlogits: &[f32], train: bool) -> Result<()> {
        Mlp::backward(self, dlogits, train);
        Ok(())
    }

    fn backward_with(
        &mut self,
        dlogits: &[f32],
        train: bool,
        on_ready: &mut GradsReady<'_>,
    ) -> Result<()> {
        Mlp::backward_with(self, dlogits, train, on_ready);
        Ok(())
    }

    fn input_grad(&mut self, dlogits: &[f32]) -> Result<Vec<f32>> {
        Ok(Mlp::input_grad(self, dlogits))
    }
}

impl Module for Mlp {
    params!(Self { layers, .. }, v => {
        for (i, layer) in std::iter::zip(1.., layers) {
            v.child(&format!("fc{i}"), layer);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backward_reports_watermarks_below_which_no_gradient_changes() {
        let cfg = MlpConfig {
            input: 6,
            hidden: vec![5, 4],
            classes: 3,
            dropout: 0.2,
            activation: Activation::Relu,
        };
        let batch = 4;
        let x: Vec<f32> = (0..batch * cfg.input)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let run = |hook: bool| {
            let mut m = Mlp::new(cfg.clone()).unwrap();
            m.init(&mut Rng::new(5));
            let logits = m.forward(&x, Forward::train(batch, 1, 9)).to_vec();
            let d: Vec<f32> = logits.iter().map(|v| v.cos() * 0.1).collect();
            for (_, p) in m.params_mut() {
                p.grad
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, g)| *g = i as f32 * 1e-3);
            }
            let mut seen: Vec<(usize, Vec<Vec<f32>>)> = Vec::new();
            if hook {
                m.backward_with(&d, true, &mut |w, params| {
                    seen.push((w, params[w..].iter().map(|(_, p)| p.grad.clone()).collect()));
                });
            } else {
                m.backward(&d, true);
            }
            let fin: Vec<Vec<f32>> = m.params().iter().map(|(_, p)| p.grad.clone()).collect();
            (seen, fin)
        };
        let (seen, fin) = run(true);
        // One report per layer, last first: fc3 (params 4, 5), fc2 (2, 3), fc1 (0, 1).
        let ws: Vec<usize> = seen.iter().map(|(w, _)| *w).collect();
        assert_eq!(ws, [4, 2, 0]);
        for (w, grads) in &seen {
            for (i, g) in grads.iter().enumerate() {
                assert!(
                    g == &fin[w + i],
                    "parameter {} changed after watermark {w}",
                    w + i
                );
            }
        }
        assert_eq!(run(false).1, fin);
    }
}
