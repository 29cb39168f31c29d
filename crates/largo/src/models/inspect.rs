//! What a model directory holds: architecture and config, parameters per module, dtypes on
//! disk, tokenizer. Reads largo model directories, Hugging Face BERT directories and GGUF
//! files (metadata, tensor types, parameter count).

use super::sentence::{is_hf_dir, read_bert_config, SentenceEncoder};
use super::store::{load_info, resolve_model_dir, CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE};
use crate::io::gguf::GgufFile;
use crate::{Error, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Serialize)]
pub struct Inspection {
    pub dir: PathBuf,
    /// "largo" or "huggingface".
    pub format: String,
    pub arch: String,
    pub config: serde_json::Value,
    pub weights_file: PathBuf,
    /// Parameter count per module, in file order of first appearance.
    pub modules: Vec<(String, usize)>,
    pub total_params: usize,
    /// Tensors per dtype as stored on disk.
    pub dtypes: BTreeMap<String, usize>,
    pub tokenizer: Option<TokenizerSummary>,
    /// sentence-transformers pooling and normalisation, for embedding models.
    pub pooling: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct TokenizerSummary {
    pub model: String,
    pub vocab_size: usize,
}

/// The module a parameter belongs to: up to its layer index (`encoder.layer.3`), else its
/// name without the last component (`embeddings.word_embeddings`, `fc1`).
fn module_of(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    if let Some(i) = parts.iter().position(|p| p.parse::<usize>().is_ok()) {
        return parts[..=i].join(".");
    }
    if parts.len() == 1 {
        return name.to_string();
    }
    parts[..parts.len() - 1].join(".")
}

fn tokenizer_summary(path: &Path) -> Result<Option<TokenizerSummary>> {
    if !path.is_file() {
        return Ok(None);
    }
    let tok = crate::data::text::load_tokenizer(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::format(path, format!("{e}")))?;
    let model = v
        .pointer("/model/type")
        .and_then(|t| t.as_str())
        .unwrap_or("unknown")
        .to_string();
    Ok(Some(TokenizerSummary {
        model,
        vocab_size: tok.get_vocab_size(true),
    }))
}

/// Tensor names, shapes and dtypes of a weights file, in file order, without converting data.
fn tensor_listing(path: &Path) -> Result<Vec<(String, Vec<usize>, String)>> {
    if path.extension().is_some_and(|x| x == "safetensors") {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
        let mut items: Vec<_> = meta
            .tensors()
            .into_iter()
            .map(|(n, info)| {
                (
                    info.data_offsets.0,
                    n,
                    info.shape.clone(),
                    format!("{:?}", info.dtype),
                )
            })
            .collect();
        items.sort();
        return Ok(items.into_iter().map(|(_, n, s, d)| (n, s, d)).collect());
    }
    let sd = crate::io::torch_pickle::load_state_dict(path)?;
    Ok(sd
        .tensors
        .iter()
        .map(|(n, t)| {
            let d = sd.dtypes.get(n).cloned().unwrap_or_default();
            (n.clone(), t.shape.clone(), d)
        })
        .collect())
}

pub fn inspect(path: &Path) -> Result<Inspection> {
    let (format, arch, config, weights_file, tokenizer, pooling, dir) = if is_hf_dir(path) {
        let cfg = read_bert_config(path)?;
        let enc = SentenceEncoder::load(path)?;
        let pooling = format!(
            "{}{}, max_seq_length {}",
            enc.pooling.names().join("+"),
            if enc.normalize { ", L2-normalised" } else { "" },
            enc.max_seq_length
        );
        (
            "huggingface",
            "bert".to_string(),
            serde_json::to_value(&cfg).expect("config serialises"),
            enc.weights_file.clone(),
            tokenizer_summary(&path.join(TOKENIZER_FILE))?,
            Some(pooling),
            path.to_path_buf(),
        )
    } else {
        let dir = resolve_model_dir(path)?;
        let info = load_info(&dir)?;
        (
            "largo",
            info.arch().name().to_string(),
            serde_json::to_value(&info).expect("config serialises"),
            dir.join(WEIGHTS_FILE),
            tokenizer_summary(&dir.join(TOKENIZER_FILE))?,
            None,
            dir,
        )
    };
    let listing = tensor_listing(&weights_file)?;
    let mut modules: Vec<(String, usize)> = Vec::new();
    let mut dtypes = BTreeMap::new();
    for (name, shape, dtype) in &listing {
        *dtypes.entry(dtype.clone()).or_insert(0) += 1;
        // Integer tensors are buffers (position ids, step counters), not parameters.
        let lower = dtype.to_lowercase();
        if lower.starts_with('i') || lower.starts_with('u') || lower.starts_with("bool") {
            continue;
        }
        let n: usize = shape.iter().product();
        let m = module_of(name);
        match modules.iter_mut().find(|(k, _)| *k == m) {
            Some(entry) => entry.1 += n,
            None => modules.push((m, n)),
        }
    }
    Ok(Inspection {
        dir,
        format: format.into(),
        arch,
        config,
        weights_file,
        total_params: modules.iter().map(|m| m.1).sum(),
        modules,
        dtypes,
        tokenizer,
        pooling,
    })
}

/// What a GGUF file holds.
#[derive(Debug, Serialize)]
pub struct GgufInspection {
    pub file: PathBuf,
    pub version: u32,
    /// `general.architecture` (e.g. "llama"), `general.name`.
    pub architecture: Option<String>,
    pub name: Option<String>,
    /// Every key in file order with its value type and its value summarised (long arrays
    /// cut to their first items, long strings to their first characters).
    pub metadata: Vec<(String, String, String)>,
    /// Per tensor type: tensors and bytes.
    pub tensor_types: Vec<(String, usize, u64)>,
    pub tensors: usize,
    pub total_params: u64,
}

/// Array items and string characters shown per metadata value.
const SHOWN_ITEMS: usize = 6;
const SHOWN_CHARS: usize = 60;

/// The GGUF file that `path` names: the file itself (told by its magic, whatever its name), or
/// the one `.gguf` in a directory that is neither a largo nor a Hugging Face model directory.
/// None when `path` is something else; an error when a directory holds several.
pub fn gguf_file_of(path: &Path) -> Result<Option<PathBuf>> {
    if path.is_file() {
        use std::io::Read;
        let mut magic = [0u8; 4];
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let n = f.read(&mut magic).map_err(|e| Error::io(path, e))?;
        let named_gguf = path
            .extension()
            .is_some_and(|x| x.eq_ignore_ascii_case("gguf"));
        // A .gguf that is not GGUF is still opened, so that the reader says what is wrong.
        return Ok((named_gguf || (n == 4 && &magic == b"GGUF")).then(|| path.to_path_buf()));
    }
    if !path.is_dir() || is_hf_dir(path) {
        return Ok(None);
    }
    if ["", "best", "model"]
        .iter()
        .any(|sub| path.join(sub).join(CONFIG_FILE).is_file())
    {
        return Ok(None);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| Error::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|x| x.eq_ignore_ascii_case("gguf"))
        })
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        n => Err(Error::format(
            path,
            format!(
                "{n} GGUF files here ({}): name one",
                found
                    .iter()
                    .filter_map(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

pub fn inspect_gguf(path: &Path) -> Result<GgufInspection> {
    let f = GgufFile::open(path)?;
    let text = |key: &str| f.get_str(key).ok().map(str::to_string);
    Ok(GgufInspection {
        file: path.to_path_buf(),
        version: f.version(),
        architecture: text("general.architecture"),
        name: text("general.name"),
        metadata: f
            .metadata_entries()
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.type_description(),
                    v.summary(SHOWN_ITEMS, SHOWN_CHARS),
                )
            })
            .collect(),
        tensor_types: f
            .type_histogram()
            .into_iter()
            .map(|(t, (n, bytes))| (t.name().to_string(), n, bytes))
            .collect(),
        tensors: f.tensors().len(),
        total_params: f.parameter_count(),
    })
}

#[cfg(test)]
mod tests {
    use super::module_of;

    #[test]
    fn parameters_group_by_layer_or_leaf_module() {
        assert_eq!(
            module_of("encoder.layer.3.attention.self.query.weight"),
            "encoder.layer.3"
        );
        assert_eq!(
            module_of("embeddings.word_embeddings.weight"),
            "embeddings.word_embeddings"
        );
        assert_eq!(module_of("fc1.bias"), "fc1");
        assert_eq!(module_of("transformer.h.0.ln_1.weight"), "transformer.h.0");
        assert_eq!(module_of("pe"), "pe");
    }
}
