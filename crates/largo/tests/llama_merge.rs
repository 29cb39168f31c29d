//! Merging LoRA adapters into their base and writing the result: the merged GGUF or Hugging
//! Face directory, loaded back by largo, gives the logits of the base with the adapter applied
//! unmerged (exactly for f32 up to summation order, within rounding for f16/bf16/Q8_0). The
//! tiny `llama` and `qwen2` fixtures have the shapes of the LoRA fixtures' bases, so their PEFT
//! adapters (B non-zero) fit them.

use largo::backend::cpu::quant::dequantize;
use largo::io::gguf::{GgmlType, GgufFile, GgufValue};
use largo::io::gguf_write::encode_values;
use largo::models::llama::{Llama, Weights};
use largo::models::llama_cache::LlamaCache;
use largo::models::llama_load::{load_hf, LlmFiles};
use largo::models::llama_merge::{
    load_adapted_model, merge, merge_to_gguf, merge_to_hf, MergeType,
};
use largo::models::llama_train::LoraLlama;
use largo::models::lora::LoraConfig;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

const IDS: [u32; 10] = [1, 5, 9, 33, 17, 60, 2, 40, 8, 12];

fn logits(model: &Llama) -> Vec<f32> {
    let mut cache = LlamaCache::new(&model.config);
    model.forward(&IDS, &mut cache, true).unwrap()
}

/// max |a − b| / max |b|.
fn relative_error(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

/// `values` as written in `ty` and read back: the rounding a merged file cannot avoid.
fn round_trip(ty: MergeType, values: &[f32]) -> Vec<f32> {
    let dtype = match ty {
        MergeType::F32 => GgmlType::F32,
        MergeType::F16 => GgmlType::F16,
        MergeType::BF16 => GgmlType::BF16,
        MergeType::Q8_0 => GgmlType::Q8_0,
    };
    let bytes = encode_values(dtype, values).unwrap();
    let mut out = vec![0f32; values.len()];
    dequantize(dtype, &bytes, &mut out).unwrap();
    out
}

/// The adapted model with each matrix merged and rounded to `ty` in memory, and the vectors
/// (norms, biases) too when `vectors` (a Hugging Face file has one dtype; GGUF keeps f32).
fn merged_in_memory(model: &Llama, ty: MergeType, vectors: bool) -> Llama {
    let mut m = model.clone();
    if vectors {
        let round = |v: &mut Vec<f32>| *v = round_trip(ty, v);
        round(&mut m.norm);
        for l in &mut m.layers {
            round(&mut l.input_layernorm);
            round(&mut l.post_attention_layernorm);
            l.qkv_bias.iter_mut().flatten().for_each(round);
        }
    }
    let matrices = m
        .layers
        .iter_mut()
        .flat_map(|l| {
            [
                &mut l.q_proj,
                &mut l.k_proj,
                &mut l.v_proj,
                &mut l.o_proj,
                &mut l.gate_proj,
                &mut l.up_proj,
                &mut l.down_proj,
            ]
        })
        .chain(std::iter::once(&mut m.embed_tokens))
        .chain(m.lm_head.as_mut());
    for matrix in matrices {
        matrix.weights = Weights::F32(round_trip(ty, &matrix.merged_f32()));
        matrix.adapter = None;
    }
    m
}

fn load(path: &Path) -> Llama {
    LlmFiles::find(path).unwrap().unwrap().load(true).unwrap()
}

#[test]
fn merged_gguf_gives_the_logits_of_base_plus_adapter() {
    for (base, adapter, adapted) in [
        ("llama/llama-f32.gguf", "lora/all", 14),
        ("llama/llama-q8_0.gguf", "lora/qv", 4),
        ("llama/qwen2-f32.gguf", "lora/qwen2-attn", 8),
    ] {
        let base_path = fixtures().join(base);
        let unmerged = load_adapted_model(&base_path, Some(&fixtures().join(adapter))).unwrap();
        assert_eq!(unmerged.adapted_matrices, adapted, "{base} + {adapter}");
        let want = logits(&unmerged.model);
        // The adapter matters far beyond every tolerance below.
        let base_only = logits(&load(&base_path));
        let shift = relative_error(&base_only, &want);
        assert!(
            shift > 0.05,
            "{base} + {adapter}: the adapter moves logits by {shift}"
        );

        let dir = tempfile::tempdir().unwrap();
        // f16 keeps 11 significant bits of each weight, bf16 8, Q8_0 about 8 per 32-value
        // block: what that costs the logits of this tiny random model.
        for (ty, tolerance) in [
            (MergeType::F32, 1e-5),
            (MergeType::F16, 5e-3),
            (MergeType::BF16, 5e-2),
            (MergeType::Q8_0, 5e-2),
        ] {
            let out = dir.path().join(format!("merged-{}.gguf", ty.name()));
            let report = merge_to_gguf(&base_path, &unmerged.model, &out, ty).unwrap();
            assert_eq!(report.adapted_matrices, adapted);
            let merged = load(&out);
            assert!(merged.layers.iter().all(|l| l.q_proj.adapter.is_none()));
            let got = logits(&merged);
            let err = relative_error(&got, &want);
            println!(
                "{base} + {adapter} as {}: relative error {err:.2e}",
                ty.name()
            );
            assert!(
                err <= tolerance,
                "{base} + {adapter} as {}: {err}",
                ty.name()
            );
            // That error is the rounding alone: the same model merged and rounded in memory
            // gives the file's logits (a misplaced row or a wrong scale would not).
            let rounded = logits(&merged_in_memory(&unmerged.model, ty, false));
            let err = relative_error(&got, &rounded);
            assert!(
                err <= 1e-5,
                "{base} + {adapter} as {}, rounded: {err}",
                ty.name()
            );

            // The base's metadata and tensor list, file type set; matrices in the type asked.
            let (src, written) = (
                GgufFile::open(&base_path).unwrap(),
                GgufFile::open(&out).unwrap(),
            );
            assert_eq!(written.version(), 3);
            for (key, value) in src.metadata_entries() {
                if key != "general.file_type" {
                    assert_eq!(written.metadata(key), Some(value), "{key}");
                }
            }
            let file_type = [0, 1, 32, 7][ty as usize];
            assert_eq!(
                written.metadata("general.file_type"),
                Some(&GgufValue::U32(file_type))
            );
            let names = |f: &GgufFile| {
                f.tensors()
                    .iter()
                    .map(|t| t.name.clone())
                    .collect::<Vec<_>>()
            };
            assert_eq!(names(&written), names(&src));
            for t in written.tensors() {
                let want_type = match (t.dims.len(), ty) {
                    (1, _) => GgmlType::F32,
                    (_, MergeType::F32) => GgmlType::F32,
                    (_, MergeType::F16) => GgmlType::F16,
                    (_, MergeType::BF16) => GgmlType::BF16,
                    (_, MergeType::Q8_0) => GgmlType::Q8_0,
                };
                assert_eq!(t.dtype, want_type, "{}", t.name);
            }
        }
    }
}

/// PEFT's initialisation: B = 0, so the adapter changes nothing.
fn zero_adapter(base: Llama, dir: &Path) {
    let config = LoraConfig::new(4, 8.0, 0.0, &["q", "k", "v", "o", "gate", "up", "down"]).unwrap();
    LoraLlama::new(base, config, 7)
        .unwrap()
        .save_adapter(dir, None)
        .unwrap();
}

#[test]
fn an_f32_merge_of_a_zero_adapter_reproduces_the_base_gguf_bit_for_bit() {
    // Both permuted (llama: q/k rows un-permuted on load, permuted back on write) and not.
    for base in ["llama/llama-f32.gguf", "llama/qwen2-f32.gguf"] {
        let dir = tempfile::tempdir().unwrap();
        let base_path = fixtures().join(base);
        let adapter = dir.path().join("adapter");
        zero_adapter(load(&base_path), &adapter);
        let out = dir.path().join("merged.gguf");
        let report = merge(
            &base_path,
            Some(&adapter),
            &out,
            Some(MergeType::F32),
            false,
        )
        .unwrap();
        assert_eq!(report.adapted_matrices, 14);
        let (src, written) = (
            GgufFile::open(&base_path).unwrap(),
            GgufFile::open(&out).unwrap(),
        );
        assert_eq!(report.tensors, src.tensors().len());
        assert_eq!(report.bytes, std::fs::metadata(&out).unwrap().len());
        for (a, b) in src.tensor_views().zip(written.tensor_views()) {
            assert_eq!(a.name, b.name);
            assert_eq!((a.dtype, &a.shape), (b.dtype, &b.shape), "{}", a.name);
            assert!(a.bytes == b.bytes, "{base}: tensor {} differs", a.name);
        }
    }
}

#[test]
fn merged_hugging_face_directory_gives_the_logits_of_base_plus_adapter() {
    for (base, adapter) in [
        ("lora/tiny-llama", "lora/all"),
        ("llama/qwen2", "lora/qwen2-attn"),
        // A GGUF base: config.json written from its metadata, q/k rows in HF's order.
        ("llama/llama-f32.gguf", "lora/all"),
        ("llama/qwen2-f32.gguf", "lora/qwen2-attn"),
    ] {
        let base_path = fixtures().join(base);
        let unmerged = load_adapted_model(&base_path, Some(&fixtures().join(adapter))).unwrap();
        let want = logits(&unmerged.model);
        let dir = tempfile::tempdir().unwrap();
        for (ty, tolerance) in [
            (MergeType::F32, 1e-5),
            (MergeType::F16, 5e-3),
            (MergeType::BF16, 5e-2),
        ] {
            let out = dir.path().join(format!("merged-{}", ty.name()));
            let report = merge_to_hf(&unmerged.base, &unmerged.model, &out, ty).unwrap();
            let merged = load_hf(&out).unwrap();
            assert_eq!(merged.config, unmerged.model.config, "{base}: config.json");
            let got = logits(&merged);
            let err = relative_error(&got, &want);
            println!(
                "{base} + {adapter} as HF {}: relative error {err:.2e}",
                ty.name()
            );
            assert!(
                err <= tolerance,
                "{base} + {adapter} as HF {}: {err}",
                ty.name()
            );
            // That error is the rounding alone: the same model merged and rounded in memory
            // gives the file's logits (a misplaced row or a wrong scale would not).
            let rounded = logits(&merged_in_memory(&unmerged.model, ty, true));
            let err = relative_error(&got, &rounded);
            assert!(
                err <= 1e-5,
                "{base} + {adapter} as HF {}, rounded: {err}",
                ty.name()
            );
            let config: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                    .unwrap();
            let dtype = config.get("dtype").or(config.get("torch_dtype")).unwrap();
            assert_eq!(dtype, ["float32", "float16", "bfloat16"][ty as usize]);
            let is_hf = !base.ends_with(".gguf");
            // The HF fixtures have a generation_config.json and no tokenizer.
            assert_eq!(out.join("generation_config.json").is_file(), is_hf);
            assert!(!report.tokenizer);
            let mut left: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            left.retain(|n| n.starts_with('.'));
            assert!(left.is_empty(), "temporary files left: {left:?}");
        }
    }
}

#[test]
fn tokenizer_files_of_a_hugging_face_base_are_copied() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    std::fs::create_dir(&base).unwrap();
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(fixtures().join("lora/tiny-llama").join(f), base.join(f)).unwrap();
    }
    std::fs::write(base.join("tokenizer.json"), "{\"stand-in\": 1}").unwrap();
    std::fs::write(base.join("chat_template.jinja"), "{{ messages }}").unwrap();
    let out = dir.path().join("merged");
    let report = merge(&base, Some(&fixtures().join("lora/qv")), &out, None, false).unwrap();
    assert!(report.tokenizer);
    assert_eq!(report.types.get("f32"), Some(&report.tensors));
    for f in [
        "tokenizer.json",
        "chat_template.jinja",
        "generation_config.json",
    ] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(base.join(f)).unwrap(),
            "{f}"
        );
    }
    assert!(report.files.contains(&"model.safetensors".to_string()));
}

/// A GGUF base's tokenizer goes into the Hugging Face directory as `tokenizer.json` and
/// `tokenizer_config.json`: the same ids as the GGUF's own tokenizer, its BOS/EOS and template.
#[test]
fn the_tokenizer_of_a_gguf_base_is_written_for_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = fixtures().join("llama/tiny-chat.gguf");
    let files = LlmFiles::find(&gguf).unwrap().unwrap();
    let adapter = dir.path().join("adapter");
    zero_adapter(files.load(true).unwrap(), &adapter);
    let out = dir.path().join("merged");
    let report = merge(&gguf, Some(&adapter), &out, None, false).unwrap();
    assert!(report.tokenizer, "{:?}", report.files);
    let ours = files.load_tokenizer().unwrap();
    let written = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    for text in [
        "Hello world!",
        "<|im_start|>user\nhi there<|im_end|>",
        "ünï 42  x",
    ] {
        let ids = written.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(ids, ours.encode(text, false).unwrap(), "{text:?}");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["eos_token"].as_str(), ours.eos_token().as_deref());
    assert_eq!(config["bos_token"].as_str(), ours.bos_token().as_deref());
    assert_eq!(
        config["chat_template"].as_str(),
        ours.chat_template.as_deref()
    );
    assert!(ours.chat_template.is_some());
}

#[test]
fn bad_requests_are_refused_by_name_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = fixtures().join("llama/llama-f32.gguf");
    let hf = fixtures().join("lora/tiny-llama");
    let qv = fixtures().join("lora/qv");
    // An adapter whose shapes do not fit: qwen2's q/k/v/o adapters on llama have the same
    // shapes, so rank-cut one tensor of qv.
    let bad = dir.path().join("bad-adapter");
    std::fs::create_dir(&bad).unwrap();
    std::fs::copy(
        qv.join("adapter_config.json"),
        bad.join("adapter_config.json"),
    )
    .unwrap();
    let mut file = largo::io::TensorFile::load(&qv.join("adapter_model.safetensors")).unwrap();
    let name = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight";
    let t = file.tensors.get_mut(name).unwrap();
    *t = largo::tensor::Tensor::from_vec(&[8, 4], t.data[..32].to_vec()).unwrap();
    let tensors: Vec<_> = file.tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    largo::io::save_safetensors(&bad.join("adapter_model.safetensors"), &tensors, None).unwrap();

    let out_gguf = dir.path().join("out.gguf");
    let out_dir = dir.path().join("out");
    let shape_error =
        format!("adapter tensor {name} has shape [8, 4], the base model needs [16, 4]");
    let cases: Vec<(&Path, &Path, &Path, Option<MergeType>, &str)> = vec![
        (&gguf, &bad, &out_gguf, None, &shape_error),
        (
            &hf,
            &qv,
            &out_gguf,
            None,
            "is a Hugging Face directory: a .gguf output needs a GGUF base",
        ),
        (
            &gguf,
            Path::new("/nonexistent/adapter"),
            &out_gguf,
            None,
            "/nonexistent/adapter: adapter directory not found",
        ),
        (
            Path::new("/nonexistent/base.gguf"),
            &qv,
            &out_gguf,
            None,
            "/nonexistent/base.gguf: the base model does not exist",
        ),
        (
            &gguf,
            &qv,
            &out_dir,
            Some(MergeType::Q8_0),
            "q8_0 is a GGUF type",
        ),
        (&gguf, &qv, &gguf, None, "is an input of this merge"),
    ];
    for (base, adapter, out, ty, needle) in cases {
        let e = merge(base, Some(adapter), out, ty, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{e}\nlacks {needle:?}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["bad-adapter"], "left behind");

    // An existing output is kept unless forced.
    std::fs::write(&out_gguf, b"keep me").unwrap();
    let e = merge(&gguf, Some(&qv), &out_gguf, None, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("out.gguf: already exists (pass --force to replace it)"),
        "{e}"
    );
    assert_eq!(std::fs::read(&out_gguf).unwrap(), b"keep me");
    merge(&gguf, Some(&qv), &out_gguf, None, true).unwrap();
    assert!(GgufFile::open(&out_gguf).is_ok());
}

fn smollm2() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("skipped: {} is absent", p.display());
        None
    }
}

#[test]
fn smollm2_merged_to_f16_and_q8_0_keeps_base_plus_adapter_logits() {
    use largo::nn::Module;
    let Some(base) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    let adapter = dir.path().join("adapter");
    {
        // Adapters on every projection with B drawn at random (PEFT starts it at zero).
        let targets = ["q", "k", "v", "o", "gate", "up", "down"];
        let config = LoraConfig::new(8, 16.0, 0.0, &targets).unwrap();
        let mut lora = LoraLlama::new(load(&base), config, 3).unwrap();
        let mut rng = largo::rng::Rng::new(5);
        lora.visit_params_mut(&mut |name, p| {
            if name.ends_with("lora_B.weight") {
                p.value
                    .data
                    .iter_mut()
                    .for_each(|v| *v = rng.normal() * 0.03);
            }
        });
        lora.save_adapter(&adapter, None).unwrap();
    }
    let unmerged = load_adapted_model(&base, Some(&adapter)).unwrap();
    assert_eq!(unmerged.adapted_matrices, 30 * 7);
    let want = logits(&unmerged.model);
    let shift = relative_error(&logits(&load(&base)), &want);
    for (ty, tolerance) in [(MergeType::F16, 5e-3), (MergeType::Q8_0, 5e-2)] {
        let out = dir.path().join(format!("merged-{}.gguf", ty.name()));
        merge_to_gguf(&base, &unmerged.model, &out, ty).unwrap();
        let err = relative_error(&logits(&load(&out)), &want);
        println!(
            "SmolLM2 + adapter as {}: relative error {err:.2e} (adapter's shift {shift:.2e})",
            ty.name()
        );
        assert!(err <= tolerance, "{}: {err}", ty.name());
        assert!(
            err < shift / 4.0,
            "{}: {err} vs the adapter's {shift}",
            ty.name()
        );
    }
}
