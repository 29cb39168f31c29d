//! `largo bench serve` end to end: the bench starts `largo serve` on the tiny BERT fixture
//! itself, loads it with a few clients for two seconds, and stops it.

mod common;
use common::{largo, ok, repo};

/// The number after `label` on its line of the report.
fn figure(report: &str, label: &str) -> f64 {
    let line = report
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{report}"));
    line[label.len()..]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number in {line:?}"))
}

#[test]
fn bench_serve_embeddings_on_a_server_it_starts() {
    let root = repo();
    let model = root.join("crates/largo/tests/fixtures/tiny-bert/mean");
    let model_arg = format!("tiny={}", model.display());
    let out = largo(
        &root,
        &[
            "bench",
            "serve",
            "--model",
            &model_arg,
            "--workload",
            "embeddings",
            "--clients",
            "4",
            "--seconds",
            "2",
            "--sentences",
            "64",
        ],
    );
    let report = ok(&out);
    assert!(report.contains("== embeddings (model tiny"), "{report}");
    assert_eq!(figure(&report, "clients:"), 4.0, "{report}");
    assert_eq!(figure(&report, "errors:"), 0.0, "{report}");
    assert!(figure(&report, "requests/s:") > 0.0, "{report}");
    assert!(figure(&report, "tokens/s:") > 0.0, "{report}");
    assert!(figure(&report, "server peak RSS:") > 0.0, "{report}");
    assert!(!report.contains("completions"), "{report}");
}

#[test]
fn bench_serve_fails_cleanly_without_a_server() {
    // Port 9 (discard) on loopback has no HTTP server.
    let out = largo(
        &repo(),
        &[
            "bench",
            "serve",
            "--url",
            "http://127.0.0.1:9",
            "--workload",
            "embeddings",
            "--seconds",
            "1",
        ],
    );
    common::fails_with(&out, "cannot reach the server");
}
