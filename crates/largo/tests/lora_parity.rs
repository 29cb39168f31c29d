//! LoRA fine-tuning against PyTorch + PEFT (tools/gen_lora_fixtures.py): a tiny random
//! `LlamaForCausalLM` with adapters on q and v, and on all seven projections, and a tiny
//! `Qwen2ForCausalLM` (q/k/v biases, tied head) with adapters on q, k, v and o; the loss of a
//! fixed batch and the gradient of every lora_A / lora_B weight, computed by PyTorch in
//! float64. Then a Q8_0 base against its dequantised f32 copy, and a few AdamW steps.

use largo::backend::cpu::qmatmul::QMatrix;
use largo::backend::cpu::quant::{quantize_q4_0, quantize_q8_0, GgmlType};
use largo::io::TensorFile;
use largo::models::llama::{Llama, Matrix, Weights};
use largo::models::llama_load::load_hf;
use largo::models::llama_train::{shift_labels, LoraLlama};
use largo::models::lora::LoraConfig;
use largo::nn::Module;
use largo::train::optim::{OptimConfig, Optimizer};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lora")
}

/// The batch's token ids and next-token targets (transformers' labels shifted), flattened
/// [2 × 12].
fn batch() -> (Vec<u32>, Vec<i64>) {
    let text = std::fs::read_to_string(fixtures().join("batch.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let flat = |key: &str| -> Vec<i64> {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()))
            .collect()
    };
    let ids = flat("ids").into_iter().map(|x| x as u32).collect();
    (ids, shift_labels(&flat("labels"), 2).unwrap())
}

/// The base with PEFT's adapter of target set `kind` (`qv` or `all`) applied.
fn adapted(base: Llama, kind: &str) -> LoraLlama {
    let dir = fixtures().join(kind);
    let config = LoraConfig::from_peft_config(&dir.join("adapter_config.json")).unwrap();
    let mut model = LoraLlama::new(base, config, 0).unwrap();
    let weights = TensorFile::load(&dir.join("adapter_model.safetensors")).unwrap();
    model.load_adapter_weights(&weights).unwrap();
    model
}

/// Loss and gradients (PEFT names) of one forward and backward over the fixture batch.
fn loss_and_grads(model: &mut LoraLlama) -> (f32, Vec<(String, Vec<f32>)>) {
    let (ids, targets) = batch();
    model.zero_grad();
    let loss = model.forward(&ids, &targets, 2, 0).unwrap();
    model.backward().unwrap();
    let grads = model
        .params()
        .into_iter()
        .map(|(name, p)| (name, p.grad.clone()))
        .collect();
    (loss, grads)
}

/// max |a − b| / max |b|.
fn relative_error(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

#[test]
fn loss_and_lora_gradients_match_peft_for_each_target_set() {
    for (kind, base_dir, tensors) in [
        ("qv", fixtures().join("tiny-llama"), 8),
        ("all", fixtures().join("tiny-llama"), 28),
        ("qwen2-attn", fixtures().join("../llama/qwen2"), 16),
    ] {
        let base = load_hf(&base_dir).unwrap();
        let mut model = adapted(base, kind);
        let (loss, grads) = loss_and_grads(&mut model);
        let reference =
            TensorFile::load(&fixtures().join(kind).join("reference.safetensors")).unwrap();
        let want_loss = reference.get("loss").unwrap().data[0];
        let loss_error = (loss - want_loss).abs() / want_loss;
        assert!(loss_error <= 1e-5, "{kind}: loss {loss}, PEFT {want_loss}");
        assert_eq!(grads.len(), tensors, "{kind}: adapter tensors");
        let mut worst = (0f32, String::new());
        for (name, grad) in &grads {
            let want = reference.get(&format!("grad.{name}")).unwrap();
            let e = relative_error(grad, &want.data);
            assert!(e <= 1e-4, "{kind}: {name}: relative error {e}");
            if e > worst.0 {
                worst = (e, name.clone());
            }
        }
        eprintln!(
            "{kind}: loss {loss} (PEFT {want_loss}, relative error {loss_error:.1e}); worst \
             gradient {} at {:.1e}",
            worst.1, worst.0
        );
    }
}

/// (the matrix as `ty` (Q8_0 or Q4_0), its dequantised f32 copy).
fn quantised(m: &Matrix, ty: GgmlType) -> (Matrix, Matrix) {
    let Weights::F32(values) = &m.weights else {
        panic!("the fixture is f32")
    };
    let bytes = match ty {
        GgmlType::Q8_0 => quantize_q8_0(values).unwrap(),
        _ => quantize_q4_0(values).unwrap(),
    };
    let q = Matrix::quantized(QMatrix::from_ggml(ty, m.rows, m.cols, &bytes).unwrap());
    let mut deq = vec![0f32; m.rows * m.cols];
    for (r, row) in deq.chunks_exact_mut(m.cols).enumerate() {
        q.row(r, row);
    }
    let plain = Matrix::new(m.rows, m.cols, deq).unwrap();
    (q, plain)
}

/// Every matrix of `base` (embedding and head too) as `ty`, and the same dequantised to f32.
fn quantised_and_dequantised(base: &Llama, ty: GgmlType) -> (Llama, Llama) {
    let (mut q, mut p) = (base.clone(), base.clone());
    let mut both = |get: &dyn Fn(&mut Llama) -> &mut Matrix| {
        let (qm, pm) = quantised(get(&mut base.clone()), ty);
        *get(&mut q) = qm;
        *get(&mut p) = pm;
    };
    both(&|m| &mut m.embed_tokens);
    both(&|m| m.lm_head.as_mut().unwrap());
    for l in 0..base.layers.len() {
        both(&move |m| &mut m.layers[l].q_proj);
        both(&move |m| &mut m.layers[l].k_proj);
        both(&move |m| &mut m.layers[l].v_proj);
        both(&move |m| &mut m.layers[l].o_proj);
        both(&move |m| &mut m.layers[l].gate_proj);
        both(&move |m| &mut m.layers[l].up_proj);
        both(&move |m| &mut m.layers[l].down_proj);
    }
    (q, p)
}

#[test]
fn q8_0_and_q4_0_bases_train_as_their_dequantised_f32_copies() {
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0] {
        a_quantised_base_trains_as_its_dequantised_f32_copy(ty);
    }
}

fn a_quantised_base_trains_as_its_dequantised_f32_copy(ty: GgmlType) {
    let base = load_hf(&fixtures().join("tiny-llama")).unwrap();
    let (q8, plain) = quantised_and_dequantised(&base, ty);
    assert!(q8.layers[1].down_proj.is_quantized() && !plain.layers[1].down_proj.is_quantized());
    let (q_loss, q_grads) = loss_and_grads(&mut adapted(q8, "all"));
    let (p_loss, p_grads) = loss_and_grads(&mut adapted(plain, "all"));
    assert!(
        (q_loss - p_loss).abs() <= 1e-5 * p_loss,
        "{q_loss} vs {p_loss}"
    );
    let mut worst = 0f32;
    for ((name, q), (_, p)) in q_grads.iter().zip(&p_grads) {
        let e = relative_error(q, p);
        assert!(e <= 1e-4, "{name}: relative error {e}");
        worst = worst.max(e);
    }
    // Quantisation itself moved the loss (the comparison is not between identical models).
    let (f_loss, _) = loss_and_grads(&mut adapted(base, "all"));
    assert!((f_loss - p_loss).abs() > 1e-6, "{f_loss} vs {p_loss}");
    eprintln!("{ty:?}: loss {q_loss} vs {p_loss} dequantised (f32 base {f_loss}); worst gradient {worst:.1e}");
}

#[test]
fn checkpointed_layers_give_the_same_gradients() {
    // With LoRA dropout, so the recomputed forward must redraw the same masks.
    let all = TensorFile::load(&fixtures().join("all/adapter_model.safetensors")).unwrap();
    let run = |checkpoint: bool| {
        let base = load_hf(&fixtures().join("tiny-llama")).unwrap();
        let targets = ["q", "k", "v", "o", "gate", "up", "down"];
        let config = LoraConfig::new(4, 8.0, 0.1, &targets).unwrap();
        let mut model = LoraLlama::new(base, config, 0).unwrap();
        model.load_adapter_weights(&all).unwrap();
        model.checkpoint_activations = checkpoint;
        loss_and_grads(&mut model)
    };
    let (kept, checkpointed) = (run(false), run(true));
    assert_eq!(kept.0, checkpointed.0);
    for ((name, a), (_, b)) in kept.1.iter().zip(&checkpointed.1) {
        assert_eq!(a, b, "{name}");
    }
    // Dropout changed the loss from PEFT's (dropout 0) one.
    let peft = TensorFile::load(&fixtures().join("all/reference.safetensors")).unwrap();
    assert_ne!(kept.0, peft.get("loss").unwrap().data[0]);
}

#[test]
fn a_saved_adapter_loads_back_as_it_was() {
    let base = load_hf(&fixtures().join("tiny-llama")).unwrap();
    let model = adapted(base.clone(), "qv");
    let dir = std::env::temp_dir().join(format!("largo-lora-{}", std::process::id()));
    model.save_adapter(&dir, Some("tiny-llama")).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["q_proj", "v_proj"])
    );
    let mut back = LoraLlama::new(
        base,
        LoraConfig::from_peft_config(&dir.join("adapter_config.json")).unwrap(),
        1,
    )
    .unwrap();
    assert_eq!(back.lora, model.lora);
    back.load_adapter_weights(&TensorFile::load(&dir.join("adapter_model.safetensors")).unwrap())
        .unwrap();
    for ((name, a), (_, b)) in model.params().iter().zip(back.params()) {
        assert_eq!(a.value, b.value, "{name}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn adapters_that_do_not_fit_are_refused_by_tensor_name() {
    let base = load_hf(&fixtures().join("tiny-llama")).unwrap();
    let all = TensorFile::load(&fixtures().join("all/adapter_model.safetensors")).unwrap();
    // q and v adapters only: the file's others (down_proj first, by name) have nowhere to go.
    let config = LoraConfig::new(4, 8.0, 0.0, &["q", "v"]).unwrap();
    let mut qv = LoraLlama::new(base.clone(), config, 0).unwrap();
    let e = qv.load_adapter_weights(&all).unwrap_err().to_string();
    assert!(
        e.contains(
            "layers.0.mlp.down_proj.lora_A.weight matches no adapter of this model (targets q v)"
        ),
        "{e}"
    );
    // Rank 2 where the file has rank 4.
    let config = LoraConfig::new(2, 8.0, 0.0, &["q", "v"]).unwrap();
    let mut r2 = LoraLlama::new(base, config, 0).unwrap();
    let qv_file = TensorFile::load(&fixtures().join("qv/adapter_model.safetensors")).unwrap();
    let e = r2.load_adapter_weights(&qv_file).unwrap_err().to_string();
    assert!(
        e.contains("layers.0.self_attn.q_proj.lora_A.weight has shape [4, 32]")
            && e.contains("needs [2, 32]"),
        "{e}"
    );
    let e = LoraConfig::new(4, 8.0, 0.0, &["q", "attn"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("valid are q k v o gate up down"), "{e}");
}

#[test]
fn bad_batches_are_errors_not_panics() {
    let base = load_hf(&fixtures().join("tiny-llama")).unwrap();
    let mut model = adapted(base, "qv");
    let (ids, targets) = batch();
    let e = model
        .forward(&ids, &targets[1..], 2, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("23 targets for 24 token ids"), "{e}");
    let mut big = ids.clone();
    big[3] = 64;
    let e = model.forward(&big, &targets, 2, 0).unwrap_err().to_string();
    assert!(
        e.contains("token id 64 is outside the vocabulary of 64"),
        "{e}"
    );
    let mut bad = targets.clone();
    bad[0] = 70;
    assert!(model.forward(&ids, &bad, 2, 0).is_err());
    assert!(model.forward(&ids, &targets, 5, 0).is_err());
    let e = model.backward().unwrap_err().to_string();
    assert!(e.contains("needs a forward pass first"), "{e}");
}

#[test]
fn adamw_on_the_adapters_lowers_the_loss_of_a_repeated_batch() {
    let base = load_hf(&fixtures().join("tiny-llama")).unwrap();
    // Fresh adapters (B = 0): the first loss is the base model's own.
    let config = LoraConfig::new(4, 8.0, 0.0, &["q", "k", "v", "o", "gate", "up", "down"]).unwrap();
    let mut model = LoraLlama::new(base.clone(), config, 7).unwrap();
    let mut opt = Optimizer::new(OptimConfig {
        lr: 1e-2,
        weight_decay: 0.0,
        ..OptimConfig::default()
    });
    let (ids, targets) = batch();
    let mut losses = Vec::new();
    for step in 0..20 {
        model.zero_grad();
        losses.push(model.forward(&ids, &targets, 2, step).unwrap());
        model.backward().unwrap();
        opt.step(model.params_mut(), 1e-2);
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(last < 0.7 * first, "losses {losses:?}");
    // The base stays as it was: only the adapters moved.
    let Weights::F32(before) = &base.layers[0].q_proj.weights else {
        panic!("f32")
    };
    let Weights::F32(after) = &model.base.layers[0].q_proj.weights else {
        panic!("f32")
    };
    assert_eq!(before, after);
    eprintln!("AdamW: loss {first} → {last} in 20 steps");
}

/// The shared SmolLM2-135M-Instruct (Q4_1 matrices, Q8_0 tied head; 9 query heads over 3
/// key/value heads of 64) with fresh adapters on all seven projections: the training forward,
/// with its tiles dequantised, gives the loss that inference's logits on the dequantised model
/// give, and backward reaches every adapter. Skipped when `../shared` is absent.
#[test]
fn smollm2_q4_1_training_forward_gives_the_inference_loss() {
    use largo::io::gguf::GgufFile;
    use largo::models::llama::LlamaCache;
    use largo::models::llama_load::load_gguf_with;
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.is_file() {
        println!("skipped: {} is not here", path.display());
        return;
    }
    let reference = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/llama/smollm2-reference.json");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(reference).unwrap()).unwrap();
    let ids: Vec<u32> = r["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .take(256)
        .collect();
    let labels: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let targets = shift_labels(&labels, 1).unwrap();

    // Inference on the dequantised model: the mean next-token cross-entropy, in f64.
    let gguf = GgufFile::open(&path).unwrap();
    let plain = load_gguf_with(&gguf, true).unwrap();
    let v = plain.config.vocab_size;
    let logits = plain
        .forward(&ids, &mut LlamaCache::new(&plain.config), true)
        .unwrap();
    drop(plain);
    let want = mean_loss(&logits, &targets, v);

    let base = load_gguf_with(&gguf, false).unwrap();
    assert_eq!(base.weight_types(), "Q4_1 + Q8_0");
    let config =
        LoraConfig::new(8, 16.0, 0.0, &["q", "k", "v", "o", "gate", "up", "down"]).unwrap();
    let mut model = LoraLlama::new(base, config, 0).unwrap();
    let start = std::time::Instant::now();
    let loss = model.forward(&ids, &targets, 1, 0).unwrap();
    let forward = start.elapsed();
    model.backward().unwrap();
    let step = start.elapsed();
    // f32 through 30 layers along different kernels (flash attention, tiled products): the
    // two losses differ in their summation orders (3.5e-5 relative seen).
    assert!(
        (loss as f64 - want).abs() < 3e-4 * want,
        "training loss {loss}, inference {want}"
    );
    // B starts at zero, so A's gradients are zero; every B gets one.
    for (name, p) in model.params() {
        assert!(p.grad.iter().all(|g| g.is_finite()), "{name}");
        if name.ends_with("lora_B.weight") {
            assert!(p.grad.iter().any(|&g| g != 0.0), "{name} has no gradient");
        }
    }
    eprintln!(
        "SmolLM2 Q4_1, 256 tokens: loss {loss} (inference {want:.6}); forward {forward:.2?}, \
         forward + backward {step:.2?}"
    );
}

/// Mean next-token cross-entropy of `logits` [t, vocab] against `targets` (negative ones left
/// out), in f64.
fn mean_loss(logits: &[f32], targets: &[i64], vocab: usize) -> f64 {
    let mut total = 0f64;
    let mut n = 0;
    for (row, &t) in logits.chunks_exact(vocab).zip(targets) {
        if t < 0 {
            continue;
        }
        let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let lse = row
            .iter()
            .map(|&z| (z as f64 - max).exp())
            .sum::<f64>()
            .ln()
            + max;
        total += lse - row[t as usize] as f64;
        n += 1;
    }
    total / n as f64
}

/// An adapter set on the base for inference (unmerged, `load_adapted`) gives the training
/// forward's loss, and the logits of the base with the adapter merged into its weights.
#[test]
fn an_unmerged_adapter_gives_the_training_loss_and_the_merged_logits() {
    use largo::models::llama::LlamaCache;
    use largo::models::llama_train::load_adapted;
    let base = load_hf(&fixtures().join("tiny-llama")).unwrap();
    let (ids, targets) = batch();
    let t = ids.len() / 2;
    let (ids, targets) = (&ids[..t], &targets[..t]);
    let mut trained = adapted(base.clone(), "all");
    let want = trained.forward(ids, targets, 1, 0).unwrap() as f64;
    // Validation's pass (no gradient, nothing kept) gives the same loss.
    let (evaluated, counted) = trained.evaluate(ids, targets, 1).unwrap();
    assert_eq!(evaluated as f64, want);
    assert_eq!(counted, targets.iter().filter(|&&t| t >= 0).count());

    let unmerged = load_adapted(base.clone(), &fixtures().join("all")).unwrap();
    let v = unmerged.config.vocab_size;
    let logits = unmerged
        .forward(ids, &mut LlamaCache::new(&unmerged.config), true)
        .unwrap();
    let got = mean_loss(&logits, targets, v);
    assert!(
        (got - want).abs() < 1e-4,
        "inference {got} vs training {want}"
    );

    let mut merged = unmerged.clone();
    for layer in &mut merged.layers {
        for m in [
            &mut layer.q_proj,
            &mut layer.k_proj,
            &mut layer.v_proj,
            &mut layer.o_proj,
            &mut layer.gate_proj,
            &mut layer.up_proj,
            &mut layer.down_proj,
        ] {
            assert!(m.adapter.is_some());
            *m = Matrix::new(m.rows, m.cols, m.merged_f32()).unwrap();
        }
    }
    let merged_logits = merged
        .forward(ids, &mut LlamaCache::new(&merged.config), true)
        .unwrap();
    let err = relative_error(&merged_logits, &logits);
    assert!(
        err < 1e-5,
        "merged vs unmerged logits: relative error {err}"
    );
    // The adapter changes the model (B is not zero in the fixture).
    let plain = base
        .forward(ids, &mut LlamaCache::new(&base.config), true)
        .unwrap();
    assert!(relative_error(&plain, &logits) > 1e-3);
}

/// PEFT loads an adapter largo wrote (`PeftModel.from_pretrained`, tools/peft_logits.py) and
/// computes the logits largo computes with it. Skipped where Python with torch, transformers
/// and PEFT is not installed.
#[test]
fn peft_loads_an_adapter_largo_wrote() {
    use largo::models::llama::LlamaCache;
    use largo::models::llama_train::load_adapted;
    let probe = std::process::Command::new("python3")
        .args(["-c", "import torch, transformers, peft"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        println!("skipped: python3 with torch, transformers and peft is not installed");
        return;
    }
    let base_dir = fixtures().join("tiny-llama");
    let base = load_hf(&base_dir).unwrap();
    let config = LoraConfig::new(4, 8.0, 0.0, &["q", "v", "gate", "down"]).unwrap();
    let mut model = LoraLlama::new(base.clone(), config, 3).unwrap();
    // B is zero at initialisation: give it values so the adapter changes the logits.
    model.visit_params_mut(&mut |name, p| {
        if name.ends_with("lora_B.weight") {
            for (i, v) in p.value.data.iter_mut().enumerate() {
                *v = 0.05 * ((i as f32) * 0.37).sin();
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    model.save_adapter(dir.path(), Some("tiny-llama")).unwrap();

    let ids: Vec<u32> = (0..10).map(|i| (i * 7 + 3) % 64).collect();
    let adapted = load_adapted(base, dir.path()).unwrap();
    let ours = adapted
        .forward(&ids, &mut LlamaCache::new(&adapted.config), true)
        .unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/peft_logits.py");
    let list: Vec<String> = ids.iter().map(u32::to_string).collect();
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(&base_dir)
        .arg(dir.path())
        .arg(list.join(","))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<Vec<f32>> = serde_json::from_slice(&out.stdout).unwrap();
    let theirs: Vec<f32> = theirs.into_iter().flatten().collect();
    let err = relative_error(&ours, &theirs);
    assert!(err < 1e-5, "largo vs PEFT logits: relative error {err}");
}
