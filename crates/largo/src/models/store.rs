//! A model directory: `config.json` (architecture, sizes, preprocessing) + `model.safetensors`
//! with PyTorch `state_dict` names. Written atomically; loading checks every tensor's shape.

use super::{GptConfig, LmSpec, Mlp, MlpConfig, SeedTransformerConfig, TransformerLm};
use crate::data::mnist::Normalization;
use crate::io::{save_safetensors, write_dir_atomic, TensorFile};
use crate::nn::Module;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// How the training data was split, so `largo eval --split val` can rebuild the validation set.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitInfo {
    pub seed: u64,
    pub val_fraction: f64,
    /// The training split was cut to its first N samples (0: all of them).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_train_samples: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl SplitInfo {
    /// (train, validation) sample indices of a dataset of `n`, as training used them.
    pub fn indices(&self, n: usize) -> (Vec<usize>, Vec<usize>) {
        let (mut train, val) = crate::data::mnist::split_indices(n, self.val_fraction, self.seed);
        if self.max_train_samples > 0 {
            train.truncate(self.max_train_samples);
        }
        (train, val)
    }
}

pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const SUPPORTED: &str = "mlp, gpt, seed_transformer";

/// `config.json` of a model directory: the architecture and the settings it needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    /// "mlp", "gpt" or "seed_transformer".
    pub arch: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp: Option<MlpConfig>,
    /// Pixel normalisation measured on the training split (MLP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalization: Option<Normalization>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpt: Option<GptConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed_transformer: Option<SeedTransformerConfig>,
}

impl ModelInfo {
    /// The language-model skeleton this directory describes, if it is one.
    pub fn lm_spec(&self) -> Option<LmSpec> {
        match self.arch.as_str() {
            "gpt" => self.gpt.as_ref().map(|c| c.spec()),
            "seed_transformer" => self.seed_transformer.as_ref().map(|c| c.spec()),
            _ => None,
        }
    }
}

/// Accepts a model directory, or a run directory (then `best/`, else `model/`).
pub fn resolve_model_dir(path: &Path) -> Result<PathBuf> {
    for cand in [path.to_path_buf(), path.join("best"), path.join("model")] {
        if cand.join(CONFIG_FILE).is_file() {
            return Ok(cand);
        }
    }
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "model directory not found"),
        ));
    }
    Err(Error::format(
        path,
        format!("no {CONFIG_FILE} here nor in best/ or model/: not a largo model or run directory"),
    ))
}

/// Writes config.json, model.safetensors and, for language models, tokenizer.json.
pub fn save_model(
    dir: &Path,
    model: &dyn Module,
    info: &ModelInfo,
    tokenizer: Option<&str>,
) -> Result<()> {
    write_dir_atomic(dir, |tmp| {
        let json = serde_json::to_string_pretty(info).expect("model info serialises");
        crate::io::write_atomic(&tmp.join(CONFIG_FILE), json.as_bytes())?;
        if let Some(t) = tokenizer {
            crate::io::write_atomic(&tmp.join(TOKENIZER_FILE), t.as_bytes())?;
        }
        let params = model.params();
        let tensors: Vec<_> = params.iter().map(|(n, p)| (n.clone(), &p.value)).collect();
        save_safetensors(&tmp.join(WEIGHTS_FILE), &tensors, None)
    })
}

pub fn load_info(dir: &Path) -> Result<ModelInfo> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let info: ModelInfo =
        serde_json::from_str(&text).map_err(|e| Error::format(&path, format!("{e}")))?;
    let missing = |section: &str| {
        Error::format(
            &path,
            format!("architecture {:?} needs a \"{section}\" section", info.arch),
        )
    };
    match info.arch.as_str() {
        "mlp" => {
            let mlp = info.mlp.as_ref().ok_or_else(|| missing("mlp"))?;
            mlp.validate()
                .map_err(|e| Error::format(&path, e.to_string()))?;
            if info.normalization.is_none() {
                return Err(missing("normalization"));
            }
        }
        "gpt" | "seed_transformer" => {
            let spec = info.lm_spec().ok_or_else(|| missing(&info.arch))?;
            spec.validate()
                .map_err(|e| Error::format(&path, e.to_string()))?;
        }
        other => {
            return Err(Error::format(
                &path,
                format!("unsupported architecture {other:?}: supported are {SUPPORTED}"),
            ))
        }
    }
    Ok(info)
}

/// Loads an MLP; every tensor must be present with the shape its config implies, and no other.
pub fn load_mlp(dir: &Path) -> Result<(Mlp, ModelInfo, Normalization)> {
    let info = load_info(dir)?;
    let (Some(cfg), Some(norm)) = (info.mlp.clone(), info.normalization) else {
        return Err(Error::format(
            dir.join(CONFIG_FILE),
            format!("this is a {} model, not an MLP classifier", info.arch),
        ));
    };
    let mut model = Mlp::new(cfg)?;
    let mut file = TensorFile::load(&dir.join(WEIGHTS_FILE))?;
    load_params(&mut model, &mut file)?;
    Ok((model, info, norm))
}

/// Loads a language model and its tokenizer.
pub fn load_lm(dir: &Path) -> Result<(TransformerLm, ModelInfo, tokenizers::Tokenizer)> {
    let (model, info) = load_lm_model(dir)?;
    let tok = dir.join(TOKENIZER_FILE);
    if !tok.is_file() {
        return Err(Error::format(
            dir,
            format!("missing {TOKENIZER_FILE}: text needs one (`largo import --tokenizer FILE` adds it to an imported model)"),
        ));
    }
    let tokenizer = crate::data::text::load_tokenizer(&tok)?;
    Ok((model, info, tokenizer))
}

/// Loads a language model's weights only (no tokenizer needed).
pub fn load_lm_model(dir: &Path) -> Result<(TransformerLm, ModelInfo)> {
    let info = load_info(dir)?;
    let Some(spec) = info.lm_spec() else {
        return Err(Error::format(
            dir.join(CONFIG_FILE),
            format!("this is a {} model, not a language model", info.arch),
        ));
    };
    let mut model = TransformerLm::new(spec)?;
    let mut file = TensorFile::load(&dir.join(WEIGHTS_FILE))?;
    load_params(&mut model, &mut file)?;
    Ok((model, info))
}

/// Copies tensors from `file` into the module's parameters (strict, like `load_state_dict`).
pub fn load_params(model: &mut dyn Module, file: &mut TensorFile) -> Result<()> {
    for (name, p) in model.params_mut() {
        let shape = p.value.shape.clone();
        p.value = file.take(&name, &shape)?;
    }
    if let Some(extra) = file.tensors.keys().next() {
        return Err(Error::format(
            &file.path,
            format!("unexpected tensor {extra}: the model's config has no such parameter"),
        ));
    }
    Ok(())
}
