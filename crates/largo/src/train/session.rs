//! The one training session every task runs in. It owns what tasks share: resume and the sync
//! of ranks, the optimiser step with clipping, the logging window, validation with the best
//! model and early stopping, checkpoints, the stop conditions (`max_steps`, `stop_at`,
//! `max_minutes`), the checks for a diverged loss and the final save. A task
//! ([`super::classifier`], [`super::lm`]) supplies the model, its batches, its validation and
//! what it saves, through [`Task`].

use super::checkpoint::{self, TrainState};
use super::dist::{Dist, TrainOptimizer};
use super::metrics::{MetricsLog, Record};
use super::optim::{clip_grad_norm, grad_norm, Optimizer};
use crate::config::Config;
use crate::nn::Module;
use crate::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct TrainOptions {
    /// Continue the run in `run_dir` from its latest checkpoint.
    pub resume: bool,
    pub progress: bool,
}

#[derive(Debug)]
pub struct TrainOutcome {
    pub run_dir: PathBuf,
    pub steps: u64,
    /// Epochs completed in this session (tasks without epochs: 0).
    pub epochs_run: usize,
    pub best_metric: Option<f64>,
    /// The epoch (classifiers) or step (language models) of the best validation.
    pub best_epoch: Option<usize>,
    pub last_val_loss: f64,
    /// NaN for tasks without an accuracy.
    pub last_val_accuracy: f64,
    pub stopped_early: bool,
    /// The final model's score on `data.test_path`, when the run has one and ended.
    pub test: Option<TestScore>,
}

/// A score on held-out test files after training, apart from validation.
#[derive(Clone, Debug)]
pub struct TestScore {
    pub loss: f64,
    pub accuracy: f64,
    pub samples: usize,
    /// The files scored.
    pub files: Vec<PathBuf>,
}

pub fn run_dir(cfg: &Config) -> PathBuf {
    Path::new(&cfg.run.out_dir).join(&cfg.run.name)
}

/// What one optimiser step's micro-batches gave on this rank.
pub(crate) struct StepSums {
    /// The step's mean loss, weighted by this rank's share of the step's samples (the session
    /// sums it over the ranks).
    pub loss: f64,
    /// Correct predictions on this rank (tasks without an accuracy: 0).
    pub correct: u64,
    /// Samples (or tokens) the whole step consumed over all ranks, for the throughput.
    pub items: u64,
}

/// One validation: loss and, for classifiers, accuracy.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Validation {
    pub loss: f64,
    pub accuracy: Option<f64>,
}

/// The validation number `best/` and early stopping follow.
pub(crate) struct Metric {
    pub name: String,
    pub higher_is_better: bool,
}

impl Metric {
    pub(crate) fn lower_loss() -> Self {
        Metric {
            name: "val_loss".into(),
            higher_is_better: false,
        }
    }

    fn of(&self, v: &Validation) -> f64 {
        match (self.name.as_str(), v.accuracy) {
            ("val_accuracy", Some(a)) => a,
            _ => v.loss,
        }
    }

    /// True when `value` beats `best` by more than `min_delta` (or there is no best yet).
    fn improves(&self, value: f64, best: Option<f64>, min_delta: f64) -> bool {
        match best {
            None => true,
            Some(b) if self.higher_is_better => value > b + min_delta,
            Some(b) => value < b - min_delta,
        }
    }
}

/// What a kind of training brings to the session: its model and data, one optimiser step's
/// forward and backward, its validation periods (epochs, or every `eval_every` steps) and the
/// model directory it saves. Everything else is the session's.
pub(crate) trait Task {
    fn model(&mut self) -> &mut dyn Module;

    /// A fresh run: initialise the weights and whatever is fitted on the training data, into
    /// `state` when it must survive a resume.
    fn init(&mut self, state: &mut TrainState);

    /// After the start state is settled (fresh or resumed, the same on every rank).
    fn begin(&mut self, _state: &TrainState) -> Result<()> {
        Ok(())
    }

    /// Optimiser steps the schedule spans (the learning-rate schedule's length).
    fn total_steps(&self) -> u64;

    /// The run is done: every epoch, or every step, taken.
    fn complete(&self, state: &TrainState) -> bool;

    /// Forward and backward of the next optimiser step's micro-batches on this rank, the
    /// gradients summed into the model; the step's last backward passes the gradients to
    /// `dist.grad_hook(true)` as they become final.
    fn forward_backward(&mut self, state: &mut TrainState, dist: &Dist) -> Result<StepSums>;

    /// After the optimiser step (`state.step` counts it): the task's position in its data.
    fn after_step(&mut self, _state: &mut TrainState, _sums: &StepSums) {}

    /// The step just taken ends an epoch (a logging window closes there too).
    fn epoch_ends(&self, _state: &TrainState) -> bool {
        false
    }

    /// The step just taken closes a validation period: validate, record, keep the best,
    /// checkpoint. `timed_out`: `train.max_minutes` has passed.
    fn period_ends(&self, state: &TrainState, timed_out: bool) -> bool;

    /// The task's own limit on steps short of `complete` (classifiers: `train.max_steps`).
    fn at_step_limit(&self, _state: &TrainState) -> bool {
        false
    }

    fn validate(&mut self, dist: &Dist) -> Result<Validation>;

    /// The metrics record and the progress line of a closed period. `step_loss`: the last
    /// step's training loss.
    fn period_record(
        &self,
        state: &TrainState,
        val: &Validation,
        step_loss: f64,
    ) -> (Record, String);

    /// Moves past a closed period (classifiers: to the next epoch).
    fn next_period(&mut self, _state: &mut TrainState) {}

    /// Which period `best_epoch` counts: the epoch or the step.
    fn period_index(&self, state: &TrainState) -> usize;

    /// "epochs" or "evaluations", for the early-stopping message.
    fn periods_name(&self) -> &'static str;

    /// What the throughput counts: "samples" or "tokens".
    fn unit(&self) -> &'static str;

    /// Training records carry an accuracy (classifiers).
    fn measures_accuracy(&self) -> bool {
        false
    }

    fn metric(&self) -> Metric;

    /// Once the run has ended (not when a session stops for `--resume`): the final model's
    /// score on the task's test data, if it has any.
    fn test(&mut self, _dist: &Dist) -> Result<Option<TestScore>> {
        Ok(None)
    }

    /// Writes the model directory (`best/`, `model/`).
    fn save(&self, dir: &Path) -> Result<()>;
}

/// Sums over the current logging window.
#[derive(Default)]
struct Window {
    loss: f64,
    correct: u64,
    items: u64,
    grad_norm: f64,
    steps: u64,
}

/// Trains `task` in `run` as one rank of `dist` (one process: `Dist::single()`).
pub(crate) fn run(
    cfg: &Config,
    opts: &TrainOptions,
    run: &Path,
    dist: &Dist,
    task: &mut dyn Task,
) -> Result<TrainOutcome> {
    let lead = dist.is_lead();
    let t = &cfg.train;
    let seed = cfg.run.seed;
    let mut full_opt = Optimizer::new(cfg.optim.clone());
    let mut state = TrainState::start(seed, None, None);
    if opts.resume {
        dist.lead_then_share(|| {
            let (dir, s) = checkpoint::latest(run)?;
            checkpoint::restore(&dir, &s, task.model(), &mut full_opt)?;
            state = s;
            Ok(())
        })?;
    } else {
        task.init(&mut state);
    }
    dist.sync_start(task.model(), &mut full_opt, &mut state)?;
    let mut opt = dist.optimizer(full_opt, task.model())?;
    task.begin(&state)?;
    if lead {
        eprintln!(
            "{} parameters; {}",
            task.model().num_params(),
            crate::backend::describe_matmul_precision()
        );
    }
    let mut log = RunLog::open(cfg, run, lead, opts.resume.then_some(state.step))?;

    let total_steps = task.total_steps();
    let metric = task.metric();
    let has_accuracy = task.measures_accuracy();
    let bar = progress_bar(opts.progress && lead, total_steps, state.step);
    let tell = |line: String| {
        if lead {
            say(&bar, line)
        }
    };
    let mut window = Window::default();
    let mut window_start = Instant::now();
    let session_start = Instant::now();
    let first_epoch = state.epoch;
    let mut last_val = Validation {
        loss: f64::NAN,
        accuracy: None,
    };
    let mut stopped_early = false;
    // A session stopped by `train.stop_at` or `train.max_minutes` (continued with --resume).
    let mut paused = false;

    while !task.complete(&state) && !state.finished {
        let mut sums = task.forward_backward(&mut state, dist)?;
        dist.grads_done(task.model())?;
        let mut global = [sums.loss, sums.correct as f64];
        dist.sum_f64(&mut global)?;
        (sums.loss, sums.correct) = (global[0], global[1] as u64);
        if !sums.loss.is_finite() {
            return Err(non_finite(run, "loss", sums.loss, &state));
        }
        let (norm, lr) =
            optimizer_step(cfg, task.model(), &mut opt, dist, &state, total_steps, run)?;
        state.step += 1;
        dist.after_step(state.step);
        task.after_step(&mut state, &sums);
        window.loss += sums.loss;
        window.correct += sums.correct;
        window.items += sums.items;
        window.grad_norm += norm;
        window.steps += 1;

        if state.step.is_multiple_of(t.log_every.max(1)) || task.epoch_ends(&state) {
            let secs = window_start.elapsed().as_secs_f64().max(1e-9);
            let loss = window.loss / window.steps as f64;
            let accuracy = has_accuracy.then(|| window.correct as f64 / window.items as f64);
            let rate = window.items as f64 / secs;
            log.write(&Record::Train {
                step: state.step,
                epoch: state.epoch,
                loss,
                accuracy,
                lr,
                grad_norm: window.grad_norm / window.steps as f64,
                samples_per_sec: rate,
            })?;
            bar.set_message(match accuracy {
                Some(a) => format!(
                    "epoch {} loss {loss:.4} acc {:.1}% {rate:.0} {}/s",
                    state.epoch + 1,
                    100.0 * a,
                    task.unit()
                ),
                None => format!("loss {loss:.4}  {rate:.0} {}/s", task.unit()),
            });
            state.last_train_loss = Some(loss);
            window = Window::default();
            window_start = Instant::now();
        }
        bar.set_position(state.step);

        let timed_out = dist.out_of_time(session_start, t.max_minutes)?;
        let stop_reason = if state.step == t.stop_at {
            Some("(train.stop_at)".to_string())
        } else if timed_out {
            Some(format!("after train.max_minutes = {}", t.max_minutes))
        } else {
            None
        };
        let stop = stop_reason.is_some() || task.at_step_limit(&state);
        if task.period_ends(&state, timed_out) {
            let val = task.validate(dist)?;
            let (record, line) = task.period_record(&state, &val, sums.loss);
            log.write(&record)?;
            tell(line);
            last_val = val;
            let value = metric.of(&val);
            if metric.improves(value, state.best_metric, t.min_delta) {
                state.best_metric = Some(value);
                state.best_epoch = Some(task.period_index(&state));
                state.epochs_without_improvement = 0;
                if lead {
                    task.save(&run.join("best"))?;
                }
            } else {
                state.epochs_without_improvement += 1;
            }
            task.next_period(&mut state);
            if t.patience > 0 && state.epochs_without_improvement >= t.patience {
                tell(format!(
                    "early stopping: no improvement of {} in {} {}",
                    metric.name,
                    t.patience,
                    task.periods_name()
                ));
                stopped_early = true;
                state.finished = true;
            }
            dist.save_checkpoint(run, &state, task.model(), &opt, t.keep_checkpoints)?;
            if lead {
                super::plot::plot_run(run)?;
            }
        } else if stop || (t.checkpoint_every > 0 && state.step.is_multiple_of(t.checkpoint_every))
        {
            dist.save_checkpoint(run, &state, task.model(), &opt, t.keep_checkpoints)?;
            if stop {
                // Between validations: score the model as it stands, without a record (the
                // period is not over; `--resume` finishes it).
                last_val = task.validate(dist)?;
            }
        }
        if stop {
            paused = stop_reason.is_some();
            if let Some(reason) = stop_reason {
                tell(format!(
                    "stopped at step {} {reason}; continue with --resume",
                    state.step
                ));
            }
            break;
        }
    }
    bar.finish_and_clear();
    if lead {
        task.save(&run.join("model"))?;
    }
    let test = if paused { None } else { task.test(dist)? };
    if let Some(t) = &test {
        log.write(&Record::Test {
            step: state.step,
            test_loss: t.loss,
            test_accuracy: t.accuracy,
            samples: t.samples,
            files: t.files.iter().map(|f| f.display().to_string()).collect(),
        })?;
        let names: Vec<String> = t
            .files
            .iter()
            .map(|f| {
                f.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let dir = t.files[0].parent().unwrap_or(Path::new("."));
        tell(format!(
            "test (final model): loss {:.4} acc {:.2}% on {} samples ({} in {})",
            t.loss,
            100.0 * t.accuracy,
            t.samples,
            names.join(", "),
            dir.display()
        ));
    }
    dist.finish(run)?;
    Ok(TrainOutcome {
        run_dir: run.to_path_buf(),
        steps: state.step,
        epochs_run: state.epoch - first_epoch,
        best_metric: state.best_metric,
        best_epoch: state.best_epoch,
        last_val_loss: last_val.loss,
        last_val_accuracy: last_val.accuracy.unwrap_or(f64::NAN),
        stopped_early,
        test,
    })
}

/// One optimiser step after gradients are summed: all-reduce them over the ranks (nothing to
/// do in one process), clip (or measure) the global norm, take the schedule's rate, update,
/// zero the gradients. Returns (grad norm before clipping, lr).
fn optimizer_step(
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

fn non_finite(run: &Path, what: &str, value: f64, state: &TrainState) -> Error {
    let last = checkpoint::latest(run)
        .map(|(d, _)| format!("the last good checkpoint is kept at {}", d.display()))
        .unwrap_or_else(|_| "no checkpoint had been written yet".into());
    Error::NonFinite(format!(
        "training stopped: the {what} became {value} at step {} (epoch {}); {last}. Try a lower optim.lr or set train.clip_grad_norm",
        state.step + 1,
        state.epoch + 1
    ))
}

fn progress_bar(enabled: bool, total: u64, pos: u64) -> ProgressBar {
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

/// Progress lines go above the bar, or straight to stderr when there is no bar.
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// What a run writes besides checkpoints: the resolved config and `metrics.jsonl` (trimmed
/// past the resume step). Only the lead rank writes; on the others it drops every record.
struct RunLog(Option<MetricsLog>);

impl RunLog {
    fn open(cfg: &Config, run: &Path, lead: bool, resume_step: Option<u64>) -> Result<Self> {
        if !lead {
            return Ok(RunLog(None));
        }
        crate::io::write_atomic(&run.join("config.toml"), cfg.to_toml().as_bytes())?;
        MetricsLog::open(&run.join("metrics.jsonl"), resume_step).map(|l| RunLog(Some(l)))
    }

    fn write(&mut self, r: &Record) -> Result<()> {
        match self.0.as_mut() {
            Some(l) => l.write(r),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The losses of three tiny runs, recorded before the training loops became one session
    //! (AVX-512 machine, 2026-12-07). A change to what training computes (initialisation, the
    //! order of random draws, accumulation weights, the optimiser) moves them by far more than
    //! the tolerance; another instruction set's rounding (AVX2 kernels, thread counts) does not.
    use super::*;
    use crate::train::metrics::read_records;

    const TOLERANCE: f64 = 2e-4;

    fn repo(path: &str) -> String {
        format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
    }

    /// Trains `overrides` in a temporary directory; returns every record of its metrics.
    fn train_records(overrides: &[&str]) -> Vec<Record> {
        let out = tempfile::tempdir().unwrap();
        let mut all: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        all.push(format!("run.out_dir={}", out.path().display()));
        let cfg = Config::load(None, &all).unwrap();
        let opts = TrainOptions {
            resume: false,
            progress: false,
        };
        let outcome = crate::train::train(&cfg, &opts).unwrap();
        read_records(&outcome.run_dir.join("metrics.jsonl")).unwrap()
    }

    /// (kind, step, loss): training window means, then validation losses.
    fn losses(records: &[Record]) -> Vec<(char, u64, f64)> {
        records
            .iter()
            .map(|r| match r {
                Record::Train { step, loss, .. } => ('T', *step, *loss),
                Record::Val { step, val_loss, .. } | Record::Eval { step, val_loss, .. } => {
                    ('V', *step, *val_loss)
                }
                Record::Test {
                    step, test_loss, ..
                } => ('X', *step, *test_loss),
            })
            .collect()
    }

    fn assert_pinned(what: &str, got: &[(char, u64, f64)], pinned: &[(char, u64, f64)]) {
        assert_eq!(got.len(), pinned.len(), "{what}: {got:?}");
        for (g, p) in got.iter().zip(pinned) {
            assert_eq!((g.0, g.1), (p.0, p.1), "{what}: {got:?}");
            assert!(
                (g.2 - p.2).abs() <= TOLERANCE * p.2.abs(),
                "{what} {} at step {}: {} but {} was recorded",
                g.0,
                g.1,
                g.2,
                p.2
            );
        }
    }

    /// The first 6,000 bytes of four plays: a tiny character-level corpus.
    fn corpus(dir: &Path) -> String {
        let out = dir.join("corpus");
        std::fs::create_dir_all(&out).unwrap();
        for name in [
            "hamlet_gut.txt",
            "macbeth_gut.txt",
            "lear_gut.txt",
            "sonnets_gut.txt",
        ] {
            let text = std::fs::read(repo(&format!("data/shakespeare/{name}"))).unwrap();
            std::fs::write(out.join(name), &text[..6000]).unwrap();
        }
        out.display().to_string()
    }

    const TINY_LM: &[&str] = &[
        "train.batch_size=8",
        "train.max_steps=40",
        "train.eval_every=20",
        "train.log_every=5",
    ];

    #[test]
    fn a_tiny_gpt_trains_as_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let data = format!("data.path={}", corpus(dir.path()));
        let mut args = vec![
            data.as_str(),
            "gpt.n_layer=1",
            "gpt.n_head=2",
            "gpt.n_embd=32",
            "gpt.ff=64",
            "gpt.block_size=32",
            // Dropout and accumulation: the dropout generator and the weights of micro-batches.
            "gpt.dropout=0.1",
            "train.grad_accum=2",
        ];
        args.extend(TINY_LM);
        let pinned = [
            ('T', 5, 4.16012282371521),
            ('T', 10, 4.151420974731446),
            ('T', 15, 4.13783278465271),
            ('T', 20, 4.113493776321411),
            ('V', 20, 4.08888104557991),
            ('T', 25, 4.0755468845367435),
            ('T', 30, 4.019275736808777),
            ('T', 35, 3.953108525276184),
            ('T', 40, 3.894440460205078),
            ('V', 40, 3.8433288037776947),
        ];
        assert_pinned("gpt", &losses(&train_records(&args)), &pinned);
    }

    #[test]
    fn a_tiny_encoder_lm_trains_as_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let data = format!("data.path={}", corpus(dir.path()));
        let mut args = vec![
            data.as_str(),
            "model.arch=encoder_lm",
            "encoder_lm.nlayers=1",
            "encoder_lm.nhead=2",
            "encoder_lm.d_model=32",
            "encoder_lm.d_hid=64",
            "encoder_lm.max_len=32",
        ];
        args.extend(TINY_LM);
        let pinned = [
            ('T', 5, 4.193013763427734),
            ('T', 10, 4.1725998878479),
            ('T', 15, 4.171960353851318),
            ('T', 20, 4.1524022102355955),
            ('V', 20, 4.13409760594368),
            ('T', 25, 4.13427324295044),
            ('T', 30, 4.099818325042724),
            ('T', 35, 4.062462615966797),
            ('T', 40, 4.027060317993164),
            ('V', 40, 3.9824608266353607),
        ];
        assert_pinned("encoder_lm", &losses(&train_records(&args)), &pinned);
    }

    #[test]
    fn a_tiny_mlp_trains_as_recorded() {
        let text = std::fs::read_to_string(repo("configs/mnist-mlp.toml")).unwrap();
        let mut cfg: toml::Table = toml::from_str(&text).unwrap();
        cfg.remove("run");
        let data = format!("data.path={}", repo("data/mnist-1k"));
        let mut args: Vec<String> = Vec::new();
        // The committed MLP config as overrides, then the tiny run's own.
        for (section, table) in &cfg {
            for (k, v) in table.as_table().unwrap() {
                args.push(format!("{section}.{k}={v}"));
            }
        }
        args.extend(
            [
                data.as_str(),
                "train.epochs=3",
                "mlp.dropout=0.2",
                "train.log_every=3",
            ]
            .map(String::from),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let records = train_records(&args);
        let pinned = [
            ('T', 3, 2.184287190437317),
            ('T', 6, 1.8687500556310017),
            ('T', 9, 1.5735599199930828),
            ('T', 12, 1.2966347138086955),
            ('T', 15, 1.1201422214508057),
            ('V', 15, 0.995305597782135),
            ('T', 18, 0.9048189322153727),
            ('T', 21, 0.9520806670188904),
            ('T', 24, 0.8365042606989542),
            ('T', 27, 0.7544182936350504),
            ('T', 30, 0.7652258078257242),
            ('V', 30, 0.7206123471260071),
            ('T', 33, 0.6695917050043741),
            ('T', 36, 0.6995256344477335),
            ('T', 39, 0.6437212030092875),
            ('T', 42, 0.7047510345776876),
            ('T', 45, 0.6303548415501913),
            ('V', 45, 0.6948410868644714),
        ];
        assert_pinned("mlp", &losses(&records), &pinned);
        let accuracies: Vec<f64> = records
            .iter()
            .filter_map(|r| match r {
                Record::Val { val_accuracy, .. } => Some(*val_accuracy),
                _ => None,
            })
            .collect();
        assert_eq!(accuracies, [0.75, 0.79, 0.8]);
    }
}
