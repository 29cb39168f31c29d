use anyhow::Result;
use largo::sweep::{Event, Status, Sweep, SweepArgs, Trial};
use std::path::PathBuf;

/// Each trial is a normal training run in <run.out_dir>/<sweep>/<trial>/. Running the same
/// command again resumes the sweep: finished trials are not run again.
#[derive(clap::Args)]
pub struct Args {
    /// Base TOML config that every trial starts from.
    #[arg(long)]
    config: PathBuf,
    /// A config key and the values to try, e.g. --grid optim.lr=1e-3,3e-3 or
    /// --grid mlp.hidden=[64],[128,128] (commas inside brackets or quotes do not split).
    /// Repeatable: the trials are every combination.
    #[arg(long = "grid", value_name = "KEY=V1,V2,…")]
    grids: Vec<String>,
    /// Sweep name: its directory under run.out_dir (default: the config's run.name).
    #[arg(long)]
    name: Option<String>,
    /// Random search: try N distinct combinations of the grids, drawn with --seed (all of
    /// them, with a note, when the grids have N or fewer).
    #[arg(long, value_name = "N")]
    random: Option<usize>,
    /// Seed of the --random draw.
    #[arg(long, default_value_t = 0, requires = "random")]
    seed: u64,
    /// Train each trial for at most N optimiser steps (sets train.max_steps).
    #[arg(long, value_name = "N", conflicts_with = "budget_minutes")]
    budget_steps: Option<u64>,
    /// Give each trial at most M minutes of training per session (sets train.max_minutes;
    /// a resumed trial gets M minutes more).
    #[arg(long, value_name = "M")]
    budget_minutes: Option<f64>,
    /// Successive halving: train every trial to a first rung of steps, keep the best 1/eta,
    /// train those eta times further, and so on up to --budget-steps.
    #[arg(long)]
    halving: bool,
    /// Halving rate: the factor between rungs and the share of trials kept (1/eta).
    #[arg(long, default_value_t = 3, requires = "halving")]
    eta: u64,
}

fn rung_label(rung: Option<(usize, u64)>, rungs: usize) -> String {
    match rung {
        Some((k, steps)) => format!("rung {}/{rungs} (step {steps}) ", k + 1),
        None => String::new(),
    }
}

fn result_text(t: &Trial, metric: &str) -> String {
    match (t.status, t.metric) {
        (Status::Failed, _) => format!("FAILED: {}", t.error.as_deref().unwrap_or("")),
        (_, Some(m)) => format!("{metric} {m:.4} at step {}", t.steps),
        (_, None) => "no metric".into(),
    }
}

pub fn run(a: Args) -> Result<()> {
    let mut sweep = Sweep::new(&SweepArgs {
        config: a.config,
        name: a.name,
        grids: a.grids,
        random: a.random,
        seed: a.seed,
        budget_steps: a.budget_steps,
        budget_minutes: a.budget_minutes,
        halving: a.halving,
        eta: a.eta,
    })?;
    for note in &sweep.notes {
        eprintln!("note: {note}");
    }
    let metric = sweep.state.metric.clone();
    let rungs = sweep.state.rungs.clone();
    let n = sweep.state.trials.len();
    eprintln!(
        "sweep {}: {n} trials  →  {}{}",
        sweep.name,
        sweep.dir.display(),
        if rungs.is_empty() {
            String::new()
        } else {
            format!("  (successive halving, rungs at steps {rungs:?})")
        }
    );
    let summary = sweep.run(&mut |event| match event {
        Event::Skipped(t) => eprintln!(
            "{}  {}  already {}: {}",
            t.name,
            t.overrides.join(" "),
            t.status.as_str(),
            result_text(t, &metric)
        ),
        Event::Started { trial, rung } => eprintln!(
            "── {} {}{}",
            trial.name,
            rung_label(rung, rungs.len()),
            trial.overrides.join(" ")
        ),
        Event::Finished {
            trial,
            rung,
            session_seconds,
        } => eprintln!(
            "{} {}{}  {}  ({session_seconds:.1} s)",
            trial.name,
            rung_label(rung, rungs.len()),
            trial.overrides.join(" "),
            result_text(trial, &metric)
        ),
        Event::Promoted {
            rung,
            steps,
            kept,
            pruned,
        } => eprintln!(
            "rung {}/{} (step {steps}): kept {} [{}], pruned {}",
            rung + 1,
            rungs.len(),
            kept.len(),
            kept.join(" "),
            pruned.len()
        ),
    })?;

    let md = sweep.leaderboard_markdown();
    if n <= 30 {
        println!("\n{md}");
    }
    println!(
        "{n} trials: {} done, {} pruned, {} failed",
        summary.done, summary.pruned, summary.failed
    );
    println!(
        "leaderboard: {} (and {})",
        summary.leaderboard_md.display(),
        summary.leaderboard_csv.display()
    );
    match (&summary.best, &summary.best_toml) {
        (Some(best), Some(toml)) => {
            println!(
                "best: {}  {}  {metric} {}",
                best.name,
                best.overrides.join(" "),
                best.metric.map_or_else(String::new, |m| format!("{m:.4}"))
            );
            println!("next: largo train --config {}", toml.display());
        }
        _ => println!("no trial finished"),
    }
    if summary.done == 0 {
        anyhow::bail!(
            "no trial finished ({} failed, {} pruned); see {}",
            summary.failed,
            summary.pruned,
            summary.leaderboard_md.display()
        );
    }
    Ok(())
}
