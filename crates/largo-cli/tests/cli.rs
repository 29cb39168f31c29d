//! Drives the real `largo` binary: train → resume → eval → classify, and every bad input.

mod common;

use common::{bundled_mnist, fails_with, largo, ok, repo};
use std::path::{Path, PathBuf};
use std::process::Output;

fn train_args<'a>(data: &'a str, name: &'a str, extra: &[&'a str]) -> Vec<String> {
    let config = repo().join("configs/mnist-mlp.toml");
    let mut v: Vec<String> = vec![
        "train".into(),
        "--config".into(),
        config.to_string_lossy().into_owned(),
        "--set".into(),
        format!("data.path={data}"),
        "--set".into(),
        format!("run.name={name}"),
        "--set".into(),
        "train.epochs=2".into(),
    ];
    for e in extra {
        v.push("--set".into());
        v.push(e.to_string());
    }
    v
}

fn run_train(dir: &Path, name: &str, extra: &[&str]) -> Output {
    let data = bundled_mnist();
    let args = train_args(data.to_str().unwrap(), name, extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    largo(dir, &refs)
}

/// No leftovers of atomic writes anywhere under `dir`.
fn assert_no_temp_files(dir: &Path) {
    for e in walk(dir) {
        let name = e.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.contains(".tmp"),
            "temporary file left behind: {}",
            e.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

#[test]
fn train_writes_a_complete_run_and_eval_and_classify_use_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ok(&run_train(tmp.path(), "r", &["train.log_every=5"]));
    assert!(out.contains("best val_accuracy"), "{out}");
    let run = tmp.path().join("runs/r");
    for f in [
        "config.toml",
        "metrics.jsonl",
        "curves.png",
        "best/model.safetensors",
        "best/config.json",
        "model/model.safetensors",
        "checkpoints/latest.json",
    ] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    let png = image::open(run.join("curves.png")).expect("curves.png decodes");
    assert!(png.width() > 500);
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let vals: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let val_lines: Vec<_> = vals.iter().filter(|v| v["kind"] == "val").collect();
    assert_eq!(val_lines.len(), 2);
    let train0 = vals.iter().find(|v| v["kind"] == "train").unwrap();
    for k in ["step", "loss", "lr", "grad_norm", "samples_per_sec"] {
        assert!(train0[k].is_number(), "train record lacks {k}: {train0}");
    }
    // Learns: well above chance after two epochs on 900 digits.
    let acc = val_lines[1]["val_accuracy"].as_f64().unwrap();
    assert!(acc > 0.6, "validation accuracy {acc}");
    assert_no_temp_files(&run);

    let data = bundled_mnist();
    let ev = ok(&largo(
        tmp.path(),
        &[
            "eval",
            "--model",
            "runs/r",
            "--data",
            data.to_str().unwrap(),
            "--split",
            "val",
        ],
    ));
    assert!(ev.contains("samples 100"), "{ev}");
    assert!(ev.contains("confusion matrix"), "{ev}");
    let js = ok(&largo(
        tmp.path(),
        &[
            "eval",
            "--model",
            "runs/r/best",
            "--data",
            data.to_str().unwrap(),
            "--json",
        ],
    ));
    let e: serde_json::Value = serde_json::from_str(&js).unwrap();
    assert_eq!(e["samples"], 1000);
    assert_eq!(e["confusion"].as_array().unwrap().len(), 10);
    assert_eq!(e["per_class"].as_array().unwrap().len(), 10);

    // Classify digits written as PNG (white on black, and inverted like ink on paper).
    let (img, label) = first_digit(&data);
    let p1 = tmp.path().join("digit.png");
    image::GrayImage::from_raw(28, 28, img.clone())
        .unwrap()
        .save(&p1)
        .unwrap();
    let p2 = tmp.path().join("paper.png");
    let inv: Vec<u8> = img.iter().map(|p| 255 - p).collect();
    image::GrayImage::from_raw(28, 28, inv)
        .unwrap()
        .save(&p2)
        .unwrap();
    let c = ok(&largo(
        tmp.path(),
        &[
            "classify",
            "--model",
            "runs/r",
            "--top-k",
            "2",
            "--json",
            p1.to_str().unwrap(),
            p2.to_str().unwrap(),
        ],
    ));
    let lines: Vec<serde_json::Value> = c
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["top"].as_array().unwrap().len(), 2);
    assert_eq!(
        lines[0]["top"][0]["class"], lines[1]["top"][0]["class"],
        "auto-invert"
    );
    let p: f64 = lines[0]["top"][0]["probability"].as_f64().unwrap();
    assert!(p > 0.0 && p <= 1.0);
    let _ = label;

    // Training again under the same name never overwrites the run: it gets the next number.
    let again = run_train(tmp.path(), "r", &["train.epochs=1"]);
    ok(&again);
    assert!(String::from_utf8_lossy(&again.stderr).contains("this run is r-2"));
    assert!(tmp
        .path()
        .join("runs/r-2/model/model.safetensors")
        .is_file());
    assert!(run.join("metrics.jsonl").exists());
}

fn first_digit(dir: &Path) -> (Vec<u8>, u8) {
    use std::io::Read;
    let mut imgs = Vec::new();
    flate2::read::GzDecoder::new(
        std::fs::File::open(dir.join("train-images-idx3-ubyte.gz")).unwrap(),
    )
    .read_to_end(&mut imgs)
    .unwrap();
    let mut lbls = Vec::new();
    flate2::read::GzDecoder::new(
        std::fs::File::open(dir.join("train-labels-idx1-ubyte.gz")).unwrap(),
    )
    .read_to_end(&mut lbls)
    .unwrap();
    (imgs[16..16 + 784].to_vec(), lbls[8])
}

#[test]
fn interrupted_and_resumed_run_ends_bit_identical_to_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    // Dropout and accumulation on, so RNG state and data position both matter.
    let extra = [
        "mlp.dropout=0.2",
        "train.grad_accum=2",
        "train.batch_size=32",
    ];
    ok(&run_train(tmp.path(), "whole", &extra));
    let mut stop = extra.to_vec();
    stop.push("train.max_steps=11");
    ok(&run_train(tmp.path(), "split", &stop));
    let latest =
        std::fs::read_to_string(tmp.path().join("runs/split/checkpoints/latest.json")).unwrap();
    assert!(latest.contains("\"step\":11"), "{latest}");
    ok(&largo(
        tmp.path(),
        &[
            "train",
            "--resume",
            "runs/split",
            "--set",
            "train.max_steps=0",
        ],
    ));
    let a = std::fs::read(tmp.path().join("runs/whole/model/model.safetensors")).unwrap();
    let b = std::fs::read(tmp.path().join("runs/split/model/model.safetensors")).unwrap();
    assert!(
        a == b,
        "resumed parameters differ from the uninterrupted run"
    );
    // The metrics history has each step once.
    let m = std::fs::read_to_string(tmp.path().join("runs/split/metrics.jsonl")).unwrap();
    let steps: Vec<u64> = m
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    let mut sorted = steps.clone();
    sorted.dedup();
    assert_eq!(steps, sorted, "duplicated metrics after resume");
}

#[test]
fn early_stopping_stops_when_validation_stalls() {
    let tmp = tempfile::tempdir().unwrap();
    // A zero learning rate never improves after the first epoch.
    let out = ok(&run_train(
        tmp.path(),
        "es",
        &[
            "train.epochs=10",
            "train.patience=2",
            "optim.lr=0",
            "train.metric=val_loss",
        ],
    ));
    assert!(out.contains("stopped early"), "{out}");
    let m = std::fs::read_to_string(tmp.path().join("runs/es/metrics.jsonl")).unwrap();
    assert_eq!(
        m.lines().filter(|l| l.contains("\"kind\":\"val\"")).count(),
        3
    );
}

fn write_gz(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::fast(),
    );
    e.write_all(bytes).unwrap();
    e.finish().unwrap();
}

fn idx(magic_type: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, magic_type, dims.len() as u8];
    for d in dims {
        b.extend(d.to_be_bytes());
    }
    b.extend(data);
    b
}

/// Writes a tiny MNIST-shaped dataset, then lets `edit` break it.
fn dataset(dir: &Path, n: u32, labels: &[u8]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    write_gz(
        &dir.join("train-images-idx3-ubyte.gz"),
        &idx(8, &[n, 28, 28], &vec![7u8; n as usize * 784]),
    );
    write_gz(
        &dir.join("train-labels-idx1-ubyte.gz"),
        &idx(8, &[labels.len() as u32], labels),
    );
    dir.to_path_buf()
}

fn train_on(tmp: &Path, data: &Path) -> Output {
    let config = repo().join("configs/mnist-mlp.toml");
    let data = format!("data.path={}", data.display());
    largo(
        tmp,
        &[
            "train",
            "--config",
            config.to_str().unwrap(),
            "--set",
            &data,
            "--set",
            "run.name=bad",
        ],
    )
}

#[test]
fn bad_data_gives_clear_errors_and_leaves_nothing_half_written() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    fails_with(&train_on(t, &t.join("nowhere")), "nowhere");

    let d = dataset(&t.join("mismatch"), 10, &[1; 9]);
    fails_with(&train_on(t, &d), "9 labels but");

    let d = dataset(&t.join("range"), 3, &[1, 12, 3]);
    fails_with(
        &train_on(t, &d),
        "label 12 at index 1 is out of range 0..10",
    );

    let d = dataset(&t.join("magic"), 3, &[1, 2, 3]);
    std::fs::write(
        d.join("train-labels-idx1-ubyte.gz"),
        idx(0x0d, &[3], &[1, 2, 3]),
    )
    .unwrap();
    fails_with(&train_on(t, &d), "0x0d");
    std::fs::write(
        d.join("train-labels-idx1-ubyte.gz"),
        [1u8, 2, 3, 4, 5, 6, 7, 8],
    )
    .unwrap();
    fails_with(&train_on(t, &d), "bad IDX magic");

    let d = dataset(&t.join("trunc"), 3, &[1, 2, 3]);
    let gz = std::fs::read(d.join("train-images-idx3-ubyte.gz")).unwrap();
    std::fs::write(d.join("train-images-idx3-ubyte.gz"), &gz[..gz.len() / 2]).unwrap();
    fails_with(&train_on(t, &d), "truncated gzip");

    let d = dataset(&t.join("short"), 3, &[1, 2, 3]);
    write_gz(
        &d.join("train-images-idx3-ubyte.gz"),
        &idx(8, &[3, 28, 28], &[0; 100]),
    );
    fails_with(&train_on(t, &d), "need 2352 data bytes, file has 100");

    let d = t.join("missing");
    std::fs::create_dir_all(&d).unwrap();
    fails_with(&train_on(t, &d), "missing train-images-idx3-ubyte.gz");
    assert_no_temp_files(t);
    assert!(
        !t.join("runs/bad").exists(),
        "a run that failed before training leaves no directory"
    );
}

#[test]
fn bad_config_is_rejected_with_the_key_and_a_suggestion() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, "[optim]\nlearning_rate = 0.1\n").unwrap();
    fails_with(
        &largo(tmp.path(), &["train", "--config", cfg.to_str().unwrap()]),
        "unknown key `optim.learning_rate`",
    );
    fails_with(
        &largo(tmp.path(), &["train", "--set", "train.epochs=ten"]),
        "`train.epochs` expects an integer",
    );
    fails_with(
        &largo(tmp.path(), &["train", "--set", "mlp.hiden=[3]"]),
        "did you mean `mlp.hidden`",
    );
    std::fs::write(&cfg, "[train\n").unwrap();
    fails_with(
        &largo(tmp.path(), &["train", "--config", cfg.to_str().unwrap()]),
        "invalid TOML",
    );
    assert!(
        !tmp.path().join("runs").exists(),
        "a rejected config must not create a run"
    );
}

#[test]
fn a_diverging_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run_train(
        tmp.path(),
        "nan",
        &[
            "optim.kind=sgd",
            "optim.lr=1e30",
            "train.checkpoint_every=1",
        ],
    );
    fails_with(&out, "at step 2");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("last good checkpoint"), "{stderr}");
    let latest =
        std::fs::read_to_string(tmp.path().join("runs/nan/checkpoints/latest.json")).unwrap();
    assert!(latest.contains("\"step\":1"), "{latest}");
    assert_no_temp_files(&tmp.path().join("runs"));
}

#[test]
fn a_model_whose_weights_do_not_match_its_config_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    ok(&run_train(tmp.path(), "m", &["train.epochs=1"]));
    let cfg_path = tmp.path().join("runs/m/best/config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("128", "64");
    std::fs::write(&cfg_path, text).unwrap();
    let data = bundled_mnist();
    fails_with(
        &largo(
            tmp.path(),
            &[
                "eval",
                "--model",
                "runs/m/best",
                "--data",
                data.to_str().unwrap(),
            ],
        ),
        "tensor fc1.weight has shape [128, 784], the model expects [64, 784]",
    );
    fails_with(
        &largo(
            tmp.path(),
            &[
                "eval",
                "--model",
                "runs/none",
                "--data",
                data.to_str().unwrap(),
            ],
        ),
        "runs/none",
    );
    let bad = tmp.path().join("bad.png");
    std::fs::write(&bad, b"not an image").unwrap();
    fails_with(
        &largo(
            tmp.path(),
            &["classify", "--model", "runs/m/model", bad.to_str().unwrap()],
        ),
        "cannot decode image",
    );
}

/// MNIST's test files (`t10k-*`): `eval --split test` (the default when only they exist) and
/// `data.test_path`, a final score after training apart from validation.
#[test]
fn the_mnist_test_files_are_scored_by_eval_and_after_training() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let test_dir = repo().join("data/mnist-test");
    let test_path = format!("data.test_path={}", test_dir.display());
    let out = run_train(t, "r", &[&test_path]);
    let stdout = ok(&out);
    assert!(
        stdout.contains("test (final model, not used for training or selection): loss")
            && stdout.contains("on 200 samples of"),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("test (final model): loss")
            && stderr.contains("(t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz in"),
        "{stderr}"
    );
    let metrics = std::fs::read_to_string(t.join("runs/r/metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert_eq!(last["kind"], "test", "{last}");
    assert_eq!(last["samples"], 200);
    let test_accuracy = last["test_accuracy"].as_f64().unwrap();
    assert!(test_accuracy > 0.5, "{last}");
    assert!(last["files"][0]
        .as_str()
        .unwrap()
        .ends_with("t10k-images-idx3-ubyte.gz"));
    // Validation records are untouched: the test score is not one of them.
    assert!(
        metrics
            .lines()
            .filter(|l| l.contains("\"kind\":\"val\""))
            .count()
            == 2
    );

    // eval on a directory with only t10k-* scores them, says which, and agrees with training.
    let eval = |data: &Path, extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--model",
            "runs/r/model",
            "--data",
            data.to_str().unwrap(),
        ];
        args.extend(extra);
        largo(t, &args)
    };
    let ev = ok(&eval(&test_dir, &[]));
    assert!(
        ev.contains("split test: ") && ev.contains("t10k-labels-idx1-ubyte.gz"),
        "{ev}"
    );
    assert!(ev.contains("samples 200"), "{ev}");
    let js: serde_json::Value = serde_json::from_str(&ok(&eval(&test_dir, &["--json"]))).unwrap();
    assert_eq!(js["split"], "test");
    assert_eq!(js["samples"], 200);
    assert!((js["accuracy"].as_f64().unwrap() - test_accuracy).abs() < 1e-9);
    assert!(js["files"][1]
        .as_str()
        .unwrap()
        .ends_with("t10k-labels-idx1-ubyte.gz"));

    // Both kinds of files: the default stays the train-* files; --split test picks t10k-*.
    let both = t.join("both");
    std::fs::create_dir_all(&both).unwrap();
    for dir in [bundled_mnist(), test_dir.clone()] {
        for f in std::fs::read_dir(dir).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, both.join(f.file_name().unwrap())).unwrap();
        }
    }
    let js: serde_json::Value = serde_json::from_str(&ok(&eval(&both, &["--json"]))).unwrap();
    assert_eq!(
        (js["split"].as_str(), js["samples"].as_u64()),
        (Some("all"), Some(1000))
    );
    assert!(js["files"][0]
        .as_str()
        .unwrap()
        .ends_with("train-images-idx3-ubyte.gz"));
    let js: serde_json::Value =
        serde_json::from_str(&ok(&eval(&both, &["--json", "--split", "test"]))).unwrap();
    assert_eq!(
        (js["split"].as_str(), js["samples"].as_u64()),
        (Some("test"), Some(200))
    );

    // The wrong files for the split say which flag reads the files that are there.
    fails_with(
        &eval(&test_dir, &["--split", "val"]),
        "missing train-images-idx3-ubyte.gz (or train-images-idx3-ubyte) in the MNIST directory; it has the t10k-* test files: score them with --split test",
    );
    fails_with(
        &eval(&bundled_mnist(), &["--split", "test"]),
        "missing t10k-images-idx3-ubyte.gz",
    );
    // data.test_path: a directory of MNIST files, for the MLP only.
    fails_with(
        &run_train(t, "bad", &["data.test_path=nowhere"]),
        "data.test_path: nowhere: data directory not found",
    );
    fails_with(
        &largo(t, &["train", "--set", "data.test_path=data/mnist-test"]),
        "a test set after training is for the MLP",
    );
    assert!(!t.join("runs/bad").exists());
}

/// `bench gpt --profile`: where a training step's time goes, GEMMs by shape, kernels by name,
/// with the time outside every kernel never negative (spans nest, so nothing counts twice).
#[test]
fn bench_cnn_profile_shows_the_convolutions_and_the_step() {
    let tmp = tempfile::tempdir().unwrap();
    let args = ["bench", "cnn", "--profile", "1", "--case", "mnist_net"];
    let out = ok(&largo(tmp.path(), &args));
    for needle in [
        "largo cnn mnist_net train profile:",
        "steps of batch 64",
        "conv2d forward (an image per task)",
        "conv2d backward (an image per task)",
        "max pool forward",
        "gemm NT 64×128×9216",
        "optimizer step",
        "step: ",
    ] {
        assert!(out.contains(needle), "no {needle:?} in\n{out}");
    }
    // Inference: eval-mode forwards only, nothing of the backward or the optimizer.
    let args = [
        "bench",
        "cnn",
        "--profile",
        "1",
        "--inference",
        "--case",
        "mnist_net",
    ];
    let out = ok(&largo(tmp.path(), &args));
    for needle in [
        "largo cnn mnist_net inference profile:",
        "forwards of batch 64",
        "conv2d forward",
        "max pool forward",
        "step: ",
    ] {
        assert!(out.contains(needle), "no {needle:?} in\n{out}");
    }
    for absent in ["backward", "optimizer step"] {
        assert!(
            !out.contains(absent),
            "{absent:?} in an inference profile\n{out}"
        );
    }
    let bad = ["bench", "cnn", "--profile", "1", "--case", "lenet"];
    fails_with(&largo(tmp.path(), &bad), "no CNN benchmark case 'lenet'");
}

#[test]
fn bench_gpt_profile_accounts_for_a_step() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ok(&largo(tmp.path(), &["bench", "gpt", "--profile", "1"]));
    for needle in [
        "largo gpt train profile:",
        "gemm NT 2048×768×256",
        "gemm TN 1024×256×2048",
        "flash attention backward",
        "layernorm forward",
        "optimizer step",
        "step: ",
    ] {
        assert!(out.contains(needle), "no {needle:?} in\n{out}");
    }
    let other = out
        .lines()
        .find(|l| l.starts_with("other (outside kernels)"))
        .unwrap_or_else(|| panic!("no other row in\n{out}"));
    let ms: f64 = other.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(ms >= 0.0, "{other}");
}
