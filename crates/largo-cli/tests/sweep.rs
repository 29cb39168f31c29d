//! Drives `largo sweep` on the bundled MNIST digits with tiny trials: grids, resume, failing
//! trials, successive halving and every bad input.

mod common;

use common::{bundled_mnist, fails_with, largo, ok};
use largo::config::Config;
use std::path::{Path, PathBuf};
use std::process::Output;

/// A base config for trials of a few steps: 200 training digits, 7 steps an epoch.
fn write_config(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        r#"[run]
name = "{name}"

[data]
kind = "mnist"
path = "{}"
max_train_samples = 200

[model]
arch = "mlp"

[mlp]
hidden = [16]

[train]
epochs = 2
batch_size = 32
metric = "val_accuracy"
"#,
        bundled_mnist().display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn sweep(dir: &Path, config: &Path, args: &[&str]) -> Output {
    let mut all = vec!["sweep", "--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    largo(dir, &all)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Rows of a CSV file as maps from header to cell (quoted cells may hold commas).
fn read_csv(path: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let split = |line: &str| -> Vec<String> {
        let (mut cells, mut cur, mut quoted) = (Vec::new(), String::new(), false);
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '"' if quoted && chars.peek() == Some(&'"') => {
                    cur.push('"');
                    chars.next();
                }
                '"' => quoted = !quoted,
                ',' if !quoted => cells.push(std::mem::take(&mut cur)),
                _ => cur.push(c),
            }
        }
        cells.push(cur);
        cells
    };
    let mut lines = text.lines();
    let header = split(lines.next().unwrap());
    lines
        .map(|l| header.iter().cloned().zip(split(l)).collect())
        .collect()
}

fn state(sweep_dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(sweep_dir.join("sweep.json")).unwrap()).unwrap()
}

const GRID_2X2: [&str; 6] = [
    "--grid",
    "optim.lr=0.003,0.03",
    "--grid",
    "mlp.hidden=[16],[32,16]",
    "--budget-steps",
    "5",
];

#[test]
fn grid_sweep_writes_trials_a_sorted_leaderboard_and_a_trainable_best_config() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), "grid");
    let out = ok(&sweep(tmp.path(), &config, &GRID_2X2));
    let dir = tmp.path().join("runs/grid");
    for t in ["t000", "t001", "t002", "t003"] {
        assert!(dir.join(t).join("metrics.jsonl").is_file(), "{t}");
    }
    assert!(!dir.join("t004").exists());

    let rows = read_csv(&dir.join("leaderboard.csv"));
    assert_eq!(rows.len(), 4);
    let metrics: Vec<f64> = rows.iter().map(|r| r["metric"].parse().unwrap()).collect();
    assert!(metrics.windows(2).all(|w| w[0] >= w[1]), "{metrics:?}");
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["rank"], (i + 1).to_string());
        assert_eq!(r["status"], "done");
        assert_eq!(r["steps"], "5");
        assert_eq!(r["metric"], r["val_accuracy"]);
    }
    // First grid slowest: t001 is lr 0.003 with the second hidden value.
    let t001 = rows.iter().find(|r| r["trial"] == "t001").unwrap();
    assert_eq!(
        (t001["optim.lr"].as_str(), t001["mlp.hidden"].as_str()),
        ("0.003", "[32,16]")
    );
    let md = std::fs::read_to_string(dir.join("leaderboard.md")).unwrap();
    assert!(
        md.contains("| rank | trial | status | optim.lr | mlp.hidden | metric |"),
        "{md}"
    );

    let best = &rows[0];
    let cfg = Config::load(Some(&dir.join("best.toml")), &[]).unwrap();
    assert_eq!(cfg.optim.lr, best["optim.lr"].parse::<f64>().unwrap());
    let hidden: Vec<usize> = serde_json::from_str(&best["mlp.hidden"]).unwrap();
    assert_eq!(cfg.mlp.hidden, hidden);
    assert_eq!(cfg.train.max_steps, 5);
    assert_eq!(
        (cfg.run.name.as_str(), cfg.run.out_dir.as_str()),
        ("grid-best", "runs")
    );
    let header = std::fs::read_to_string(dir.join("best.toml")).unwrap();
    assert!(
        header.starts_with("# Best trial of sweep `grid`"),
        "{header}"
    );
    assert!(out.contains(&format!("best: {}", best["trial"])), "{out}");
    assert!(
        out.contains("next: largo train --config runs/grid/best.toml"),
        "{out}"
    );

    ok(&largo(
        tmp.path(),
        &["train", "--config", "runs/grid/best.toml"],
    ));
    assert!(tmp.path().join("runs/grid-best/metrics.jsonl").is_file());
}

#[test]
fn a_rerun_resumes_without_training_finished_trials_again() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), "again");
    ok(&sweep(tmp.path(), &config, &GRID_2X2));
    let dir = tmp.path().join("runs/again");
    let snapshot = |t: &str| {
        let p = dir.join(t).join("metrics.jsonl");
        (
            std::fs::read_to_string(&p).unwrap(),
            std::fs::metadata(&p).unwrap().modified().unwrap(),
        )
    };
    let before: Vec<_> = ["t000", "t001", "t002", "t003"].map(snapshot).to_vec();
    let first = read_csv(&dir.join("leaderboard.csv"));

    let out = sweep(tmp.path(), &config, &GRID_2X2);
    ok(&out);
    let err = stderr(&out);
    assert_eq!(err.matches("already done").count(), 4, "{err}");
    assert!(
        !err.contains("parameters"),
        "a trial was trained again:\n{err}"
    );
    let after: Vec<_> = ["t000", "t001", "t002", "t003"].map(snapshot).to_vec();
    assert_eq!(before, after);

    // As if interrupted: t001 while running (its run complete on disk), t003 before it began.
    let mut st = state(&dir);
    st["trials"][1]["status"] = "running".into();
    st["trials"][3]["status"] = "pending".into();
    std::fs::remove_dir_all(dir.join("t003")).unwrap();
    std::fs::write(dir.join("sweep.json"), st.to_string()).unwrap();
    let out = sweep(tmp.path(), &config, &GRID_2X2);
    ok(&out);
    let err = stderr(&out);
    assert_eq!(err.matches("already done").count(), 2, "{err}");
    assert!(err.contains("── t001") && err.contains("── t003"), "{err}");
    // Training is deterministic, so the resumed sweep ends where the first one did.
    let resumed = read_csv(&dir.join("leaderboard.csv"));
    let key =
        |rows: &[std::collections::HashMap<String, String>]| -> Vec<(String, String, String)> {
            rows.iter()
                .map(|r| (r["trial"].clone(), r["metric"].clone(), r["steps"].clone()))
                .collect()
        };
    assert_eq!(key(&first), key(&resumed));

    // Other grids under the same name are refused, and nothing is touched.
    let out = sweep(tmp.path(), &config, &["--grid", "optim.lr=0.1"]);
    fails_with(&out, "holds a different sweep");
    fails_with(&out, "--name");
}

#[test]
fn a_diverging_trial_is_recorded_as_failed_and_the_sweep_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), "crash");
    let out = sweep(
        tmp.path(),
        &config,
        &["--grid", "optim.lr=1e30,0.01", "--budget-steps", "4"],
    );
    ok(&out);
    let rows = read_csv(&tmp.path().join("runs/crash/leaderboard.csv"));
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0]["trial"].as_str(), rows[0]["status"].as_str()),
        ("t001", "done")
    );
    assert_eq!(
        (rows[1]["trial"].as_str(), rows[1]["status"].as_str()),
        ("t000", "failed")
    );
    assert!(rows[1]["error"].contains("became"), "{:?}", rows[1]);
    assert_eq!(rows[1]["metric"], "");
    assert!(tmp.path().join("runs/crash/t001/metrics.jsonl").is_file());

    // Only when every trial fails does the sweep fail.
    let out = sweep(
        tmp.path(),
        &config,
        &["--name", "all-bad", "--grid", "optim.lr=1e30,1e31"],
    );
    fails_with(&out, "no trial finished (2 failed");
    let rows = read_csv(&tmp.path().join("runs/all-bad/leaderboard.csv"));
    assert!(rows.iter().all(|r| r["status"] == "failed"));
}

#[test]
fn successive_halving_promotes_the_best_third_at_each_rung() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), "sha");
    let args = [
        "--grid",
        "optim.lr=0.001,0.003,0.01",
        "--grid",
        "mlp.hidden=[8],[16],[32]",
        "--budget-steps",
        "9",
        "--halving",
    ];
    let out = sweep(tmp.path(), &config, &args);
    ok(&out);
    let dir = tmp.path().join("runs/sha");
    let st = state(&dir);
    assert_eq!(st["rungs"], serde_json::json!([1, 3, 9]));
    let trials = st["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 9);
    let rung_metrics = |t: &serde_json::Value| -> Vec<f64> {
        t["rung_metrics"]
            .as_array()
            .map(|a| a.iter().map(|m| m.as_f64().unwrap()).collect())
            .unwrap_or_default()
    };
    let reached = |n: usize| trials.iter().filter(|t| rung_metrics(t).len() >= n).count();
    assert_eq!((reached(1), reached(2), reached(3)), (9, 3, 1));
    // The promoted are the best at the rung they leave (val_accuracy: higher is better).
    for rung in 0..2 {
        let promoted: Vec<f64> = trials
            .iter()
            .map(rung_metrics)
            .filter(|m| m.len() > rung + 1)
            .map(|m| m[rung])
            .collect();
        let stopped: Vec<f64> = trials
            .iter()
            .map(rung_metrics)
            .filter(|m| m.len() == rung + 1)
            .map(|m| m[rung])
            .collect();
        let worst_promoted = promoted.iter().cloned().fold(f64::INFINITY, f64::min);
        assert!(stopped.iter().all(|&m| m <= worst_promoted), "rung {rung}");
    }
    for t in trials {
        let (status, steps) = (t["status"].as_str().unwrap(), t["steps"].as_u64().unwrap());
        match rung_metrics(t).len() {
            1 => assert_eq!((status, steps), ("pruned", 1)),
            2 => assert_eq!((status, steps), ("pruned", 3)),
            _ => assert_eq!((status, steps), ("done", 9)),
        }
    }
    let rows = read_csv(&dir.join("leaderboard.csv"));
    assert_eq!(rows[0]["status"], "done");
    assert!(rows[1..].iter().all(|r| r["status"] == "pruned"));
    let steps: Vec<u64> = rows.iter().map(|r| r["steps"].parse().unwrap()).collect();
    assert!(steps.windows(2).all(|w| w[0] >= w[1]), "{steps:?}");
    assert_eq!(stderr(&out).matches("pruned 6").count(), 1);

    // Resumed, nothing runs again.
    let again = sweep(tmp.path(), &config, &args);
    ok(&again);
    let err = stderr(&again);
    assert_eq!(err.matches("already pruned").count(), 8, "{err}");
    assert_eq!(err.matches("already done").count(), 1, "{err}");
}

#[test]
fn random_search_draws_distinct_seeded_combinations() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), "rnd");
    let grids = [
        "--grid",
        "optim.lr=0.001,0.003,0.01",
        "--grid",
        "mlp.dropout=0.0,0.1",
    ];
    let drawn = |name: &str| -> Vec<String> {
        let mut args = vec![
            "--name",
            name,
            "--random",
            "2",
            "--seed",
            "5",
            "--budget-steps",
            "2",
        ];
        args.extend_from_slice(&grids);
        ok(&sweep(tmp.path(), &config, &args));
        let st = state(&tmp.path().join("runs").join(name));
        st["trials"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["overrides"].to_string())
            .collect()
    };
    let a = drawn("r1");
    assert_eq!(a.len(), 2);
    assert_ne!(a[0], a[1]);
    assert_eq!(a, drawn("r2"));
}

#[test]
fn bad_input_fails_clearly_and_leaves_no_sweep_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), "bad");
    let cases: [(&[&str], &[&str]); 7] = [
        (
            &["--grid", "optim.lrr=0.1"],
            &["optim.lrr", "did you mean `optim.lr`"],
        ),
        (
            &["--grid", "optim.lr=abc"],
            &["optim.lr", "expects a number, got a string"],
        ),
        (
            &["--grid", "mlp.hidden=[16],[1.5]"],
            &["mlp.hidden[0]", "expects an integer"],
        ),
        (&["--grid", "optim.lr="], &["--grid optim.lr=: no values"]),
        (&["--grid", "optim.lr=0.1,,0.2"], &["value 2 of 3 is empty"]),
        (
            &["--grid", "optim.lr=0.1", "--halving"],
            &["--halving needs --budget-steps"],
        ),
        (&[], &["no --grid given"]),
    ];
    for (args, needles) in cases {
        let out = sweep(tmp.path(), &config, args);
        for needle in needles {
            fails_with(&out, needle);
        }
        assert!(
            !tmp.path().join("runs").exists(),
            "{args:?} left a directory"
        );
    }
    // A language model scores only when it evaluates: rungs must fall on evaluations.
    let lm = tmp.path().join("lm.toml");
    std::fs::write(&lm, "[run]\nname = \"lm\"\n[train]\neval_every = 200\n").unwrap();
    let args = [
        "--grid",
        "optim.lr=1e-3,3e-3,1e-2",
        "--budget-steps",
        "6",
        "--halving",
    ];
    let out = sweep(tmp.path(), &lm, &args);
    fails_with(&out, "set train.eval_every to a divisor");
    assert!(!tmp.path().join("runs").exists());

    // A directory that holds something else is not taken over.
    std::fs::create_dir_all(tmp.path().join("runs/bad/old-run")).unwrap();
    let out = sweep(tmp.path(), &config, &["--grid", "optim.lr=0.1"]);
    fails_with(&out, "is not a sweep");
}
