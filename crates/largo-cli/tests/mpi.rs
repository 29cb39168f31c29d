//! Data-parallel training over real MPI: `mpirun -np 2` over loopback (OpenMPI; the build needs
//! `--features mpi`, which `.ci/run` uses for this test binary alone).
//!
//! 20 steps of the MLP and of the GPT with global batch B on 2 ranks end with the same losses
//! (metrics.jsonl) and parameters (model.safetensors) as one process with batch B, to 1e-5,
//! with and without `--shard-optimizer`. And failure: a rank that exits or hangs stops the
//! job within a bounded time with a clear error, and the run resumes from its last checkpoint
//! to the same end. Dropout is 0 (masks are drawn per rank).
#![cfg(feature = "mpi")]

mod common;

use largo::io::TensorFile;
use largo::train::metrics::read_losses;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn mnist() -> PathBuf {
    common::bundled_mnist()
}

fn corpus(dir: &Path) -> PathBuf {
    let src = common::repo().join("data/shakespeare");
    let out = dir.join("corpus");
    std::fs::create_dir_all(&out).unwrap();
    for name in [
        "hamlet_gut.txt",
        "macbeth_gut.txt",
        "lear_gut.txt",
        "sonnets_gut.txt",
    ] {
        let text = std::fs::read_to_string(src.join(name)).unwrap();
        let cut = text.char_indices().nth(6000).map_or(text.len(), |(i, _)| i);
        std::fs::write(out.join(name), &text[..cut]).unwrap();
    }
    out
}

fn mlp_args(name: &str) -> Vec<String> {
    let mut a: Vec<String> = vec!["train".into(), "--config".into()];
    a.push(
        common::repo()
            .join("configs/mnist-mlp.toml")
            .display()
            .to_string(),
    );
    for kv in [
        format!("data.path={}", mnist().display()),
        format!("run.name={name}"),
        "train.max_steps=20".into(),
        "train.log_every=1".into(),
        "train.checkpoint_every=5".into(),
    ] {
        a.push("--set".into());
        a.push(kv);
    }
    a
}

fn gpt_args(data: &Path, name: &str) -> Vec<String> {
    let mut a: Vec<String> = vec!["train".into()];
    for kv in [
        format!("data.path={}", data.display()),
        format!("run.name={name}"),
        "gpt.n_layer=1".into(),
        "gpt.n_head=2".into(),
        "gpt.n_embd=32".into(),
        "gpt.ff=64".into(),
        "gpt.block_size=32".into(),
        "gpt.dropout=0.0".into(),
        "train.batch_size=8".into(),
        "train.max_steps=20".into(),
        "train.eval_every=10".into(),
        "train.eval_batches=2".into(),
        "train.log_every=1".into(),
        "train.checkpoint_every=5".into(),
        "schedule.warmup_steps=5".into(),
    ] {
        a.push("--set".into());
        a.push(kv);
    }
    a
}

struct Ran {
    ok: bool,
    stderr: String,
    took: Duration,
}

/// Runs `cmd` in `dir` for at most `limit` (then stops it and fails the test).
fn run(dir: &Path, mut cmd: Command, limit: Duration) -> Ran {
    let (out, err) = (dir.join("stdout.txt"), dir.join("stderr.txt"));
    let start = Instant::now();
    let mut child = cmd
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("start the command (is mpirun installed? apt-get install openmpi-bin)");
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            // SAFETY: signalling our own child, still running (not yet reaped).
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            std::thread::sleep(Duration::from_secs(3));
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "no end after {limit:?}\nstderr:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ran {
        ok: status.success(),
        stderr: std::fs::read_to_string(&err).unwrap() + &std::fs::read_to_string(&out).unwrap(),
        took: start.elapsed(),
    }
}

fn single(dir: &Path, args: &[String]) -> Ran {
    let mut c = Command::new(env!("CARGO_BIN_EXE_largo"));
    c.args(["--threads", "2"]).args(args).arg("--no-progress");
    run(dir, c, Duration::from_secs(300))
}

fn mpirun(dir: &Path, args: &[String], extra: &[&str], fault: Option<&str>) -> Ran {
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-np", "2"])
        // Containers often forbid the cross-process copies of the shared-memory transport.
        .args(["--mca", "btl_vader_single_copy_mechanism", "none"]);
    if let Some(f) = fault {
        c.env("LARGO_FAULT", f).args(["-x", "LARGO_FAULT"]);
    }
    c.arg(env!("CARGO_BIN_EXE_largo"))
        .args(["--threads", "1"])
        .args(args)
        .args(["--no-progress", "--distributed", "mpi"])
        .args(extra);
    run(dir, c, Duration::from_secs(300))
}

#[track_caller]
fn ok(r: &Ran) {
    assert!(r.ok, "failed:\n{}", r.stderr);
}

fn losses(run: &Path) -> Vec<(u64, f64)> {
    read_losses(&run.join("metrics.jsonl")).unwrap()
}

#[track_caller]
fn assert_same_run(a: &Path, b: &Path) {
    const TOL: f64 = 1e-5;
    let (la, lb) = (losses(a), losses(b));
    assert_eq!(la.len(), lb.len(), "{} vs {}", a.display(), b.display());
    assert!(!la.is_empty());
    for ((sa, x), (sb, y)) in la.iter().zip(&lb) {
        assert_eq!(sa, sb);
        assert!((x - y).abs() <= TOL, "step {sa}: loss {x} vs {y}");
    }
    let ma = TensorFile::load(&a.join("model/model.safetensors")).unwrap();
    let mb = TensorFile::load(&b.join("model/model.safetensors")).unwrap();
    assert_eq!(ma.tensors.len(), mb.tensors.len());
    for (name, ta) in &ma.tensors {
        let worst = ta
            .data
            .iter()
            .zip(&mb.tensors[name].data)
            .fold(0f64, |m, (x, y)| m.max((x - y).abs() as f64));
        assert!(worst <= TOL, "{name}: max difference {worst:e}");
    }
}

#[test]
fn two_mpi_ranks_train_the_mlp_and_the_gpt_as_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let c = corpus(t);
    ok(&single(t, &mlp_args("mlp-1")));
    ok(&single(t, &gpt_args(&c, "gpt-1")));
    for shard in [false, true] {
        // Sharded: also small buckets, so that many non-blocking all-reduces are in flight
        // while backward runs (unsharded: the default size, one bucket per step).
        let extra: &[&str] = if shard {
            &["--shard-optimizer", "--bucket-mb", "0.01"]
        } else {
            &[]
        };
        let mlp = format!("mlp-2-{shard}");
        let r = mpirun(t, &mlp_args(&mlp), extra, None);
        ok(&r);
        assert!(
            r.stderr
                .contains("2 rank(s) (mpi): optimiser state per rank"),
            "{}",
            r.stderr
        );
        assert_same_run(&t.join("runs/mlp-1"), &t.join("runs").join(&mlp));
        let gpt = format!("gpt-2-{shard}");
        ok(&mpirun(t, &gpt_args(&c, &gpt), extra, None));
        assert_same_run(&t.join("runs/gpt-1"), &t.join("runs").join(&gpt));
        let stats: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(t.join("runs").join(&gpt).join("dist.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(stats["world_size"], 2);
        assert_eq!(stats["shard_optimizer"], shard);
        assert!(stats["grad_bytes_per_step"].as_u64().unwrap() > 0);
        let buckets = stats["buckets"].as_u64().unwrap();
        assert!(if shard { buckets > 1 } else { buckets == 1 }, "{stats}");
        let waits = stats["all_reduce_wait_secs_per_rank"].as_array().unwrap();
        assert_eq!(waits.len(), 2, "{stats}");
    }
}

/// A rank that exits mid-run ends the job at once (mpirun sees it); one that hangs ends it
/// after --dist-timeout, by the others' watchdog. Either way the run resumes from its last
/// checkpoint (step 5) and ends exactly where an uninterrupted run ends.
#[test]
fn a_dead_or_hung_rank_stops_the_job_and_the_run_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let c = corpus(t);
    ok(&single(t, &gpt_args(&c, "whole")));
    for (mode, name) in [("exit", "crash"), ("hang", "hung")] {
        let fault = format!("1:8:{mode}");
        let r = mpirun(
            t,
            &gpt_args(&c, name),
            &["--dist-timeout", "5"],
            Some(&fault),
        );
        assert!(!r.ok, "a failed rank must fail the job:\n{}", r.stderr);
        assert!(
            r.took < Duration::from_secs(60),
            "took {:?}:\n{}",
            r.took,
            r.stderr
        );
        assert!(r.stderr.contains("LARGO_FAULT"), "{}", r.stderr);
        if mode == "hang" {
            assert!(
                r.stderr
                    .contains("rank 0 of 2: the all-reduce has waited 5 s"),
                "{}",
                r.stderr
            );
        }
        let run = t.join("runs").join(name);
        let latest = std::fs::read_to_string(run.join("checkpoints/latest.json")).unwrap();
        assert!(latest.contains("\"step\":5"), "{latest}");
        let resume = vec![
            "train".to_string(),
            "--resume".into(),
            run.display().to_string(),
        ];
        ok(&mpirun(t, &resume, &["--shard-optimizer"], None));
        assert_same_run(&t.join("runs/whole"), &run);
    }
}
