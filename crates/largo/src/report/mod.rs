//! `largo report`: one self-contained HTML file about a training run or a sweep.
//!
//! A run's report holds its summary and metrics table, the train and validation curves on one
//! chart (the gap between them shaded), a classifier's confusion matrix, per-class scores and
//! pixel attributions or a language model's samples and attention maps, and the resolved
//! config. A sweep's report holds its plan, the leaderboard, a chart of each hyper-parameter
//! against the metric, every trial's validation curve and the best config.
//!
//! Images are PNGs inlined as data URLs and the styles are inline: the file needs nothing else,
//! no network and no script.

pub mod charts;
pub mod html;
pub mod run;
pub mod sweep;

use crate::{Error, Result};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A `largo train` run directory: config.toml and metrics.jsonl.
    Run,
    /// A `largo sweep` directory: sweep.json.
    Sweep,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Run => "run",
            Kind::Sweep => "sweep",
        }
    }
}

pub struct Report {
    pub kind: Kind,
    pub html: String,
    /// Inlined images.
    pub images: usize,
    /// Parts that could not be built, and why (each also stated in the page).
    pub notes: Vec<String>,
}

/// What `dir` holds, or an error naming it when it is neither a run nor a sweep.
pub fn detect(dir: &Path) -> Result<Kind> {
    if !dir.exists() {
        return Err(Error::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
        ));
    }
    if !dir.is_dir() {
        return Err(Error::format(dir, "not a directory"));
    }
    if dir.join(sweep::STATE_FILE).is_file() {
        return Ok(Kind::Sweep);
    }
    if dir.join("config.toml").is_file() && dir.join("metrics.jsonl").is_file() {
        return Ok(Kind::Run);
    }
    Err(Error::format(
        dir,
        "neither a training run (it needs config.toml and metrics.jsonl) nor a sweep (it needs sweep.json)",
    ))
}

/// Builds the report of the run or sweep in `dir`, in memory.
pub fn build(dir: &Path) -> Result<Report> {
    let kind = detect(dir)?;
    let (page, notes) = match kind {
        Kind::Run => run::build(dir)?,
        Kind::Sweep => sweep::build(dir)?,
    };
    let html = page.render();
    let images = html.matches("<img ").count();
    Ok(Report {
        kind,
        html,
        images,
        notes,
    })
}

/// Builds the report and writes it to `out` atomically; on any error nothing is written.
pub fn write_report(dir: &Path, out: &Path) -> Result<Report> {
    let report = build(dir)?;
    crate::io::write_atomic(out, report.html.as_bytes())?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_runs_and_sweeps_are_accepted() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope");
        let e = detect(&missing).unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("no such directory"), "{e}");
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let e = detect(&empty).unwrap_err().to_string();
        assert!(
            e.contains("empty") && e.contains("neither a training run"),
            "{e}"
        );
        std::fs::write(empty.join("config.toml"), "").unwrap();
        assert!(detect(&empty).is_err(), "a run also needs metrics.jsonl");
        std::fs::write(empty.join("metrics.jsonl"), "").unwrap();
        assert_eq!(detect(&empty).unwrap(), Kind::Run);
        std::fs::write(empty.join("sweep.json"), "{}").unwrap();
        assert_eq!(detect(&empty).unwrap(), Kind::Sweep);
        let file = empty.join("config.toml");
        assert!(detect(&file)
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
    }

    #[test]
    fn a_run_without_a_model_still_gets_a_report() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("r");
        std::fs::create_dir(&run).unwrap();
        let mut cfg = crate::config::Config::load(
            None,
            &["model.arch=\"mlp\"".into(), "data.kind=\"mnist\"".into()],
        )
        .unwrap();
        cfg.run.name = "r<&>".into();
        std::fs::write(run.join("config.toml"), cfg.to_toml()).unwrap();
        std::fs::write(
            run.join("metrics.jsonl"),
            "{\"kind\":\"val\",\"step\":10,\"epoch\":0,\"train_loss\":1.0,\"train_accuracy\":0.5,\"val_loss\":1.2,\"val_accuracy\":0.4}\n",
        )
        .unwrap();
        let out = tmp.path().join("report.html");
        let report = write_report(&run, &out).unwrap();
        assert_eq!(report.kind, Kind::Run);
        assert_eq!(report.images, 2, "the two curve charts");
        assert!(
            !report.notes.is_empty(),
            "no model: the evaluation is a note"
        );
        let html = std::fs::read_to_string(&out).unwrap();
        assert!(html.contains("r&lt;&amp;&gt;") && !html.contains("r<&>"));
        assert!(html.contains("Not available"));
    }
}
