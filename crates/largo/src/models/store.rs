//! A model directory: `config.json` (architecture, sizes, preprocessing) + `model.safetensors`
//! with PyTorch `state_dict` names. Written atomically; loading checks every tensor's shape.

use super::{Mlp, MlpConfig};
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
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    pub arch: String,
    pub mlp: MlpConfig,
    /// Pixel normalisation measured on the training split.
    pub normalization: Normalization,
    #[serde(default)]
    pub split: Option<SplitInfo>,
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

pub fn save_mlp(dir: &Path, model: &Mlp, info: &ModelInfo) -> Result<()> {
    write_dir_atomic(dir, |tmp| {
        let json = serde_json::to_string_pretty(info).expect("model info serialises");
        crate::io::write_atomic(&tmp.join(CONFIG_FILE), json.as_bytes())?;
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
    if info.arch != "mlp" {
        return Err(Error::format(
            &path,
            format!(
                "architecture {:?} is not supported here: expected \"mlp\"",
                info.arch
            ),
        ));
    }
    info.mlp
        .validate()
        .map_err(|e| Error::format(&path, e.to_string()))?;
    Ok(info)
}

/// Loads an MLP; every tensor must be present with the shape its config implies, and no other.
pub fn load_mlp(dir: &Path) -> Result<(Mlp, ModelInfo)> {
    let info = load_info(dir)?;
    let mut model = Mlp::new(info.mlp.clone())?;
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
