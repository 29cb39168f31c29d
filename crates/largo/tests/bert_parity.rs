//! BERT sentence embeddings against sentence-transformers.
//!
//! * `tiny-bert/`: a small random BERT saved by sentence-transformers (tools/gen_tiny_bert.py),
//!   in three layouts (mean + Normalize from model.safetensors; cls+max+mean_sqrt_len from
//!   pytorch_model.bin; float16 weights). Always runs.
//! * all-MiniLM-L6-v2 (tools/gen_bert_fixtures.py): the real model, read from `$LARGO_MINILM` or
//!   `../shared/models/all-MiniLM-L6-v2`; 24 sentences (Unicode, CJK, empty, > 256 tokens).

use largo::models::bert::BertScratch;
use largo::models::sentence::SentenceEncoder;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn as_f32(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn as_ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// cosine ≥ 0.99999 and max |Δ| ≤ 1e-4 (the bar), reported per sentence.
fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: embedding width");
    let dot: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| (*a as f64) * (*b as f64))
        .sum();
    let na: f64 = got.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt();
    let cos = dot / (na * nb).max(1e-30);
    let max_diff = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        cos >= 0.99999 && max_diff <= 1e-4,
        "{what}: cosine {cos:.7}, max |Δ| {max_diff:e}"
    );
}

fn check_layout(layout: &str) {
    let text = std::fs::read_to_string(fixtures().join("tiny-bert/reference.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let sentences: Vec<&str> = reference["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let enc = SentenceEncoder::load(&fixtures().join("tiny-bert").join(layout)).unwrap();
    let want = &reference[layout];
    // Token ids first: a tokenizer or truncation difference shows up here, not as a vague
    // embedding mismatch.
    let ids = enc.tokenize(&sentences).unwrap();
    for (i, got) in ids.iter().enumerate() {
        assert_eq!(
            got,
            &as_ids(&want["input_ids"][i]),
            "{layout}: ids of {:?}",
            sentences[i]
        );
    }
    // Batches of 5 mix lengths, so packing and per-sequence attention are exercised.
    let got = enc.embed(&sentences, 5).unwrap();
    for (i, e) in got.iter().enumerate() {
        assert_close(
            &format!("{layout} {:?}", sentences[i]),
            e,
            &as_f32(&want["embeddings"][i]),
        );
    }
}

#[test]
fn tiny_bert_mean_pooling_and_normalize_match_sentence_transformers() {
    check_layout("mean");
}

#[test]
fn tiny_bert_cls_max_sqrt_len_pooling_from_pytorch_model_bin() {
    check_layout("cls-max");
}

#[test]
fn tiny_bert_float16_weights_are_converted() {
    check_layout("f16");
}

#[test]
fn packed_batch_equals_one_sequence_at_a_time() {
    let enc = SentenceEncoder::load(&fixtures().join("tiny-bert/mean")).unwrap();
    let texts = [
        "a short one",
        "",
        "a somewhat longer sentence with more words in it",
    ];
    let ids = enc.tokenize(&texts).unwrap();
    let seqs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let mut scratch = BertScratch::default();
    let batch = enc.embed_ids(&seqs, &mut scratch).unwrap();
    for (i, s) in seqs.iter().enumerate() {
        let alone = enc.embed_ids(&[s], &mut scratch).unwrap();
        let diff = alone[0]
            .iter()
            .zip(&batch[i])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-6, "sequence {i}: {diff}");
    }
}

fn minilm_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("LARGO_MINILM")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/all-MiniLM-L6-v2")
        });
    dir.join("model.safetensors").is_file().then_some(dir)
}

#[test]
fn minilm_embeddings_match_sentence_transformers() {
    let Some(dir) = minilm_dir() else {
        eprintln!("all-MiniLM-L6-v2 not found (set LARGO_MINILM): real-model parity not run");
        return;
    };
    let text = std::fs::read_to_string(fixtures().join("minilm.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let enc = SentenceEncoder::load(&dir).unwrap();
    assert!(enc.normalize, "modules.json declares Normalize");
    assert_eq!(enc.max_seq_length, 256);
    let items = reference["sentences"].as_array().unwrap();
    let texts: Vec<&str> = items.iter().map(|s| s["text"].as_str().unwrap()).collect();
    let ids = enc.tokenize(&texts).unwrap();
    for (i, item) in items.iter().enumerate() {
        assert_eq!(ids[i], as_ids(&item["input_ids"]), "ids of {:?}", texts[i]);
    }
    assert!(
        ids.iter().any(|s| s.len() == 256),
        "one sentence is truncated at 256 tokens"
    );
    let got = enc.embed(&texts, 8).unwrap();
    for (i, item) in items.iter().enumerate() {
        assert_close(
            &format!("{:?}", texts[i]),
            &got[i],
            &as_f32(&item["embedding"]),
        );
    }
}

#[test]
fn attention_maps_hold_one_distribution_per_query_for_every_layer_and_head() {
    let enc = SentenceEncoder::load(&fixtures().join("tiny-bert/mean")).unwrap();
    let (tokens, maps) = enc.attention_maps("to be or not to be").unwrap();
    let (t, heads) = (tokens.len(), enc.bert.cfg.num_attention_heads);
    assert_eq!(tokens.first().map(String::as_str), Some("[CLS]"));
    assert_eq!(maps.len(), enc.bert.cfg.num_hidden_layers);
    for layer in &maps {
        assert_eq!(layer.len(), 1, "one sequence");
        assert_eq!(layer[0].len(), heads * t * t);
        for row in layer[0].chunks_exact(t) {
            let sum: f32 = row.iter().sum();
            assert!(
                (sum - 1.0).abs() < 1e-5 && row.iter().all(|&p| p >= 0.0),
                "{row:?}"
            );
        }
    }
}
