//! Optimisers with `torch.optim` semantics: SGD (momentum, dampening, Nesterov, L2 weight decay)
//! and AdamW (decoupled weight decay, bias-corrected moments). Plus global-norm clipping.

pub use crate::config::OptimConfig;
use crate::nn::Param;
use crate::tensor::Tensor;
use crate::{Error, Result};
use rayon::prelude::*;

/// Per-parameter state: SGD's momentum buffer in `m`; Adam's first and second moments.
#[derive(Clone, Debug, Default)]
pub(crate) struct Slot {
    pub(crate) m: Vec<f32>,
    pub(crate) v: Vec<f32>,
}

#[derive(Clone, Debug)]
pub struct Optimizer {
    pub config: OptimConfig,
    /// Steps taken so far (PyTorch's `state['step']`).
    pub step: u64,
    pub(crate) slots: Vec<Slot>,
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

    /// Allocates zeroed state for parameters of `sizes` values unless it is there already.
    pub(crate) fn ensure_slots(&mut self, sizes: &[usize]) {
        if self.slots.len() != sizes.len() {
            let adam = self.config.kind == "adamw";
            self.slots = sizes
                .iter()
                .map(|&n| Slot {
                    m: vec![0.0; n],
                    v: if adam { vec![0.0; n] } else { Vec::new() },
                })
                .collect();
        }
    }

    /// Bytes of optimiser state held (moments or momentum buffers).
    pub fn state_bytes(&self) -> usize {
        self.slots.iter().map(|s| 4 * (s.m.len() + s.v.len())).sum()
    }

    /// One update of every parameter with learning rate `lr` (the schedule's value this step).
    pub fn step(&mut self, params: Vec<(String, &mut Param)>, lr: f32) {
        let _span = crate::backend::profile::span("optimizer step");
        let sizes: Vec<usize> = params.iter().map(|(_, p)| p.value.numel()).collect();
        self.ensure_slots(&sizes);
        self.step += 1;
        for ((_, p), slot) in params.into_iter().zip(&mut self.slots) {
            let wd = decay_of(&self.config, p);
            update(
                &self.config,
                self.step,
                lr,
                wd,
                &mut p.value.data,
                &p.grad,
                &mut slot.m,
                &mut slot.v,
            );
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

/// The weight decay of one parameter: none for 1-D ones when `no_decay_1d` is set.
pub(crate) fn decay_of(c: &OptimConfig, p: &Param) -> f32 {
    if c.no_decay_1d && p.value.shape.len() < 2 {
        0.0
    } else {
        c.weight_decay as f32
    }
}

/// The element-wise update of step `step` (counted from 1) over any slice of one parameter:
/// weights `w`, their gradients `g` and state `m`/`v` (AdamW's moments; SGD's momentum buffer in
/// `m`). Each element's result depends on that element alone, so updating a parameter whole or
/// in shards (ZeRO-1) gives the same bits.
#[allow(clippy::too_many_arguments)]
pub(crate) fn update(
    c: &OptimConfig,
    step: u64,
    lr: f32,
    wd: f32,
    w: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    if c.kind == "adamw" {
        let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
        let bc1 = 1.0 - c.beta1.powi(step as i32);
        let bc2 = 1.0 - c.beta2.powi(step as i32);
        let step_size = (lr as f64 / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let decay = 1.0 - lr * wd;
        let eps = c.eps as f32;
        w.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
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
        let first = step == 1;
        w.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .for_each(|((w, g), buf)| {
                // One loop per case, with no branch inside, so each vectorises; the arithmetic
                // is the same in every case: d = g + wd·w, buf = μ·buf + (1 − dampening)·d
                // (d on the first step), w −= lr·(d + μ·buf if Nesterov, else buf).
                if mu == 0.0 {
                    for (w, &g) in w.iter_mut().zip(g) {
                        *w -= lr * (g + wd * *w);
                    }
                    return;
                }
                let items = w.iter_mut().zip(g).zip(buf);
                if first {
                    for ((w, &g), b) in items {
                        let d = g + wd * *w;
                        *b = d;
                        *w -= lr * if nesterov { d + mu * *b } else { *b };
                    }
                } else if nesterov {
                    for ((w, &g), b) in items {
                        let d = g + wd * *w;
                        *b = mu * *b + (1.0 - damp) * d;
                        *w -= lr * (d + mu * *b);
                    }
                } else {
                    for ((w, &g), b) in items {
                        let d = g + wd * *w;
                        *b = mu * *b + (1.0 - damp) * d;
                        *w -= lr * *b;
                    }
                }
            });
    }
}

/// Values per partial sum of the gradient norm: fixed, so the sum order (and the norm) does not
/// depend on the thread count.
const NORM_CHUNK: usize = 16 * 1024;

/// L2 norm over all gradients: f64 sums of fixed chunks of each gradient, in parallel, added in
/// order (deterministic for any thread count).
pub fn grad_norm(params: &[(String, &mut Param)]) -> f64 {
    let _span = crate::backend::profile::span("grad norm");
    params
        .iter()
        .map(|(_, p)| {
            let partial: Vec<f64> = p
                .grad
                .par_chunks(NORM_CHUNK)
                .map(|chunk| {
                    // Eight running sums, so the adds do not wait on each other.
                    let mut acc = [0f64; 8];
                    let mut lanes = chunk.chunks_exact(8);
                    for block in &mut lanes {
                        for (a, &g) in acc.iter_mut().zip(block) {
                            *a += g as f64 * g as f64;
                        }
                    }
                    let tail: f64 = lanes.remainder().iter().map(|&g| g as f64 * g as f64).sum();
                    acc.iter().sum::<f64>() + tail
                })
                .collect();
            partial.iter().sum::<f64>()
        })
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
            p.grad
                .par_chunks_mut(NORM_CHUNK)
                .for_each(|c| c.iter_mut().for_each(|g| *g *= coef));
        }
    }
    norm
}

#[cfg(test)]
mod norm_tests {
    use super::*;

    /// The gradient norm sums fixed chunks in order: the same bits on 1 and 3 threads.
    #[test]
    fn grad_norm_does_not_depend_on_the_thread_count() {
        let mut a = Param::zeros(&[300, 200]);
        let mut b = Param::zeros(&[7]);
        for (i, g) in a.grad.iter_mut().chain(b.grad.iter_mut()).enumerate() {
            *g = ((i * 104_729 % 2001) as f32 - 1000.0) * 1e-3;
        }
        let expected = a
            .grad
            .iter()
            .chain(&b.grad)
            .map(|&g| g as f64 * g as f64)
            .sum::<f64>()
            .sqrt();
        let mut norm_on = |threads: usize| {
            let params = vec![("a".to_string(), &mut a), ("b".to_string(), &mut b)];
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| grad_norm(&params))
        };
        let (one, three) = (norm_on(1), norm_on(3));
        assert_eq!(one.to_bits(), three.to_bits());
        assert!(
            (one - expected).abs() < 1e-9 * expected,
            "{one} vs {expected}"
        );
    }
}
