//! A model directory: `config.json` (architecture, sizes, preprocessing) + `model.safetensors`
//! with PyTorch `state_dict` names. Written atomically; loading checks every tensor's shape.

use super::{
    Arch, CnnConfig, EncoderLmConfig, GptConfig, ImageClassifier, LlamaAdapterConfig, LmSpec, Mlp,
    MlpConfig, ModelKind, ResNetConfig, TransformerLm,
};
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
/// `config.json` of a model directory: the model kind with its settings, and what its
/// preprocessing needs. On disk: `"arch"`, the section of that name, `"normalization"` and
/// `"split"` (see [`ModelInfoFile`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ModelInfoFile", into = "ModelInfoFile")]
pub struct ModelInfo {
    pub model: ModelKind,
    /// Pixel normalisation measured on the training split (MLP; required there).
    pub normalization: Option<Normalization>,
    pub split: Option<SplitInfo>,
}

impl ModelInfo {
    pub fn arch(&self) -> Arch {
        self.model.arch()
    }

    /// The language-model skeleton this directory describes, if it is one.
    pub fn lm_spec(&self) -> Option<LmSpec> {
        self.model.lm_spec()
    }
}

/// `config.json` as written: the architecture's name and one optional section per kind, of
/// which the named one must be present. Files written before the encoder LM's rename (arch
/// `"seed_transformer"` and a section of that name) still load.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelInfoFile {
    arch: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mlp: Option<MlpConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cnn: Option<CnnConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resnet: Option<ResNetConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    normalization: Option<Normalization>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    split: Option<SplitInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gpt: Option<GptConfig>,
    #[serde(
        default,
        alias = "seed_transformer",
        skip_serializing_if = "Option::is_none"
    )]
    encoder_lm: Option<EncoderLmConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    llama: Option<LlamaAdapterConfig>,
}

impl TryFrom<ModelInfoFile> for ModelInfo {
    type Error = String;

    fn try_from(f: ModelInfoFile) -> std::result::Result<Self, String> {
        let Some(arch) = Arch::parse(&f.arch) else {
            return Err(format!(
                "unsupported architecture {:?}: supported are {}",
                f.arch,
                Arch::names()
            ));
        };
        let missing = |section: &str| {
            format!(
                "architecture {:?} needs a \"{section}\" section",
                arch.name()
            )
        };
        let model = match arch {
            Arch::Mlp => ModelKind::Mlp(f.mlp.ok_or_else(|| missing("mlp"))?),
            Arch::Cnn => ModelKind::Cnn(f.cnn.ok_or_else(|| missing("cnn"))?),
            Arch::ResNet => ModelKind::ResNet(f.resnet.ok_or_else(|| missing("resnet"))?),
            Arch::Gpt => ModelKind::Gpt(f.gpt.ok_or_else(|| missing("gpt"))?),
            Arch::EncoderLm => {
                ModelKind::EncoderLm(f.encoder_lm.ok_or_else(|| missing("encoder_lm"))?)
            }
            Arch::Llama => ModelKind::Llama(f.llama.ok_or_else(|| missing("llama"))?),
        };
        if !arch.is_lm() && f.normalization.is_none() {
            return Err(missing("normalization"));
        }
        Ok(ModelInfo {
            model,
            normalization: f.normalization,
            split: f.split,
        })
    }
}

impl From<ModelInfo> for ModelInfoFile {
    fn from(info: ModelInfo) -> Self {
        let mut f = ModelInfoFile {
            arch: info.arch().name().to_string(),
            mlp: None,
            cnn: None,
            resnet: None,
            normalization: info.normalization,
            split: info.split,
            gpt: None,
            encoder_lm: None,
            llama: None,
        };
        match info.model {
            ModelKind::Mlp(c) => f.mlp = Some(c),
            ModelKind::Cnn(c) => f.cnn = Some(c),
            ModelKind::ResNet(c) => f.resnet = Some(c),
            ModelKind::Gpt(c) => f.gpt = Some(c),
            ModelKind::EncoderLm(c) => f.encoder_lm = Some(c),
            ModelKind::Llama(c) => f.llama = Some(c),
        }
        f
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
        return Err(Error::format(path, "model directory not found"));
    }
    Err(Error::format(
        path,
        format!("no {CONFIG_FILE} here nor in best/ or model/: not a largo model or run directory"),
    ))
}

/// A LoRA adapter directory (PEFT's `adapter_config.json` and `adapter_model.safetensors`), or
/// a fine-tuning run holding one in `best/` (else `model/`).
pub fn resolve_adapter_dir(path: &Path) -> Result<PathBuf> {
    const ADAPTER_CONFIG: &str = "adapter_config.json";
    for cand in [path.to_path_buf(), path.join("best"), path.join("model")] {
        if cand.join(ADAPTER_CONFIG).is_file() {
            return Ok(cand);
        }
    }
    if !path.exists() {
        return Err(Error::format(path, "adapter directory not found"));
    }
    Err(Error::format(
        path,
        format!("no {ADAPTER_CONFIG} here nor in best/ or model/: not a LoRA adapter (PEFT's layout) or fine-tuning run"),
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
        let buffers = model.buffers();
        save_safetensors(
            &tmp.join(WEIGHTS_FILE),
            &state_dict(&params, &buffers),
            None,
        )
    })
}

/// Parameters then buffers, by name: what `model.safetensors` holds (PyTorch's `state_dict`).
pub fn state_dict<'a>(
    params: &'a [(String, &'a crate::nn::Param)],
    buffers: &'a [(String, crate::tensor::Tensor)],
) -> Vec<(String, &'a crate::tensor::Tensor)> {
    let params = params.iter().map(|(n, p)| (n.clone(), &p.value));
    params
        .chain(buffers.iter().map(|(n, t)| (n.clone(), t)))
        .collect()
}

pub fn load_info(dir: &Path) -> Result<ModelInfo> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let info: ModelInfo =
        serde_json::from_str(&text).map_err(|e| Error::format(&path, format!("{e}")))?;
    info.model
        .validate()
        .map_err(|e| Error::format(&path, e.to_string()))?;
    Ok(info)
}

/// Loads an MLP; every tensor must be present with the shape its config implies, and no other.
pub fn load_mlp(dir: &Path) -> Result<(Mlp, ModelInfo, Normalization)> {
    let info = load_info(dir)?;
    let (ModelKind::Mlp(cfg), Some(norm)) = (info.model.clone(), info.normalization) else {
        return Err(Error::format(
            dir.join(CONFIG_FILE),
            format!("this is a {} model, not an MLP classifier", info.arch()),
        ));
    };
    let mut model = Mlp::new(cfg)?;
    let mut file = TensorFile::load(&dir.join(WEIGHTS_FILE))?;
    load_params(&mut model, &mut file)?;
    Ok((model, info, norm))
}

/// Loads an image classifier (MLP, CNN or ResNet) with its pixel normalisation; every tensor
/// (parameters and buffers) must be present with the shape its config implies, and no other.
pub fn load_classifier(dir: &Path) -> Result<(Box<dyn ImageClassifier>, ModelInfo, Normalization)> {
    let info = load_info(dir)?;
    let not_classifier = || {
        Error::format(
            dir.join(CONFIG_FILE),
            format!("this is a {} model, not an image classifier", info.arch()),
        )
    };
    let norm = info.normalization.ok_or_else(not_classifier)?;
    let mut rng = crate::rng::Rng::new(0);
    let mut model = info
        .model
        .build_classifier(&mut rng)?
        .ok_or_else(not_classifier)?;
    let mut file = TensorFile::load(&dir.join(WEIGHTS_FILE))?;
    load_params(model.as_mut(), &mut file)?;
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
            format!("this is a {} model, not a language model", info.arch()),
        ));
    };
    let mut model = TransformerLm::new(spec)?;
    let mut file = TensorFile::load(&dir.join(WEIGHTS_FILE))?;
    load_params(&mut model, &mut file)?;
    Ok((model, info))
}

/// Copies tensors from `file` into the module's parameters and buffers (strict, like
/// `load_state_dict`).
pub fn load_params(model: &mut dyn Module, file: &mut TensorFile) -> Result<()> {
    for (name, p) in model.params_mut() {
        let shape = p.value.shape.clone();
        p.value = file.take(&name, &shape)?;
    }
    model.load_buffers(&mut |name, shape| file.take(name, shape))?;
    if let Some(extra) = file.tensors.keys().next() {
        return Err(Error::format(
            &file.path,
            format!("unexpected tensor {extra}: the model's config has no such parameter"),
        ));
    }
    Ok(())
}
