//! Drives the real binary through LoRA fine-tuning of a pretrained model: `largo finetune` on
//! text and on chat JSONL (a tiny Q8_0 GGUF with a chat template), the run's adapter loaded by
//! eval, generate and chat (as a run, and with --adapter on the base), exact resume, and the
//! bad inputs the issue lists.

mod common;

use common::{fails_with, largo, ok, repo};
use std::path::{Path, PathBuf};

/// A Llama GGUF (2 layers, hidden 64, vocabulary 424, Q8_0 matrices) with a ChatML template.
fn tiny_chat() -> PathBuf {
    repo().join("crates/largo/tests/fixtures/llama/tiny-chat.gguf")
}

/// Three small "plays" from the bundled corpus (the first 4 KB of each).
fn corpus(dir: &Path) -> PathBuf {
    let src = repo().join("data/shakespeare");
    let out = dir.join("plays");
    std::fs::create_dir_all(&out).unwrap();
    for name in ["hamlet_gut.txt", "macbeth_gut.txt", "lear_gut.txt"] {
        let text = std::fs::read_to_string(src.join(name)).unwrap();
        let cut = text.char_indices().nth(4000).map_or(text.len(), |(i, _)| i);
        std::fs::write(out.join(name), &text[..cut]).unwrap();
    }
    out
}

const TINY_RUN: &[&str] = &[
    "--set",
    "data.context=32",
    "--set",
    "train.max_steps=30",
    "--set",
    "train.eval_every=15",
    "--set",
    "train.eval_batches=2",
    "--set",
    "optim.lr=1e-2",
    "--no-progress",
];

fn finetune(dir: &Path, data: &Path, name: &str, extra: &[&str]) -> std::process::Output {
    let model = tiny_chat();
    let mut args = vec![
        "finetune",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(TINY_RUN);
    let name = format!("run.name={name}");
    args.extend_from_slice(&["--set", &name]);
    args.extend_from_slice(extra);
    largo(dir, &args)
}

/// The training losses of a run's metrics.jsonl, in order.
fn train_losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

fn perplexity_line(stdout: &str) -> String {
    stdout
        .lines()
        .find(|l| l.starts_with("perplexity"))
        .unwrap_or_else(|| panic!("no perplexity in {stdout}"))
        .to_string()
}

#[test]
fn a_text_finetune_is_a_peft_adapter_that_eval_generate_and_chat_load() {
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus(tmp.path());
    let out = ok(&finetune(tmp.path(), &data, "sonnets", &[]));
    assert!(out.contains("done: 30 steps"), "{out}");
    let run = tmp.path().join("runs/sonnets");
    let losses = train_losses(&run);
    assert!(
        losses.last().unwrap() < &(0.9 * losses[0]),
        "the loss should fall: {losses:?}"
    );
    // PEFT's layout plus largo's config.json naming the base.
    for dir in ["best", "model"] {
        for file in [
            "adapter_config.json",
            "adapter_model.safetensors",
            "config.json",
        ] {
            assert!(run.join(dir).join(file).is_file(), "{dir}/{file}");
        }
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("best/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["arch"], "llama");
    let base = std::fs::canonicalize(tiny_chat()).unwrap();
    assert_eq!(config["llama"]["base"], base.to_str().unwrap());
    let peft: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("best/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(peft["peft_type"], "LORA");
    assert_eq!(peft["r"], 8);
    assert_eq!(peft["lora_dropout"], 0.05);
    assert_eq!(peft["target_modules"].as_array().unwrap().len(), 7);

    // The run as a model equals the base with --adapter, and differs from the base alone.
    let text = data.join("macbeth_gut.txt");
    let text = text.to_str().unwrap();
    let score = |args: &[&str]| {
        let mut all = vec!["eval", "--text", text, "--context", "32"];
        all.extend_from_slice(args);
        perplexity_line(&ok(&largo(tmp.path(), &all)))
    };
    let base_path = tiny_chat();
    let base_path = base_path.to_str().unwrap();
    let as_run = score(&["--model", "runs/sonnets"]);
    let with_adapter = score(&["--model", base_path, "--adapter", "runs/sonnets"]);
    let alone = score(&["--model", base_path]);
    assert_eq!(as_run, with_adapter);
    assert_ne!(as_run, alone);
    let ppl = |line: &str| -> f64 { line.split_whitespace().nth(1).unwrap().parse().unwrap() };
    assert!(
        ppl(&as_run) < ppl(&alone),
        "the adapter should fit the plays better: {as_run} vs {alone}"
    );

    let generated = ok(&largo(
        tmp.path(),
        &[
            "generate",
            "--model",
            "runs/sonnets",
            "--prompt",
            "KING",
            "--max-tokens",
            "8",
        ],
    ));
    assert!(generated.starts_with("KING"), "{generated}");
    ok(&largo(
        tmp.path(),
        &[
            "chat",
            "--model",
            "runs/sonnets",
            "--message",
            "hello",
            "--max-tokens",
            "4",
        ],
    ));
    // An adapter on a model that already carries one is refused.
    fails_with(
        &largo(
            tmp.path(),
            &[
                "eval",
                "--model",
                "runs/sonnets",
                "--adapter",
                "runs/sonnets",
                "--text",
                text,
            ],
        ),
        "already is a fine-tuned model",
    );
}

#[test]
fn a_stopped_finetune_resumes_bit_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus(tmp.path());
    ok(&finetune(tmp.path(), &data, "whole", &[]));
    ok(&finetune(
        tmp.path(),
        &data,
        "halves",
        &["--set", "train.stop_at=15"],
    ));
    let resumed = ok(&largo(
        tmp.path(),
        &["finetune", "--resume", "runs/halves", "--no-progress"],
    ));
    assert!(resumed.contains("done: 30 steps"), "{resumed}");
    let runs = tmp.path().join("runs");
    for file in ["adapter_model.safetensors", "adapter_config.json"] {
        let a = std::fs::read(runs.join("whole/model").join(file)).unwrap();
        let b = std::fs::read(runs.join("halves/model").join(file)).unwrap();
        assert!(a == b, "{file} differs after resuming");
    }
}

fn write_chat(dir: &Path, lines: &[String]) -> PathBuf {
    let path = dir.join("chat.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn conversation(question: &str, answer: &str) -> String {
    serde_json::json!({"messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
    ]})
    .to_string()
}

#[test]
fn a_chat_finetune_learns_the_replies() {
    let tmp = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..12)
        .map(|i| conversation(&format!("question {i}?"), "blue"))
        .collect();
    let data = write_chat(tmp.path(), &lines);
    let extra = ["--set", "optim.lr=3e-2", "--set", "data.context=128"];
    let out = finetune(tmp.path(), &data, "chat", &extra);
    let stdout = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("11 training conversations") && stderr.contains("1 validation"),
        "{stderr}"
    );
    assert!(stdout.contains("next: largo chat --model"), "{stdout}");
    // Only the reply is trained on: its few tokens are learned fast.
    let losses = train_losses(&tmp.path().join("runs/chat"));
    assert!(
        losses.last().unwrap() < &(0.5 * losses[0]),
        "losses {losses:?}"
    );
    let reply = ok(&largo(
        tmp.path(),
        &[
            "chat",
            "--model",
            "runs/chat",
            "--message",
            "question 40?",
            "--temperature",
            "0",
            "--max-tokens",
            "8",
        ],
    ));
    assert!(reply.contains("blue"), "{reply}");
}

#[test]
fn bad_finetune_input_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let good = conversation("q?", "a");
    let cases: &[(String, &str)] = &[
        (
            format!("{good}\n{{not json"),
            "chat.jsonl: line 2: not JSON",
        ),
        (
            format!("{good}\n\n{{\"turns\": []}}"),
            "chat.jsonl: line 3: expected an object with a \"messages\" list",
        ),
        (
            format!("{good}\n{{\"messages\": [{{\"role\": \"user\"}}]}}"),
            "line 2: messages[0] lacks \"content\"",
        ),
        (
            format!("{good}\n{{\"messages\": [{{\"content\": \"hi\"}}]}}"),
            "line 2: messages[0] lacks \"role\"",
        ),
        (
            format!(
                "{good}\n{}",
                conversation("x", "y").replace("assistant", "user")
            ),
            "line 2: no \"assistant\" message",
        ),
    ];
    for (text, want) in cases {
        let data = write_chat(tmp.path(), std::slice::from_ref(text));
        fails_with(&finetune(tmp.path(), &data, "bad", &[]), want);
        assert!(
            !tmp.path().join("runs/bad").exists(),
            "a failed run leaves nothing behind"
        );
    }
    let data = write_chat(tmp.path(), &[good.clone(), good.clone()]);
    fails_with(
        &finetune(
            tmp.path(),
            &data,
            "bad",
            &["--set", "lora.targets=[\"q\", \"attn\"]"],
        ),
        "unknown LoRA target module \"attn\": valid are q k v o gate up down",
    );
    fails_with(
        &finetune(tmp.path(), &data, "bad", &["--set", "lora.r=100000"]),
        "lora.r = 100000 exceeds the rank of q_proj ([64, 64]): at most 64",
    );
    fails_with(
        &finetune(tmp.path(), &data, "bad", &["--set", "data.context=4096"]),
        "data.context = 4096 exceeds the model's context of 1024",
    );
    let not_a_model = tmp.path().join("notes.txt");
    std::fs::write(&not_a_model, "hello").unwrap();
    fails_with(
        &largo(
            tmp.path(),
            &[
                "finetune",
                "--model",
                not_a_model.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
            ],
        ),
        "is not a pretrained model",
    );
    // An adapter made for another base (hidden 32, not 64) is refused with the tensor's name.
    let other = repo().join("crates/largo/tests/fixtures/lora/all");
    let base = tiny_chat();
    fails_with(
        &largo(
            tmp.path(),
            &[
                "generate",
                "--model",
                base.to_str().unwrap(),
                "--adapter",
                other.to_str().unwrap(),
                "--prompt",
                "hi",
            ],
        ),
        "adapter tensor base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight has shape [4, 32], the base model needs [4, 64]",
    );
    fails_with(
        &largo(
            tmp.path(),
            &[
                "generate",
                "--model",
                base.to_str().unwrap(),
                "--adapter",
                "no-such-adapter",
                "--prompt",
                "hi",
            ],
        ),
        "no-such-adapter",
    );
}
