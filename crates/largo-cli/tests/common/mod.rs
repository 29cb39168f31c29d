//! Helpers shared by the integration tests: run the real binary and check its outcome.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (bundled data and configs live there).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn bundled_mnist() -> PathBuf {
    repo().join("data/mnist-1k")
}

pub fn largo(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_largo"))
        .current_dir(dir)
        .args(["--threads", "2"])
        .args(args)
        .output()
        .expect("run largo")
}

/// `largo` with extra environment variables (`LARGO_ISA`, …).
pub fn largo_env(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_largo"))
        .current_dir(dir)
        .envs(env.iter().copied())
        .args(["--threads", "2"])
        .args(args)
        .output()
        .expect("run largo")
}

pub fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "largo failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Asserts a clean failure: non-zero exit, no panic, and stderr containing `needle`.
#[track_caller]
pub fn fails_with(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr:\n{stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "exit code; stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "panic:\n{stderr}");
    assert!(
        stderr.contains(needle),
        "stderr lacks {needle:?}:\n{stderr}"
    );
}

/// Trains the bundled-MNIST MLP (configs/mnist-mlp.toml) for `epochs` in `dir`; returns
/// `dir/runs/<name>`.
pub fn train_digit_classifier(dir: &Path, name: &str, epochs: usize) -> PathBuf {
    let config = repo().join("configs/mnist-mlp.toml");
    ok(&largo(
        dir,
        &[
            "train",
            "--config",
            config.to_str().unwrap(),
            "--set",
            &format!("data.path={}", bundled_mnist().display()),
            "--set",
            &format!("run.name={name}"),
            "--set",
            &format!("train.epochs={epochs}"),
        ],
    ));
    dir.join("runs").join(name)
}
