use super::{params, Module, Param};
use crate::backend::{layernorm_backward, layernorm_forward};
use crate::tensor::ensure_len;

/// Layer norm over the last dimension (weight = 1, bias = 0 at init, as PyTorch).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Param,
    pub bias: Param,
    pub eps: f32,
    mean: Vec<f32>,
    rstd: Vec<f32>,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f32) -> Self {
        let mut weight = Param::zeros(&[dim]);
        weight.value.data.fill(1.0);
        LayerNorm {
            weight,
            bias: Param::zeros(&[dim]),
            eps,
            mean: Vec::new(),
            rstd: Vec::new(),
        }
    }

    pub fn dim(&self) -> usize {
        self.weight.value.numel()
    }

    /// x, y: [rows, dim]. Keeps mean and 1/σ of each row for backward.
    pub fn forward(&mut self, x: &[f32], rows: usize, y: &mut [f32]) {
        let (mut mean, mut rstd) = (
            std::mem::take(&mut self.mean),
            std::mem::take(&mut self.rstd),
        );
        ensure_len(&mut mean, rows);
        ensure_len(&mut rstd, rows);
        self.normalize(x, rows, y, &mut mean, &mut rstd);
        (self.mean, self.rstd) = (mean, rstd);
    }

    /// Inference: the same result as `forward`, keeping nothing for backward.
    pub fn infer(&self, x: &[f32], rows: usize, y: &mut [f32]) {
        self.normalize(x, rows, y, &mut vec![0.0; rows], &mut vec![0.0; rows]);
    }

    fn normalize(&self, x: &[f32], rows: usize, y: &mut [f32], mean: &mut [f32], rstd: &mut [f32]) {
        let c = self.dim();
        layernorm_forward(
            &x[..rows * c],
            &self.weight.value.data,
            &self.bias.value.data,
            self.eps,
            c,
            &mut y[..rows * c],
            mean,
            rstd,
        );
    }

    /// `x` is the same input that forward saw.
    pub fn backward(&mut self, x: &[f32], dy: &[f32], rows: usize, dx: &mut [f32]) {
        let c = self.dim();
        layernorm_backward(
            &x[..rows * c],
            &self.weight.value.data,
            &self.mean,
            &self.rstd,
            &dy[..rows * c],
            c,
            &mut dx[..rows * c],
            &mut self.weight.grad,
            &mut self.bias.grad,
        );
    }
}

impl Module for LayerNorm {
    params!(Self { weight, bias, .. }, v => {
        v.param("weight", weight);
        v.param("bias", bias);
    });
}
