//! `largo report` on a classifier run, a language-model run and a sweep: the HTML is checked
//! as text (sections, config, nothing external), then opened in headless Chromium, where every
//! image must decode and the console must stay free of errors.

mod common;
mod support;

use common::{bundled_mnist, fails_with, largo, ok, repo};
use serde_json::Value;
use std::path::{Path, PathBuf};
use support::webdriver::Browser;

fn set_args<'a>(base: &[&'a str], sets: &[&'a str]) -> Vec<String> {
    let mut args: Vec<String> = base.iter().map(|s| s.to_string()).collect();
    for kv in sets {
        args.push("--set".into());
        args.push(kv.to_string());
    }
    args
}

fn run_largo(dir: &Path, args: &[String]) -> String {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&largo(dir, &refs))
}

/// A small MLP, two epochs on the bundled digits: two validations, so the curves have a gap.
fn train_classifier(dir: &Path) -> PathBuf {
    let config = repo().join("configs/mnist-mlp.toml");
    let data = format!("data.path={}", bundled_mnist().display());
    let args = set_args(
        &["train", "--config", config.to_str().unwrap()],
        &[&data, "run.name=mlp", "train.epochs=2", "mlp.hidden=[32]"],
    );
    run_largo(dir, &args);
    dir.join("runs/mlp")
}

/// A tiny character GPT on the first few KB of three plays (prepared inside the run).
fn train_gpt(dir: &Path) -> PathBuf {
    let src = repo().join("data/shakespeare");
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    for name in ["hamlet_gut.txt", "macbeth_gut.txt", "lear_gut.txt"] {
        let text = std::fs::read_to_string(src.join(name)).unwrap();
        let cut = text.char_indices().nth(6000).map_or(text.len(), |(i, _)| i);
        std::fs::write(corpus.join(name), &text[..cut]).unwrap();
    }
    let data = format!("data.path={}", corpus.display());
    let args = set_args(
        &["train"],
        &[
            &data,
            "run.name=gpt",
            "data.val_fraction=0.25",
            "gpt.n_layer=1",
            "gpt.n_head=2",
            "gpt.n_embd=32",
            "gpt.ff=64",
            "gpt.block_size=32",
            "train.batch_size=8",
            "train.max_steps=20",
            "train.eval_every=10",
            "train.eval_batches=2",
            "train.log_every=5",
            "schedule.warmup_steps=5",
        ],
    );
    run_largo(dir, &args);
    dir.join("runs/gpt")
}

/// A 2 × 2 sweep of tiny MLPs (200 training digits, 7 steps an epoch): a numeric grid on a
/// log scale and a categorical one.
fn run_sweep(dir: &Path) -> PathBuf {
    let config = dir.join("sweep-base.toml");
    std::fs::write(
        &config,
        format!(
            "[run]\nname = \"sw\"\n\n[data]\nkind = \"mnist\"\npath = \"{}\"\nmax_train_samples = 200\n\n\
             [model]\narch = \"mlp\"\n\n[mlp]\nhidden = [16]\n\n\
             [train]\nepochs = 2\nbatch_size = 32\nmetric = \"val_accuracy\"\n",
            bundled_mnist().display()
        ),
    )
    .unwrap();
    let args: Vec<String> = [
        "sweep",
        "--config",
        config.to_str().unwrap(),
        "--grid",
        "optim.lr=1e-3,3e-2",
        "--grid",
        "mlp.hidden=[8],[16]",
    ]
    .map(String::from)
    .to_vec();
    run_largo(dir, &args);
    dir.join("runs/sw")
}

/// Runs `largo report` and returns the HTML written.
fn report(dir: &Path, run: &Path, out: &Path) -> String {
    let output = largo(
        dir,
        &[
            "report",
            "--run",
            run.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let stdout = ok(&output);
    assert!(stdout.contains(out.to_str().unwrap()), "{stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("note:"),
        "every part of the report should be built:\n{stderr}"
    );
    std::fs::read_to_string(out).expect("the report is written")
}

/// Text checks: one HTML5 document holding `needles`, with images only as inline PNGs.
fn check_html(html: &str, needles: &[&str], min_images: usize) -> usize {
    assert!(html.starts_with("<!DOCTYPE html>"), "not HTML5");
    assert!(html.contains("<meta charset=\"utf-8\">"));
    for needle in needles {
        assert!(html.contains(needle), "the report lacks {needle:?}");
    }
    for external in [
        "src=\"http://",
        "src=\"https://",
        "href=\"http",
        "url(http",
        "<script",
    ] {
        assert!(
            !html.contains(external),
            "the report must be self-contained, found {external:?}"
        );
    }
    let images = html.matches("<img").count();
    assert!(
        images >= min_images,
        "{images} images, expected ≥ {min_images}"
    );
    assert_eq!(
        html.matches("src=\"data:image/png;base64,").count(),
        images,
        "every image is an inlined PNG"
    );
    images
}

/// What the page shows for each image: [complete, naturalWidth, naturalHeight, alt].
const IMAGES_SCRIPT: &str = "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt]);";

/// Opens `file` and returns each image's state once all have finished loading (or after 20 s),
/// and the browser's console log.
fn open_in_browser(browser: &Browser, file: &Path) -> (Vec<Value>, Vec<Value>) {
    browser.navigate(&Browser::file_url(file)).unwrap();
    let start = std::time::Instant::now();
    let images = loop {
        let v = browser.execute(IMAGES_SCRIPT, Vec::new()).unwrap();
        let images = v.as_array().cloned().unwrap_or_default();
        let loading = images.iter().any(|i| i[0] != Value::Bool(true));
        if !loading || start.elapsed().as_secs() > 20 {
            break images;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    (images, browser.browser_log().unwrap())
}

/// In Chromium: `expected` images, each decoded to a non-empty bitmap, and no SEVERE entry
/// in the console.
fn check_in_browser(browser: &Browser, file: &Path, expected: usize) {
    let (images, log) = open_in_browser(browser, file);
    assert_eq!(images.len(), expected, "images in the DOM: {images:?}");
    for img in &images {
        let decoded = img[0] == Value::Bool(true) && img[1].as_u64().unwrap_or(0) > 0;
        assert!(decoded, "an image did not decode: {img}");
    }
    let severe: Vec<&Value> = log.iter().filter(|e| e["level"] == "SEVERE").collect();
    assert!(severe.is_empty(), "console errors: {severe:?}");
}

#[test]
fn a_classifier_report_shows_its_confusion_matrix_and_renders_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let run = train_classifier(t);
    let out = t.join("mlp.html");
    let html = report(t, &run, &out);
    let images = check_html(
        &html,
        &[
            "Summary and metrics",
            "gap (validation − train)",
            "Curves",
            "Confusion matrix",
            "Per-class precision, recall and F1",
            "Explanations: pixel attributions",
            "Configuration",
            "hidden = [32]",
            "arch = &quot;mlp&quot;",
        ],
        3,
    );
    // The default output lies in the run directory.
    let stdout = ok(&largo(t, &["report", "--run", "runs/mlp"]));
    assert!(stdout.contains("runs/mlp/report.html"), "{stdout}");
    assert!(run.join("report.html").is_file());
    // An output directory that does not exist is named, and nothing is written.
    fails_with(
        &largo(
            t,
            &["report", "--run", "runs/mlp", "--out", "no/such/dir/r.html"],
        ),
        "no/such/dir/r.html",
    );

    let Some(browser) = Browser::start_or_skip("classifier report") else {
        return;
    };
    check_in_browser(&browser, &out, images);

    // The checks can fail: a broken image and a console error are both caught.
    let broken = t.join("broken.html");
    std::fs::write(
        &broken,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><link rel=\"icon\" href=\"data:,\"></head><body>\
         <img src=\"data:image/png;base64,AAAA\" alt=\"x\"><script>console.error('boom')</script></body></html>",
    )
    .unwrap();
    let (imgs, log) = open_in_browser(&browser, &broken);
    assert_eq!(imgs.len(), 1);
    assert_eq!(imgs[0][1], 0, "a corrupt PNG has no width: {:?}", imgs[0]);
    assert!(
        log.iter()
            .any(|e| e["level"] == "SEVERE" && e["message"].as_str().unwrap_or("").contains("boom")),
        "console.error is logged as SEVERE: {log:?}"
    );
}

#[test]
fn a_language_model_report_shows_samples_and_attention_and_renders_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let run = train_gpt(t);
    let out = t.join("gpt.html");
    let html = report(t, &run, &out);
    let images = check_html(
        &html,
        &[
            "Summary and metrics",
            "perplexity",
            "Samples",
            "seed 1",
            "seed 3",
            "Attention maps",
            "every head: 1 layer × 2 heads",
            "Configuration",
            "[gpt]",
            "n_embd = 32",
        ],
        3,
    );
    let Some(browser) = Browser::start_or_skip("language-model report") else {
        return;
    };
    check_in_browser(&browser, &out, images);
}

#[test]
fn a_sweep_report_shows_the_leaderboard_and_each_hyperparameter() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let sweep = run_sweep(t);
    let out = t.join("sweep.html");
    let html = report(t, &sweep, &out);
    let images = check_html(
        &html,
        &[
            "largo sweep report: sw",
            "Leaderboard",
            "<tr class=\"best\">",
            "t000",
            "t003",
            "optim.lr vs val_accuracy",
            "mlp.hidden vs val_accuracy",
            "Validation curves",
            "Best config",
            "sw-best",
        ],
        3,
    );
    assert_eq!(
        images, 3,
        "two hyper-parameter charts and the trials' curves"
    );
    let Some(browser) = Browser::start_or_skip("sweep report") else {
        return;
    };
    check_in_browser(&browser, &out, images);
}

#[test]
fn report_refuses_what_is_not_a_run_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    fails_with(
        &largo(t, &["report", "--run", "runs/nope"]),
        "runs/nope: no such directory",
    );
    std::fs::create_dir_all(t.join("stuff")).unwrap();
    std::fs::write(t.join("stuff/notes.txt"), "hello").unwrap();
    fails_with(
        &largo(t, &["report", "--run", "stuff"]),
        "stuff: neither a training run",
    );
    assert!(!t.join("stuff/report.html").exists());
    fails_with(
        &largo(t, &["report", "--run", "stuff/notes.txt"]),
        "not a directory",
    );
    // A run whose config is broken is refused by name too.
    std::fs::create_dir_all(t.join("runs/bad")).unwrap();
    std::fs::write(
        t.join("runs/bad/config.toml"),
        "[train]\nepochs = \"many\"\n",
    )
    .unwrap();
    std::fs::write(t.join("runs/bad/metrics.jsonl"), "").unwrap();
    fails_with(&largo(t, &["report", "--run", "runs/bad"]), "train.epochs");
    assert!(!t.join("runs/bad/report.html").exists());
}
