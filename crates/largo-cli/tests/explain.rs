//! Drives `largo explain attention | saliency | tokens` on real trained models (a digit MLP, a
//! character GPT, the tiny BERT fixture), and every bad input the issue lists.

mod common;

use common::{bundled_mnist, fails_with, largo, ok, repo, train_digit_classifier};
use largo::data::mnist::Mnist;
use largo::explain::saliency::{attribute, baseline_input, Baseline, Method};
use std::path::{Path, PathBuf};

fn train_gpt(dir: &Path) -> PathBuf {
    let text: String = std::fs::read_to_string(repo().join("data/shakespeare/hamlet_gut.txt"))
        .unwrap()
        .chars()
        .take(20_000)
        .collect();
    std::fs::write(dir.join("hamlet.txt"), text).unwrap();
    let sets = [
        "data.path=hamlet.txt",
        "run.name=gpt",
        "gpt.n_layer=2",
        "gpt.n_head=2",
        "gpt.n_embd=32",
        "gpt.ff=64",
        "gpt.block_size=32",
        "train.batch_size=8",
        "train.max_steps=30",
        "train.eval_every=30",
        "train.eval_batches=2",
        "schedule.warmup_steps=5",
    ];
    let mut args = vec!["train"];
    for s in &sets {
        args.extend(["--set", s]);
    }
    ok(&largo(dir, &args));
    dir.join("runs/gpt")
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_str(ok(out).trim()).expect("JSON on stdout")
}

#[test]
fn attention_maps_of_a_gpt_and_a_bert() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run = train_gpt(dir);
    let run_s = run.to_str().unwrap();

    // Every map of the GPT: 2 layers × 2 heads, rows are distributions, causal.
    let out = largo(
        dir,
        &[
            "explain",
            "attention",
            "--model",
            run_s,
            "--text",
            "KING:",
            "--out",
            "a.png",
            "--json",
        ],
    );
    let v = json(&out);
    assert_eq!(v["tokens"].as_array().unwrap().len(), 5);
    let maps = v["maps"].as_array().unwrap();
    assert_eq!(maps.len(), 4);
    for m in maps {
        for (q, row) in m["weights"].as_array().unwrap().iter().enumerate() {
            let row: Vec<f64> = row
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            assert!(
                (row.iter().sum::<f64>() - 1.0).abs() < 1e-4,
                "row {q} sums to 1"
            );
            assert!(
                row[q + 1..].iter().all(|&w| w == 0.0),
                "no attention to the future"
            );
        }
    }
    let png = image::open(dir.join("a.png")).expect("a PNG");
    assert!(png.width() > 100 && png.height() > 100);

    // One head of one layer.
    let out = largo(
        dir,
        &[
            "explain",
            "attention",
            "--model",
            run_s,
            "--text",
            "KING:",
            "--layer",
            "1",
            "--head",
            "0",
            "--out",
            "one.png",
            "--json",
        ],
    );
    let v = json(&out);
    assert_eq!(v["maps"].as_array().unwrap().len(), 1);
    assert_eq!(
        (
            v["maps"][0]["layer"].as_u64(),
            v["maps"][0]["head"].as_u64()
        ),
        (Some(1), Some(0))
    );

    // A Hugging Face BERT: [CLS] … [SEP], full (not causal) attention.
    let bert = repo().join("crates/largo/tests/fixtures/tiny-bert/mean");
    let out = largo(
        dir,
        &[
            "explain",
            "attention",
            "--model",
            bert.to_str().unwrap(),
            "--text",
            "the cat sat",
            "--out",
            "b.png",
            "--json",
        ],
    );
    let v = json(&out);
    let tokens = v["tokens"].as_array().unwrap();
    assert_eq!(tokens.first().unwrap(), "[CLS]");
    assert_eq!(tokens.last().unwrap(), "[SEP]");
    let first_row = &v["maps"][0]["weights"][0];
    assert!(first_row
        .as_array()
        .unwrap()
        .iter()
        .all(|w| w.as_f64().unwrap() > 0.0));
    assert!(dir.join("b.png").is_file());

    // Bad input: out-of-range layer and head, a text longer than the context, an MLP.
    fails_with(
        &largo(
            dir,
            &[
                "explain",
                "attention",
                "--model",
                run_s,
                "--text",
                "KING",
                "--layer",
                "2",
            ],
        ),
        "--layer 2 is out of range: the model has 2 layers (0–1)",
    );
    fails_with(
        &largo(
            dir,
            &[
                "explain",
                "attention",
                "--model",
                run_s,
                "--text",
                "KING",
                "--head",
                "5",
            ],
        ),
        "--head 5 is out of range: the model has 2 heads per layer (0–1)",
    );
    let long = "a".repeat(40);
    fails_with(
        &largo(
            dir,
            &["explain", "attention", "--model", run_s, "--text", &long],
        ),
        "the text is 40 tokens, longer than the model's context of 32 tokens",
    );
    let long_bert = "word ".repeat(600);
    fails_with(
        &largo(
            dir,
            &[
                "explain",
                "attention",
                "--model",
                bert.to_str().unwrap(),
                "--text",
                &long_bert,
            ],
        ),
        "longer than the model's max_seq_length",
    );
    assert!(
        !dir.join("attention.png").exists(),
        "no image after a failure"
    );

    // Token attributions: one score per token, an HTML page; not for an encoder.
    let out = largo(
        dir,
        &[
            "explain", "tokens", "--model", run_s, "--text", "KING:", "--html", "t.html", "--json",
        ],
    );
    let v = json(&out);
    assert_eq!(v["scores"].as_array().unwrap().len(), 5);
    assert!(v["probability"].as_f64().unwrap() > 0.0);
    let html = std::fs::read_to_string(dir.join("t.html")).unwrap();
    assert!(html.contains("<span style=\"background:rgb(") && html.contains("Token attributions"));
    let out = largo(
        dir,
        &[
            "explain", "tokens", "--model", run_s, "--text", "KING:", "--color", "always",
        ],
    );
    assert!(ok(&out).contains("\x1b[48;2;"), "ANSI colours when asked");
    fails_with(
        &largo(
            dir,
            &[
                "explain", "tokens", "--model", run_s, "--text", "KING", "--target", "ab",
            ],
        ),
        "--target \"ab\" is 2 tokens",
    );
    fails_with(
        &largo(
            dir,
            &[
                "explain",
                "tokens",
                "--model",
                bert.to_str().unwrap(),
                "--text",
                "x",
            ],
        ),
        "this is a Hugging Face encoder",
    );
    // Saliency of a language model is refused.
    let digit = repo().join("data/digits/3.png");
    fails_with(
        &largo(
            dir,
            &[
                "explain",
                "saliency",
                "--model",
                run_s,
                digit.to_str().unwrap(),
            ],
        ),
        "saliency explains an image classifier",
    );
}

#[test]
fn saliency_of_a_digit_classifier() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run = train_digit_classifier(dir, "mlp", 3);
    let run_s = run.to_str().unwrap();
    let digit = repo().join("data/digits/3.png");
    let digit_s = digit.to_str().unwrap();

    for (method, baseline) in [
        ("integrated-gradients", "black"),
        ("integrated-gradients", "blur"),
        ("gradient", "black"),
    ] {
        let out = largo(
            dir,
            &[
                "explain",
                "saliency",
                "--model",
                run_s,
                digit_s,
                "--method",
                method,
                "--baseline",
                baseline,
                "--out",
                "s.png",
                "--json",
            ],
        );
        let v = json(&out);
        assert_eq!(v["attributions"].as_array().unwrap().len(), 784);
        if method == "integrated-gradients" {
            let err = v["completeness_error"].as_f64().unwrap();
            assert!(err <= 0.01, "{baseline}: completeness error {err}");
        }
        let img = image::open(dir.join("s.png")).unwrap();
        assert_eq!(img.width(), 3 * 280 + 4 * 12);
    }
    let out = largo(
        dir,
        &[
            "explain", "saliency", "--model", run_s, digit_s, "--class", "7",
        ],
    );
    let text = ok(&out);
    assert!(
        text.contains("class 7 by integrated gradients") && text.contains("completeness"),
        "{text}"
    );

    fails_with(
        &largo(
            dir,
            &[
                "explain", "saliency", "--model", run_s, digit_s, "--class", "10",
            ],
        ),
        "--class 10 is out of range: the model has 10 classes (0–9)",
    );
    fails_with(
        &largo(
            dir,
            &["explain", "saliency", "--model", run_s, "missing.png"],
        ),
        "missing.png",
    );
    fails_with(
        &largo(
            dir,
            &["explain", "attention", "--model", run_s, "--text", "x"],
        ),
        "attention maps need a language model or a BERT encoder, and this is an mlp model",
    );

    // Completeness on 20 validation digits, straight through the library.
    let (mut model, info, norm) = largo::models::store::load_mlp(&run.join("best")).unwrap();
    let data = Mnist::load(&bundled_mnist(), 10).unwrap();
    let split = info.split.unwrap();
    let (_, val) = split.indices(data.len());
    let mut errors = Vec::new();
    for &i in val.iter().take(20) {
        let x: Vec<f32> = data.images[i * 784..(i + 1) * 784]
            .iter()
            .map(|&p| norm.apply(p))
            .collect();
        let b = baseline_input(Baseline::Black, &x, 28, &norm);
        let a = attribute(
            &mut model,
            &x,
            None,
            Method::IntegratedGradients { steps: 50 },
            &b,
        )
        .unwrap();
        errors.push(a.completeness_error.unwrap());
    }
    let max = errors.iter().cloned().fold(0.0, f64::max);
    let mean = errors.iter().sum::<f64>() / errors.len() as f64;
    println!("integrated gradients, 50 steps, black baseline, 20 digits: completeness error max {:.4}% mean {:.4}%", 100.0 * max, 100.0 * mean);
    assert!(max <= 0.01, "max completeness error {max}");
}
