//! Learning-rate schedules, as a function of the optimiser step (0-based).
//! With no warmup they equal PyTorch's StepLR, LinearLR (to min_lr) and CosineAnnealingLR.

pub use crate::config::ScheduleConfig;

impl ScheduleConfig {
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
