//! Tokenizers built from GGUF metadata give the ids transformers gives
//! (`AutoTokenizer.from_pretrained(dir, gguf_file=…)`), on hard text; chat templates render as
//! transformers' `apply_chat_template` does. References: tools/gen_gguf_tokenizer_fixtures.py.

use largo::data::chat_template::{ChatMessage, ChatTemplate};
use largo::data::llm_tokenizer::{tokenizer_from_gguf, LlmTokenizer};
use largo::io::gguf::GgufFile;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    ids_special: Vec<u32>,
    decode: String,
    /// Set where the reference itself is wrong (an id past the file's vocabulary).
    #[serde(default)]
    skip: Option<String>,
}

#[derive(Deserialize)]
struct Chat {
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    rendered: String,
}

#[derive(Deserialize)]
struct ExtraTemplate {
    name: String,
    template: String,
    messages: Vec<ChatMessage>,
    rendered: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Fixture {
    gguf: String,
    cases: Vec<Case>,
    #[serde(default)]
    bos_token: Option<String>,
    #[serde(default)]
    eos_token: Option<String>,
    #[serde(default)]
    chat_template: Option<String>,
    #[serde(default)]
    chats: Vec<Chat>,
    #[serde(default)]
    extra_templates: Vec<ExtraTemplate>,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf")
}

fn smollm_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn load_fixture(name: &str) -> Fixture {
    let path = fixtures().join(format!("tokenizer_{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every case's ids (with and without special tokens) and decode equal the reference's, and
/// decoding token by token through the stream decoder gives the same text.
fn check_cases(name: &str, tok: &LlmTokenizer, cases: &[Case]) {
    let mut failures = Vec::new();
    let checked: Vec<&Case> = cases.iter().filter(|c| c.skip.is_none()).collect();
    assert!(
        checked.len() >= 50,
        "{name}: only {} cases to check",
        checked.len()
    );
    for case in checked {
        let ids = tok.encode(&case.text, false).unwrap();
        if ids != case.ids {
            failures.push(format!(
                "{name}: {:?}\n  got      {ids:?}\n  expected {:?}",
                case.text, case.ids
            ));
            continue;
        }
        let ids_special = tok.encode(&case.text, true).unwrap();
        if ids_special != case.ids_special {
            failures.push(format!(
                "{name} (special): {:?}\n  got      {ids_special:?}\n  expected {:?}",
                case.text, case.ids_special
            ));
        }
        let decoded = tok.decode(&ids).unwrap();
        if decoded != case.decode {
            failures.push(format!(
                "{name} decode: {:?}\n  got      {decoded:?}\n  expected {:?}",
                case.text, case.decode
            ));
        }
        let mut stream = tok.stream();
        let mut streamed = String::new();
        for &id in &ids {
            streamed.push_str(&stream.push(id).unwrap());
        }
        streamed.push_str(&stream.flush().unwrap());
        if streamed != case.decode {
            failures.push(format!(
                "{name} streamed decode: {:?}\n  got      {streamed:?}\n  expected {:?}",
                case.text, case.decode
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from transformers:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn check_tiny(name: &str) -> LlmTokenizer {
    let fixture = load_fixture(name);
    let gguf = GgufFile::open(fixtures().join(&fixture.gguf)).unwrap();
    let tok = tokenizer_from_gguf(&gguf).unwrap();
    check_cases(name, &tok, &fixture.cases);
    tok
}

#[test]
fn gpt2_llama_bpe_matches_transformers() {
    let tok = check_tiny("llama_bpe");
    assert!(tok.add_bos);
    let eot = tok.token_to_id("<|eot_id|>").unwrap();
    assert!(tok.is_end_of_turn(eot) && tok.is_end_of_turn(tok.eos.unwrap()));
}

#[test]
fn gpt2_qwen2_matches_transformers() {
    let tok = check_tiny("qwen2");
    assert!(!tok.add_bos);
    assert!(tok.is_end_of_turn(tok.token_to_id("<|im_end|>").unwrap()));
}

#[test]
fn gpt2_gpt2_matches_transformers() {
    check_tiny("gpt2");
}

#[test]
fn llama_sentencepiece_matches_transformers() {
    let tok = check_tiny("spm");
    assert!(tok.add_bos);
    assert_eq!((tok.bos, tok.eos), (Some(1), Some(2)));
}

#[test]
fn smollm2_gguf_matches_transformers() {
    let fixture = load_fixture("smollm");
    let path = smollm_path();
    if !path.exists() {
        eprintln!(
            "skipping smollm2_gguf_matches_transformers: {} not found",
            path.display()
        );
        return;
    }
    assert_eq!(
        path.file_name().unwrap().to_str(),
        Some(fixture.gguf.as_str())
    );
    let gguf = GgufFile::open(&path).unwrap();
    let tok = tokenizer_from_gguf(&gguf).unwrap();
    check_cases("smollm", &tok, &fixture.cases);
    assert_eq!((tok.bos, tok.eos, tok.add_bos), (Some(1), Some(2), false));
    assert_eq!(tok.bos_token(), fixture.bos_token);
    assert_eq!(tok.eos_token(), fixture.eos_token);
    assert!(tok.is_end_of_turn(2));
    // The template in the file renders the conversations as transformers does.
    let source = tok
        .chat_template
        .clone()
        .expect("SmolLM2 has a chat template");
    assert_eq!(Some(&source), fixture.chat_template.as_ref());
    let template = ChatTemplate::with_name("SmolLM2", source).unwrap();
    for chat in &fixture.chats {
        let got = template
            .render(
                &chat.messages,
                chat.add_generation_prompt,
                &tok.bos_token().unwrap(),
                &tok.eos_token().unwrap(),
            )
            .unwrap();
        assert_eq!(got, chat.rendered);
    }
}

/// The committed copy of SmolLM2's template, so this runs without the model file.
#[test]
fn smollm2_chat_template_renders_like_transformers() {
    let fixture = load_fixture("smollm");
    let source = std::fs::read_to_string(fixtures().join("smollm2_chat_template.jinja")).unwrap();
    assert_eq!(Some(&source), fixture.chat_template.as_ref());
    let template = ChatTemplate::with_name("SmolLM2", source).unwrap();
    let (bos, eos) = (fixture.bos_token.unwrap(), fixture.eos_token.unwrap());
    assert!(fixture.chats.len() >= 6);
    for chat in &fixture.chats {
        let got = template
            .render(&chat.messages, chat.add_generation_prompt, &bos, &eos)
            .unwrap();
        assert_eq!(got, chat.rendered);
    }
}

/// tojson, raise_exception, loop controls, namespace and Python string methods render as
/// transformers' Jinja2 environment renders them, and a raised exception is a clear error.
#[test]
fn template_features_render_like_transformers() {
    let fixture = load_fixture("smollm");
    let (bos, eos) = (fixture.bos_token.unwrap(), fixture.eos_token.unwrap());
    assert!(!fixture.extra_templates.is_empty());
    for extra in &fixture.extra_templates {
        let template = ChatTemplate::with_name(&extra.name, extra.template.clone()).unwrap();
        let got = template.render(&extra.messages, true, &bos, &eos);
        match (&extra.rendered, &extra.error) {
            (Some(expected), None) => assert_eq!(&got.unwrap(), expected, "{}", extra.name),
            (None, Some(message)) => {
                let e = got.unwrap_err().to_string();
                assert!(
                    e.contains(&extra.name) && e.contains(message.as_str()),
                    "{}: {e}",
                    extra.name
                );
            }
            _ => panic!("fixture {}: rendered or error expected", extra.name),
        }
    }
}

/// A GGUF whose tokenizer is missing, of an unknown model, or of an unknown pre-tokenizer is
/// an error naming the key and value.
#[test]
fn unsupported_tokenizers_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    // The GGUF reader's tiny fixture has no tokenizer keys.
    let gguf = GgufFile::open(fixtures().join("tiny.gguf")).unwrap();
    let e = tokenizer_from_gguf(&gguf).unwrap_err().to_string();
    assert!(e.contains("tokenizer.ggml.model"), "{e}");

    let src = std::fs::read(fixtures().join("tiny_qwen2.gguf")).unwrap();
    for (from, to, key) in [
        (&b"qwen2"[..], &b"qwen9"[..], "tokenizer.ggml.pre"),
        (&b"gpt2"[..], &b"gpt7"[..], "tokenizer.ggml.model"),
    ] {
        let patched = patch_string_value(&src, key, from, to);
        let path = dir.path().join("patched.gguf");
        std::fs::write(&path, patched).unwrap();
        let gguf = GgufFile::open(&path).unwrap();
        let e = tokenizer_from_gguf(&gguf).unwrap_err().to_string();
        let value = String::from_utf8(to.to_vec()).unwrap();
        assert!(
            e.contains(key) && e.contains(&value) && e.contains("supported"),
            "{e}"
        );
    }
}

/// Replaces the value of string key `key` (same length), found as key bytes followed by the
/// type (8 = string), the length and the value.
fn patch_string_value(src: &[u8], key: &str, from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut needle = Vec::new();
    needle.extend_from_slice(key.as_bytes());
    needle.extend_from_slice(&8u32.to_le_bytes());
    needle.extend_from_slice(&(from.len() as u64).to_le_bytes());
    needle.extend_from_slice(from);
    let at = src
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .unwrap_or_else(|| panic!("{key} not found"));
    let mut out = src.to_vec();
    let start = at + needle.len() - from.len();
    out[start..start + to.len()].copy_from_slice(to);
    out
}

#[test]
fn stream_decoder_holds_back_partial_characters() {
    let fixture = load_fixture("spm");
    let gguf = GgufFile::open(fixtures().join(&fixture.gguf)).unwrap();
    let tok = tokenizer_from_gguf(&gguf).unwrap();
    // An emoji outside the tiny vocabulary falls back to four byte tokens.
    let ids = tok.encode("a 😀 b", false).unwrap();
    let mut stream = tok.stream();
    let pieces: Vec<String> = ids.iter().map(|&id| stream.push(id).unwrap()).collect();
    for p in &pieces {
        assert!(!p.contains('\u{FFFD}'), "{pieces:?}");
    }
    assert!(pieces.iter().any(|p| p.contains('😀')), "{pieces:?}");
    assert_eq!(pieces.concat() + &stream.flush().unwrap(), "a 😀 b");
}
