//! The report of a sweep (`largo sweep`): the plan, the leaderboard, each hyper-parameter
//! against the metric, every trial's validation curve and the best trial's config.

use super::charts::{self, LineChart, Mark, Series, TrialPoint, XAxis, VAL_COLOR};
use super::html::{self, Page, Section};
use super::run::RunStats;
use crate::sweep::{Grid, Status, SweepState, Trial};
use crate::train::metrics::read_records;
use crate::{Error, Result};
use plotters::style::{Color, Palette, Palette99, RGBColor};
use std::path::Path;

pub const STATE_FILE: &str = "sweep.json";
const LEADERBOARD_CSV: &str = "leaderboard.csv";
const BEST_TOML: &str = "best.toml";
/// More curves than this on one chart are a tangle; the best ones are drawn.
const MAX_CURVES: usize = 12;

/// Parses CSV as the sweep writes it (RFC 4180: quoted fields may hold commas, doubled quotes
/// and line breaks).
pub fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut field) = (Vec::new(), Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    field.push('"');
                    chars.next();
                }
                '"' => quoted = false,
                c => field.push(c),
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            ',' => row.push(std::mem::take(&mut field)),
            '\r' => {}
            '\n' => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            c => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

/// The best finished trial: by the metric, the first on ties (as the sweep ranks them).
pub fn best_trial(state: &SweepState) -> Option<usize> {
    let higher = state.metric == "val_accuracy";
    let mut best: Option<(usize, f64)> = None;
    for (i, t) in state.trials.iter().enumerate() {
        let Some(m) = t.metric.filter(|m| m.is_finite()) else {
            continue;
        };
        if t.status != Status::Done {
            continue;
        }
        let better = best.is_none_or(|(_, b)| if higher { m > b } else { m < b });
        if better {
            best = Some((i, m));
        }
    }
    best.map(|(i, _)| i)
}

/// A grid value as a chart label: TOML strings lose their quotes.
fn label(value: &str) -> String {
    let v = value.trim();
    let unquoted = v
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')));
    unquoted.unwrap_or(v).to_string()
}

/// How a grid's values go on an axis: numbers (on a log scale when they span a decade or
/// more and are all positive), else categories in the grid's order.
pub fn axis_for(grid: &Grid) -> XAxis {
    let numbers: Option<Vec<f64>> = grid
        .values
        .iter()
        .map(|v| v.trim().parse::<f64>().ok().filter(|x| x.is_finite()))
        .collect();
    match numbers {
        Some(xs) if !xs.is_empty() => {
            let (lo, hi) = xs
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
            if lo > 0.0 && hi / lo >= 10.0 {
                XAxis::Log
            } else {
                XAxis::Linear
            }
        }
        _ => XAxis::Categories(grid.values.iter().map(|v| label(v)).collect()),
    }
}

/// The trials with a metric as points of grid `g`'s chart.
pub fn grid_points(state: &SweepState, g: usize, best: Option<usize>) -> Vec<TrialPoint> {
    let grid = &state.plan.grids[g];
    let categorical = matches!(axis_for(grid), XAxis::Categories(_));
    state
        .trials
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let m = t.metric.filter(|m| m.is_finite())?;
            let value = t.value(g);
            let x = if categorical {
                grid.values.iter().position(|v| v == value)? as f64
            } else {
                value.trim().parse::<f64>().ok()?
            };
            let mark = if Some(i) == best {
                Mark::Best
            } else if t.status == Status::Done {
                Mark::Done
            } else {
                Mark::Partial
            };
            Some((x, m, mark))
        })
        .collect()
}

pub fn build(dir: &Path) -> Result<(Page, Vec<String>)> {
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let state: SweepState = serde_json::from_str(&text)
        .map_err(|e| Error::format(&state_path, format!("not a sweep state: {e}")))?;
    let mut notes = Vec::new();
    let best = best_trial(&state);
    let sections = vec![
        plan_section(dir, &state, best),
        leaderboard_section(dir, &state, best)?,
        grids_section(&state, best, &mut notes),
        curves_section(dir, &state, best, &mut notes),
        best_config_section(dir)?,
    ];
    let page = Page {
        title: format!("largo sweep report: {}", state.name),
        subtitle: vec![format!(
            "{} trials ranked by {} · sweep directory {}",
            state.trials.len(),
            state.metric,
            dir.display()
        )],
        sections,
    };
    Ok((page, notes))
}

fn plan_section(dir: &Path, state: &SweepState, best: Option<usize>) -> Section {
    let plan = &state.plan;
    let count = |s: Status| state.trials.iter().filter(|t| t.status == s).count();
    let direction = if state.metric == "val_accuracy" {
        "higher is better"
    } else {
        "lower is better"
    };
    let mut facts: Vec<(&str, String)> = vec![
        ("sweep", dir.display().to_string()),
        ("base config", plan.config.display().to_string()),
        ("metric", format!("{} ({direction})", state.metric)),
        (
            "trials",
            format!(
                "{}: {} done, {} pruned, {} failed, {} running, {} pending",
                state.trials.len(),
                count(Status::Done),
                count(Status::Pruned),
                count(Status::Failed),
                count(Status::Running),
                count(Status::Pending)
            ),
        ),
    ];
    for g in &plan.grids {
        facts.push(("grid", format!("{} = {}", g.key, g.values.join(", "))));
    }
    let search = match (plan.random, plan.seed) {
        (Some(n), Some(seed)) => format!("random: {n} combinations drawn with seed {seed}"),
        (Some(n), None) => format!("random: {n} combinations"),
        _ => "every combination of the grids".into(),
    };
    facts.push(("search", search));
    let budget = match (plan.budget_steps, plan.budget_minutes) {
        (Some(s), _) => format!("{s} steps per trial"),
        (_, Some(m)) => format!("{m} minutes per training session"),
        _ => "each trial's own train.max_steps / train.epochs".into(),
    };
    facts.push(("budget", budget));
    if plan.halving {
        facts.push((
            "successive halving",
            format!(
                "eta {}, rungs ending at steps {:?}",
                plan.eta.unwrap_or(3),
                state.rungs
            ),
        ));
    }
    if let Some(t) = best.map(|i| &state.trials[i]) {
        facts.push(("best", best_text(t, &state.metric)));
    }
    Section::new("plan", "Sweep", html::facts(&facts))
}

fn best_text(t: &Trial, metric: &str) -> String {
    format!(
        "{} ({}): {metric} {:.4} after {} steps",
        t.name,
        t.overrides.join(" "),
        t.metric.unwrap_or(f64::NAN),
        t.steps
    )
}

/// Columns of `leaderboard.csv` written at full precision, shortened for reading.
fn shorten_cell(column: &str, cell: &str) -> String {
    let digits = match column {
        "metric" | "val_loss" | "val_accuracy" => 4,
        "seconds" => 1,
        _ => return cell.to_string(),
    };
    match cell.parse::<f64>() {
        Ok(x) => format!("{x:.digits$}"),
        Err(_) => cell.to_string(),
    }
}

fn leaderboard_section(dir: &Path, state: &SweepState, best: Option<usize>) -> Result<Section> {
    let csv_path = dir.join(LEADERBOARD_CSV);
    let mut body = String::new();
    let best_name = best.map(|i| state.trials[i].name.as_str());
    let (head, rows) = if csv_path.is_file() {
        let text = std::fs::read_to_string(&csv_path).map_err(|e| Error::io(&csv_path, e))?;
        let mut rows = parse_csv(&text);
        if rows.is_empty() {
            return Err(Error::format(&csv_path, "empty leaderboard"));
        }
        let head = rows.remove(0);
        let rows: Vec<Vec<String>> = rows
            .into_iter()
            .map(|r| {
                r.iter()
                    .enumerate()
                    .map(|(c, cell)| shorten_cell(head.get(c).map_or("", String::as_str), cell))
                    .collect()
            })
            .collect();
        (head, rows)
    } else {
        body.push_str(&html::note(&format!(
            "{} is missing; the trials are listed in the order of sweep.json.",
            csv_path.display()
        )));
        let mut head: Vec<String> = vec!["trial".into(), "status".into()];
        head.extend(state.plan.grids.iter().map(|g| g.key.clone()));
        head.extend(["metric", "steps", "error"].map(String::from));
        let rows = state
            .trials
            .iter()
            .map(|t| {
                let mut row = vec![t.name.clone(), t.status.as_str().to_string()];
                row.extend((0..t.overrides.len()).map(|g| t.value(g).to_string()));
                row.push(t.metric.map_or_else(String::new, |m| format!("{m:.4}")));
                row.push(t.steps.to_string());
                row.push(t.error.clone().unwrap_or_default());
                row
            })
            .collect();
        (head, rows)
    };
    let trial_column = head.iter().position(|h| h == "trial");
    let highlight = trial_column.and_then(|c| {
        rows.iter()
            .position(|r| r.get(c).map(String::as_str) == best_name && best_name.is_some())
    });
    body.push_str(&html::table(&head, &rows, highlight));
    if highlight.is_some() {
        body.push_str(&html::note(
            "The highlighted row is the best finished trial.",
        ));
    }
    Ok(Section::new("leaderboard", "Leaderboard", body))
}

fn grids_section(state: &SweepState, best: Option<usize>, notes: &mut Vec<String>) -> Section {
    let mut body = html::note(&format!(
        "Each swept hyper-parameter against {}, one point per trial; pruned and unfinished \
         trials (grey) were scored on a smaller budget.",
        state.metric
    ));
    body.push_str("<div class=\"gallery\">\n");
    for (g, grid) in state.plan.grids.iter().enumerate() {
        let points = grid_points(state, g, best);
        let title = format!("{} vs {}", grid.key, state.metric);
        if points.is_empty() {
            body.push_str(&html::note(&format!("{title}: no trial has a metric yet.")));
            continue;
        }
        match charts::scatter_chart(&title, &grid.key, &state.metric, &axis_for(grid), &points) {
            Ok(png) => body.push_str(&html::figure(&png, &title, &title)),
            Err(e) => {
                notes.push(format!("{title}: {e}"));
                body.push_str(&html::note(&format!("{title}: {e}")));
            }
        }
    }
    body.push_str("</div>\n");
    Section::new(
        "hyperparameters",
        "Hyper-parameters against the metric",
        body,
    )
}

fn curves_section(
    dir: &Path,
    state: &SweepState,
    best: Option<usize>,
    notes: &mut Vec<String>,
) -> Section {
    let by_accuracy = state.metric == "val_accuracy";
    // The best trials first, so that the cap drops the worst.
    let mut order: Vec<usize> = (0..state.trials.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |i: usize| {
            let m = state.trials[i].metric.unwrap_or(f64::NAN);
            match (m.is_finite(), by_accuracy) {
                (false, _) => f64::INFINITY,
                (true, true) => -m,
                (true, false) => m,
            }
        };
        key(a).total_cmp(&key(b)).then(a.cmp(&b))
    });
    let mut series = Vec::new();
    for &i in order.iter().take(MAX_CURVES) {
        let t = &state.trials[i];
        let Ok(records) = read_records(&dir.join(&t.name).join("metrics.jsonl")) else {
            continue;
        };
        let stats = RunStats::from_records(&records);
        let points: Vec<(f64, f64)> = stats
            .validations
            .iter()
            .filter_map(|v| {
                let y = if by_accuracy {
                    v.val_accuracy?
                } else {
                    v.val_loss
                };
                Some((v.step as f64, y))
            })
            .collect();
        if points.is_empty() {
            continue;
        }
        let color = if Some(i) == best {
            VAL_COLOR
        } else {
            let (r, g, b) = Palette99::pick(i + 1).rgb();
            RGBColor(r, g, b)
        };
        series.push(Series {
            label: format!("{} {}", t.name, t.overrides.join(" ")),
            points,
            color,
            main: Some(i) == best,
        });
    }
    if series.is_empty() {
        return Section::new(
            "trial-curves",
            "Validation curves",
            html::note("No trial has logged a validation yet."),
        );
    }
    let shown = series.len();
    let chart = LineChart {
        title: format!("{} of each trial", state.metric),
        x_desc: "step".into(),
        y_desc: state.metric.clone(),
        series,
        band: None,
    };
    let mut body = html::note(&format!(
        "{} at every validation of each trial{}; the best finished trial is the thick red line.",
        state.metric,
        if state.trials.len() > shown {
            format!(" (the best {shown} of {})", state.trials.len())
        } else {
            String::new()
        }
    ));
    match charts::line_chart(&chart) {
        Ok(png) => body.push_str(&html::figure(&png, &chart.title, &chart.title)),
        Err(e) => {
            notes.push(format!("{}: {e}", chart.title));
            body.push_str(&html::note(&e.to_string()));
        }
    }
    Section::new("trial-curves", "Validation curves", body)
}

fn best_config_section(dir: &Path) -> Result<Section> {
    let path = dir.join(BEST_TOML);
    let body = if path.is_file() {
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        format!(
            "{}{}",
            html::note("best.toml: the best trial's resolved config; `largo train --config` it to train the winner."),
            html::pre(&text)
        )
    } else {
        html::note("No trial has finished yet, so there is no best.toml.")
    };
    Ok(Section::new("best-config", "Best config", body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::Plan;

    #[test]
    fn csv_fields_may_hold_commas_quotes_and_newlines() {
        let rows = parse_csv("rank,trial,error\n1,t000,\n2,t001,\"bad, \"\"very\"\"\nbad\"\n");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0], ["rank", "trial", "error"]);
        assert_eq!(rows[1], ["1", "t000", ""]);
        assert_eq!(rows[2], ["2", "t001", "bad, \"very\"\nbad"]);
        assert_eq!(parse_csv("a,b"), vec![vec!["a", "b"]]);
        assert!(parse_csv("").is_empty());
    }

    fn grid(key: &str, values: &[&str]) -> Grid {
        Grid {
            key: key.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    fn trial(name: &str, overrides: &[&str], status: Status, metric: Option<f64>) -> Trial {
        Trial {
            name: name.into(),
            overrides: overrides.iter().map(|o| o.to_string()).collect(),
            status,
            metric,
            val_loss: metric,
            val_accuracy: None,
            steps: 10,
            seconds: 1.0,
            error: None,
            rung_metrics: Vec::new(),
        }
    }

    #[test]
    fn axes_follow_the_values() {
        assert!(matches!(
            axis_for(&grid("optim.lr", &["1e-4", "1e-3", "1e-2"])),
            XAxis::Log
        ));
        assert!(matches!(
            axis_for(&grid("train.batch_size", &["32", "64"])),
            XAxis::Linear
        ));
        match axis_for(&grid("optim.kind", &["\"adamw\"", "sgd"])) {
            XAxis::Categories(names) => assert_eq!(names, ["adamw", "sgd"]),
            _ => panic!("strings are categories"),
        }
        assert!(matches!(
            axis_for(&grid("mlp.hidden", &["[64]", "[128,128]"])),
            XAxis::Categories(_)
        ));
    }

    #[test]
    fn points_mark_the_best_finished_trial() {
        let state = SweepState {
            version: 1,
            name: "s".into(),
            plan: Plan {
                config: "c.toml".into(),
                grids: vec![grid("mlp.hidden", &["[64]", "[128]"])],
                random: None,
                seed: None,
                budget_steps: Some(10),
                budget_minutes: None,
                halving: false,
                eta: None,
            },
            metric: "val_loss".into(),
            rungs: Vec::new(),
            rung: 0,
            trials: vec![
                trial("t000", &["mlp.hidden=[64]"], Status::Done, Some(0.5)),
                trial("t001", &["mlp.hidden=[128]"], Status::Done, Some(0.4)),
                trial("t002", &["mlp.hidden=[128]"], Status::Pruned, Some(0.1)),
                trial("t003", &["mlp.hidden=[64]"], Status::Failed, None),
            ],
        };
        // A pruned trial's metric comes from a smaller budget: it cannot be the best.
        assert_eq!(best_trial(&state), Some(1));
        let points = grid_points(&state, 0, Some(1));
        assert_eq!(
            points,
            vec![
                (0.0, 0.5, Mark::Done),
                (1.0, 0.4, Mark::Best),
                (1.0, 0.1, Mark::Partial)
            ]
        );
    }
}
