//! `metrics.jsonl`: one JSON object per line, appended and flushed as training goes.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// Every `log_every` optimiser steps: the mean over those steps.
    Train {
        step: u64,
        epoch: usize,
        loss: f64,
        /// Classifiers only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        accuracy: Option<f64>,
        lr: f64,
        grad_norm: f64,
        samples_per_sec: f64,
    },
    /// After each epoch.
    Val {
        step: u64,
        epoch: usize,
        train_loss: f64,
        train_accuracy: f64,
        val_loss: f64,
        val_accuracy: f64,
    },
    /// Language models, every `eval_every` steps.
    Eval {
        step: u64,
        train_loss: f64,
        val_loss: f64,
        val_perplexity: f64,
    },
    /// Once, after training (classifiers with `data.test_path`): the final model on the test
    /// files, apart from validation.
    Test {
        step: u64,
        test_loss: f64,
        test_accuracy: f64,
        samples: usize,
        files: Vec<String>,
    },
}

impl Record {
    pub fn step(&self) -> u64 {
        match self {
            Record::Train { step, .. }
            | Record::Val { step, .. }
            | Record::Eval { step, .. }
            | Record::Test { step, .. } => *step,
        }
    }
}

pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens for appending. On resume, lines past the checkpoint's step (written after the
    /// checkpoint by the interrupted run) are dropped first, so history is not duplicated.
    pub fn open(path: &Path, resume_step: Option<u64>) -> Result<Self> {
        if let Some(step) = resume_step {
            let kept: Vec<Record> = read_records(path)?
                .into_iter()
                .filter(|r| r.step() <= step)
                .collect();
            let mut text = String::new();
            for r in &kept {
                text.push_str(&serde_json::to_string(r).expect("record serialises"));
                text.push('\n');
            }
            crate::io::write_atomic(path, text.as_bytes())?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn write(&mut self, r: &Record) -> Result<()> {
        let line = serde_json::to_string(r).expect("record serialises");
        writeln!(self.file, "{line}")
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// Every loss a run logged, as (step, loss): train losses, and for validation records the
/// train and validation losses, in file order.
pub fn read_losses(path: &Path) -> Result<Vec<(u64, f64)>> {
    Ok(read_records(path)?
        .into_iter()
        .flat_map(|r| match r {
            Record::Train { step, loss, .. } => vec![(step, loss)],
            Record::Val {
                step,
                train_loss,
                val_loss,
                ..
            } => vec![(step, train_loss), (step, val_loss)],
            Record::Eval { step, val_loss, .. } => vec![(step, val_loss)],
            Record::Test { .. } => vec![],
        })
        .collect())
}

pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::format(path, format!("line {}: {e}", i + 1)))
        })
        .collect()
}
