//! Optimisers with `torch.optim` semantics: SGD (momentum, dampening, Nesterov, L2 weight decay)
//! and AdamW (decoupled weight decay, bias-corrected moments). Plus global-norm clipping.

pub use crate::config::OptimConfig;
use crate::nn::Param;
use crate::tensor::Tensor;
use crate::{Error, Result};
use rayon::prelude::*;

/// Per-parameter state: SGD's momentum buffer in `m`; Adam's first and second moments.
#[derive(Clone, Debug, Default)]
struct Slot {
    m: Vec<f32>,
    v: Vec<f32>,
}

#[derive(Clone, Debug)]
pub struct Optimizer {
    pub config: OptimConfig,
    /// Steps taken so far (PyTorch's `state['step']`).
    pub step: u64,
    slots: Vec<Slot>,
}

const CHUNK: usize = 8 * 1024;

impl Optimizer {
    pub fn new(config: OptimConfig) -> Self {
        Optimizer {
            config,
            step: 0,
            slots: Vec::new(),
        }
    }

    /// One update of every parameter with learning rate `lr` (the schedule's value this step).
    pub fn step(&mut self, params: Vec<(String, &mut Param)>, lr: f32) {
        if self.slots.len() != params.len() {
            self.slots = params
                .iter()
                .map(|(_, p)| Slot {
                    m: vec![0.0; p.value.numel()],
                    v: if self.config.kind == "adamw" {
                        vec![0.0; p.value.numel()]
                    } else {
                        Vec::new()
                    },
                })
                .collect();
        }
        self.step += 1;
        let c = &self.config;
        let first = self.step == 1;
        for ((_, p), slot) in params.into_iter().zip(&mut self.slots) {
            let wd = if c.no_decay_1d && p.value.shape.len() < 2 {
                0.0
            } else {
                c.weight_decay as f32
            };
            let w = &mut p.value.data;
            let g = &p.grad;
            if c.kind == "adamw" {
                let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
                let bc1 = 1.0 - c.beta1.powi(self.step as i32);
                let bc2 = 1.0 - c.beta2.powi(self.step as i32);
                let step_size = (lr as f64 / bc1) as f32;
                let bc2_sqrt = bc2.sqrt() as f32;
                let decay = 1.0 - lr * wd;
                let eps = c.eps as f32;
                w.par_chunks_mut(CHUNK)
                    .zip(g.par_chunks(CHUNK))
                    .zip(
                        slot.m
                            .par_chunks_mut(CHUNK)
                            .zip(slot.v.par_chunks_mut(CHUNK)),
                    )
                    .for_each(|((w, g), (m, v))| {
                        for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m).zip(v) {
                            *w *= decay;
                            *m += (1.0 - b1) * (g - *m);
                            *v = b2 * *v + (1.0 - b2) * g * g;
                            let denom = v.sqrt() / bc2_sqrt + eps;
                            *w -= step_size * *m / denom;
                        }
                    });
            } else {
                let (mu, damp) = (c.momentum as f32, c.dampening as f32);
                let nesterov = c.nesterov;
                w.par_chunks_mut(CHUNK)
                    .zip(g.par_chunks(CHUNK))
                    .zip(slot.m.par_chunks_mut(CHUNK))
                    .for_each(|((w, g), buf)| {
                        for ((w, &g), b) in w.iter_mut().zip(g).zip(buf) {
                            let mut d = g + wd * *w;
                            if mu != 0.0 {
                                *b = if first { d } else { mu * *b + (1.0 - damp) * d };
                                d = if nesterov { d + mu * *b } else { *b };
                            }
                            *w -= lr * d;
                        }
                    });
            }
        }
    }

    /// State tensors for a checkpoint, named `<param>.exp_avg` / `.exp_avg_sq` /
    /// `.momentum_buffer` as in PyTorch's optimiser state.
    pub fn state_tensors(&self, names: &[String]) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (name, slot) in names.iter().zip(&self.slots) {
            let n = slot.m.len();
            if self.config.kind == "adamw" {
                out.push((format!("{name}.exp_avg"), tensor(n, &slot.m)));
                out.push((format!("{name}.exp_avg_sq"), tensor(n, &slot.v)));
            } else {
                out.push((format!("{name}.momentum_buffer"), tensor(n, &slot.m)));
            }
        }
        out
    }

    /// Restores what `state_tensors` saved; `lookup` finds a tensor by name.
    pub fn load_state(
        &mut self,
        step: u64,
        names_and_sizes: &[(String, usize)],
        mut lookup: impl FnMut(&str) -> Result<Vec<f32>>,
    ) -> Result<()> {
        self.step = step;
        self.slots.clear();
        for (name, n) in names_and_sizes {
            let get = |suffix: &str, lookup: &mut dyn FnMut(&str) -> Result<Vec<f32>>| {
                let key = format!("{name}.{suffix}");
                let v = lookup(&key)?;
                if v.len() != *n {
                    return Err(Error::Invalid(format!(
                        "optimizer state {key} has {} values, the parameter has {n}",
                        v.len()
                    )));
                }
                Ok(v)
            };
            let slot = if self.config.kind == "adamw" {
                Slot {
                    m: get("exp_avg", &mut lookup)?,
                    v: get("exp_avg_sq", &mut lookup)?,
                }
            } else {
                Slot {
                    m: get("momentum_buffer", &mut lookup)?,
                    v: Vec::new(),
                }
            };
            self.slots.push(slot);
        }
        Ok(())
    }
}

fn tensor(n: usize, data: &[f32]) -> Tensor {
    Tensor {
        shape: vec![n],
        data: data.to_vec(),
    }
}

/// L2 norm over all gradients (f64 sum, serial: deterministic).
pub fn grad_norm(params: &[(String, &mut Param)]) -> f64 {
    params
        .iter()
        .flat_map(|(_, p)| p.grad.iter())
        .map(|&g| g as f64 * g as f64)
        .sum::<f64>()
        .sqrt()
}

/// `torch.nn.utils.clip_grad_norm_`: scales every gradient by max_norm/(norm + 1e-6) when that
/// is below 1. Returns the norm before clipping.
pub fn clip_grad_norm(params: &mut [(String, &mut Param)], max_norm: f64) -> f64 {
    let norm = grad_norm(params);
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        let coef = coef as f32;
        for (_, p) in params.iter_mut() {
            p.grad.iter_mut().for_each(|g| *g *= coef);
        }
    }
    norm
}
