//! Hyper-parameter sweeps: ordinary training runs over a grid of config values (or a seeded
//! random sample of it), optionally pruned by successive halving, resumable from `sweep.json`.
//!
//! A sweep lives in `<run.out_dir>/<sweep name>/`: `sweep.json` (the plan and every trial's
//! state), `leaderboard.csv`, `leaderboard.md`, `best.toml` and one run directory per trial
//! (`t000`, `t001`, …), each a normal run that `largo eval` or `largo train --resume` accepts.
//!
//! Trials are ranked by `train.metric` as it stands when their run (or rung) ends, not by the
//! run's best epoch: every trial is then judged at the same budget, mid-epoch stops (which never
//! update the best epoch) count, and the score is that of the model `best.toml` trains to.

use crate::config::Config;
use crate::rng::Rng;
use crate::train::checkpoint::{self, TrainState};
use crate::train::metrics::{read_records, Record};
use crate::train::{self, TrainOptions};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

const STATE_FILE: &str = "sweep.json";
const STATE_VERSION: u32 = 1;

/// What the command line asked for.
#[derive(Clone, Debug)]
pub struct SweepArgs {
    /// The base config every trial starts from.
    pub config: PathBuf,
    /// The sweep's directory name under `run.out_dir` (default: the config's `run.name`).
    pub name: Option<String>,
    /// `key=v1,v2,…`, one per swept key.
    pub grids: Vec<String>,
    /// Random search: this many distinct combinations instead of all of them.
    pub random: Option<usize>,
    pub seed: u64,
    /// Each trial's `train.max_steps`.
    pub budget_steps: Option<u64>,
    /// Each trial's `train.max_minutes` (per training session).
    pub budget_minutes: Option<f64>,
    pub halving: bool,
    /// Successive halving keeps the best 1/eta of the trials at each rung.
    pub eta: u64,
}

/// One swept key and the values to try, as written (each a TOML literal or a bare string).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grid {
    pub key: String,
    pub values: Vec<String>,
}

impl Grid {
    /// Parses `key=v1,v2,…`; commas inside brackets, braces or quotes do not split, so
    /// `mlp.hidden=[64],[128,128]` is two values.
    pub fn parse(spec: &str) -> Result<Grid> {
        let Some((key, list)) = spec.split_once('=') else {
            return Err(invalid(format!(
                "--grid {spec}: expected KEY=V1,V2,…, e.g. --grid optim.lr=1e-3,3e-3"
            )));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(invalid(format!("--grid {spec}: no key before `=`")));
        }
        if list.trim().is_empty() {
            return Err(invalid(format!("--grid {key}=: no values")));
        }
        let values = split_top_level(list).map_err(|e| invalid(format!("--grid {spec}: {e}")))?;
        if let Some(i) = values.iter().position(String::is_empty) {
            return Err(invalid(format!(
                "--grid {spec}: value {} of {} is empty",
                i + 1,
                values.len()
            )));
        }
        for (i, v) in values.iter().enumerate() {
            if values[..i].contains(v) {
                return Err(invalid(format!("--grid {spec}: {v} is listed twice")));
            }
        }
        Ok(Grid {
            key: key.to_string(),
            values,
        })
    }
}

/// Splits on commas outside brackets, braces and quotes, and trims each piece.
fn split_top_level(s: &str) -> std::result::Result<Vec<String>, String> {
    let (mut out, mut cur) = (Vec::new(), String::new());
    let mut closers: Vec<char> = Vec::new();
    let (mut quote, mut escaped) = (None::<char>, false);
    for c in s.chars() {
        if let Some(q) = quote {
            cur.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' && q == '"' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '[' => closers.push(']'),
            '{' => closers.push('}'),
            ']' | '}' if closers.pop() != Some(c) => return Err(format!("unbalanced `{c}`")),
            ',' if closers.is_empty() => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if let Some(q) = quote {
        return Err(format!("unclosed quote {q}"));
    }
    if let Some(c) = closers.last() {
        return Err(format!("missing `{c}`"));
    }
    out.push(cur.trim().to_string());
    Ok(out)
}

/// The number of combinations of the grids' values.
pub fn product_size(grids: &[Grid]) -> Result<usize> {
    grids
        .iter()
        .try_fold(1usize, |n, g| n.checked_mul(g.values.len()))
        .ok_or_else(|| invalid("the grids have more combinations than can be counted".into()))
}

/// The value index per grid of combination `index`; the first grid varies slowest.
pub fn combination(grids: &[Grid], mut index: usize) -> Vec<usize> {
    let mut picks = vec![0; grids.len()];
    for (pick, g) in picks.iter_mut().zip(grids).rev() {
        *pick = index % g.values.len();
        index /= g.values.len();
    }
    picks
}

/// `n` (≤ `total`) distinct indices below `total`, in increasing order, by Floyd's algorithm:
/// exactly `n` draws, whatever the size of the product.
pub fn sample_indices(total: usize, n: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed);
    let mut chosen = BTreeSet::new();
    for j in total - n.min(total)..total {
        let t = rng.below(j + 1);
        if !chosen.insert(t) {
            chosen.insert(j);
        }
    }
    chosen.into_iter().collect()
}

/// Successive-halving rungs for `n` trials and a budget of `budget` steps: budget/η^k, …,
/// budget/η, budget, with k = ⌊log_η n⌋ promotions, fewer when the first rung would get no step.
pub fn halving_rungs(n: usize, budget: u64, eta: u64) -> Vec<u64> {
    let mut k = 0u32;
    while let Some(p) = eta.checked_pow(k + 1) {
        if p as u128 > n as u128 || p > budget {
            break;
        }
        k += 1;
    }
    (0..=k).rev().map(|j| budget / eta.pow(j)).collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Running,
    Done,
    Failed,
    Pruned,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Done => "done",
            Status::Failed => "failed",
            Status::Pruned => "pruned",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    pub name: String,
    /// `key=value` per grid, in grid order.
    pub overrides: Vec<String>,
    pub status: Status,
    pub metric: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub steps: u64,
    /// Training time over all of the trial's sessions.
    pub seconds: f64,
    pub error: Option<String>,
    /// Successive halving: the metric at the end of each rung the trial reached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rung_metrics: Vec<f64>,
}

impl Trial {
    /// The value this trial gives the grid's key `g` (the text after `=`).
    pub fn value(&self, g: usize) -> &str {
        self.overrides[g].split_once('=').map_or("", |(_, v)| v)
    }
}

/// What a sweep was asked to do; resuming it must ask the same.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The base config, as an absolute path.
    pub config: PathBuf,
    pub grids: Vec<Grid>,
    pub random: Option<usize>,
    pub seed: Option<u64>,
    pub budget_steps: Option<u64>,
    pub budget_minutes: Option<f64>,
    pub halving: bool,
    pub eta: Option<u64>,
}

/// `sweep.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SweepState {
    pub version: u32,
    pub name: String,
    pub plan: Plan,
    pub metric: String,
    /// Successive halving: the step each rung ends at, and the rung in progress.
    #[serde(default)]
    pub rungs: Vec<u64>,
    #[serde(default)]
    pub rung: usize,
    pub trials: Vec<Trial>,
}

/// Progress reports, for the caller to print.
pub enum Event<'a> {
    /// Finished, failed or pruned by an earlier invocation: not run again.
    Skipped(&'a Trial),
    /// A training session begins; `rung` is (index, step it ends at) under successive halving.
    Started {
        trial: &'a Trial,
        rung: Option<(usize, u64)>,
    },
    Finished {
        trial: &'a Trial,
        rung: Option<(usize, u64)>,
        session_seconds: f64,
    },
    /// Successive halving ranked the trials at the end of rung `rung`.
    Promoted {
        rung: usize,
        steps: u64,
        kept: Vec<String>,
        pruned: Vec<String>,
    },
}

pub struct Summary {
    pub dir: PathBuf,
    pub leaderboard_csv: PathBuf,
    pub leaderboard_md: PathBuf,
    pub best: Option<Trial>,
    pub best_toml: Option<PathBuf>,
    pub done: usize,
    pub failed: usize,
    pub pruned: usize,
}

pub struct Sweep {
    pub name: String,
    pub dir: PathBuf,
    pub state: SweepState,
    /// How the request was read, where that is worth saying (e.g. a clamped `--random`).
    pub notes: Vec<String>,
    /// The base config as loaded, for `best.toml`'s `run.out_dir`.
    base: Config,
    /// Each trial's resolved config, in the order of `state.trials`.
    configs: Vec<Config>,
}

fn invalid(msg: String) -> Error {
    Error::Invalid(msg)
}

/// Rewrites a config error about a grid value so that it names the `--grid` it came from.
fn grid_error(what: &str, e: Error) -> Error {
    let msg = match e {
        Error::Config(m) => m.strip_prefix("--set: ").map(str::to_string).unwrap_or(m),
        other => other.to_string(),
    };
    invalid(format!("--grid {what}: {msg}"))
}

/// Whether `key` names a value (not a section) of the config schema.
fn is_config_key(key: &str) -> bool {
    let schema = crate::config::schema();
    let mut node = &schema;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        match node.get(*part) {
            Some(toml::Value::Table(t)) if i + 1 < parts.len() => node = t,
            Some(v) if i + 1 == parts.len() => return !v.is_table(),
            _ => return false,
        }
    }
    false
}

impl Sweep {
    /// Checks every option, key and value and builds every trial's config, or loads the saved
    /// state of the same sweep; creates nothing on disk.
    pub fn new(args: &SweepArgs) -> Result<Sweep> {
        if args.grids.is_empty() {
            return Err(invalid(
                "no --grid given: name at least one key to sweep, e.g. --grid optim.lr=1e-3,3e-3"
                    .into(),
            ));
        }
        if args.random == Some(0) {
            return Err(invalid("--random must be at least 1".into()));
        }
        if args.budget_steps.is_some() && args.budget_minutes.is_some() {
            return Err(invalid(
                "give --budget-steps or --budget-minutes, not both".into(),
            ));
        }
        if args.budget_steps == Some(0) {
            return Err(invalid("--budget-steps must be at least 1".into()));
        }
        if let Some(m) = args.budget_minutes {
            if !(m.is_finite() && m > 0.0) {
                return Err(invalid(format!(
                    "--budget-minutes {m}: expected a number of minutes > 0"
                )));
            }
        }
        if args.halving && args.budget_steps.is_none() {
            return Err(invalid(
                "--halving needs --budget-steps: the steps a trial that survives every rung trains for"
                    .into(),
            ));
        }
        if args.halving && args.eta < 2 {
            return Err(invalid(format!("--eta {}: must be at least 2", args.eta)));
        }

        let grids = args
            .grids
            .iter()
            .map(|g| Grid::parse(g))
            .collect::<Result<Vec<_>>>()?;
        for (i, g) in grids.iter().enumerate() {
            if grids[..i].iter().any(|h| h.key == g.key) {
                return Err(invalid(format!(
                    "--grid {} is given twice: list all its values in one --grid",
                    g.key
                )));
            }
            let set_by_sweep = match g.key.as_str() {
                "run.name" | "run.out_dir" => Some("the sweep names each trial t000, t001, … and keeps it in the sweep directory; name the sweep with --name"),
                "train.max_steps" if args.budget_steps.is_some() => Some("--budget-steps sets it"),
                "train.max_minutes" if args.budget_minutes.is_some() => Some("--budget-minutes sets it"),
                "train.stop_at" if args.halving => Some("--halving sets it at each rung"),
                _ => None,
            };
            if let Some(why) = set_by_sweep {
                return Err(invalid(format!("--grid {}: cannot be swept: {why}", g.key)));
            }
        }

        let base = Config::load(Some(&args.config), &[])?;
        for g in &grids {
            if !is_config_key(&g.key) {
                // The config's own check names the key and suggests the nearest one.
                let e = Config::load(None, &[format!("{}=0", g.key)])
                    .err()
                    .unwrap_or_else(|| Error::Config(format!("unknown key `{}`", g.key)));
                return Err(grid_error(&g.key, e));
            }
            for v in &g.values {
                let kv = format!("{}={v}", g.key);
                Config::load(Some(&args.config), std::slice::from_ref(&kv))
                    .map_err(|e| grid_error(&kv, e))?;
            }
        }

        let name = args.name.clone().unwrap_or_else(|| base.run.name.clone());
        if name.is_empty() || name.contains(['/', '\\']) || name == ".." || name == "." {
            return Err(invalid(format!(
                "sweep name {name:?} must be a plain directory name"
            )));
        }
        let dir = Path::new(&base.run.out_dir).join(&name);

        let total = product_size(&grids)?;
        let mut notes = Vec::new();
        let picks: Vec<usize> = match args.random {
            Some(n) if n < total => sample_indices(total, n, args.seed),
            Some(n) => {
                notes.push(format!(
                    "--random {n}: the grids give only {total} combination{}; trying {}",
                    if total == 1 { "" } else { "s" },
                    if total == 1 { "it" } else { "them all" }
                ));
                (0..total).collect()
            }
            None => (0..total).collect(),
        };
        let mut trials = Vec::with_capacity(picks.len());
        let mut configs = Vec::with_capacity(picks.len());
        for (t, &index) in picks.iter().enumerate() {
            let name = format!("t{t:03}");
            let overrides: Vec<String> = combination(&grids, index)
                .iter()
                .zip(&grids)
                .map(|(&v, g)| format!("{}={}", g.key, g.values[v]))
                .collect();
            let mut cfg = Config::load(Some(&args.config), &overrides)
                .map_err(|e| invalid(format!("trial {name} ({}): {e}", overrides.join(" "))))?;
            cfg.run.out_dir = dir.to_string_lossy().into_owned();
            cfg.run.name = name.clone();
            if let Some(steps) = args.budget_steps {
                cfg.train.max_steps = steps;
            }
            if let Some(minutes) = args.budget_minutes {
                cfg.train.max_minutes = minutes;
            }
            if args.halving {
                cfg.train.stop_at = 0;
            }
            cfg.validate()?;
            if cfg.is_lm() && cfg.train.metric == "val_accuracy" {
                return Err(invalid(format!(
                    "trial {name}: language models report no val_accuracy; sweep with train.metric = \"val_loss\""
                )));
            }
            configs.push(cfg);
            trials.push(Trial {
                name,
                overrides,
                status: Status::Pending,
                metric: None,
                val_loss: None,
                val_accuracy: None,
                steps: 0,
                seconds: 0.0,
                error: None,
                rung_metrics: Vec::new(),
            });
        }

        let config_path =
            std::fs::canonicalize(&args.config).map_err(|e| Error::io(&args.config, e))?;
        let plan = Plan {
            config: config_path,
            grids,
            random: args.random,
            seed: args.random.map(|_| args.seed),
            budget_steps: args.budget_steps,
            budget_minutes: args.budget_minutes,
            halving: args.halving,
            eta: args.halving.then_some(args.eta),
        };
        let rungs = match (args.halving, args.budget_steps) {
            (true, Some(b)) => halving_rungs(trials.len(), b, args.eta),
            _ => Vec::new(),
        };
        // A language model validates only every `eval_every` steps (and at its end), and
        // `stop_at` does not validate: a rung between evaluations would have no score.
        let inner_rungs = &rungs[..rungs.len().saturating_sub(1)];
        for cfg in configs.iter().filter(|c| c.is_lm()) {
            let every = cfg.train.eval_every;
            if let Some(r) = inner_rungs.iter().find(|&&r| every == 0 || r % every != 0) {
                return Err(invalid(format!(
                    "--halving: trial {} is a language model, scored when it evaluates (train.eval_every = {every}), but the rung at step {r} falls between evaluations; rungs are at steps {rungs:?}: set train.eval_every to a divisor of each",
                    cfg.run.name
                )));
            }
        }
        let state_path = dir.join(STATE_FILE);
        let state = if state_path.is_file() {
            let text =
                std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
            let saved: SweepState = serde_json::from_str(&text)
                .map_err(|e| Error::format(&state_path, e.to_string()))?;
            let same_trials = saved.trials.len() == trials.len()
                && saved
                    .trials
                    .iter()
                    .zip(&trials)
                    .all(|(s, t)| s.name == t.name && s.overrides == t.overrides);
            if saved.plan != plan || !same_trials || saved.rungs != rungs {
                return Err(invalid(format!(
                    "{} holds a different sweep (other config, grids or options); resume it with the command that started it, or choose another --name",
                    dir.display()
                )));
            }
            saved
        } else {
            let occupied = std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some());
            if occupied {
                return Err(invalid(format!(
                    "{} exists and is not a sweep (no {STATE_FILE}); choose another --name",
                    dir.display()
                )));
            }
            SweepState {
                version: STATE_VERSION,
                name: name.clone(),
                plan,
                metric: base.train.metric.clone(),
                rungs,
                rung: 0,
                trials,
            }
        };
        Ok(Sweep {
            name,
            dir,
            state,
            notes,
            base,
            configs,
        })
    }

    /// Runs every trial not yet finished, saving the state and the leaderboard after each.
    pub fn run(&mut self, on: &mut dyn FnMut(Event)) -> Result<Summary> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        self.save()?;
        for t in &self.state.trials {
            if matches!(t.status, Status::Done | Status::Failed | Status::Pruned) {
                on(Event::Skipped(t));
            }
        }
        if self.state.plan.halving {
            self.run_halving(on)?;
        } else {
            for i in 0..self.state.trials.len() {
                if matches!(
                    self.state.trials[i].status,
                    Status::Pending | Status::Running
                ) {
                    self.run_session(i, None, on)?;
                }
            }
        }
        self.write_reports()
    }

    fn run_halving(&mut self, on: &mut dyn FnMut(Event)) -> Result<()> {
        let rungs = self.state.rungs.clone();
        let eta = self.state.plan.eta.unwrap_or(3) as usize;
        for k in self.state.rung..rungs.len() {
            for i in 0..self.state.trials.len() {
                let t = &self.state.trials[i];
                if matches!(t.status, Status::Pending | Status::Running)
                    && t.rung_metrics.len() <= k
                {
                    self.run_session(i, Some((k, rungs[k])), on)?;
                }
            }
            if k + 1 == rungs.len() {
                break;
            }
            let mut alive: Vec<usize> = (0..self.state.trials.len())
                .filter(|&i| self.state.trials[i].status == Status::Running)
                .collect();
            let higher = self.higher_is_better();
            alive.sort_by(|&a, &b| {
                let (ma, mb) = (
                    self.state.trials[a].rung_metrics[k],
                    self.state.trials[b].rung_metrics[k],
                );
                compare_metric(ma, mb, higher).then(a.cmp(&b))
            });
            let keep = alive.len().div_ceil(eta);
            for &i in &alive[keep..] {
                self.state.trials[i].status = Status::Pruned;
            }
            self.state.rung = k + 1;
            self.save()?;
            self.write_reports()?;
            let names = |ix: &[usize]| -> Vec<String> {
                ix.iter()
                    .map(|&i| self.state.trials[i].name.clone())
                    .collect()
            };
            on(Event::Promoted {
                rung: k,
                steps: rungs[k],
                kept: names(&alive[..keep]),
                pruned: names(&alive[keep..]),
            });
        }
        Ok(())
    }

    /// One training session of trial `i`: to the end of its run, or to the end of `rung`.
    fn run_session(
        &mut self,
        i: usize,
        rung: Option<(usize, u64)>,
        on: &mut dyn FnMut(Event),
    ) -> Result<()> {
        self.state.trials[i].status = Status::Running;
        self.save()?;
        on(Event::Started {
            trial: &self.state.trials[i],
            rung,
        });
        let last_rung = rung.is_none_or(|(k, _)| k + 1 == self.state.rungs.len());
        let stop_at = if last_rung {
            0
        } else {
            rung.map_or(0, |r| r.1)
        };
        let start = Instant::now();
        let result = train_session(&self.configs[i], stop_at);
        let secs = start.elapsed().as_secs_f64();
        let metric_name = self.state.metric.clone();
        let t = &mut self.state.trials[i];
        t.seconds += secs;
        match result {
            Ok(r) => {
                let finite = |x: f64| x.is_finite().then_some(x);
                t.steps = r.steps;
                t.val_loss = finite(r.val_loss);
                t.val_accuracy = finite(r.val_accuracy);
                t.metric = if metric_name == "val_loss" {
                    t.val_loss
                } else {
                    t.val_accuracy
                };
                match t.metric {
                    Some(m) => {
                        if rung.is_some() {
                            t.rung_metrics.push(m);
                        }
                        t.error = None;
                        if last_rung {
                            t.status = Status::Done;
                        }
                    }
                    None => {
                        t.status = Status::Failed;
                        t.error = Some(format!("training ended without a finite {metric_name}"));
                    }
                }
            }
            Err(e) => {
                t.status = Status::Failed;
                t.error = Some(e);
            }
        }
        self.save()?;
        self.write_reports()?;
        on(Event::Finished {
            trial: &self.state.trials[i],
            rung,
            session_seconds: secs,
        });
        Ok(())
    }

    fn save(&self) -> Result<()> {
        let json = serde_json::to_string_pretty(&self.state)
            .map_err(|e| invalid(format!("cannot serialise the sweep state: {e}")))?;
        crate::io::write_atomic(&self.dir.join(STATE_FILE), json.as_bytes())
    }

    pub fn higher_is_better(&self) -> bool {
        self.state.metric == "val_accuracy"
    }

    /// Trial indices, best first: finished trials by metric, then those still in the race,
    /// then the pruned (the later their rung, the higher), the pending and the failed.
    pub fn ranking(&self) -> Vec<usize> {
        let higher = self.higher_is_better();
        let group = |t: &Trial| match t.status {
            Status::Done => 0,
            Status::Running => 1,
            Status::Pruned => 2,
            Status::Pending => 3,
            Status::Failed => 4,
        };
        let mut order: Vec<usize> = (0..self.state.trials.len()).collect();
        order.sort_by(|&a, &b| {
            let (ta, tb) = (&self.state.trials[a], &self.state.trials[b]);
            group(ta)
                .cmp(&group(tb))
                .then(tb.rung_metrics.len().cmp(&ta.rung_metrics.len()))
                .then(match (ta.metric, tb.metric) {
                    (Some(x), Some(y)) => compare_metric(x, y, higher),
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (None, None) => Ordering::Equal,
                })
                .then(a.cmp(&b))
        });
        order
    }

    /// The leaderboard as rows of cells, header first.
    fn table(&self, precise: bool) -> Vec<Vec<String>> {
        let mut header: Vec<String> = ["rank", "trial", "status"].map(String::from).to_vec();
        header.extend(self.state.plan.grids.iter().map(|g| g.key.clone()));
        header.extend(
            [
                "metric",
                "val_loss",
                "val_accuracy",
                "steps",
                "seconds",
                "error",
            ]
            .map(String::from),
        );
        let num = |x: Option<f64>| match x {
            Some(x) if precise => format!("{x}"),
            Some(x) => format!("{x:.4}"),
            None => String::new(),
        };
        let mut rows = vec![header];
        for (rank, &i) in self.ranking().iter().enumerate() {
            let t = &self.state.trials[i];
            let mut row = vec![
                (rank + 1).to_string(),
                t.name.clone(),
                t.status.as_str().to_string(),
            ];
            row.extend((0..t.overrides.len()).map(|g| t.value(g).to_string()));
            row.extend([
                num(t.metric),
                num(t.val_loss),
                num(t.val_accuracy),
                t.steps.to_string(),
                if precise {
                    format!("{:.3}", t.seconds)
                } else {
                    format!("{:.1}", t.seconds)
                },
                t.error.clone().unwrap_or_default(),
            ]);
            rows.push(row);
        }
        rows
    }

    pub fn leaderboard_csv(&self) -> String {
        let mut out = String::new();
        for row in self.table(true) {
            let cells: Vec<String> = row.iter().map(|c| csv_field(c)).collect();
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        out
    }

    pub fn leaderboard_markdown(&self) -> String {
        let direction = if self.higher_is_better() {
            "higher is better"
        } else {
            "lower is better"
        };
        let mut out = format!(
            "# Sweep `{}`\n\nmetric: {} ({direction}); {} trials\n\n",
            self.name,
            self.state.metric,
            self.state.trials.len()
        );
        let rows = self.table(false);
        for (r, row) in rows.iter().enumerate() {
            let cells: Vec<String> = row.iter().map(|c| md_cell(c)).collect();
            out.push_str(&format!("| {} |\n", cells.join(" | ")));
            if r == 0 {
                out.push_str(&format!("|{}\n", "---|".repeat(row.len())));
            }
        }
        out
    }

    /// The best finished trial, if any.
    pub fn best(&self) -> Option<usize> {
        self.ranking()
            .into_iter()
            .next()
            .filter(|&i| self.state.trials[i].status == Status::Done)
    }

    fn write_reports(&self) -> Result<Summary> {
        let csv = self.dir.join("leaderboard.csv");
        let md = self.dir.join("leaderboard.md");
        crate::io::write_atomic(&csv, self.leaderboard_csv().as_bytes())?;
        crate::io::write_atomic(&md, self.leaderboard_markdown().as_bytes())?;
        let best = self.best();
        let mut best_toml = None;
        if let Some(i) = best {
            let t = &self.state.trials[i];
            let mut cfg = self.configs[i].clone();
            cfg.run.out_dir = self.base.run.out_dir.clone();
            cfg.run.name = format!("{}-best", self.name);
            let path = self.dir.join("best.toml");
            let text = format!(
                "# Best trial of sweep `{}` ({}): {} with {} = {} after {} steps.\n# Swept values: {}\n# Train it: largo train --config {}\n\n{}",
                self.name,
                self.dir.display(),
                t.name,
                self.state.metric,
                t.metric.map_or_else(String::new, |m| format!("{m:.4}")),
                t.steps,
                t.overrides.join(" "),
                path.display(),
                cfg.to_toml()
            );
            crate::io::write_atomic(&path, text.as_bytes())?;
            best_toml = Some(path);
        }
        let count = |s: Status| self.state.trials.iter().filter(|t| t.status == s).count();
        Ok(Summary {
            dir: self.dir.clone(),
            leaderboard_csv: csv,
            leaderboard_md: md,
            best: best.map(|i| self.state.trials[i].clone()),
            best_toml,
            done: count(Status::Done),
            failed: count(Status::Failed),
            pruned: count(Status::Pruned),
        })
    }
}

/// Best first.
fn compare_metric(a: f64, b: f64, higher_is_better: bool) -> Ordering {
    if higher_is_better {
        b.total_cmp(&a)
    } else {
        a.total_cmp(&b)
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// Where a training session ended.
struct Reached {
    steps: u64,
    val_loss: f64,
    val_accuracy: f64,
}

/// Whether a run whose latest checkpoint is `state` has nothing left to do in a session that
/// ends at `stop_at` (0: at the end of the run).
fn session_over(cfg: &Config, state: &TrainState, stop_at: u64) -> bool {
    let t = &cfg.train;
    let run_over = if cfg.is_lm() {
        state.step >= t.max_steps
    } else {
        state.epoch >= t.epochs || (t.max_steps > 0 && state.step >= t.max_steps)
    };
    state.finished || run_over || (stop_at > 0 && state.step >= stop_at)
}

/// The last validation logged at a step that `accept`s: (loss, accuracy; NaN for LMs).
fn logged_validation(run: &Path, accept: impl Fn(u64) -> bool) -> Option<(f64, f64)> {
    let records = read_records(&run.join("metrics.jsonl")).ok()?;
    records.iter().rev().find_map(|r| match *r {
        Record::Val {
            step,
            val_loss,
            val_accuracy,
            ..
        } if accept(step) => Some((val_loss, val_accuracy)),
        Record::Eval { step, val_loss, .. } if accept(step) => Some((val_loss, f64::NAN)),
        _ => None,
    })
}

/// Trains `cfg`'s run up to `stop_at` (0: to its end). A run directory left by an interrupted
/// sweep is resumed from its checkpoint, or, without one, started over.
fn train_session(cfg: &Config, stop_at: u64) -> std::result::Result<Reached, String> {
    let mut cfg = cfg.clone();
    cfg.train.stop_at = stop_at;
    let run = train::run_dir(&cfg);
    let resume = match checkpoint::latest(&run) {
        Ok((_, state)) if session_over(&cfg, &state, stop_at) => {
            // The session ended but the sweep was stopped before recording it. Resuming would
            // train past `stop_at` (it stops only on reaching it), so use the logged
            // validation, or start over when that step has none (a mid-epoch stop).
            if let Some((val_loss, val_accuracy)) = logged_validation(&run, |s| s == state.step) {
                return Ok(Reached {
                    steps: state.step,
                    val_loss,
                    val_accuracy,
                });
            }
            false
        }
        Ok(_) => true,
        Err(_) => false,
    };
    if !resume && run.exists() {
        std::fs::remove_dir_all(&run).map_err(|e| Error::io(&run, e).to_string())?;
    }
    let opts = TrainOptions {
        resume,
        progress: false,
    };
    let out = match catch_unwind(AssertUnwindSafe(|| train::train(&cfg, &opts))) {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            return Err(format!("training panicked: {msg}"));
        }
    };
    let (mut val_loss, mut val_accuracy) = (out.last_val_loss, out.last_val_accuracy);
    if !val_loss.is_finite() {
        // A session with no step left to train reports no validation; the log has the last.
        if let Some(v) = logged_validation(&run, |s| s == out.steps) {
            (val_loss, val_accuracy) = v;
        }
    }
    Ok(Reached {
        steps: out.steps,
        val_loss,
        val_accuracy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(spec: &str) -> Grid {
        Grid::parse(spec).unwrap()
    }

    fn err(spec: &str) -> String {
        Grid::parse(spec).unwrap_err().to_string()
    }

    #[test]
    fn grids_split_on_top_level_commas_only() {
        let g = grid("optim.lr= 1e-3 , 3e-3,0.01");
        assert_eq!(g.key, "optim.lr");
        assert_eq!(g.values, ["1e-3", "3e-3", "0.01"]);
        let g = grid("mlp.hidden=[64],[256],[128,128]");
        assert_eq!(g.values, ["[64]", "[256]", "[128,128]"]);
        let g = grid(r#"optim.kind="adamw",'s,gd',"a\",b",sgd"#);
        assert_eq!(g.values, [r#""adamw""#, "'s,gd'", r#""a\",b""#, "sgd"]);
        let g = grid("x.y={a = [1, 2]},{b = 3}");
        assert_eq!(g.values, ["{a = [1, 2]}", "{b = 3}"]);
    }

    #[test]
    fn bad_grids_say_what_is_wrong() {
        assert!(err("optim.lr").contains("expected KEY=V1,V2"));
        assert!(err("=1,2").contains("no key"));
        assert_eq!(err("optim.lr="), "--grid optim.lr=: no values");
        assert_eq!(err("optim.lr=  "), "--grid optim.lr=: no values");
        assert!(err("optim.lr=0.1,,0.2").contains("value 2 of 3 is empty"));
        assert!(err("optim.lr=0.1,").contains("value 2 of 2 is empty"));
        assert!(err("optim.lr=0.1,0.1").contains("0.1 is listed twice"));
        assert!(err("mlp.hidden=[64").contains("missing `]`"));
        assert!(err("mlp.hidden=64]").contains("unbalanced `]`"));
        assert!(err("optim.kind=\"adamw").contains("unclosed quote"));
    }

    #[test]
    fn product_order_varies_the_first_grid_slowest() {
        let grids = [grid("a=1,2"), grid("b=x,y,z")];
        assert_eq!(product_size(&grids).unwrap(), 6);
        let all: Vec<Vec<usize>> = (0..6).map(|i| combination(&grids, i)).collect();
        assert_eq!(
            all,
            [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]].map(Vec::from)
        );
        let huge: Vec<Grid> = (0..70).map(|i| grid(&format!("k{i}=1,2"))).collect();
        assert!(product_size(&huge).is_err());
    }

    #[test]
    fn random_samples_are_distinct_seeded_and_in_range() {
        let a = sample_indices(1000, 20, 7);
        assert_eq!(a.len(), 20);
        assert!(a.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
        assert!(a.iter().all(|&i| i < 1000));
        assert_eq!(a, sample_indices(1000, 20, 7));
        assert_ne!(a, sample_indices(1000, 20, 8));
        assert_eq!(sample_indices(5, 5, 1), [0, 1, 2, 3, 4]);
        assert_eq!(sample_indices(5, 9, 1), [0, 1, 2, 3, 4]);
        // Every index can be drawn.
        let mut seen = BTreeSet::new();
        for seed in 0..200 {
            seen.extend(sample_indices(10, 2, seed));
        }
        assert_eq!(seen.len(), 10);
    }

    #[test]
    fn halving_rungs_follow_eta_and_the_budget() {
        assert_eq!(halving_rungs(9, 9, 3), [1, 3, 9]);
        assert_eq!(halving_rungs(9, 10, 3), [1, 3, 10]);
        assert_eq!(halving_rungs(27, 270, 3), [10, 30, 90, 270]);
        // 8 trials: ⌊log3 8⌋ = 1 promotion.
        assert_eq!(halving_rungs(8, 90, 3), [30, 90]);
        // A budget too small for more rungs: the first gets at least a step.
        assert_eq!(halving_rungs(27, 5, 3), [1, 5]);
        assert_eq!(halving_rungs(1, 100, 3), [100]);
        assert_eq!(halving_rungs(16, 64, 2), [4, 8, 16, 32, 64]);
        assert_eq!(halving_rungs(usize::MAX, u64::MAX, 2).len(), 64);
    }

    #[test]
    fn config_keys_are_leaves_of_the_schema() {
        assert!(is_config_key("optim.lr"));
        assert!(is_config_key("mlp.hidden"));
        assert!(!is_config_key("optim"));
        assert!(!is_config_key("optim.lrr"));
        assert!(!is_config_key("optim.lr.x"));
    }

    #[test]
    fn csv_and_markdown_cells_are_escaped() {
        assert_eq!(csv_field("[128,128]"), "\"[128,128]\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("0.1"), "0.1");
        assert_eq!(md_cell("a|b\nc"), "a\\|b c");
    }
}
