//! A configurable convolutional classifier. The default is PyTorch's MNIST example net
//! (`examples/mnist/main.py`):
//!
//! ```text
//! conv1 (1→32, 3×3) → ReLU → conv2 (32→64, 3×3) → ReLU → max-pool 2 → dropout 0.25
//!   → flatten (9216) → fc1 (9216→128) → ReLU → dropout 0.5 → fc2 (128→10)
//! ```
//!
//! Convolutions have stride 1 and no padding; each may be followed by a max pool. Parameter
//! names are PyTorch's: `conv1.weight`, `conv1.bias`, …, `fc1.weight`, …

use super::classifier::ImageClassifier;
use crate::backend::{dropout_backward, dropout_forward, relu_backward, relu_forward, Nchw};
use crate::nn::{params, Conv2d, Conv2dOptions, Forward, Linear, MaxPool2d, Module};
use crate::rng::Rng;
use crate::tensor::ensure_len;
use crate::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CnnConfig {
    /// One input image: [channels, height, width].
    pub input: [usize; 3],
    /// Output channels of each convolution (ReLU after each).
    pub channels: Vec<usize>,
    /// Square kernel size of each convolution.
    pub kernels: Vec<usize>,
    /// Max-pool window (and stride) after each convolution's ReLU; 1: none.
    pub pools: Vec<usize>,
    /// Dropout on the flattened features (training only).
    pub conv_dropout: f32,
    /// Widths of the hidden fully connected layers (ReLU, then `dropout`).
    pub hidden: Vec<usize>,
    pub dropout: f32,
    pub classes: usize,
}

impl Default for CnnConfig {
    fn default() -> Self {
        CnnConfig {
            input: [1, 28, 28],
            channels: vec![32, 64],
            kernels: vec![3, 3],
            pools: vec![1, 2],
            conv_dropout: 0.25,
            hidden: vec![128],
            dropout: 0.5,
            classes: 10,
        }
    }
}

impl CnnConfig {
    pub fn validate(&self) -> Result<()> {
        let n = self.channels.len();
        if n == 0 || self.kernels.len() != n || self.pools.len() != n {
            bail!(
                "cnn: channels, kernels and pools need one entry per convolution (≥ 1), got {}, {} and {}",
                n,
                self.kernels.len(),
                self.pools.len()
            );
        }
        if self.input.contains(&0)
            || self.channels.contains(&0)
            || self.kernels.contains(&0)
            || self.pools.contains(&0)
            || self.hidden.contains(&0)
            || self.classes < 2
        {
            bail!("cnn: sizes must be ≥ 1 and classes ≥ 2, got {self:?}");
        }
        for (name, p) in [
            ("conv_dropout", self.conv_dropout),
            ("dropout", self.dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                bail!("cnn.{name} must be in [0, 1), got {p}");
            }
        }
        self.feature_shape(1).map(|_| ())
    }

    /// The shape of the last convolution stage's output for a batch of `n` (an error naming the
    /// layer when the image is too small).
    pub fn feature_shape(&self, n: usize) -> Result<Nchw> {
        let [c, h, w] = self.input;
        let mut s = Nchw::new(n, c, h, w);
        for (i, ((&out, &k), &pool)) in self
            .channels
            .iter()
            .zip(&self.kernels)
            .zip(&self.pools)
            .enumerate()
        {
            if s.h < k || s.w < k {
                bail!(
                    "cnn: conv{} has a {k}×{k} kernel but its input is {}×{}",
                    i + 1,
                    s.h,
                    s.w
                );
            }
            s = Nchw::new(n, out, s.h - k + 1, s.w - k + 1);
            if s.h < pool || s.w < pool {
                bail!(
                    "cnn: the pool after conv{} is {pool}×{pool} but its input is {}×{}",
                    i + 1,
                    s.h,
                    s.w
                );
            }
            s = Nchw::new(n, out, s.h / pool, s.w / pool);
        }
        Ok(s)
    }
}

/// Buffers kept between forward and backward, sized for the current batch.
#[derive(Default, Debug, Clone)]
struct Activations {
    batch: usize,
    /// The last forward trained (dropout on): backward drops the same units.
    train: bool,
    dropout_seed: u64,
    /// Input of each convolution: the batch, then each stage's (pooled) output; the last entry
    /// is the features flatten hands to fc1 (before dropout).
    conv_in: Vec<Vec<f32>>,
    conv_in_shape: Vec<Nchw>,
    /// Each convolution's output (the ReLU's input) and the ReLU's output (the pool's input).
    conv_out: Vec<Vec<f32>>,
    relu_out: Vec<Vec<f32>>,
    /// fc1's input: the flattened features after dropout.
    flat: Vec<f32>,
    /// Pre-activation and output (after ReLU and dropout) of each hidden linear layer.
    fc_pre: Vec<Vec<f32>>,
    fc_out: Vec<Vec<f32>>,
    logits: Vec<f32>,
    /// Backward scratch: the gradient of the current output and of the current input.
    d_out: Vec<f32>,
    d_in: Vec<f32>,
}

#[derive(Clone, Debug)]
pub struct Cnn {
    pub config: CnnConfig,
    pub convs: Vec<Conv2d>,
    /// The pool after each convolution (None: 1, no pooling).
    pub pools: Vec<Option<MaxPool2d>>,
    /// fc1 … fcL; the last maps to the classes.
    pub fcs: Vec<Linear>,
    acts: Activations,
}

impl Cnn {
    pub fn new(config: CnnConfig) -> Result<Self> {
        config.validate()?;
        let mut convs = Vec::new();
        let mut c_in = config.input[0];
        for (&c_out, &k) in config.channels.iter().zip(&config.kernels) {
            convs.push(Conv2d::new(c_in, c_out, [k, k], Conv2dOptions::default())?);
            c_in = c_out;
        }
        let pools = config
            .pools
            .iter()
            .map(|&p| (p > 1).then(|| MaxPool2d::new([p, p], None, [0, 0])))
            .collect();
        let mut sizes = vec![config.feature_shape(1)?.len()];
        sizes.extend(&config.hidden);
        sizes.push(config.classes);
        let fcs = sizes
            .windows(2)
            .map(|w| Linear::new(w[0], w[1], true))
            .collect();
        Ok(Cnn {
            config,
            convs,
            pools,
            fcs,
            acts: Activations::default(),
        })
    }

    /// PyTorch's default init, drawn in parameter order conv1.weight, conv1.bias, …, fc1.weight, …
    pub fn init(&mut self, rng: &mut Rng) {
        for c in &mut self.convs {
            c.init_pytorch(rng);
        }
        for l in &mut self.fcs {
            l.init_pytorch(rng);
        }
    }

    fn forward_impl(&mut self, x: &[f32], pass: Forward) -> Result<()> {
        let n = pass.rows();
        let cfg = &self.config;
        let a = &mut self.acts;
        let [c, h, w] = cfg.input;
        let input = Nchw::new(n, c, h, w);
        if x.len() < input.len() {
            bail!(
                "cnn: a batch of {n} images needs {} values, got {}",
                input.len(),
                x.len()
            );
        }
        let stages = self.convs.len();
        a.batch = n;
        a.train = pass.train;
        a.dropout_seed = pass.dropout_seed;
        a.conv_in.resize(stages + 1, Vec::new());
        a.conv_out.resize(stages, Vec::new());
        a.relu_out.resize(stages, Vec::new());
        a.conv_in_shape.clear();
        a.conv_in_shape.push(input);
        ensure_len(&mut a.conv_in[0], input.len());
        a.conv_in[0].copy_from_slice(&x[..input.len()]);
        for (i, (conv, pool)) in self.convs.iter_mut().zip(&mut self.pools).enumerate() {
            let s = a.conv_in_shape[i];
            // [N, C_in, H, W] → [N, C_out, H−k+1, W−k+1]
            let out = conv.output_shape(s)?;
            ensure_len(&mut a.conv_out[i], out.len());
            conv.forward(&a.conv_in[i], s, &mut a.conv_out[i])?;
            ensure_len(&mut a.relu_out[i], out.len());
            relu_forward(&a.conv_out[i], &mut a.relu_out[i]);
            let next = &mut a.conv_in[i + 1];
            let pooled = match pool {
                // → [N, C_out, H/p, W/p]
                Some(p) => {
                    let ps = p.output_shape(out)?;
                    ensure_len(next, ps.len());
                    p.forward(&a.relu_out[i], out, next)?
                }
                None => {
                    next.clone_from(&a.relu_out[i]);
                    out
                }
            };
            a.conv_in_shape.push(pooled);
        }
        // flatten: [N, C, H, W] → [N, C·H·W], then dropout
        a.flat.clone_from(&a.conv_in[stages]);
        let p = if pass.train { cfg.conv_dropout } else { 0.0 };
        dropout_forward(&mut a.flat, p, layer_seed(pass.dropout_seed, 0));
        let hidden = cfg.hidden.len();
        a.fc_pre.resize(hidden, Vec::new());
        a.fc_out.resize(hidden, Vec::new());
        let p = if pass.train { cfg.dropout } else { 0.0 };
        for (l, fc) in self.fcs.iter().enumerate() {
            let x: &[f32] = if l == 0 { &a.flat } else { &a.fc_out[l - 1] };
            let len = n * fc.out_features;
            if l == hidden {
                ensure_len(&mut a.logits, len);
                fc.forward(x, n, &mut a.logits);
                break;
            }
            let mut pre = std::mem::take(&mut a.fc_pre[l]);
            ensure_len(&mut pre, len);
            fc.forward(x, n, &mut pre);
            let out = &mut a.fc_out[l];
            ensure_len(out, len);
            relu_forward(&pre, out);
            dropout_forward(out, p, layer_seed(pass.dropout_seed, l + 1));
            a.fc_pre[l] = pre;
        }
        Ok(())
    }

    /// Back-propagates dlogits through the last forward (with its dropout masks); writes the
    /// input's gradient into `dx` when asked.
    fn backward_impl(&mut self, dlogits: &[f32], dx: Option<&mut [f32]>) -> Result<()> {
        let mut acts = std::mem::take(&mut self.acts);
        let result = self.backward_acts(&mut acts, dlogits, dx);
        self.acts = acts;
        result
    }

    fn backward_acts(
        &mut self,
        a: &mut Activations,
        dlogits: &[f32],
        mut dx: Option<&mut [f32]>,
    ) -> Result<()> {
        let (n, train) = (a.batch, a.train);
        let cfg = &self.config;
        let hidden = cfg.hidden.len();
        let p = if train { cfg.dropout } else { 0.0 };
        ensure_len(&mut a.d_out, n * cfg.classes);
        a.d_out.copy_from_slice(&dlogits[..n * cfg.classes]);
        // The head, last layer first; leaves d(flat) in d_in.
        for l in (0..=hidden).rev() {
            let fc = &mut self.fcs[l];
            let x: &[f32] = if l == 0 { &a.flat } else { &a.fc_out[l - 1] };
            ensure_len(&mut a.d_in, n * fc.in_features);
            fc.backward(x, &a.d_out, n, Some(&mut a.d_in));
            if l > 0 {
                dropout_backward(&mut a.d_in, p, layer_seed(a.dropout_seed, l));
                ensure_len(&mut a.d_out, a.d_in.len());
                relu_backward(&a.fc_pre[l - 1], &a.d_in, &mut a.d_out);
            }
        }
        let p = if train { cfg.conv_dropout } else { 0.0 };
        dropout_backward(&mut a.d_in, p, layer_seed(a.dropout_seed, 0));
        // d_in: the gradient of conv_in[i + 1], from the last stage down.
        for i in (0..self.convs.len()).rev() {
            let s = a.conv_in_shape[i];
            let out = self.convs[i].output_shape(s)?;
            // d(relu_out) in d_out
            ensure_len(&mut a.d_out, out.len());
            match &self.pools[i] {
                Some(pool) => pool.backward(out, &a.d_in, &mut a.d_out)?,
                None => a.d_out.copy_from_slice(&a.d_in),
            }
            // d(conv_out) in d_in
            ensure_len(&mut a.d_in, out.len());
            relu_backward(&a.conv_out[i], &a.d_out, &mut a.d_in);
            std::mem::swap(&mut a.d_in, &mut a.d_out);
            if i == 0 {
                self.convs[0].backward(&a.conv_in[0], s, &a.d_out, dx.as_deref_mut())?;
            } else {
                ensure_len(&mut a.d_in, s.len());
                self.convs[i].backward(&a.conv_in[i], s, &a.d_out, Some(&mut a.d_in))?;
            }
        }
        Ok(())
    }
}

fn layer_seed(seed: u64, layer: usize) -> u64 {
    seed.wrapping_add((layer as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

impl ImageClassifier for Cnn {
    fn input(&self) -> [usize; 3] {
        self.config.input
    }

    fn classes(&self) -> usize {
        self.config.classes
    }

    fn forward(&mut self, x: &[f32], pass: Forward) -> Result<&[f32]> {
        self.forward_impl(x, pass)?;
        Ok(&self.acts.logits)
    }

    /// Dropout follows the last forward's mode, so `train` needs no handling.
    fn backward(&mut self, dlogits: &[f32], _train: bool) -> Result<()> {
        self.backward_impl(dlogits, None)
    }

    fn input_grad(&mut self, dlogits: &[f32]) -> Result<Vec<f32>> {
        let mut dx = vec![0.0; self.acts.batch * self.input_len()];
        self.backward_impl(dlogits, Some(&mut dx))?;
        self.zero_grad();
        Ok(dx)
    }
}

impl Module for Cnn {
    params!(Self { convs, fcs, .. }, v => {
        for (i, conv) in std::iter::zip(1.., convs) {
            v.child(&format!("conv{i}"), conv);
        }
        for (i, fc) in std::iter::zip(1.., fcs) {
            v.child(&format!("fc{i}"), fc);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::classifier::tests::check_training_step;

    /// The fixture's shrunk MNIST example net, without dropout.
    fn tiny() -> CnnConfig {
        CnnConfig {
            input: [2, 9, 9],
            channels: vec![3, 4],
            kernels: vec![3, 2],
            pools: vec![1, 2],
            conv_dropout: 0.0,
            hidden: vec![5],
            dropout: 0.0,
            classes: 3,
        }
    }

    #[test]
    fn cnn_training_step_matches_pytorch() {
        let mut m = Cnn::new(tiny()).unwrap();
        let names: Vec<String> = m.params().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "conv1.weight",
                "conv1.bias",
                "conv2.weight",
                "conv2.bias",
                "fc1.weight",
                "fc1.bias",
                "fc2.weight",
                "fc2.bias"
            ]
        );
        assert_eq!(m.fcs[0].in_features, 36);
        check_training_step(&mut m, "cnn", 1e-5);
    }

    #[test]
    fn the_default_is_pytorchs_mnist_example_net() {
        let m = Cnn::new(CnnConfig::default()).unwrap();
        // 320 + 18,496 + 1,179,776 + 1,290, as PyTorch counts it.
        assert_eq!(m.num_params(), 1_199_882);
        assert_eq!(m.fcs[0].in_features, 9216);
        assert_eq!(m.num_buffers(), 0);
    }

    #[test]
    fn dropout_masks_follow_the_seed_and_backward_uses_the_same_ones() {
        let cfg = CnnConfig {
            conv_dropout: 0.3,
            dropout: 0.4,
            ..tiny()
        };
        let mut m = Cnn::new(cfg).unwrap();
        m.init(&mut Rng::new(3));
        let x: Vec<f32> = (0..2 * 2 * 81).map(|i| (i as f32 * 0.37).sin()).collect();
        let a = m.forward(&x, Forward::train(2, 1, 11)).unwrap().to_vec();
        let b = m.forward(&x, Forward::train(2, 1, 12)).unwrap().to_vec();
        let e = m.forward(&x, Forward::eval(2, 1)).unwrap().to_vec();
        assert_ne!(a, b);
        assert_ne!(a, e);
        // Σ dlogits·logits is linear in every kept unit: its input gradient at a training pass
        // predicts the change of the same pass (same seed) under a small step along it.
        let d: Vec<f32> = (0..6).map(|i| (i as f32 - 2.5) * 0.1).collect();
        m.forward(&x, Forward::train(2, 1, 11)).unwrap();
        let g = m.input_grad(&d).unwrap();
        let f = |m: &mut Cnn, x: &[f32]| -> f64 {
            let y = m.forward(x, Forward::train(2, 1, 11)).unwrap();
            y.iter().zip(&d).map(|(y, d)| (y * d) as f64).sum()
        };
        let eps = 1e-3f32;
        let norm: f32 = g.iter().map(|v| v * v).sum::<f32>().sqrt();
        let step: Vec<f32> = g.iter().map(|v| v / norm).collect();
        let plus: Vec<f32> = x.iter().zip(&step).map(|(x, s)| x + eps * s).collect();
        let minus: Vec<f32> = x.iter().zip(&step).map(|(x, s)| x - eps * s).collect();
        let numeric = (f(&mut m, &plus) - f(&mut m, &minus)) / (2.0 * eps as f64);
        assert!(
            (numeric - norm as f64).abs() < 0.02 * norm as f64,
            "directional derivative {numeric} vs |∇| {norm}"
        );
    }

    #[test]
    fn bad_settings_and_inputs_are_errors() {
        let e = CnnConfig {
            kernels: vec![3],
            ..tiny()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("one entry per convolution"), "{e}");
        let e = CnnConfig {
            input: [2, 3, 3],
            ..tiny()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("conv2 has a 2×2 kernel but its input is 1×1"),
            "{e}"
        );
        let mut m = Cnn::new(tiny()).unwrap();
        let e = m
            .forward(&[0.0; 10], Forward::eval(1, 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs 162 values, got 10"), "{e}");
    }
}
