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
use crate::config::{Config, TrainConfig};
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
    /// Correct predictions on this rank, for tasks that measure an accuracy.
    pub correct: Option<u64>,
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

/// How a task's optimiser steps are grouped into validation periods.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Schedule {
    /// `train.epochs` passes over the training set of `micro_batches` micro-batches each (a step
    /// takes `train.grad_accum` of them), validated after each epoch; `train.max_steps` > 0
    /// ends the run sooner. Classifiers.
    Epochs { micro_batches: usize },
    /// `train.max_steps` steps, validated every `train.eval_every`, at the end, and when
    /// `train.max_minutes` ends the session. Language models.
    Steps,
}

/// What a kind of training brings to the session: its model and data, one optimiser step's
/// forward and backward, its schedule, its validation and the model directory it saves.
/// Everything else is the session's.
pub(crate) trait Task {
    fn model(&mut self) -> &mut dyn Module;

    /// A fresh run: initialise the weights and whatever is fitted on the training data, into
    /// `state` when it must survive a resume.
    fn init(&mut self, state: &mut TrainState);

    /// After the start state is settled (fresh or resumed, the same on every rank).
    fn begin(&mut self, _state: &TrainState) -> Result<()> {
        Ok(())
    }

    fn schedule(&self) -> Schedule;

    /// Forward and backward of the next optimiser step's micro-batches on this rank (with
    /// epochs: micro-batches `state.next_batch..` of epoch `state.epoch`), the gradients summed
    /// into the model; the step's last backward passes the gradients to `dist.grad_hook(true)`
    /// as they become final.
    fn forward_backward(&mut self, state: &mut TrainState, dist: &Dist) -> Result<StepSums>;

    fn validate(&mut self, dist: &Dist) -> Result<Validation>;

    fn metric(&self) -> Metric;

    /// What the throughput counts: "samples" or "tokens".
    fn unit(&self) -> &'static str;

    /// Once the run has ended (not when a session stops for `--resume`): the final model's
    /// score on the task's test data, if it has any.
    fn test(&mut self, _dist: &Dist) -> Result<Option<TestScore>> {
        Ok(None)
    }

    /// Writes the model directory (`best/`, `model/`).
    fn save(&self, dir: &Path) -> Result<()>;
}

impl Schedule {
    /// Optimiser steps the run spans (the learning-rate schedule's length).
    fn total_steps(self, t: &TrainConfig) -> u64 {
        match self {
            Schedule::Epochs { micro_batches } => {
                micro_batches.div_ceil(t.grad_accum) as u64 * t.epochs as u64
            }
            Schedule::Steps => t.max_steps,
        }
    }

    /// Every epoch, or every step, taken.
    fn complete(self, t: &TrainConfig, state: &TrainState) -> bool {
        match self {
            Schedule::Epochs { .. } => state.epoch >= t.epochs,
            Schedule::Steps => state.step >= t.max_steps,
        }
    }

    /// After an optimiser step: the position in the epoch and the epoch's running sums.
    fn advance(self, t: &TrainConfig, state: &mut TrainState, sums: &StepSums) {
        if let Schedule::Epochs { micro_batches } = self {
            state.next_batch = (state.next_batch + t.grad_accum).min(micro_batches);
            state.epoch_loss_sum += sums.loss * sums.items as f64;
            state.epoch_correct += sums.correct.unwrap_or(0);
            state.epoch_samples += sums.items;
        }
    }

    /// The step just taken ends an epoch (a logging window closes there too).
    fn epoch_ends(self, state: &TrainState) -> bool {
        match self {
            Schedule::Epochs { micro_batches } => state.next_batch == micro_batches,
            Schedule::Steps => false,
        }
    }

    /// The step just taken closes a validation period.
    fn period_ends(self, t: &TrainConfig, state: &TrainState, timed_out: bool) -> bool {
        match self {
            Schedule::Epochs { .. } => self.epoch_ends(state),
            Schedule::Steps => {
                state.step == t.max_steps
                    || timed_out
                    || (t.eval_every > 0 && state.step.is_multiple_of(t.eval_every))
            }
        }
    }

    /// `train.max_steps` cuts an epoch-based run short.
    fn at_step_limit(self, t: &TrainConfig, state: &TrainState) -> bool {
        match self {
            Schedule::Epochs { .. } => t.max_steps > 0 && state.step >= t.max_steps,
            Schedule::Steps => false,
        }
    }

    /// The metrics record and the progress line of a closed period. `step_loss`: the last
    /// step's training loss.
    fn period_record(
        self,
        state: &TrainState,
        val: &Validation,
        step_loss: f64,
    ) -> (Record, String) {
        match self {
            Schedule::Epochs { .. } => {
                let samples = state.epoch_samples.max(1) as f64;
                let train_loss = state.epoch_loss_sum / samples;
                let train_accuracy = state.epoch_correct as f64 / samples;
                let val_accuracy = val.accuracy.unwrap_or(f64::NAN);
                let line = format!(
                    "epoch {:>3}  step {:>6}  train loss {train_loss:.4} acc {:.2}%  val loss {:.4} acc {:.2}%",
                    state.epoch + 1,
                    state.step,
                    100.0 * train_accuracy,
                    val.loss,
                    100.0 * val_accuracy
                );
                let record = Record::Val {
                    step: state.step,
                    epoch: state.epoch,
                    train_loss,
                    train_accuracy,
                    val_loss: val.loss,
                    val_accuracy,
                };
                (record, line)
            }
            Schedule::Steps => {
                let train_loss = state.last_train_loss.unwrap_or(step_loss);
                let line = format!(
                    "step {:>6}  train loss {train_loss:.4}  val loss {:.4}  perplexity {:.2}",
                    state.step,
                    val.loss,
                    val.loss.exp()
                );
                let record = Record::Eval {
                    step: state.step,
                    train_loss,
                    val_loss: val.loss,
                    val_perplexity: val.loss.exp(),
                };
                (record, line)
            }
        }
    }

    /// Moves past a closed period: with epochs, to the next one.
    fn next_period(self, state: &mut TrainState) {
        if let Schedule::Epochs { .. } = self {
            state.epoch += 1;
            state.next_batch = 0;
            state.epoch_loss_sum = 0.0;
            state.epoch_correct = 0;
            state.epoch_samples = 0;
        }
    }

    /// What `best_epoch` counts: the epoch, or the step.
    fn period_index(self, state: &TrainState) -> usize {
        match self {
            Schedule::Epochs { .. } => state.epoch,
            Schedule::Steps => state.step as usize,
        }
    }

    /// For the early-stopping message.
    fn periods_name(self) -> &'static str {
        match self {
            Schedule::Epochs { .. } => "epochs",
            Schedule::Steps => "evaluations",
        }
    }
}

/// Sums over the current logging window.
#[derive(Default)]
struct Window {
    loss: f64,
    correct: Option<u64>,
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
    let t = &cfg.train;
    let schedule = task.schedule();
    let mut s = Session::start(cfg, opts, run, dist, task)?;
    while !schedule.complete(t, &s.state) && !s.state.finished {
        let step_loss = s.step(task)?;
        let timed_out = dist.out_of_time(s.started, t.max_minutes)?;
        let stop_reason = if s.state.step == t.stop_at {
            Some("(train.stop_at)".to_string())
        } else if timed_out {
            Some(format!("after train.max_minutes = {}", t.max_minutes))
        } else {
            None
        };
        let stop = stop_reason.is_some() || schedule.at_step_limit(t, &s.state);
        if schedule.period_ends(t, &s.state, timed_out) {
            s.close_period(task, step_loss)?;
        } else if stop
            || (t.checkpoint_every > 0 && s.state.step.is_multiple_of(t.checkpoint_every))
        {
            s.checkpoint(task)?;
            if stop {
                // Between validations: score the model as it stands, without a record (the
                // period is not over; `--resume` finishes it).
                s.last_val = task.validate(dist)?;
            }
        }
        if stop {
            s.paused = stop_reason.is_some();
            if let Some(reason) = stop_reason {
                s.tell(format!(
                    "stopped at step {} {reason}; continue with --resume",
                    s.state.step
                ));
            }
            break;
        }
    }
    s.finish(task)
}

/// A training session in progress: the trainer's state and everything around it.
struct Session<'a> {
    cfg: &'a Config,
    run: &'a Path,
    dist: &'a Dist,
    opt: TrainOptimizer,
    state: TrainState,
    log: RunLog,
    bar: ProgressBar,
    schedule: Schedule,
    metric: Metric,
    total_steps: u64,
    window: Window,
    window_start: Instant,
    started: Instant,
    /// The epoch the session started in (epochs run = the difference at the end).
    first_epoch: usize,
    last_val: Validation,
    stopped_early: bool,
    /// Stopped by `train.stop_at` or `train.max_minutes`, to be continued with `--resume`.
    paused: bool,
}

impl<'a> Session<'a> {
    /// A fresh start (the task initialises its weights) or the run's latest checkpoint, the
    /// same on every rank.
    fn start(
        cfg: &'a Config,
        opts: &TrainOptions,
        run: &'a Path,
        dist: &'a Dist,
        task: &mut dyn Task,
    ) -> Result<Self> {
        let mut full_opt = Optimizer::new(cfg.optim.clone());
        let mut state = TrainState::start(cfg.run.seed, None, None);
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
        let opt = dist.optimizer(full_opt, task.model())?;
        task.begin(&state)?;
        let lead = dist.is_lead();
        if lead {
            eprintln!(
                "{} parameters; {}",
                task.model().num_params(),
                crate::backend::describe_matmul_precision()
            );
        }
        let log = RunLog::open(cfg, run, lead, opts.resume.then_some(state.step))?;
        let schedule = task.schedule();
        let total_steps = schedule.total_steps(&cfg.train);
        Ok(Session {
            cfg,
            run,
            dist,
            opt,
            bar: progress_bar(opts.progress && lead, total_steps, state.step),
            log,
            schedule,
            metric: task.metric(),
            total_steps,
            window: Window::default(),
            window_start: Instant::now(),
            started: Instant::now(),
            first_epoch: state.epoch,
            state,
            last_val: Validation {
                loss: f64::NAN,
                accuracy: None,
            },
            stopped_early: false,
            paused: false,
        })
    }

    /// Progress lines are the lead rank's.
    fn tell(&self, line: String) {
        if self.dist.is_lead() {
            say(&self.bar, line)
        }
    }

    /// One optimiser step: the task's forward and backward, the loss summed over the ranks and
    /// checked, the update, the logging window. Returns the step's loss.
    fn step(&mut self, task: &mut dyn Task) -> Result<f64> {
        let mut sums = task.forward_backward(&mut self.state, self.dist)?;
        self.dist.grads_done(task.model())?;
        let mut global = [sums.loss, sums.correct.unwrap_or(0) as f64];
        self.dist.sum_f64(&mut global)?;
        sums.loss = global[0];
        sums.correct = sums.correct.map(|_| global[1] as u64);
        if !sums.loss.is_finite() {
            return Err(non_finite(self.run, "loss", sums.loss, &self.state));
        }
        let (norm, lr) = optimizer_step(
            self.cfg,
            task.model(),
            &mut self.opt,
            self.dist,
            &self.state,
            self.total_steps,
            self.run,
        )?;
        self.state.step += 1;
        self.dist.after_step(self.state.step);
        self.schedule
            .advance(&self.cfg.train, &mut self.state, &sums);
        let w = &mut self.window;
        w.loss += sums.loss;
        w.correct = sums.correct.map(|c| w.correct.unwrap_or(0) + c);
        w.items += sums.items;
        w.grad_norm += norm;
        w.steps += 1;
        let log_every = self.cfg.train.log_every.max(1);
        if self.state.step.is_multiple_of(log_every) || self.schedule.epoch_ends(&self.state) {
            self.close_window(task, lr)?;
        }
        self.bar.set_position(self.state.step);
        Ok(sums.loss)
    }

    /// Writes the logging window's means (a `train` record) and starts the next window.
    fn close_window(&mut self, task: &dyn Task, lr: f64) -> Result<()> {
        let w = std::mem::take(&mut self.window);
        let secs = self.window_start.elapsed().as_secs_f64().max(1e-9);
        self.window_start = Instant::now();
        let loss = w.loss / w.steps as f64;
        let accuracy = w.correct.map(|c| c as f64 / w.items as f64);
        let rate = w.items as f64 / secs;
        self.log.write(&Record::Train {
            step: self.state.step,
            epoch: self.state.epoch,
            loss,
            accuracy,
            lr,
            grad_norm: w.grad_norm / w.steps as f64,
            samples_per_sec: rate,
        })?;
        self.bar.set_message(match accuracy {
            Some(a) => format!(
                "epoch {} loss {loss:.4} acc {:.1}% {rate:.0} {}/s",
                self.state.epoch + 1,
                100.0 * a,
                task.unit()
            ),
            None => format!("loss {loss:.4}  {rate:.0} {}/s", task.unit()),
        });
        self.state.last_train_loss = Some(loss);
        Ok(())
    }

    /// The end of a validation period: validate, record, keep the best model, move to the next
    /// period, stop early when it is time, checkpoint, redraw the curves.
    fn close_period(&mut self, task: &mut dyn Task, step_loss: f64) -> Result<()> {
        let t = &self.cfg.train;
        let val = task.validate(self.dist)?;
        let (record, line) = self.schedule.period_record(&self.state, &val, step_loss);
        self.log.write(&record)?;
        self.tell(line);
        self.last_val = val;
        let value = self.metric.of(&val);
        let state = &mut self.state;
        if self.metric.improves(value, state.best_metric, t.min_delta) {
            state.best_metric = Some(value);
            state.best_epoch = Some(self.schedule.period_index(state));
            state.epochs_without_improvement = 0;
            if self.dist.is_lead() {
                task.save(&self.run.join("best"))?;
            }
        } else {
            state.epochs_without_improvement += 1;
        }
        self.schedule.next_period(state);
        if t.patience > 0 && state.epochs_without_improvement >= t.patience {
            state.finished = true;
            self.stopped_early = true;
            self.tell(format!(
                "early stopping: no improvement of {} in {} {}",
                self.metric.name,
                t.patience,
                self.schedule.periods_name()
            ));
        }
        self.checkpoint(task)?;
        if self.dist.is_lead() {
            super::plot::plot_run(self.run)?;
        }
        Ok(())
    }

    fn checkpoint(&mut self, task: &mut dyn Task) -> Result<()> {
        let keep = self.cfg.train.keep_checkpoints;
        self.dist
            .save_checkpoint(self.run, &self.state, task.model(), &self.opt, keep)
    }

    /// Saves `model/`, scores it on the task's test data when the run has ended, and closes
    /// the data-parallel counters.
    fn finish(mut self, task: &mut dyn Task) -> Result<TrainOutcome> {
        self.bar.finish_and_clear();
        if self.dist.is_lead() {
            task.save(&self.run.join("model"))?;
        }
        let test = if self.paused {
            None
        } else {
            task.test(self.dist)?
        };
        if let Some(t) = &test {
            self.log.write(&Record::Test {
                step: self.state.step,
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
            let dir = t
                .files
                .first()
                .and_then(|f| f.parent())
                .unwrap_or(Path::new("."));
            self.tell(format!(
                "test (final model): loss {:.4} acc {:.2}% on {} samples ({} in {})",
                t.loss,
                100.0 * t.accuracy,
                t.samples,
                names.join(", "),
                dir.display()
            ));
        }
        self.dist.finish(self.run)?;
        Ok(TrainOutcome {
            run_dir: self.run.to_path_buf(),
            steps: self.state.step,
            epochs_run: self.state.epoch - self.first_epoch,
            best_metric: self.state.best_metric,
            best_epoch: self.state.best_epoch,
            last_val_loss: self.last_val.loss,
            last_val_accuracy: self.last_val.accuracy.unwrap_or(f64::NAN),
            stopped_early: self.stopped_early,
            test,
        })
    }
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
