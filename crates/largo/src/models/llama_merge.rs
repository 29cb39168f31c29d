//! Merging a LoRA adapter into its Llama-family base (W' = W + scale·B·A, in f32) and writing
//! the result: a GGUF that llama.cpp loads (the base GGUF's metadata and tensor list, matrices
//! re-encoded as F32, F16, BF16 or Q8_0), or a Hugging Face directory (`model.safetensors`,
//! `config.json`, the tokenizer: the base's files, or a GGUF's converted) that transformers
//! loads.

use super::llama::{Llama, LlamaArch, LlamaConfig, Matrix, RopeScaling};
use super::llama_load::{gguf_name, permute_rows, LlmBase, LlmFiles};
use crate::data::llm_tokenizer::{tokenizer_from_gguf, LlmTokenizer};
use crate::io::gguf::{GgmlType, GgufFile, GgufValue};
use crate::io::gguf_write::{encode_values, write_gguf, GgufTensorSpec};
use crate::io::safetensors_write::{self, write_safetensors, SafetensorsSpec};
use crate::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The type merged matrices are written as. Vectors (norms, biases) are always f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeType {
    F32,
    F16,
    BF16,
    Q8_0,
}

impl MergeType {
    pub const NAMES: &'static str = "f32, f16, bf16, q8_0";

    pub fn name(self) -> &'static str {
        match self {
            MergeType::F32 => "f32",
            MergeType::F16 => "f16",
            MergeType::BF16 => "bf16",
            MergeType::Q8_0 => "q8_0",
        }
    }

    fn ggml(self) -> GgmlType {
        match self {
            MergeType::F32 => GgmlType::F32,
            MergeType::F16 => GgmlType::F16,
            MergeType::BF16 => GgmlType::BF16,
            MergeType::Q8_0 => GgmlType::Q8_0,
        }
    }

    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_ALL_F32`, `MOSTLY_F16`, `MOSTLY_BF16`,
    /// `MOSTLY_Q8_0`).
    fn llama_file_type(self) -> u32 {
        match self {
            MergeType::F32 => 0,
            MergeType::F16 => 1,
            MergeType::BF16 => 32,
            MergeType::Q8_0 => 7,
        }
    }

    /// The safetensors dtype and transformers' `torch_dtype` name; Q8_0 has none.
    fn hf(self) -> Result<(safetensors::Dtype, &'static str)> {
        match self {
            MergeType::F32 => Ok((safetensors::Dtype::F32, "float32")),
            MergeType::F16 => Ok((safetensors::Dtype::F16, "float16")),
            MergeType::BF16 => Ok((safetensors::Dtype::BF16, "bfloat16")),
            MergeType::Q8_0 => Err(Error::Invalid(
                "q8_0 is a GGUF type: a Hugging Face directory takes f32, f16 or bf16 (or write \
                 a .gguf)"
                    .into(),
            )),
        }
    }
}

impl std::str::FromStr for MergeType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => MergeType::F32,
            "f16" | "float16" => MergeType::F16,
            "bf16" | "bfloat16" => MergeType::BF16,
            "q8_0" => MergeType::Q8_0,
            _ => {
                return Err(Error::Invalid(format!(
                    "unknown type {s:?}: expected one of {}",
                    MergeType::NAMES
                )))
            }
        })
    }
}

/// A base model with an adapter applied (not yet merged), and where they came from.
pub struct AdaptedModel {
    pub base: LlmBase,
    /// The adapter directory (resolved: a fine-tuning run's `best/` or `model/`).
    pub adapter: PathBuf,
    pub model: Llama,
    /// Matrices that carry an adapter.
    pub adapted_matrices: usize,
}

/// Loads `model` (a GGUF file or a Hugging Face directory, or a LoRA fine-tuning run: its base
/// and adapter) with every weight as f32, and sets the PEFT adapter in `adapter_dir` (or the
/// run's) on it. Shapes that do not fit are refused by tensor name.
pub fn load_adapted_model(model: &Path, adapter_dir: Option<&Path>) -> Result<AdaptedModel> {
    if !model.exists() {
        return Err(Error::format(model, "the base model does not exist"));
    }
    let files = LlmFiles::find_with_adapter(model, adapter_dir)?.ok_or_else(|| {
        Error::format(
            model,
            "neither a GGUF file nor a Hugging Face directory of a Llama-family model (nor a \
             LoRA fine-tuning run)",
        )
    })?;
    let Some(adapter) = files.adapter.clone() else {
        return Err(Error::format(
            model,
            "is a base model without an adapter: give the adapter to merge (--adapter)",
        ));
    };
    let loaded = files.load(true)?;
    Ok(AdaptedModel {
        adapted_matrices: adapted_matrices(&loaded),
        base: files.base,
        adapter,
        model: loaded,
    })
}

/// What a merge wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct MergeReport {
    /// The GGUF file, or the directory.
    pub path: PathBuf,
    pub tensors: usize,
    /// Bytes of the GGUF, or of the directory's files.
    pub bytes: u64,
    /// Tensor count per type, e.g. `F16` → 14.
    pub types: BTreeMap<String, usize>,
    /// Files written into a Hugging Face directory (empty for a GGUF).
    pub files: Vec<String>,
    /// Whether the tokenizer went with the model (always for a GGUF: its metadata).
    pub tokenizer: bool,
    /// Matrices whose adapter was merged in.
    pub adapted_matrices: usize,
}

impl MergeReport {
    /// `14 F16 + 5 F32`.
    pub fn type_summary(&self) -> String {
        self.types
            .iter()
            .map(|(t, n)| format!("{n} {t}"))
            .collect::<Vec<_>>()
            .join(" + ")
    }
}

/// Whether `out` names a GGUF file (`.gguf`, any case) rather than a Hugging Face directory.
pub fn is_gguf_output(out: &Path) -> bool {
    out.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// `largo merge`: loads `base` with the PEFT adapter in `adapter_dir` (or a fine-tuning run
/// with its own adapter, `adapter_dir` then `None`), merges it, and writes
/// a GGUF (`out` ending in `.gguf`: the base must be a GGUF; `ty` defaults to f16) or a
/// Hugging Face directory (`ty` defaults to f32). An existing `out` is replaced only with
/// `force`. Everything that can be checked before the model loads is.
pub fn merge(
    base: &Path,
    adapter_dir: Option<&Path>,
    out: &Path,
    ty: Option<MergeType>,
    force: bool,
) -> Result<MergeReport> {
    let gguf_out = is_gguf_output(out);
    let ty = ty.unwrap_or(if gguf_out {
        MergeType::F16
    } else {
        MergeType::F32
    });
    if !gguf_out {
        ty.hf()?;
    }
    let inputs: Vec<&Path> = std::iter::once(base).chain(adapter_dir).collect();
    check_output(out, force, &inputs)?;
    if out.exists() && gguf_out == out.is_dir() {
        return Err(Error::format(
            out,
            if gguf_out {
                "is a directory: a .gguf output is a file"
            } else {
                "is a file: a Hugging Face output is a directory (name a .gguf to write a GGUF)"
            },
        ));
    }
    if gguf_out && base.exists() {
        if let Some(LlmFiles {
            base: LlmBase::HuggingFace(dir),
            ..
        }) = LlmFiles::find(base)?
        {
            return Err(gguf_output_needs_gguf_base(&dir));
        }
    }
    let adapted = load_adapted_model(base, adapter_dir)?;
    match (&adapted.base, gguf_out) {
        (LlmBase::Gguf(file), true) => merge_to_gguf(file, &adapted.model, out, ty),
        (LlmBase::HuggingFace(dir), true) => Err(gguf_output_needs_gguf_base(dir)),
        (files, false) => merge_to_hf(files, &adapted.model, out, ty),
    }
}

fn gguf_output_needs_gguf_base(dir: &Path) -> Error {
    Error::format(
        dir,
        "is a Hugging Face directory: a .gguf output needs a GGUF base, whose metadata and \
         tokenizer it copies (convert the base with llama.cpp's convert_hf_to_gguf.py, or \
         write a Hugging Face directory instead)",
    )
}

/// Refuses to write over an existing `out` unless `force`, and ever over one of `inputs`
/// (the base or the adapter), or a directory output over a file.
pub fn check_output(out: &Path, force: bool, inputs: &[&Path]) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    let out_real = out.canonicalize().map_err(|e| Error::io(out, e))?;
    for input in inputs {
        if input.canonicalize().ok().as_deref() == Some(&out_real) {
            return Err(Error::format(
                out,
                "is an input of this merge: write the merged model somewhere else",
            ));
        }
    }
    if !force {
        return Err(Error::format(
            out,
            "already exists (pass --force to replace it)",
        ));
    }
    Ok(())
}

fn adapted_matrices(model: &Llama) -> usize {
    named_weights(model)
        .iter()
        .filter(|(_, w)| matches!(w, Weight::Matrix(m) if m.adapter.is_some()))
        .count()
}

/// A weight of the model by reference: merged and copied out only when written.
enum Weight<'a> {
    Matrix(&'a Matrix),
    Vector(&'a [f32]),
}

impl Weight<'_> {
    fn shape(&self) -> Vec<usize> {
        match self {
            Weight::Matrix(m) => vec![m.rows, m.cols],
            Weight::Vector(v) => vec![v.len()],
        }
    }

    /// The values as f32, an adapter merged in.
    fn values(&self) -> Vec<f32> {
        match self {
            Weight::Matrix(m) => m.merged_f32(),
            Weight::Vector(v) => v.to_vec(),
        }
    }
}

/// Every weight under its Hugging Face name, in transformers' order; `lm_head.weight` only
/// when the head is not tied to the embedding.
fn named_weights(model: &Llama) -> Vec<(String, Weight<'_>)> {
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        Weight::Matrix(&model.embed_tokens),
    )];
    for (i, l) in model.layers.iter().enumerate() {
        let p = |name: &str| format!("model.layers.{i}.{name}");
        out.push((
            p("input_layernorm.weight"),
            Weight::Vector(&l.input_layernorm),
        ));
        out.push((p("self_attn.q_proj.weight"), Weight::Matrix(&l.q_proj)));
        out.push((p("self_attn.k_proj.weight"), Weight::Matrix(&l.k_proj)));
        out.push((p("self_attn.v_proj.weight"), Weight::Matrix(&l.v_proj)));
        if let Some([bq, bk, bv]) = &l.qkv_bias {
            out.push((p("self_attn.q_proj.bias"), Weight::Vector(bq)));
            out.push((p("self_attn.k_proj.bias"), Weight::Vector(bk)));
            out.push((p("self_attn.v_proj.bias"), Weight::Vector(bv)));
        }
        out.push((p("self_attn.o_proj.weight"), Weight::Matrix(&l.o_proj)));
        out.push((
            p("post_attention_layernorm.weight"),
            Weight::Vector(&l.post_attention_layernorm),
        ));
        out.push((p("mlp.gate_proj.weight"), Weight::Matrix(&l.gate_proj)));
        out.push((p("mlp.up_proj.weight"), Weight::Matrix(&l.up_proj)));
        out.push((p("mlp.down_proj.weight"), Weight::Matrix(&l.down_proj)));
    }
    out.push(("model.norm.weight".to_string(), Weight::Vector(&model.norm)));
    if let Some(head) = &model.lm_head {
        out.push(("lm_head.weight".to_string(), Weight::Matrix(head)));
    }
    out
}

/// The head count whose rotary rows a weight's rows are permuted for in a GGUF of `config`
/// (`llama` q/k weights and biases; `qwen2` keeps Hugging Face's order), as the loader undoes.
fn gguf_row_permutation(config: &LlamaConfig, hf_name: &str) -> Option<usize> {
    if config.arch != LlamaArch::Llama {
        None
    } else if hf_name.contains("q_proj.") {
        Some(config.num_attention_heads)
    } else if hf_name.contains("k_proj.") {
        Some(config.num_key_value_heads)
    } else {
        None
    }
}

/// Where a GGUF output tensor's bytes come from.
enum Source<'a> {
    /// A model weight (by its Hugging Face name), merged and encoded.
    Weight(String, Weight<'a>),
    /// A base tensor that is not a model weight (`rope_freqs.weight`), copied as it is.
    Copy,
}

/// Writes `model` (the merged weights of a model loaded from `base_gguf`) as a GGUF at `out`:
/// the base's metadata (with `general.file_type` set for `ty`) and tensor list in the base's
/// order, every matrix written as `ty` from its merged f32 values (Q8_0 matrices whose rows are
/// not whole blocks as F16, as llama.cpp does), vectors as F32, q/k rows permuted back for
/// `llama`. Written atomically: on error nothing is left at `out`.
pub fn merge_to_gguf(
    base_gguf: &Path,
    model: &Llama,
    out: &Path,
    ty: MergeType,
) -> Result<MergeReport> {
    let gguf = GgufFile::open(base_gguf)?;
    let mut weights: HashMap<String, (String, Weight<'_>)> = named_weights(model)
        .into_iter()
        .map(|(hf, w)| (gguf_name(&hf), (hf, w)))
        .collect();
    let mut specs = Vec::with_capacity(gguf.tensors().len());
    let mut sources = Vec::with_capacity(gguf.tensors().len());
    for info in gguf.tensors() {
        let Some((hf, weight)) = weights.remove(&info.name) else {
            specs.push(GgufTensorSpec {
                name: info.name.clone(),
                shape: info.shape(),
                dtype: info.dtype,
            });
            sources.push(Source::Copy);
            continue;
        };
        let shape = weight.shape();
        if shape != info.shape() {
            return Err(Error::format(
                base_gguf,
                format!(
                    "tensor {} has shape {:?}, the merged model's {hf} has {shape:?}",
                    info.name,
                    info.shape()
                ),
            ));
        }
        let dtype = match (&weight, ty) {
            (Weight::Vector(_), _) => GgmlType::F32,
            (Weight::Matrix(m), MergeType::Q8_0) if !m.cols.is_multiple_of(32) => GgmlType::F16,
            (Weight::Matrix(_), ty) => ty.ggml(),
        };
        specs.push(GgufTensorSpec {
            name: info.name.clone(),
            shape,
            dtype,
        });
        sources.push(Source::Weight(hf, weight));
    }
    if let Some((gguf_name, (hf, _))) = weights.iter().next() {
        return Err(Error::format(
            base_gguf,
            format!("has no tensor {gguf_name} for the merged model's {hf}"),
        ));
    }

    let mut metadata = gguf.metadata_entries().to_vec();
    set_metadata(
        &mut metadata,
        "general.file_type",
        GgufValue::U32(ty.llama_file_type()),
    );
    set_metadata(
        &mut metadata,
        "general.quantization_version",
        GgufValue::U32(2),
    );
    let bytes = write_gguf(out, &metadata, &specs, |i| match &sources[i] {
        Source::Weight(hf, weight) => {
            let mut values = weight.values();
            if let Some(heads) = gguf_row_permutation(&model.config, hf) {
                let rows = weight.shape()[0];
                permute_rows(&mut values, rows, heads);
            }
            encode_values(specs[i].dtype, &values)
                .map_err(|e| Error::Invalid(format!("tensor {}: {e}", specs[i].name)))
        }
        Source::Copy => Ok(gguf.tensor(&specs[i].name)?.bytes.to_vec()),
    })?;
    Ok(MergeReport {
        path: out.to_path_buf(),
        tensors: specs.len(),
        bytes,
        types: type_counts(specs.iter().map(|s| s.dtype.name())),
        files: Vec::new(),
        tokenizer: true,
        adapted_matrices: adapted_matrices(model),
    })
}

/// Replaces `key`'s value in place, or appends it.
fn set_metadata(metadata: &mut Vec<(String, GgufValue)>, key: &str, value: GgufValue) {
    match metadata.iter_mut().find(|(k, _)| k == key) {
        Some((_, v)) => *v = value,
        None => metadata.push((key.to_string(), value)),
    }
}

fn type_counts<'a>(types: impl Iterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for t in types {
        *counts.entry(t.to_string()).or_insert(0) += 1;
    }
    counts
}

/// The tokenizer and generation files of a Hugging Face directory, copied when present.
const HF_TOKENIZER_FILES: [&str; 9] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
];

/// Writes `model` (merged) as a Hugging Face directory `out`: `model.safetensors` with
/// transformers' names as `ty` (f32, f16 or bf16; vectors too, as transformers keeps one
/// dtype), `config.json` (the base's, its dtype updated, or one written from the GGUF's
/// metadata), and the tokenizer: the base directory's files, or a GGUF's metadata as
/// `tokenizer.json` and `tokenizer_config.json` (`tokenizer` is false in the report when there
/// was none). The directory is built under a temporary
/// name and renamed into place, replacing an existing `out` only once complete.
pub fn merge_to_hf(
    base: &LlmBase,
    model: &Llama,
    out: &Path,
    ty: MergeType,
) -> Result<MergeReport> {
    let (dtype, torch_dtype) = ty.hf()?;
    let config = match base {
        LlmBase::HuggingFace(dir) => {
            let path = dir.join("config.json");
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let mut v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::format(&path, e.to_string()))?;
            // transformers ≥ 5 names it `dtype`, earlier versions `torch_dtype`.
            let mut named = false;
            for key in ["torch_dtype", "dtype"] {
                if let Some(d) = v.get_mut(key) {
                    *d = torch_dtype.into();
                    named = true;
                }
            }
            if !named {
                v["torch_dtype"] = torch_dtype.into();
            }
            v
        }
        LlmBase::Gguf(file) => {
            hf_config_from_gguf(&GgufFile::open(file)?, &model.config, torch_dtype)?
        }
    };
    let weights = named_weights(model);
    let specs: Vec<SafetensorsSpec> = weights
        .iter()
        .map(|(name, w)| SafetensorsSpec {
            name: name.clone(),
            shape: w.shape(),
            dtype,
        })
        .collect();
    let mut files = Vec::new();
    let mut bytes = 0u64;
    crate::io::write_dir_atomic(out, |tmp| {
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        bytes += write_safetensors(&tmp.join("model.safetensors"), &specs, &metadata, |i| {
            safetensors_write::encode_values(dtype, &weights[i].1.values())
        })?;
        files.push("model.safetensors".to_string());
        let text = serde_json::to_string_pretty(&config).expect("a JSON value serialises") + "\n";
        std::fs::write(tmp.join("config.json"), &text)
            .map_err(|e| Error::io(tmp.join("config.json"), e))?;
        bytes += text.len() as u64;
        files.push("config.json".to_string());
        match base {
            LlmBase::HuggingFace(dir) => {
                for name in HF_TOKENIZER_FILES {
                    let from = dir.join(name);
                    if from.is_file() {
                        bytes += std::fs::copy(&from, tmp.join(name))
                            .map_err(|e| Error::io(&from, e))?;
                        files.push(name.to_string());
                    }
                }
            }
            LlmBase::Gguf(file) => {
                // A GGUF without tokenizer metadata has none to convert.
                if let Ok(tokenizer) = tokenizer_from_gguf(&GgufFile::open(file)?) {
                    for (name, text) in hf_tokenizer_files(&tokenizer)? {
                        let path = tmp.join(name);
                        std::fs::write(&path, &text).map_err(|e| Error::io(&path, e))?;
                        bytes += text.len() as u64;
                        files.push(name.to_string());
                    }
                }
            }
        }
        Ok(())
    })?;
    let tokenizer = files.iter().any(|f| f.starts_with("tokenizer"));
    Ok(MergeReport {
        path: out.to_path_buf(),
        tensors: specs.len(),
        bytes,
        types: type_counts(std::iter::repeat_n(ty.name(), specs.len())),
        files,
        tokenizer,
        adapted_matrices: adapted_matrices(model),
    })
}

/// A GGUF's tokenizer as transformers reads it from a directory: `tokenizer.json` (the
/// `tokenizers` pipeline largo built from the metadata) and `tokenizer_config.json` (BOS, EOS,
/// whether they are added, the chat template).
fn hf_tokenizer_files(tokenizer: &LlmTokenizer) -> Result<Vec<(&'static str, String)>> {
    let json = tokenizer
        .tokenizer
        .to_string(true)
        .map_err(|e| Error::Invalid(format!("cannot write tokenizer.json: {e}")))?;
    let config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tokenizer.bos_token(),
        "eos_token": tokenizer.eos_token(),
        "add_bos_token": tokenizer.add_bos,
        "add_eos_token": tokenizer.add_eos,
        "chat_template": tokenizer.chat_template,
        "clean_up_tokenization_spaces": false,
    });
    let config = serde_json::to_string_pretty(&config).expect("a JSON value serialises") + "\n";
    Ok(vec![
        ("tokenizer.json", json),
        ("tokenizer_config.json", config),
    ])
}

/// A transformers `config.json` for a model loaded from `gguf`: the sizes of `config`, with
/// BOS/EOS ids from the GGUF's tokenizer metadata when it has them. Llama 3's rope scaling,
/// stored by llama.cpp as `rope_freqs.weight` divisors, has no such config: refused.
fn hf_config_from_gguf(
    gguf: &GgufFile,
    config: &LlamaConfig,
    torch_dtype: &str,
) -> Result<serde_json::Value> {
    if gguf.tensor("rope_freqs.weight").is_ok() {
        return Err(Error::format(
            gguf.path(),
            "its rope scaling is stored as rope_freqs.weight (Llama 3), which has no \
             config.json equivalent largo can write: merge from the Hugging Face base \
             directory, or write a .gguf",
        ));
    }
    let (model_type, class) = match config.arch {
        LlamaArch::Llama => ("llama", "LlamaForCausalLM"),
        LlamaArch::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
    };
    let rope_scaling = match &config.rope_scaling {
        None => serde_json::Value::Null,
        Some(RopeScaling::Linear { factor }) => {
            serde_json::json!({"rope_type": "linear", "type": "linear", "factor": factor})
        }
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => serde_json::json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": original_max_position_embeddings,
        }),
    };
    let token_id = |key: &str| gguf.get_usize(key).ok();
    let mut v = serde_json::json!({
        "architectures": [class],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": token_id("tokenizer.ggml.bos_token_id"),
        "eos_token_id": token_id("tokenizer.ggml.eos_token_id"),
        "torch_dtype": torch_dtype,
        "use_cache": true,
    });
    if config.arch == LlamaArch::Llama {
        v["attention_bias"] = config.attention_bias.into();
        v["mlp_bias"] = false.into();
    } else {
        v["use_sliding_window"] = false.into();
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::super::llama_load::unpermute_rows;
    use super::*;

    #[test]
    fn permute_rows_inverts_the_loaders_unpermute() {
        // Two heads of D = 4, three columns.
        let original: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let mut rows = original.clone();
        permute_rows(&mut rows, 8, 2);
        assert_ne!(rows, original);
        // HF rows [a0 a1 b0 b1] of a head become llama.cpp's [a0 b0 a1 b1].
        assert_eq!(
            &rows[..12],
            &[0., 1., 2., 6., 7., 8., 3., 4., 5., 9., 10., 11.]
        );
        unpermute_rows(&mut rows, 8, 2);
        assert_eq!(rows, original);
    }

    #[test]
    fn types_parse_by_name() {
        assert_eq!("F16".parse::<MergeType>().unwrap(), MergeType::F16);
        assert_eq!("q8_0".parse::<MergeType>().unwrap(), MergeType::Q8_0);
        let e = "q4_k".parse::<MergeType>().unwrap_err().to_string();
        assert!(
            e.contains("unknown type \"q4_k\": expected one of f32"),
            "{e}"
        );
        assert!(MergeType::Q8_0.hf().is_err());
    }
}
