//! Loading Llama-family decoders: a Hugging Face directory (`config.json` with
//! `LlamaForCausalLM` / `Qwen2ForCausalLM`, `model.safetensors` or shards listed in
//! `model.safetensors.index.json`, f32/f16/bf16) or a GGUF file (`llama` / `qwen2`), into
//! [`Llama`] with Hugging Face's names and layout. Quantised GGUF matrices stay quantised for the
//! integer kernels (see [`QMatrix::supports`]), or are expanded to f32 when asked.

use super::llama::{Llama, LlamaArch, LlamaConfig, LlamaLayer, Matrix, RopeScaling};
use crate::backend::cpu::qmatmul::QMatrix;
use crate::data::llm_tokenizer::{tokenizer_from_gguf, tokenizer_from_hf_dir, LlmTokenizer};
use crate::io::gguf::{GgufFile, TensorView};
use crate::io::TensorFile;
use crate::tensor::Tensor;
use crate::{Error, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where a pretrained decoder's files are: its base (a GGUF file or a Hugging Face directory)
/// and, for a fine-tuned model, the LoRA adapter applied on it without merging.
#[derive(Clone, Debug, PartialEq)]
pub struct LlmFiles {
    pub base: LlmBase,
    /// A PEFT adapter directory (`adapter_config.json`, `adapter_model.safetensors`).
    pub adapter: Option<PathBuf>,
}

/// A pretrained decoder's own files.
#[derive(Clone, Debug, PartialEq)]
pub enum LlmBase {
    Gguf(PathBuf),
    HuggingFace(PathBuf),
}

impl LlmBase {
    /// A `.gguf` file, a directory holding one, or a Hugging Face directory whose
    /// `config.json` names a Llama-family class; `None` for anything else.
    pub fn find(path: &Path) -> Result<Option<LlmBase>> {
        if let Some(file) = super::inspect::gguf_file_of(path)? {
            return Ok(Some(LlmBase::Gguf(file)));
        }
        if hf_llama_arch(path).is_some() {
            return Ok(Some(LlmBase::HuggingFace(path.to_path_buf())));
        }
        // Another Hugging Face causal LM: name it rather than mistake it for something else.
        let config = path.join("config.json");
        let class = std::fs::read_to_string(&config)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["architectures"][0].as_str().map(str::to_string));
        match class {
            Some(c) if c.ends_with("ForCausalLM") => Err(Error::format(
                config,
                format!(
                    "unsupported architecture {c:?} (architectures[0]): supported are {}",
                    LlamaArch::SUPPORTED
                ),
            )),
            _ => Ok(None),
        }
    }

    /// Loads the model; `dequantize` expands every GGUF weight to f32.
    pub fn load(&self, dequantize: bool) -> Result<Llama> {
        match self {
            LlmBase::Gguf(file) => load_gguf_with(&GgufFile::open(file)?, dequantize),
            LlmBase::HuggingFace(dir) => load_hf(dir),
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            LlmBase::Gguf(p) | LlmBase::HuggingFace(p) => p,
        }
    }
}

impl LlmFiles {
    /// A pretrained base ([`LlmBase::find`]), or a LoRA fine-tuning run or model directory
    /// (`config.json` with `"arch": "llama"`: its base, with the directory's adapter); `None`
    /// for anything else (largo's own models, BERT).
    pub fn find(path: &Path) -> Result<Option<LlmFiles>> {
        if let Some(base) = LlmBase::find(path)? {
            return Ok(Some(LlmFiles {
                base,
                adapter: None,
            }));
        }
        let Ok(dir) = super::store::resolve_model_dir(path) else {
            return Ok(None);
        };
        // Only a largo fine-tuning directory: other config.json files (BERT's, largo's other
        // models) are someone else's to read.
        let arch = std::fs::read_to_string(dir.join("config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["arch"].as_str().map(str::to_string));
        if arch.as_deref() != Some(super::Arch::Llama.name()) {
            return Ok(None);
        }
        let info = super::store::load_info(&dir)?;
        let super::ModelKind::Llama(c) = info.model else {
            return Ok(None);
        };
        let base_path = Path::new(&c.base);
        match LlmBase::find(base_path) {
            Ok(Some(base)) => Ok(Some(LlmFiles {
                base,
                adapter: Some(dir),
            })),
            Ok(None) => Err(Error::format(
                dir.join("config.json"),
                format!(
                    "llama.base = {:?} is not a pretrained model (a .gguf file or a Hugging Face Llama directory): the fine-tuned adapter needs its base",
                    c.base
                ),
            )),
            Err(e) => Err(Error::format(
                dir.join("config.json"),
                format!("llama.base = {:?}: {e}", c.base),
            )),
        }
    }

    /// [`find`](Self::find), then the adapter in `adapter` (`--adapter`) applied on it; an
    /// adapter for a model that is not a pretrained decoder is an error.
    pub fn find_with_adapter(path: &Path, adapter: Option<&Path>) -> Result<Option<LlmFiles>> {
        let found = Self::find(path)?;
        match (found, adapter) {
            (Some(files), Some(dir)) => files.with_adapter(dir).map(Some),
            (None, Some(dir)) => Err(Error::Invalid(format!(
                "--adapter {}: adapters apply to a pretrained Llama-family model (a .gguf file or a Hugging Face directory), and {} is not one",
                dir.display(),
                path.display()
            ))),
            (found, None) => Ok(found),
        }
    }

    /// These files with the adapter in `dir` applied; refused when they already carry one.
    pub fn with_adapter(self, dir: &Path) -> Result<LlmFiles> {
        if let Some(own) = &self.adapter {
            return Err(Error::Invalid(format!(
                "{} already is a fine-tuned model (its adapter is {}): give its base as --model to apply another adapter",
                self.base.path().display(),
                own.display()
            )));
        }
        let dir = super::store::resolve_adapter_dir(dir)?;
        Ok(LlmFiles {
            adapter: Some(dir),
            ..self
        })
    }

    /// Loads the model with every weight as f32 (GGUF blocks dequantised): transformers'
    /// numbers. `load(false)` keeps Q8_0/Q4_0/Q4_1 matrices quantised for the integer kernels.
    pub fn load_model(&self) -> Result<Llama> {
        self.load(true)
    }

    /// Loads the model, with its adapter if any; `dequantize` expands every GGUF weight to f32.
    pub fn load(&self, dequantize: bool) -> Result<Llama> {
        let base = self.base.load(dequantize)?;
        match &self.adapter {
            Some(dir) => super::llama_train::load_adapted(base, dir),
            None => Ok(base),
        }
    }

    /// The tokenizer: from the GGUF's metadata, or a Hugging Face directory's
    /// `tokenizer.json`, `tokenizer_config.json` (BOS/EOS, `add_bos_token`, the chat template
    /// or `chat_template.jinja`) and `generation_config.json` (end tokens).
    pub fn load_tokenizer(&self) -> Result<LlmTokenizer> {
        match &self.base {
            LlmBase::Gguf(file) => tokenizer_from_gguf(&GgufFile::open(file)?),
            LlmBase::HuggingFace(dir) => tokenizer_from_hf_dir(dir),
        }
    }

    /// The base's path.
    pub fn path(&self) -> &Path {
        self.base.path()
    }

    /// The model's name for messages: the base, and the adapter when there is one.
    pub fn describe(&self) -> String {
        match &self.adapter {
            Some(a) => format!("{} + adapter {}", self.path().display(), a.display()),
            None => self.path().display().to_string(),
        }
    }
}

/// `config.json`'s `architectures[0]` when it names a Llama-family decoder.
pub fn hf_llama_arch(dir: &Path) -> Option<LlamaArch> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let first = v.get("architectures")?.as_array()?.first()?.as_str()?;
    match first {
        "LlamaForCausalLM" => Some(LlamaArch::Llama),
        "Qwen2ForCausalLM" => Some(LlamaArch::Qwen2),
        _ => None,
    }
}

/// Reads a Hugging Face `config.json` of a Llama-family decoder.
pub fn read_hf_config(path: &Path) -> Result<LlamaConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::format(path, e.to_string()))?;
    let bad = |msg: String| Error::format(path, msg);
    let class = v
        .get("architectures")
        .and_then(|a| a.as_array())
        .and_then(|a| a.first())
        .and_then(|a| a.as_str())
        .unwrap_or("");
    let arch = match class {
        "LlamaForCausalLM" => LlamaArch::Llama,
        "Qwen2ForCausalLM" => LlamaArch::Qwen2,
        other => {
            return Err(bad(format!(
                "unsupported architecture {other:?} (architectures[0]): supported are {}",
                LlamaArch::SUPPORTED
            )))
        }
    };
    let usize_of = |key: &str| -> Result<Option<usize>> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| bad(format!("{key} = {x}: expected a non-negative integer"))),
        }
    };
    let need = |key: &str| -> Result<usize> {
        usize_of(key)?.ok_or_else(|| bad(format!("missing {key}")))
    };
    let f64_of = |key: &str| v.get(key).and_then(|x| x.as_f64());
    let heads = need("num_attention_heads")?;
    let hidden = need("hidden_size")?;
    // transformers ≥ 5 writes `rope_parameters`; earlier versions `rope_theta` + `rope_scaling`.
    let rope = v.get("rope_parameters").filter(|r| r.is_object());
    let rope_theta = rope
        .and_then(|r| r.get("rope_theta"))
        .and_then(|x| x.as_f64())
        .or_else(|| f64_of("rope_theta"))
        .unwrap_or(10_000.0);
    let scaling = rope.or(v.get("rope_scaling").filter(|r| r.is_object()));
    let config = LlamaConfig {
        arch,
        vocab_size: need("vocab_size")?,
        hidden_size: hidden,
        intermediate_size: need("intermediate_size")?,
        num_hidden_layers: need("num_hidden_layers")?,
        num_attention_heads: heads,
        num_key_value_heads: usize_of("num_key_value_heads")?.unwrap_or(heads),
        head_dim: usize_of("head_dim")?.unwrap_or(hidden / heads.max(1)),
        rms_norm_eps: f64_of("rms_norm_eps").unwrap_or(1e-6),
        rope_theta,
        rope_scaling: scaling
            .map(|s| rope_scaling(s, path))
            .transpose()?
            .flatten(),
        max_position_embeddings: usize_of("max_position_embeddings")?.unwrap_or(2048),
        tie_word_embeddings: v
            .get("tie_word_embeddings")
            .and_then(|x| x.as_bool())
            .unwrap_or(false),
        attention_bias: arch == LlamaArch::Qwen2
            || v.get("attention_bias").and_then(|x| x.as_bool()) == Some(true),
    };
    config.validate().map_err(|e| bad(e.to_string()))?;
    Ok(config)
}

/// `rope_scaling` / `rope_parameters`: `default` (none), `linear` or `llama3`.
fn rope_scaling(s: &Value, path: &Path) -> Result<Option<RopeScaling>> {
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(|x| x.as_str())
        .unwrap_or("default");
    let num = |key: &str| {
        s.get(key).and_then(|x| x.as_f64()).ok_or_else(|| {
            Error::format(path, format!("rope scaling {kind:?} needs a number {key}"))
        })
    };
    Ok(match kind {
        "default" => None,
        "linear" => Some(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
        }),
        other => {
            return Err(Error::format(
                path,
                format!("rope scaling {other:?} is not supported (supported: linear, llama3)"),
            ))
        }
    })
}

/// Loads a Hugging Face directory.
pub fn load_hf(dir: &Path) -> Result<Llama> {
    let config = read_hf_config(&dir.join("config.json"))?;
    let mut tensors = BTreeMap::new();
    for file in safetensors_files(dir)? {
        let loaded = TensorFile::load(&file)?;
        tensors.extend(
            loaded
                .tensors
                .into_iter()
                .map(|(n, t)| (n, (file.clone(), t))),
        );
    }
    let mut source = HfTensors { tensors };
    build(config, &mut source, &|_| None)
}

/// `model.safetensors`, or the shards `model.safetensors.index.json` lists.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).map_err(|_| {
        Error::format(
            dir,
            "neither model.safetensors nor model.safetensors.index.json is here",
        )
    })?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::format(&index, e.to_string()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::format(&index, "no weight_map object"))?;
    let mut files: Vec<String> = Vec::new();
    for (tensor, f) in map {
        let f = f.as_str().ok_or_else(|| {
            Error::format(&index, format!("weight_map[{tensor:?}] is not a file name"))
        })?;
        if f.contains(['/', '\\']) || f == ".." {
            return Err(Error::format(
                &index,
                format!("weight_map[{tensor:?}] = {f:?} is not a file name in this directory"),
            ));
        }
        if !files.iter().any(|x| x == f) {
            files.push(f.to_string());
        }
    }
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Where a loader takes each tensor (by Hugging Face name) from.
trait TensorSource {
    /// The tensor `name`, which must have `shape`; `None` when absent and `optional`.
    fn take(&mut self, name: &str, shape: &[usize], optional: bool) -> Result<Option<Tensor>>;
    /// The matrix `name` [rows, cols] kept quantised, its rows un-permuted for `heads` when
    /// given; `None` when this source gives f32 for it (then `take` is asked).
    fn take_quant(
        &mut self,
        _name: &str,
        _rows: usize,
        _cols: usize,
        _heads: Option<usize>,
    ) -> Result<Option<QMatrix>> {
        Ok(None)
    }
    /// Names left over (an error: weights the model does not use).
    fn leftover(&self) -> Option<String>;
    fn describe(&self) -> String;
}

struct HfTensors {
    tensors: BTreeMap<String, (PathBuf, Tensor)>,
}

impl TensorSource for HfTensors {
    fn take(&mut self, name: &str, shape: &[usize], optional: bool) -> Result<Option<Tensor>> {
        match self.tensors.remove(name) {
            None if optional => Ok(None),
            None => Err(Error::Invalid(format!(
                "missing tensor {name} in {}",
                self.describe()
            ))),
            Some((file, t)) if t.shape != shape => Err(Error::format(
                file,
                format!(
                    "tensor {name} has shape {:?}, the config implies {shape:?}",
                    t.shape
                ),
            )),
            Some((_, t)) => Ok(Some(t)),
        }
    }

    fn leftover(&self) -> Option<String> {
        self.tensors.keys().next().cloned()
    }

    fn describe(&self) -> String {
        let files: std::collections::BTreeSet<_> = self
            .tensors
            .values()
            .map(|(f, _)| f.display().to_string())
            .collect();
        files.into_iter().collect::<Vec<_>>().join(", ")
    }
}

/// The head count whose rotary rows a weight's rows must be un-permuted for (GGUF `llama`
/// q/k weights and biases), or `None` to leave them.
type RowFix<'a> = &'a dyn Fn(&str) -> Option<usize>;

fn take_matrix(
    src: &mut dyn TensorSource,
    fix: RowFix,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<Matrix> {
    if let Some(q) = src.take_quant(name, rows, cols, fix(name))? {
        return Ok(Matrix::quantized(q));
    }
    let mut t = src
        .take(name, &[rows, cols], false)?
        .ok_or_else(|| Error::Invalid(format!("missing tensor {name}")))?;
    if let Some(heads) = fix(name) {
        unpermute_rows(&mut t.data, rows, heads);
    }
    Matrix::new(rows, cols, t.data)
}

fn take_vector(src: &mut dyn TensorSource, fix: RowFix, name: &str, n: usize) -> Result<Vec<f32>> {
    let mut t = src
        .take(name, &[n], false)?
        .ok_or_else(|| Error::Invalid(format!("missing tensor {name}")))?;
    if let Some(heads) = fix(name) {
        unpermute_rows(&mut t.data, n, heads);
    }
    Ok(t.data)
}

/// Builds the model from a source of Hugging Face-named tensors; `fix` sees each weight
/// before it is stored (GGUF: un-permute the query/key rows).
fn build(config: LlamaConfig, src: &mut dyn TensorSource, fix: RowFix) -> Result<Llama> {
    config.validate()?;
    let c = config.hidden_size;
    let (qd, kvd, f, v) = (
        config.q_dim(),
        config.kv_dim(),
        config.intermediate_size,
        config.vocab_size,
    );
    let embed_tokens = take_matrix(src, fix, "model.embed_tokens.weight", v, c)?;
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let mut m =
            |name: &str, rows, cols| take_matrix(src, fix, &format!("{p}.{name}"), rows, cols);
        let (q_proj, k_proj, v_proj) = (
            m("self_attn.q_proj.weight", qd, c)?,
            m("self_attn.k_proj.weight", kvd, c)?,
            m("self_attn.v_proj.weight", kvd, c)?,
        );
        let o_proj = m("self_attn.o_proj.weight", c, qd)?;
        let (gate_proj, up_proj, down_proj) = (
            m("mlp.gate_proj.weight", f, c)?,
            m("mlp.up_proj.weight", f, c)?,
            m("mlp.down_proj.weight", c, f)?,
        );
        let mut vector = |name: &str, n| take_vector(src, fix, &format!("{p}.{name}"), n);
        let qkv_bias = if config.attention_bias {
            Some([
                vector("self_attn.q_proj.bias", qd)?,
                vector("self_attn.k_proj.bias", kvd)?,
                vector("self_attn.v_proj.bias", kvd)?,
            ])
        } else {
            None
        };
        layers.push(LlamaLayer {
            input_layernorm: vector("input_layernorm.weight", c)?,
            q_proj,
            k_proj,
            v_proj,
            qkv_bias,
            o_proj,
            post_attention_layernorm: vector("post_attention_layernorm.weight", c)?,
            gate_proj,
            up_proj,
            down_proj,
        });
    }
    let norm = take_vector(src, fix, "model.norm.weight", c)?;
    let lm_head = match src.take_quant("lm_head.weight", v, c, None)? {
        Some(q) => Some(Matrix::quantized(q)),
        None => match src.take("lm_head.weight", &[v, c], config.tie_word_embeddings)? {
            Some(t) => Some(Matrix::new(v, c, t.data)?),
            None => None,
        },
    };
    if let Some(extra) = src.leftover() {
        return Err(Error::Invalid(format!(
            "unexpected tensor {extra} in {}: a {} with this config has no such weight",
            src.describe(),
            config.arch.hf_class()
        )));
    }
    Llama::new(config, embed_tokens, layers, norm, lm_head)
}

/// Loads a GGUF file's `llama` or `qwen2` decoder: Q8_0, Q4_0 and Q4_1 matrices stay
/// quantised (run by the integer kernels), every other weight is dequantised to f32.
pub fn load_gguf(gguf: &GgufFile) -> Result<Llama> {
    load_gguf_with(gguf, false)
}

/// [`load_gguf`], or with `dequantize` every weight expanded to f32 (exact f32 arithmetic).
pub fn load_gguf_with(gguf: &GgufFile, dequantize: bool) -> Result<Llama> {
    let path = gguf.path().to_path_buf();
    let arch_name = gguf.get_str("general.architecture")?;
    let arch = match arch_name {
        "llama" => LlamaArch::Llama,
        "qwen2" => LlamaArch::Qwen2,
        other => {
            return Err(Error::format(
                &path,
                format!(
                    "unsupported architecture {other:?} (general.architecture): supported are {}",
                    LlamaArch::SUPPORTED
                ),
            ))
        }
    };
    let key = |k: &str| format!("{arch_name}.{k}");
    let heads = gguf.get_usize(&key("attention.head_count"))?;
    let hidden = gguf.get_usize(&key("embedding_length"))?;
    let vocab = match gguf.get_usize(&key("vocab_size")) {
        Ok(n) => n,
        Err(_) => gguf.get_str_array("tokenizer.ggml.tokens")?.len(),
    };
    let head_dim = gguf
        .get_usize(&key("attention.key_length"))
        .or_else(|_| gguf.get_usize(&key("rope.dimension_count")))
        .unwrap_or(hidden / heads.max(1));
    let rope_scaling = match gguf.get_str(&key("rope.scaling.type")) {
        Err(_) | Ok("none") => None,
        Ok("linear") => Some(RopeScaling::Linear {
            factor: gguf.get_f32(&key("rope.scaling.factor"))? as f64,
        }),
        Ok(other) => {
            return Err(Error::format(
                &path,
                format!("rope scaling {other:?} ({}) is not supported (supported: linear; llama3's comes as rope_freqs.weight)", key("rope.scaling.type")),
            ))
        }
    };
    let has_output = gguf.tensors().iter().any(|t| t.name == "output.weight");
    let config = LlamaConfig {
        arch,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: gguf.get_usize(&key("feed_forward_length"))?,
        num_hidden_layers: gguf.get_usize(&key("block_count"))?,
        num_attention_heads: heads,
        num_key_value_heads: gguf
            .get_usize(&key("attention.head_count_kv"))
            .unwrap_or(heads),
        head_dim,
        rms_norm_eps: gguf.get_f32(&key("attention.layer_norm_rms_epsilon"))? as f64,
        rope_theta: gguf.get_f32(&key("rope.freq_base")).unwrap_or(10_000.0) as f64,
        rope_scaling,
        max_position_embeddings: gguf.get_usize(&key("context_length"))?,
        tie_word_embeddings: !has_output,
        attention_bias: arch == LlamaArch::Qwen2,
    };
    config
        .validate()
        .map_err(|e| Error::format(&path, e.to_string()))?;
    let mut src = GgufTensors {
        gguf,
        taken: Default::default(),
        dequantize,
    };
    let (heads, kv_heads) = (config.num_attention_heads, config.num_key_value_heads);
    let permuted = arch == LlamaArch::Llama;
    let mut model = build(config, &mut src, &|name| {
        // llama.cpp's converter interleaved the rotary pairs of `llama` q/k rows (and biases);
        // put them back in Hugging Face's half-split order (whole rows move, values untouched).
        if !permuted {
            None
        } else if name.contains("q_proj.") {
            Some(heads)
        } else if name.contains("k_proj.") {
            Some(kv_heads)
        } else {
            None
        }
    })?;
    // Llama 3's rope scaling is stored as per-frequency divisors.
    if let Ok(t) = gguf.tensor("rope_freqs.weight") {
        let factors = t.dequantize()?;
        model.divide_rope_frequencies(&factors)?;
    }
    Ok(model)
}

struct GgufTensors<'a> {
    gguf: &'a GgufFile,
    taken: std::collections::BTreeSet<String>,
    dequantize: bool,
}

impl<'a> GgufTensors<'a> {
    /// The view of `name` checked against `shape`; `None` when absent and `optional`.
    fn view(
        &self,
        name: &str,
        shape: &[usize],
        optional: bool,
    ) -> Result<Option<(String, TensorView<'a>)>> {
        let gguf_name = gguf_name(name);
        let Ok(view) = self.gguf.tensor(&gguf_name) else {
            if optional {
                return Ok(None);
            }
            return Err(Error::format(
                self.gguf.path(),
                format!("missing tensor {gguf_name} (Hugging Face's {name})"),
            ));
        };
        if view.shape != shape {
            return Err(Error::format(
                self.gguf.path(),
                format!(
                    "tensor {gguf_name} has shape {:?}, the metadata implies {shape:?}",
                    view.shape
                ),
            ));
        }
        Ok(Some((gguf_name, view)))
    }
}

impl TensorSource for GgufTensors<'_> {
    fn take(&mut self, name: &str, shape: &[usize], optional: bool) -> Result<Option<Tensor>> {
        let Some((gguf_name, view)) = self.view(name, shape, optional)? else {
            return Ok(None);
        };
        self.taken.insert(gguf_name);
        let tensor = view.to_tensor()?;
        self.gguf.release_pages(view.bytes);
        Ok(Some(tensor))
    }

    fn take_quant(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        heads: Option<usize>,
    ) -> Result<Option<QMatrix>> {
        if self.dequantize {
            return Ok(None);
        }
        let Some((gguf_name, view)) = self.view(name, &[rows, cols], true)? else {
            return Ok(None);
        };
        if !QMatrix::supports(view.dtype) {
            return Ok(None);
        }
        let bytes = match heads {
            // A row is whole blocks: moving rows moves bytes.
            Some(heads) => {
                let mut b = view.bytes.to_vec();
                unpermute_rows(&mut b, rows, heads);
                std::borrow::Cow::Owned(b)
            }
            None => std::borrow::Cow::Borrowed(view.bytes),
        };
        let q = QMatrix::from_ggml(view.dtype, rows, cols, &bytes)
            .map_err(|e| Error::format(self.gguf.path(), format!("tensor {gguf_name}: {e}")))?;
        self.gguf.release_pages(view.bytes);
        self.taken.insert(gguf_name);
        Ok(Some(q))
    }

    fn leftover(&self) -> Option<String> {
        self.gguf
            .tensors()
            .iter()
            .map(|t| &t.name)
            .find(|n| !self.taken.contains(*n) && *n != "rope_freqs.weight")
            .cloned()
    }

    fn describe(&self) -> String {
        self.gguf.path().display().to_string()
    }
}

/// GGUF's name of a Hugging Face tensor name.
pub(crate) fn gguf_name(hf: &str) -> String {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(n) = fixed {
        return n.to_string();
    }
    let Some(rest) = hf.strip_prefix("model.layers.") else {
        return hf.to_string();
    };
    let (layer, field) = rest.split_once('.').unwrap_or((rest, ""));
    let field = match field {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        other => other,
    };
    format!("blk.{layer}.{field}")
}

/// Undoes llama.cpp's `permute` of a q or k projection's rows ([heads·D] rows of `cols`
/// values): GGUF row 2i + p of a head is Hugging Face's row p·D/2 + i.
pub(crate) fn unpermute_rows<T: Copy>(data: &mut [T], rows: usize, heads: usize) {
    move_rotary_rows(data, rows, heads, false);
}

/// llama.cpp's converter `permute` itself: Hugging Face's row p·D/2 + i of a head becomes
/// GGUF row 2i + p (the rotary pairs interleaved); the inverse of [`unpermute_rows`].
pub(crate) fn permute_rows<T: Copy>(data: &mut [T], rows: usize, heads: usize) {
    move_rotary_rows(data, rows, heads, true);
}

/// Moves the rows of each head between the two rotary layouts: to GGUF's interleaved pairs
/// (`to_gguf`) or back to Hugging Face's halves.
fn move_rotary_rows<T: Copy>(data: &mut [T], rows: usize, heads: usize, to_gguf: bool) {
    let cols = data.len() / rows;
    let d = rows / heads;
    let half = d / 2;
    let src = data.to_vec();
    for h in 0..heads {
        for i in 0..half {
            for p in 0..2 {
                let (hf, gguf) = (h * d + p * half + i, h * d + 2 * i + p);
                let (from, to) = if to_gguf { (hf, gguf) } else { (gguf, hf) };
                data[to * cols..(to + 1) * cols]
                    .copy_from_slice(&src[from * cols..(from + 1) * cols]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpps_permute() {
        // Two heads of D = 4, one column: HF rows [h0: a0 a1 b0 b1 | h1: …] (halves a, b);
        // llama.cpp interleaves them to [a0 b0 a1 b1 | …].
        let mut rows = vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0];
        unpermute_rows(&mut rows, 8, 2);
        assert_eq!(rows, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
    }

    #[test]
    fn gguf_names_follow_llama_cpp() {
        assert_eq!(
            gguf_name("model.layers.3.mlp.down_proj.weight"),
            "blk.3.ffn_down.weight"
        );
        assert_eq!(gguf_name("lm_head.weight"), "output.weight");
    }
}
