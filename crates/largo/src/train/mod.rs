//! Training: optimisers, schedules, the two loops (classifier, language model), checkpoints,
//! metrics and curves.

pub mod checkpoint;
pub mod classifier;
pub mod lm;
pub mod metrics;
pub mod optim;
pub mod plot;
pub mod schedule;
pub mod session;

pub use session::{run_dir, TrainOptions, TrainOutcome};

use crate::config::Config;
use crate::{Error, Result};

/// Trains `cfg`'s model in `run_dir(cfg)`; with `resume`, continues from its latest checkpoint.
pub fn train(cfg: &Config, opts: &TrainOptions) -> Result<TrainOutcome> {
    let run = run_dir(cfg);
    if !opts.resume && run.join("metrics.jsonl").exists() {
        return Err(Error::Invalid(format!(
            "{} already holds a run: continue it with `largo train --resume {}`, or pick another name with --set run.name=…",
            run.display(),
            run.display()
        )));
    }
    let existed = run.exists();
    std::fs::create_dir_all(&run).map_err(|e| Error::io(&run, e))?;
    let result = if cfg.is_lm() {
        lm::train_lm(cfg, opts, &run)
    } else {
        classifier::train_classifier(cfg, opts, &run)
    };
    // A run that failed before its first checkpoint leaves nothing behind.
    if result.is_err() && !existed && !checkpoint::checkpoints_dir(&run).exists() {
        let _ = std::fs::remove_dir_all(&run);
    }
    result
}
