//! Llama-family decoders against transformers: tiny random `LlamaForCausalLM` and
//! `Qwen2ForCausalLM` (tools/gen_llama_fixtures.py) as Hugging Face directories and as GGUF
//! files in f32, Q8_0 and Q4_0, with transformers' f32 logits.

use largo::io::gguf::GgufFile;
use largo::models::llama::{Llama, LlamaCache};
use largo::models::llama_load::{load_gguf, load_gguf_with, load_hf};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama")
}

/// (token ids, logits [T, vocab]) that transformers computed for `kind`.
fn reference(kind: &str) -> (Vec<u32>, Vec<Vec<f32>>) {
    let text = std::fs::read_to_string(fixtures().join("reference.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = v[kind]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let logits = v[kind]["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    (ids, logits)
}

/// Largest |Δ| between the model's logits of every position and the reference.
fn max_diff(model: &Llama, ids: &[u32], want: &[Vec<f32>]) -> f32 {
    let mut cache = LlamaCache::new(&model.config);
    let got = model.forward(ids, &mut cache, true).unwrap();
    let v = model.config.vocab_size;
    assert_eq!(got.len(), ids.len() * v);
    got.chunks_exact(v)
        .zip(want)
        .flat_map(|(g, w)| g.iter().zip(w).map(|(a, b)| (a - b).abs()))
        .fold(0.0, f32::max)
}

fn gguf(name: &str) -> Llama {
    load_gguf_with(&GgufFile::open(fixtures().join(name)).unwrap(), true).unwrap()
}

#[test]
fn hugging_face_directories_give_transformers_logits() {
    for kind in ["llama", "qwen2"] {
        let model = load_hf(&fixtures().join(kind)).unwrap();
        let (ids, want) = reference(kind);
        let d = max_diff(&model, &ids, &want);
        assert!(d < 1e-4, "{kind}: max |Δ| {d}");
    }
}

#[test]
fn gguf_files_give_transformers_logits_of_their_dequantised_weights() {
    // Each GGUF against transformers running its weights as gguf.quants dequantises them
    // (llama's q/k rows un-permuted): the same numbers. Against the f32 model, 8-bit blocks
    // move the logits less than 4-bit ones, and neither is exact.
    let mut quant_error = std::collections::BTreeMap::new();
    for (file, kind) in [
        ("llama-f32.gguf", "llama"),
        ("qwen2-f32.gguf", "qwen2"),
        ("llama-q8_0.gguf", "llama"),
        ("qwen2-q8_0.gguf", "qwen2"),
        ("llama-q4_0.gguf", "llama"),
    ] {
        let model = gguf(file);
        let (ids, want) = reference(file);
        let d = max_diff(&model, &ids, &want);
        assert!(
            d < 1e-4,
            "{file}: max |Δ| {d} from transformers on the same weights"
        );
        let (_, f32_logits) = reference(kind);
        quant_error.insert(file, max_diff(&model, &ids, &f32_logits));
    }
    println!("max |Δ| from the f32 model: {quant_error:?}");
    assert!(quant_error["llama-f32.gguf"] < 1e-4);
    assert!(quant_error["llama-q8_0.gguf"] > 1e-3);
    assert!(quant_error["llama-q8_0.gguf"] < quant_error["llama-q4_0.gguf"]);
}

#[test]
fn decoding_token_by_token_through_the_cache_equals_one_pass() {
    let model = load_hf(&fixtures().join("llama")).unwrap();
    let (ids, _) = reference("llama");
    let v = model.config.vocab_size;
    let mut cache = LlamaCache::new(&model.config);
    let whole = model.forward(&ids, &mut cache, true).unwrap();
    let mut cache = LlamaCache::new(&model.config);
    // A prompt of 5, then one token at a time (crossing no block edge here; the cache test
    // below crosses one).
    let mut stepped = model.forward(&ids[..5], &mut cache, true).unwrap();
    for &id in &ids[5..] {
        stepped.extend(model.forward(&[id], &mut cache, false).unwrap());
    }
    assert_eq!(cache.len(), ids.len());
    let d = whole
        .iter()
        .zip(&stepped)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(d < 1e-4, "max |Δ| {d}");
    assert_eq!(whole.len(), stepped.len());
    let _ = v;
}

#[test]
fn a_long_sequence_spans_several_cache_blocks() {
    let model = load_hf(&fixtures().join("qwen2")).unwrap();
    let ids: Vec<u32> = (0..70).map(|i| (i * 7 % 64) as u32).collect();
    let mut cache = LlamaCache::new(&model.config);
    let whole = model.forward(&ids, &mut cache, false).unwrap();
    let mut cache = LlamaCache::new(&model.config);
    model.forward(&ids[..33], &mut cache, false).unwrap();
    let mut last = Vec::new();
    for &id in &ids[33..] {
        last = model.forward(&[id], &mut cache, false).unwrap();
    }
    let d = whole
        .iter()
        .zip(&last)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(d < 1e-4, "max |Δ| {d}");
    assert!(cache.bytes() >= 3 * 32 * model.config.kv_dim() * 4);
}

#[test]
fn bad_configs_and_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("llama");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let config = std::fs::read_to_string(src.join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("LlamaForCausalLM", "MambaForCausalLM"),
    )
    .unwrap();
    let e = load_hf(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("unsupported architecture \"MambaForCausalLM\""),
        "{e}"
    );
    assert!(e.contains("LlamaForCausalLM"), "{e}");
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("\"intermediate_size\": 64", "\"intermediate_size\": 65"),
    )
    .unwrap();
    let e = load_hf(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight has shape [64, 32]"),
        "{e}"
    );
}

/// What the shared SmolLM2-135M-Instruct (Q4_1) gives against transformers' dequantised
/// model on the committed reference: (max |Δ| on the probed logits, greedy agreements of 300,
/// largest gap from the top logit to transformers' token). `None` when `../shared` is absent.
fn smollm2_against_transformers(dequantize: bool) -> Option<(f32, usize, f32)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.is_file() {
        println!("skipped: {} is not here", path.display());
        return None;
    }
    let text = std::fs::read_to_string(fixtures().join("smollm2-reference.json")).unwrap();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids: Vec<u32> = r["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let model = load_gguf_with(&GgufFile::open(&path).unwrap(), dequantize).unwrap();
    if !dequantize {
        assert_eq!(model.weight_types(), "Q4_1 + Q8_0");
    }
    let v = model.config.vocab_size;
    let mut cache = LlamaCache::new(&model.config);
    let logits = model.forward(&ids, &mut cache, true).unwrap();
    let mut worst = 0f32;
    for (pos, entries) in r["logits"].as_object().unwrap() {
        let row = &logits[pos.parse::<usize>().unwrap() * v..][..v];
        for (id, want) in entries.as_object().unwrap() {
            let got = row[id.parse::<usize>().unwrap()];
            worst = worst.max((got - want.as_f64().unwrap() as f32).abs());
        }
    }
    let (mut agree, mut worst_gap) = (0, 0f32);
    for (want, row) in r["argmax"]
        .as_array()
        .unwrap()
        .iter()
        .zip(logits.chunks_exact(v))
    {
        let top = largo::tensor::argmax(row);
        let want = want.as_u64().unwrap() as usize;
        agree += usize::from(top == want);
        worst_gap = worst_gap.max(row[top] - row[want]);
    }
    println!(
        "SmolLM2 (dequantize {dequantize}): max |Δ| {worst} on the probed logits; greedy agreement {agree}/{}; largest gap to transformers' token {worst_gap}",
        ids.len()
    );
    Some((worst, agree, worst_gap))
}

/// SmolLM2 with every weight dequantised: transformers' logits to 1e-3 and its greedy next
/// token at ≥ 98 % of 300 positions.
#[test]
fn smollm2_matches_transformers_dequantised() {
    let Some((worst, agree, _)) = smollm2_against_transformers(true) else {
        return;
    };
    let share = agree as f64 / 300.0;
    assert!(worst < 1e-3, "max |Δ| {worst}");
    assert!(share >= 0.98, "greedy agreement {share}");
}

/// Largest |Δ| between two logit sets.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn quantised_gguf_logits_are_near_the_dequantised_ones() {
    // The default load keeps Q8_0/Q4_0 blocks and quantises activations to 8 bits per block:
    // not transformers' numbers to 1e-4. These tiny random models amplify rounding (8-bit
    // weights alone move their logits by up to 0.7); 8-bit activations must move them less
    // than the weights' own quantisation did, and by at most 1.0.
    for (file, kind) in [
        ("llama-q8_0.gguf", "llama"),
        ("qwen2-q8_0.gguf", "qwen2"),
        ("llama-q4_0.gguf", "llama"),
    ] {
        let quant = load_gguf(&GgufFile::open(fixtures().join(file)).unwrap()).unwrap();
        let exact = gguf(file);
        assert!(
            !quant.weight_types().contains("f32"),
            "{file}: {}",
            quant.weight_types()
        );
        assert_eq!(exact.weight_types(), "f32");
        assert!(quant.weight_bytes() * 3 < exact.weight_bytes(), "{file}");
        let (ids, want) = reference(file);
        let mut c = LlamaCache::new(&quant.config);
        let q = quant.forward(&ids, &mut c, true).unwrap();
        let mut c = LlamaCache::new(&exact.config);
        let e = exact.forward(&ids, &mut c, true).unwrap();
        let d = max_abs_diff(&q, &e);
        let (_, f32_logits) = reference(kind);
        let weight_rounding = max_diff(&exact, &ids, &f32_logits);
        println!(
            "{file}: quantised vs dequantised max |Δ| {d}; dequantised vs f32 model {weight_rounding}; quantised vs transformers {}",
            max_diff(&quant, &ids, &want)
        );
        assert!(d < weight_rounding && d < 1.0, "{file}: max |Δ| {d}");
        assert!(
            d > 0.0,
            "{file}: the quantised path should not be the f32 one"
        );
    }
}

#[test]
fn quantised_rows_do_not_depend_on_the_batch() {
    // The last position's logits, run as part of the whole prompt or fed alone after the rest:
    // the matrix products give each row the same bits whatever the batch; attention's f32
    // GEMMs over 1 or many queries may differ in the last bits.
    for file in ["llama-q8_0.gguf", "llama-q4_0.gguf", "qwen2-q8_0.gguf"] {
        let model = load_gguf(&GgufFile::open(fixtures().join(file)).unwrap()).unwrap();
        let (ids, _) = reference(file);
        let t = ids.len();
        let mut c = LlamaCache::new(&model.config);
        let whole = model.forward(&ids, &mut c, false).unwrap();
        let mut c = LlamaCache::new(&model.config);
        model.forward(&ids[..t - 1], &mut c, false).unwrap();
        let last = model.forward(&ids[t - 1..], &mut c, false).unwrap();
        let d = max_abs_diff(&whole, &last);
        println!("{file}: last position batched vs alone max |Δ| {d}");
        assert!(d < 1e-4, "{file}: max |Δ| {d}");
        // Twice the same run gives the same bits.
        let mut c = LlamaCache::new(&model.config);
        assert_eq!(whole, model.forward(&ids, &mut c, false).unwrap());
    }
}

#[test]
fn sequences_batched_together_get_the_bits_they_get_alone() {
    // Continuous batching: one pass carries sequence A's prompt, B's next token (B has a
    // cache) and C's prompt. With quantised weights each gets exactly the bits it gets alone.
    for file in ["llama-q8_0.gguf", "qwen2-q8_0.gguf", "llama-f32.gguf"] {
        let model = load_gguf(&GgufFile::open(fixtures().join(file)).unwrap()).unwrap();
        let (ids, _) = reference(file);
        let (a, b_prefix, b_next, c) = (&ids[..5], &ids[2..9], &ids[9..10], &ids[1..3]);
        let alone = |prefix: Option<&[u32]>, feed: &[u32]| {
            let mut cache = LlamaCache::new(&model.config);
            if let Some(p) = prefix {
                model.forward(p, &mut cache, false).unwrap();
            }
            model.forward(feed, &mut cache, true).unwrap()
        };
        let (ca, mut cb, cc) = (
            LlamaCache::new(&model.config),
            LlamaCache::new(&model.config),
            LlamaCache::new(&model.config),
        );
        model.forward(b_prefix, &mut cb, false).unwrap();
        let (mut ca, mut cc) = (ca, cc);
        let got = model
            .forward_batch(&[a, b_next, c], &mut [&mut ca, &mut cb, &mut cc], true)
            .unwrap();
        let want = [
            alone(None, a),
            alone(Some(b_prefix), b_next),
            alone(None, c),
        ];
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            if file.contains("f32") {
                // f32 weights run the f32 GEMM, whose blocking follows the row count.
                assert!(max_abs_diff(g, w) < 1e-4, "{file}: sequence {k}");
            } else {
                assert_eq!(g, w, "{file}: sequence {k}");
            }
        }
        assert_eq!((ca.len(), cb.len(), cc.len()), (5, 8, 2));
        // Mismatched lists and an empty sequence are errors, not panics.
        let mut c1 = LlamaCache::new(&model.config);
        assert!(model.forward_batch(&[a, c], &mut [&mut c1], false).is_err());
        assert!(model.forward_batch(&[&[]], &mut [&mut c1], false).is_err());
    }
}

/// The shared SmolLM2 loaded quantised (Q4_1 matrices, Q8_0 embedding and tied head run by
/// the integer kernels, activations rounded to 8 bits as llama.cpp does): transformers'
/// greedy next token (on the dequantised weights, f32) at ≥ 95 % of the 300 positions
/// (measured: 287/300), and where they part, a near-tie within the logit noise of 8-bit
/// activations (max |Δ| 0.6 measured): transformers' token within 1.0 of the top logit.
#[test]
fn smollm2_quantised_agrees_with_transformers_greedy() {
    let Some((worst, agree, worst_gap)) = smollm2_against_transformers(false) else {
        return;
    };
    let share = agree as f64 / 300.0;
    assert!(worst < 1.0, "max |Δ| {worst}");
    assert!(share >= 0.95, "greedy agreement {share}");
    assert!(
        worst_gap < 1.0,
        "transformers' token {worst_gap} below the top"
    );
}
