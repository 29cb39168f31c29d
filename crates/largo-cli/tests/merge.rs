//! `largo merge` through the real binary: the tiny llama GGUF and Hugging Face fixtures with
//! the LoRA fixtures' adapters (their shapes fit), merged to a GGUF and to a directory, and
//! the refusals.

mod common;
use common::{fails_with, largo, ok, repo};
use largo::io::gguf::{GgmlType, GgufFile};
use largo::models::llama::Llama;
use largo::models::llama_cache::LlamaCache;
use largo::models::llama_load::LlmBase;
use largo::models::llama_merge::load_adapted_model;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    repo().join("crates/largo/tests/fixtures").join(name)
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn logits(model: &Llama) -> Vec<f32> {
    let mut cache = LlamaCache::new(&model.config);
    model.forward(&[1, 7, 30, 2, 55], &mut cache, true).unwrap()
}

/// max |a − b| / max |b|.
fn relative_error(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn merge_writes_a_gguf_and_a_directory_with_the_adapted_logits() {
    let dir = tempfile::tempdir().unwrap();
    let (base, adapter) = (fixture("llama/llama-f32.gguf"), fixture("lora/all"));
    let want = logits(&load_adapted_model(&base, Some(&adapter)).unwrap().model);

    let out = dir.path().join("merged.gguf");
    let args = ["merge", "--model", arg(&base), "--adapter", arg(&adapter)];
    let stdout = ok(&largo(
        dir.path(),
        &[&args[..], &["--out", arg(&out), "--type", "q8_0"]].concat(),
    ));
    assert!(
        stdout.contains("merged.gguf: 21 tensors (5 F32 + 16 Q8_0)"),
        "{stdout}"
    );
    assert!(stdout.contains("14 adapted matrices merged"), "{stdout}");
    let gguf = GgufFile::open(&out).unwrap();
    assert_eq!(
        gguf.tensor("blk.0.ffn_up.weight").unwrap().dtype,
        GgmlType::Q8_0
    );
    let merged = LlmBase::Gguf(out.clone()).load(true).unwrap();
    let err = relative_error(&logits(&merged), &want);
    assert!(err < 5e-2, "q8_0 merge: relative error {err}");

    // A directory, f32 by default; a GGUF base's tokenizer is not converted, and it says so.
    let out_dir = dir.path().join("merged-hf");
    let res = largo(dir.path(), &[&args[..], &["--out", arg(&out_dir)]].concat());
    let stdout = ok(&res);
    assert!(stdout.contains("21 tensors (21 f32)"), "{stdout}");
    assert!(
        stdout.contains("files: model.safetensors, config.json"),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        stderr.contains("note: no tokenizer was written"),
        "{stderr}"
    );
    assert_eq!(names_in(&out_dir), ["config.json", "model.safetensors"]);
    let merged = LlmBase::HuggingFace(out_dir.clone()).load(true).unwrap();
    let err = relative_error(&logits(&merged), &want);
    assert!(err < 1e-5, "f32 directory: relative error {err}");
    assert_eq!(names_in(dir.path()), ["merged-hf", "merged.gguf"]);
}

#[test]
fn merge_refuses_bad_requests_by_name_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = fixture("llama/llama-f32.gguf");
    let hf = fixture("lora/tiny-llama");
    let qv = fixture("lora/qv");
    let out = dir.path().join("out.gguf");
    let run = |model: &Path, adapter: &Path, out: &Path, extra: &[&str]| {
        let args = [
            "merge",
            "--model",
            arg(model),
            "--adapter",
            arg(adapter),
            "--out",
            arg(out),
        ];
        largo(dir.path(), &[&args[..], extra].concat())
    };
    fails_with(
        &run(&hf, &qv, &out, &[]),
        "is a Hugging Face directory: a .gguf output needs a GGUF base",
    );
    let missing = dir.path().join("no-such-adapter");
    fails_with(
        &run(&gguf, &missing, &out, &[]),
        &format!("{}: adapter directory not found", missing.display()),
    );
    fails_with(
        &run(&gguf, &qv, &dir.path().join("hf-out"), &["--type", "q8_0"]),
        "q8_0 is a GGUF type",
    );
    let no_adapter = largo(
        dir.path(),
        &["merge", "--model", arg(&gguf), "--out", arg(&out)],
    );
    fails_with(&no_adapter, "is a base model without an adapter");
    let bad_type = largo(
        dir.path(),
        &[
            "merge",
            "--model",
            arg(&gguf),
            "--adapter",
            arg(&qv),
            "--out",
            arg(&out),
            "--type",
            "q4_k",
        ],
    );
    assert!(!bad_type.status.success());
    assert!(String::from_utf8_lossy(&bad_type.stderr).contains("unknown type \"q4_k\""));
    assert!(
        names_in(dir.path()).is_empty(),
        "{:?}",
        names_in(dir.path())
    );

    // An existing output is refused without --force, replaced with it.
    std::fs::write(&out, b"keep").unwrap();
    fails_with(
        &run(&gguf, &qv, &out, &[]),
        "out.gguf: already exists (pass --force to replace it)",
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"keep");
    ok(&run(&gguf, &qv, &out, &["--force"]));
    assert!(GgufFile::open(&out).is_ok());
    assert_eq!(names_in(dir.path()), ["out.gguf"]);
}
