//! Data-parallel equivalence without MPI: ranks as threads of this process (`ThreadGroup`)
//! train the MLP and the GPT for 20 steps with global batch B, and end with the same losses and
//! parameters (≤ 1e-5) as one process with batch B; with the optimiser state sharded (ZeRO-1)
//! too, and across a checkpoint written by 2 sharded ranks and resumed by one process.
//! Dropout is 0 here: masks are drawn per rank, so with dropout the runs differ (by design).

use largo::config::Config;
use largo::io::TensorFile;
use largo::train::dist::ThreadGroup;
use largo::train::metrics::read_losses;
use largo::train::{train, train_distributed, Dist, DistOptions, TrainOptions, TrainOutcome};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn opts(resume: bool) -> TrainOptions {
    TrainOptions {
        resume,
        progress: false,
    }
}

fn mlp_config(out: &Path, name: &str, extra: &[&str]) -> Config {
    let mut kv: Vec<String> = [
        "model.arch=mlp",
        "data.kind=mnist",
        "mlp.hidden=[32]",
        "train.batch_size=64",
        "train.max_steps=20",
        "train.log_every=1",
        "optim.lr=0.003",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    kv.push(format!(
        "data.path={}",
        repo().join("data/mnist-1k").display()
    ));
    kv.push(format!("run.out_dir={}", out.display()));
    kv.push(format!("run.name={name}"));
    kv.extend(extra.iter().map(|s| s.to_string()));
    Config::load(None, &kv).unwrap()
}

/// A small corpus: the first 6 KB of four texts.
fn corpus(dir: &Path) -> PathBuf {
    let out = dir.join("corpus");
    std::fs::create_dir_all(&out).unwrap();
    for name in [
        "hamlet_gut.txt",
        "macbeth_gut.txt",
        "lear_gut.txt",
        "sonnets_gut.txt",
    ] {
        let text = std::fs::read_to_string(repo().join("data/shakespeare").join(name)).unwrap();
        let cut = text.char_indices().nth(6000).map_or(text.len(), |(i, _)| i);
        std::fs::write(out.join(name), &text[..cut]).unwrap();
    }
    out
}

fn gpt_config(out: &Path, data: &Path, name: &str, extra: &[&str]) -> Config {
    let mut kv: Vec<String> = [
        "gpt.n_layer=1",
        "gpt.n_head=2",
        "gpt.n_embd=32",
        "gpt.ff=64",
        "gpt.block_size=32",
        "gpt.dropout=0.0",
        "train.batch_size=8",
        "train.max_steps=20",
        "train.eval_every=10",
        "train.eval_batches=2",
        "train.log_every=1",
        "schedule.warmup_steps=5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    kv.push(format!("data.path={}", data.display()));
    kv.push(format!("run.out_dir={}", out.display()));
    kv.push(format!("run.name={name}"));
    kv.extend(extra.iter().map(|s| s.to_string()));
    Config::load(None, &kv).unwrap()
}

/// Trains `cfg` on `world` thread ranks; returns rank 0's outcome.
fn on_threads(cfg: &Config, world: usize, shard: bool, resume: bool) -> TrainOutcome {
    let handles: Vec<_> = ThreadGroup::new(world)
        .into_iter()
        .map(|comm| {
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                let dist = Dist::new(
                    Box::new(comm),
                    DistOptions {
                        shard_optimizer: shard,
                        // Small buckets, so that several are reduced per step.
                        bucket_mb: 0.01,
                    },
                );
                train_distributed(&cfg, &opts(resume), &dist).unwrap()
            })
        })
        .collect();
    let mut outs: Vec<TrainOutcome> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    outs.swap_remove(0)
}

fn losses(run: &Path) -> Vec<(u64, f64)> {
    read_losses(&run.join("metrics.jsonl")).unwrap()
}

/// Same records, losses within `tol`, every parameter within `tol`.
#[track_caller]
fn assert_same_run(a: &Path, b: &Path, tol: f64) {
    let (la, lb) = (losses(a), losses(b));
    assert_eq!(
        la.len(),
        lb.len(),
        "metrics of {} and {}",
        a.display(),
        b.display()
    );
    for ((sa, x), (sb, y)) in la.iter().zip(&lb) {
        assert_eq!(sa, sb);
        assert!((x - y).abs() <= tol, "step {sa}: loss {x} vs {y}");
    }
    let ma = TensorFile::load(&a.join("model/model.safetensors")).unwrap();
    let mb = TensorFile::load(&b.join("model/model.safetensors")).unwrap();
    assert_eq!(ma.tensors.len(), mb.tensors.len());
    for (name, ta) in &ma.tensors {
        let tb = &mb.tensors[name];
        let worst = ta
            .data
            .iter()
            .zip(&tb.data)
            .fold(0f64, |m, (x, y)| m.max((x - y).abs() as f64));
        assert!(worst <= tol, "{name}: max difference {worst:e} > {tol:e}");
    }
}

#[test]
fn the_mlp_on_two_and_three_ranks_trains_as_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    train(&mlp_config(t, "one", &[]), &opts(false)).unwrap();
    // 64 splits 32/32 over 2 ranks and 21/21/22 over 3; each shard update is the whole one.
    for (world, shard) in [(2, false), (2, true), (3, true)] {
        let name = format!("n{world}-{shard}");
        on_threads(&mlp_config(t, &name, &[]), world, shard, false);
        assert_same_run(&t.join("one"), &t.join(&name), 1e-5);
        let stats: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(t.join(&name).join("dist.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(stats["world_size"], world);
        assert!(stats["buckets"].as_u64().unwrap() > 1, "{stats}");
        let per_rank = stats["optimizer_bytes_per_rank"].as_array().unwrap();
        let whole = stats["optimizer_bytes_unsharded"].as_u64().unwrap();
        for b in per_rank {
            let b = b.as_u64().unwrap();
            if shard {
                assert!(b <= whole / world as u64 + 8, "{b} of {whole}");
            } else {
                assert_eq!(b, whole);
            }
        }
    }
    // Micro-batches accumulated, and an epoch's short last batch (900 samples, 64 a batch).
    let extra = ["train.grad_accum=2", "train.max_steps=0", "train.epochs=1"];
    train(&mlp_config(t, "acc-one", &extra), &opts(false)).unwrap();
    on_threads(&mlp_config(t, "acc-two", &extra), 2, false, false);
    assert_same_run(&t.join("acc-one"), &t.join("acc-two"), 1e-5);
    // A single-process run writes no dist.json.
    assert!(!t.join("one/dist.json").exists());
}

#[test]
fn the_gpt_on_two_ranks_trains_as_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let c = corpus(t);
    train(&gpt_config(t, &c, "one", &[]), &opts(false)).unwrap();
    for shard in [false, true] {
        let name = format!("two-{shard}");
        on_threads(&gpt_config(t, &c, &name, &[]), 2, shard, false);
        assert_same_run(&t.join("one"), &t.join(&name), 1e-5);
    }
}

/// A checkpoint written by 2 ranks with sharded state has the ordinary format: one process
/// resumes it and ends where an uninterrupted run ends.
#[test]
fn two_sharded_ranks_checkpoint_and_one_process_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let c = corpus(t);
    train(&gpt_config(t, &c, "whole", &[]), &opts(false)).unwrap();
    let split = gpt_config(t, &c, "split", &["train.stop_at=7"]);
    let out = on_threads(&split, 2, true, false);
    assert_eq!(out.steps, 7);
    let resumed = gpt_config(t, &c, "split", &[]);
    let out = train(&resumed, &opts(true)).unwrap();
    assert_eq!(out.steps, 20);
    assert_same_run(&t.join("whole"), &t.join("split"), 1e-5);
    // And the other way: one process stops, two sharded ranks resume.
    train(
        &gpt_config(t, &c, "back", &["train.stop_at=7"]),
        &opts(false),
    )
    .unwrap();
    on_threads(&gpt_config(t, &c, "back", &[]), 2, true, true);
    assert_same_run(&t.join("whole"), &t.join("back"), 1e-5);
}
