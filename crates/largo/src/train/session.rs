//! What every training loop shares: options and outcome, the run directory, the optimiser
//! step with clipping, divergence errors and the progress display.

use super::checkpoint::{self, TrainState};
use super::dist::{Dist, TrainOptimizer};
use super::metrics::{MetricsLog, Record};
use super::optim::{clip_grad_norm, grad_norm};
use crate::config::Config;
use crate::nn::Module;
use crate::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

pub struct TrainOptions {
    /// Continue the run in `run_dir` from its latest checkpoint.
    pub resume: bool,
    pub progress: bool,
}

#[derive(Debug)]
pub struct TrainOutcome {
    pub run_dir: PathBuf,
    pub steps: u64,
    pub epochs_run: usize,
    pub best_metric: Option<f64>,
    pub best_epoch: Option<usize>,
    pub last_val_loss: f64,
    pub last_val_accuracy: f64,
    pub stopped_early: bool,
}

pub fn run_dir(cfg: &Config) -> PathBuf {
    Path::new(&cfg.run.out_dir).join(&cfg.run.name)
}

/// One optimiser step after gradients are summed: all-reduce them over the ranks (nothing to
/// do in one process), clip (or measure) the global norm, take the schedule's rate, update,
/// zero the gradients. Returns (grad norm before clipping, lr).
pub(crate) fn optimizer_step(
    cfg: &Config,
    model: &mut dyn Module,
    opt: &mut TrainOptimizer,
    dist: &Dist,
    state: &TrainState,
    total_steps: u64,
    run: &Path,
) -> Result<(f64, f64)> {
    let mut params = model.params_mut();
    dist.reduce_grads(&mut params)?;
    let norm = if cfg.train.clip_grad_norm > 0.0 {
        clip_grad_norm(&mut params, cfg.train.clip_grad_norm)
    } else {
        grad_norm(&params)
    };
    if !norm.is_finite() {
        return Err(non_finite(run, "gradient norm", norm, state));
    }
    let lr = cfg.schedule.lr_at(cfg.optim.lr, state.step, total_steps);
    dist.update(opt, params, lr as f32)?;
    model.zero_grad();
    Ok((norm, lr))
}

pub(crate) fn non_finite(run: &Path, what: &str, value: f64, state: &TrainState) -> Error {
    let last = checkpoint::latest(run)
        .map(|(d, _)| format!("the last good checkpoint is kept at {}", d.display()))
        .unwrap_or_else(|_| "no checkpoint had been written yet".into());
    Error::NonFinite(format!(
        "training stopped: the {what} became {value} at step {} (epoch {}); {last}. Try a lower optim.lr or set train.clip_grad_norm",
        state.step + 1,
        state.epoch + 1
    ))
}

pub(crate) fn progress_bar(enabled: bool, total: u64, pos: u64) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30.cyan/blue} {pos}/{len} steps  {msg}  [{elapsed_precise} ETA {eta_precise}]",
        )
        .expect("valid template"),
    );
    bar.set_position(pos);
    bar
}

/// Epoch summaries go above the bar, or straight to stderr when there is no bar.
pub(crate) fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// What a run writes besides checkpoints: the resolved config and `metrics.jsonl` (trimmed
/// past the resume step). Only the lead rank writes; on the others it drops every record.
pub(crate) struct RunLog(Option<MetricsLog>);

impl RunLog {
    pub(crate) fn open(
        cfg: &Config,
        run: &Path,
        lead: bool,
        resume_step: Option<u64>,
    ) -> Result<Self> {
        if !lead {
            return Ok(RunLog(None));
        }
        crate::io::write_atomic(&run.join("config.toml"), cfg.to_toml().as_bytes())?;
        MetricsLog::open(&run.join("metrics.jsonl"), resume_step).map(|l| RunLog(Some(l)))
    }

    pub(crate) fn write(&mut self, r: &Record) -> Result<()> {
        match self.0.as_mut() {
            Some(l) => l.write(r),
            None => Ok(()),
        }
    }
}
