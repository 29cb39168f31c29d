//! Learning-rate schedules, as a function of the optimiser step (0-based).
//! With no warmup they equal PyTorch's StepLR, LinearLR (to min_lr) and CosineAnnealingLR.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleConfig {
    /// "constant", "step", "linear" or "cosine".
    pub kind: String,
    /// Linear ramp from lr/warmup to lr over the first steps.
    pub warmup_steps: u64,
    /// Floor of the linear and cosine decays.
    pub min_lr: f64,
    /// "step": multiply by `gamma` every `step_size` steps.
    pub step_size: u64,
    pub gamma: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            kind: "cosine".into(),
            warmup_steps: 0,
            min_lr: 0.0,
            step_size: 1000,
            gamma: 0.1,
        }
    }
}

impl ScheduleConfig {
    pub fn validate(&self) -> Result<()> {
        if !["constant", "step", "linear", "cosine"].contains(&self.kind.as_str()) {
            return Err(Error::Config(format!(
                "schedule.kind = {:?}: expected one of constant, step, linear, cosine",
                self.kind
            )));
        }
        if self.kind == "step" && self.step_size == 0 {
            return Err(Error::Config("schedule.step_size must be ≥ 1".into()));
        }
        Ok(())
    }

    /// The learning rate for optimiser step `step` of `total` steps, from base rate `lr`.
    pub fn lr_at(&self, lr: f64, step: u64, total: u64) -> f64 {
        let w = self.warmup_steps;
        if step < w {
            return lr * (step + 1) as f64 / w as f64;
        }
        let s = (step - w) as f64;
        let span = total.saturating_sub(w).max(1) as f64;
        let progress = (s / span).min(1.0);
        match self.kind.as_str() {
            "step" => lr * self.gamma.powi(((step - w) / self.step_size) as i32),
            "linear" => self.min_lr + (lr - self.min_lr) * (1.0 - progress),
            "cosine" => {
                self.min_lr
                    + 0.5 * (lr - self.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
            }
            _ => lr,
        }
    }
}
