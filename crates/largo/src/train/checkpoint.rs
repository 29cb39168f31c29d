//! Checkpoints: `checkpoints/step-NNNNNNNN/` holding the model, the optimiser state (both
//! safetensors) and the trainer's position (`state.json`), plus `checkpoints/latest.json`.
//! Each directory is complete before it is renamed into place; `latest.json` is updated last.

use crate::data::mnist::Normalization;
use crate::io::{save_safetensors, write_atomic, write_dir_atomic, TensorFile};
use crate::models::store::load_params;
use crate::nn::Module;
use crate::rng::Rng;
use crate::train::optim::Optimizer;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Everything besides tensors that a resumed run needs to continue exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps taken.
    pub step: u64,
    /// The epoch to continue in, and the micro-batch within it.
    pub epoch: usize,
    pub next_batch: usize,
    pub dropout_rng: Rng,
    /// Language models: the generator that draws training windows.
    #[serde(default)]
    pub data_rng: Option<Rng>,
    /// MLP: pixel normalisation fitted on the training split.
    #[serde(default)]
    pub normalization: Option<Normalization>,
    pub best_metric: Option<f64>,
    pub best_epoch: Option<usize>,
    pub epochs_without_improvement: usize,
    /// Running sums of the current epoch's training loss/accuracy (so the epoch's mean is exact).
    pub epoch_loss_sum: f64,
    pub epoch_correct: u64,
    pub epoch_samples: u64,
    /// Language models: mean training loss of the latest logging window (shown at validation).
    #[serde(default)]
    pub last_train_loss: Option<f64>,
    pub finished: bool,
}

impl TrainState {
    /// The state of a run that has not taken a step yet.
    pub fn start(seed: u64, data_rng: Option<Rng>, normalization: Option<Normalization>) -> Self {
        TrainState {
            step: 0,
            epoch: 0,
            next_batch: 0,
            dropout_rng: Rng::for_stream(seed, crate::rng::stream::DROPOUT),
            data_rng,
            normalization,
            best_metric: None,
            best_epoch: None,
            epochs_without_improvement: 0,
            epoch_loss_sum: 0.0,
            epoch_correct: 0,
            epoch_samples: 0,
            last_train_loss: None,
            finished: false,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Latest {
    step: u64,
    dir: String,
}

pub fn checkpoints_dir(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

pub fn save(
    run: &Path,
    state: &TrainState,
    model: &dyn Module,
    opt: &Optimizer,
    keep: usize,
) -> Result<PathBuf> {
    let root = checkpoints_dir(run);
    let name = format!("step-{:08}", state.step);
    let dir = root.join(&name);
    write_dir_atomic(&dir, |tmp| {
        let params = model.params();
        let names: Vec<String> = params.iter().map(|(n, _)| n.clone()).collect();
        let buffers = model.buffers();
        let tensors = crate::models::store::state_dict(&params, &buffers);
        save_safetensors(&tmp.join("model.safetensors"), &tensors, None)?;
        let opt_state = opt.state_tensors(&names);
        let opt_refs: Vec<_> = opt_state.iter().map(|(n, t)| (n.clone(), t)).collect();
        save_safetensors(&tmp.join("optimizer.safetensors"), &opt_refs, None)?;
        let json = serde_json::to_string_pretty(state).expect("state serialises");
        write_atomic(&tmp.join("state.json"), json.as_bytes())
    })?;
    let latest = serde_json::to_string(&Latest {
        step: state.step,
        dir: name.clone(),
    })
    .expect("serialises");
    write_atomic(&root.join("latest.json"), latest.as_bytes())?;
    prune(&root, &name, keep)?;
    Ok(dir)
}

/// Removes all but the newest `keep` checkpoint directories (never the one just written).
fn prune(root: &Path, newest: &str, keep: usize) -> Result<()> {
    let mut dirs: Vec<String> = std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    dirs.sort();
    let excess = dirs.len().saturating_sub(keep.max(1));
    for d in dirs.into_iter().take(excess).filter(|d| d != newest) {
        let p = root.join(d);
        std::fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
    }
    Ok(())
}

/// The newest complete checkpoint of a run.
pub fn latest(run: &Path) -> Result<(PathBuf, TrainState)> {
    let root = checkpoints_dir(run);
    let lp = root.join("latest.json");
    let text = std::fs::read_to_string(&lp).map_err(|e| Error::io(&lp, e))?;
    let l: Latest = serde_json::from_str(&text).map_err(|e| Error::format(&lp, e.to_string()))?;
    let dir = root.join(&l.dir);
    let sp = dir.join("state.json");
    let text = std::fs::read_to_string(&sp).map_err(|e| Error::io(&sp, e))?;
    let state: TrainState =
        serde_json::from_str(&text).map_err(|e| Error::format(&sp, e.to_string()))?;
    Ok((dir, state))
}

/// Loads a checkpoint's model parameters and optimiser state.
pub fn restore(
    dir: &Path,
    state: &TrainState,
    model: &mut dyn Module,
    opt: &mut Optimizer,
) -> Result<()> {
    let mut file = TensorFile::load(&dir.join("model.safetensors"))?;
    load_params(model, &mut file)?;
    let sizes: Vec<(String, usize)> = model
        .params()
        .iter()
        .map(|(n, p)| (n.clone(), p.value.numel()))
        .collect();
    let opt_file = TensorFile::load(&dir.join("optimizer.safetensors"))?;
    opt.load_state(state.step, &sizes, |name| {
        Ok(opt_file.get(name)?.data.clone())
    })
}
