//! Learning-rate schedules, as a function of the optimiser step (0-based).
//! With no warmup they equal PyTorch's StepLR, LinearLR (to min_lr) and CosineAnnealingLR.

pub use crate::config::ScheduleConfig;

impl ScheduleConfig {
    /// The learning rate for optimiser step `step` of `total` steps, from base rate `lr`.
    pub fn lr_at(&self, lr: f64, step: u64, total: u64) -> f64 {
        let total = if self.decay_steps > 0 {
            self.decay_steps
        } else {
            total
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_decays_over_decay_steps_then_holds_min_lr() {
        let s = ScheduleConfig {
            kind: "cosine".into(),
            warmup_steps: 10,
            min_lr: 0.1,
            decay_steps: 110,
            ..ScheduleConfig::default()
        };
        assert!(
            (s.lr_at(1.0, 0, 1000) - 0.1).abs() < 1e-12,
            "warmup starts at lr/10"
        );
        assert!((s.lr_at(1.0, 10, 1000) - 1.0).abs() < 1e-12);
        assert!(
            (s.lr_at(1.0, 60, 1000) - 0.55).abs() < 1e-12,
            "half way: the mean"
        );
        assert_eq!(s.lr_at(1.0, 110, 1000), 0.1);
        assert_eq!(s.lr_at(1.0, 900, 1000), 0.1, "after decay_steps, min_lr");
        let whole_run = ScheduleConfig {
            decay_steps: 0,
            ..s
        };
        assert!(
            whole_run.lr_at(1.0, 505, 1000) > 0.1,
            "0: decays over the run"
        );
    }
}
