//! Training: the one session (`session`) that every task (`classifier`, `lm`, `finetune`) runs in;
//! optimisers, schedules, checkpoints, data parallelism, metrics and curves.

pub mod checkpoint;
pub mod classifier;
pub mod dist;
pub mod finetune;
pub mod lm;
pub mod metrics;
pub mod optim;
pub mod plot;
pub mod schedule;
pub mod session;

pub use dist::{Dist, DistOptions};
pub use session::{run_dir, TestScore, TrainOptions, TrainOutcome};

use crate::config::Config;
use crate::models::ModelKind;
use crate::{Error, Result};

/// Trains `cfg`'s model in `run_dir(cfg)`; with `resume`, continues from its latest checkpoint.
pub fn train(cfg: &Config, opts: &TrainOptions) -> Result<TrainOutcome> {
    train_distributed(cfg, opts, &Dist::single())
}

/// [`train`] as one rank of a data-parallel group: every rank of `dist` calls it with the same
/// configuration; rank 0 alone touches the run directory.
pub fn train_distributed(cfg: &Config, opts: &TrainOptions, dist: &Dist) -> Result<TrainOutcome> {
    let run = run_dir(cfg);
    let mut existed = false;
    dist.lead_then_share(|| {
        if !opts.resume && run.join("metrics.jsonl").exists() {
            return Err(Error::Invalid(format!(
                "{} already holds a run: continue it with `largo train --resume {}`, or pick another name with --set run.name=…",
                run.display(),
                run.display()
            )));
        }
        existed = run.exists();
        std::fs::create_dir_all(&run).map_err(|e| Error::io(&run, e))
    })?;
    let result = match cfg.model() {
        kind @ (ModelKind::Mlp(_) | ModelKind::Cnn(_) | ModelKind::ResNet(_)) => {
            classifier::ClassifierTask::new(cfg, kind)
                .and_then(|mut task| session::run(cfg, opts, &run, dist, &mut task))
        }
        ModelKind::Gpt(_) | ModelKind::EncoderLm(_) => lm::LmTask::new(cfg, &run, dist)
            .and_then(|mut task| session::run(cfg, opts, &run, dist, &mut task)),
        ModelKind::Llama(_) => finetune::FinetuneTask::new(cfg, dist)
            .and_then(|mut task| session::run(cfg, opts, &run, dist, &mut task)),
    };
    // A run that failed before its first checkpoint leaves nothing behind.
    if dist.is_lead() && result.is_err() && !existed && !checkpoint::checkpoints_dir(&run).exists()
    {
        let _ = std::fs::remove_dir_all(&run);
    }
    result
}
