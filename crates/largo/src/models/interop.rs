//! PyTorch interop: `import` turns a `state_dict` (a `torch.save` file or safetensors) of the
//! MNIST MLP, the `nn.TransformerEncoder` language model of PyTorch's tutorial or a nanoGPT
//! GPT into a largo model directory;
//! `export` writes a model's parameters back as safetensors under PyTorch's names, including
//! what PyTorch's strict `load_state_dict` expects beyond largo's parameters (tied `lm_head`,
//! the encoder LM's `pe` buffer).

use super::store::load_classifier;
use super::store::{load_info, load_mlp, load_params, save_model, ModelInfo};
use super::{
    Arch, BlockKind, Cnn, CnnConfig, EncoderLmConfig, GptConfig, Mlp, MlpConfig, ModelKind, ResNet,
    ResNetConfig, TransformerLm,
};
use crate::backend::sinusoidal_table;
use crate::data::mnist::Normalization;
use crate::io::{load_weights, save_safetensors, TensorFile};
use crate::nn::Module;
use crate::tensor::Tensor;
use crate::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;

/// An architecture as `largo import --arch` names it: a kind, and for ResNet perhaps a depth
/// (`resnet18`, `resnet34`, `resnet50`) the file must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImportArch {
    pub arch: Arch,
    pub resnet_depth: Option<usize>,
}

impl From<Arch> for ImportArch {
    fn from(arch: Arch) -> Self {
        ImportArch {
            arch,
            resnet_depth: None,
        }
    }
}

/// The architecture named on the command line (`largo import --arch`): `mlp`, `cnn`,
/// `resnet18`, `resnet34`, `resnet50` (or `resnet`: any depth, read from the file), `gpt` or
/// `encoder-lm` (`seed-mlp` and `seed-transformer`, the earlier names, too).
pub fn parse_arch(s: &str) -> Result<ImportArch> {
    if let Some(depth) = s
        .strip_prefix("resnet")
        .and_then(|d| d.parse::<usize>().ok())
    {
        ResNetConfig::depth(depth, 2)?;
        return Ok(ImportArch {
            arch: Arch::ResNet,
            resnet_depth: Some(depth),
        });
    }
    // A pretrained Llama needs no import: its GGUF or Hugging Face files are read as they are.
    let importable = |a: &Arch| *a != Arch::Llama;
    Arch::parse(s)
        .filter(importable)
        .map(ImportArch::from)
        .ok_or_else(|| {
            let names: Vec<String> = Arch::ALL
                .iter()
                .filter(|a| importable(a))
                .map(|a| a.cli_name())
                .collect();
            Error::Invalid(format!(
                "unsupported architecture {s:?}: supported are {}, resnet18, resnet34, resnet50",
                names.join(", ")
            ))
        })
}

/// A prefix mapping of tensor names (`--rename OLD.=NEW.`): a name that starts with `from`
/// starts with `to` instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rename {
    pub from: String,
    pub to: String,
}

impl std::str::FromStr for Rename {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.split_once('=') {
            Some((from, to)) if from != to => Ok(Rename {
                from: from.to_string(),
                to: to.to_string(),
            }),
            Some(_) => Err(Error::Invalid(format!(
                "--rename {s:?}: both sides are the same prefix"
            ))),
            None => Err(Error::Invalid(format!(
                "--rename {s:?}: expected OLD=NEW, a prefix of the names and its replacement (e.g. fc.=decoder.)"
            ))),
        }
    }
}

impl std::fmt::Display for Rename {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}* → {}*", self.from, self.to)
    }
}

/// Applies `renames` to `names` in place (for each name, the first rename whose prefix it has).
/// Every rename must match a name, and no two names may end up the same. Returns one note per
/// rename: `fc.* → decoder.* (2 tensors)`. `what` names the names' source, for errors.
fn apply_renames(names: &mut [String], renames: &[Rename], what: &str) -> Result<Vec<String>> {
    let mut counts = vec![0usize; renames.len()];
    for name in names.iter_mut() {
        if let Some(i) = renames.iter().position(|r| name.starts_with(&r.from)) {
            let r = &renames[i];
            *name = format!("{}{}", r.to, &name[r.from.len()..]);
            counts[i] += 1;
        }
    }
    if let Some(i) = counts.iter().position(|&n| n == 0) {
        let mut sample: Vec<&str> = names.iter().map(String::as_str).take(6).collect();
        if names.len() > sample.len() {
            sample.push("…");
        }
        return Err(Error::Invalid(format!(
            "--rename {}={}: no tensor name of {what} starts with {:?} (its names: {})",
            renames[i].from,
            renames[i].to,
            renames[i].from,
            sample.join(", ")
        )));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
        return Err(Error::Invalid(format!(
            "--rename: two tensors of {what} would both be named {dup}"
        )));
    }
    Ok(renames
        .iter()
        .zip(counts)
        .map(|(r, n)| format!("{r} ({n} tensor{})", if n == 1 { "" } else { "s" }))
        .collect())
}

/// Renames the tensors of `file` by `renames` (see [`apply_renames`]).
fn rename_file(file: &mut TensorFile, renames: &[Rename], path: &Path) -> Result<Vec<String>> {
    if renames.is_empty() {
        return Ok(Vec::new());
    }
    let (mut names, tensors): (Vec<String>, Vec<Tensor>) =
        std::mem::take(&mut file.tensors).into_iter().unzip();
    let notes = apply_renames(&mut names, renames, &path.display().to_string())?;
    file.tensors = names.into_iter().zip(tensors).collect();
    Ok(notes)
}

/// A weights file (`io::load_weights`), without the prefixes torch.compile and
/// DistributedDataParallel wrappers add to every name.
fn read_weights(path: &Path) -> Result<TensorFile> {
    let mut file = load_weights(path)?;
    let names: Vec<String> = file.tensors.keys().cloned().collect();
    for name in names {
        let mut new = name.as_str();
        for prefix in ["_orig_mod.", "module."] {
            new = new.strip_prefix(prefix).unwrap_or(new);
        }
        if new != name {
            let t = file.tensors.remove(&name).expect("listed");
            file.tensors.insert(new.to_string(), t);
        }
    }
    Ok(file)
}

/// A `.toml` file as TOML, anything else as JSON, into one JSON value.
fn read_json_or_toml(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    if path.extension().is_some_and(|x| x == "toml") {
        let t: toml::Value =
            toml::from_str(&text).map_err(|e| Error::format(path, format!("{e}")))?;
        serde_json::to_value(t).map_err(|e| Error::format(path, format!("{e}")))
    } else {
        serde_json::from_str(&text).map_err(|e| Error::format(path, format!("{e}")))
    }
}

/// A config from a JSON or TOML file: either the fields themselves or a largo training config
/// with the arch's `[section]` (or its earlier name); fields it leaves out take their defaults, unknown fields are errors.
fn read_config<T: Serialize + DeserializeOwned + Default>(
    path: Option<&Path>,
    arch: Arch,
) -> Result<T> {
    let mut value = serde_json::to_value(T::default()).expect("config serialises");
    let Some(path) = path else {
        return serde_json::from_value(value).map_err(|e| Error::Config(e.to_string()));
    };
    let given = read_json_or_toml(path)?;
    let mut given = match given {
        serde_json::Value::Object(mut o) => match o
            .remove(arch.name())
            .or_else(|| arch.earlier_name().and_then(|old| o.remove(old)))
        {
            Some(serde_json::Value::Object(inner)) => inner,
            _ => o,
        },
        _ => return Err(Error::format(path, "expected a JSON object or TOML table")),
    };
    // nanoGPT's `bias` switch: largo's GPT always has biases.
    if arch == Arch::Gpt {
        match given.remove("bias") {
            None | Some(serde_json::Value::Bool(true)) => {}
            Some(other) => {
                return Err(Error::format(
                    path,
                    format!("bias = {other}: largo's GPT has biases in every linear layer and layer norm (nanoGPT bias = true)"),
                ))
            }
        }
    }
    let obj = value
        .as_object_mut()
        .expect("a struct serialises to an object");
    for (k, v) in given {
        obj.insert(k, v);
    }
    serde_json::from_value(value).map_err(|e| Error::format(path, format!("{e}")))
}

fn shape_of(file: &TensorFile, name: &str) -> Result<Vec<usize>> {
    Ok(file.get(name)?.shape.clone())
}

/// What `import` wrote.
#[derive(Debug)]
pub struct ImportReport {
    pub info: ModelInfo,
    pub params: usize,
    /// Tensors of the file that are not parameters and were checked or dropped, with why.
    pub dropped: Vec<String>,
    /// Names mapped to largo's: `--rename`s, and the head `fc.*` of PyTorch's Transformer
    /// program (`fc.* → decoder.* (2 tensors)`).
    pub renamed: Vec<String>,
}

/// Reads `weights` as `arch` (sizes from `config`, else inferred from the tensor shapes where
/// they determine them) and writes a largo model directory to `out`. `renames` map the file's
/// names to largo's first.
pub fn import(
    arch: impl Into<ImportArch>,
    weights: &Path,
    config: Option<&Path>,
    tokenizer: Option<&Path>,
    out: &Path,
    renames: &[Rename],
) -> Result<ImportReport> {
    let ImportArch { arch, resnet_depth } = arch.into();
    let mut file = read_weights(weights)?;
    let mut renamed = rename_file(&mut file, renames, weights)?;
    let mut dropped = Vec::new();
    let tokenizer_json = match tokenizer {
        Some(p) => {
            crate::data::text::load_tokenizer(p)?;
            Some(std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?)
        }
        None => None,
    };
    let (model, info): (Box<dyn Module>, ModelInfo) = match arch {
        Arch::Mlp => {
            let mut cfg: MlpConfig = read_config(config, Arch::Mlp)?;
            // fc1 … fcK: the chain of linear layers fixes every size.
            let mut widths = Vec::new();
            while let Ok(shape) = shape_of(&file, &format!("fc{}.weight", widths.len() + 1)) {
                if widths.is_empty() {
                    cfg.input = shape[1];
                }
                widths.push(shape[0]);
            }
            if widths.len() < 2 {
                return Err(Error::format(
                    weights,
                    "expected linear layers fc1.weight, fc2.weight, … (the MNIST MLP's names)",
                ));
            }
            cfg.classes = widths.pop().expect("≥ 2 layers");
            cfg.hidden = widths;
            let mut model = Mlp::new(cfg.clone())?;
            load_params(&mut model, &mut file)?;
            let norm = read_normalization(config)?;
            let info = ModelInfo {
                model: ModelKind::Mlp(cfg),
                normalization: Some(norm),
                split: None,
            };
            (Box::new(model), info)
        }
        Arch::Cnn => {
            let mut cfg: CnnConfig = read_config(config, Arch::Cnn)?;
            // conv1 … convK and fc1 … fcL fix the channels, kernels and widths; the input
            // size and the pools come from the config.
            let (mut channels, mut kernels) = (Vec::new(), Vec::new());
            while let Ok(shape) = shape_of(&file, &format!("conv{}.weight", channels.len() + 1)) {
                if channels.is_empty() {
                    cfg.input[0] = shape[1];
                }
                channels.push(shape[0]);
                kernels.push(shape[2]);
            }
            let mut widths = Vec::new();
            while let Ok(shape) = shape_of(&file, &format!("fc{}.weight", widths.len() + 1)) {
                widths.push(shape[0]);
            }
            if channels.is_empty() || widths.is_empty() {
                return Err(Error::format(
                    weights,
                    "expected conv1.weight, … and fc1.weight, … (the names of PyTorch's MNIST example net)",
                ));
            }
            if channels.len() != cfg.pools.len() {
                cfg.pools.resize(channels.len(), 1);
            }
            cfg.classes = widths.pop().expect("≥ 1 layer");
            (cfg.channels, cfg.kernels, cfg.hidden) = (channels, kernels, widths);
            let mut model = Cnn::new(cfg.clone())?;
            load_params(&mut model, &mut file)
                .map_err(|e| Error::Invalid(format!("{e} (the [cnn] settings: {cfg:?})")))?;
            let info = ModelInfo {
                model: ModelKind::Cnn(cfg),
                normalization: Some(read_normalization(config)?),
                split: None,
            };
            (Box::new(model), info)
        }
        Arch::ResNet => {
            let cfg = resnet_config(
                &mut file,
                weights,
                config,
                resnet_depth,
                &mut renamed,
                &mut dropped,
            )?;
            let mut model = ResNet::new(cfg.clone())?;
            load_params(&mut model, &mut file)?;
            let info = ModelInfo {
                model: ModelKind::ResNet(cfg),
                normalization: Some(read_normalization(config)?),
                split: None,
            };
            (Box::new(model), info)
        }
        Arch::Llama => {
            return Err(Error::Invalid(format!(
                "{}: a Llama-family model needs no import (generate, chat, eval and serve read its GGUF or Hugging Face files as they are, and a PEFT adapter directory with --adapter)",
                weights.display()
            )))
        }
        Arch::EncoderLm => {
            let mut cfg: EncoderLmConfig = read_config(config, Arch::EncoderLm)?;
            // PyTorch's Transformer program names the head `fc` (`self.fc = nn.Linear(…)`).
            let has = |n: &str| file.tensors.contains_key(n);
            if !has("decoder.weight") && has("fc.weight") {
                let fc = Rename {
                    from: "fc.".into(),
                    to: "decoder.".into(),
                };
                renamed.extend(rename_file(&mut file, &[fc], weights)?);
            }
            let emb = shape_of(&file, "embedding.weight")?;
            if cfg.ntoken == 0 {
                cfg.ntoken = emb[0];
            }
            cfg.d_model = emb[1];
            cfg.nlayers = (0..)
                .take_while(|i| {
                    file.tensors.contains_key(&format!(
                        "transformer_encoder.layers.{i}.self_attn.in_proj_weight"
                    ))
                })
                .count();
            if let Ok(w) = shape_of(&file, "transformer_encoder.layers.0.linear1.weight") {
                cfg.d_hid = w[0];
            }
            // The positional table is a buffer: it must be the sinusoidal one largo computes.
            for name in ["pe", "pos_encoder.pe"] {
                if let Some(pe) = file.tensors.remove(name) {
                    check_sinusoidal(weights, name, &pe, cfg.d_model)?;
                    let rows = pe.numel() / cfg.d_model;
                    if config.is_none() {
                        cfg.max_len = rows;
                    }
                    dropped.push(format!("{name} (sinusoidal table, recomputed)"));
                }
            }
            finish_lm(ModelKind::EncoderLm(cfg), &mut file)?
        }
        Arch::Gpt => {
            let mut cfg: GptConfig = read_config(config, Arch::Gpt)?;
            let wte = shape_of(&file, "transformer.wte.weight")?;
            if cfg.vocab_size == 0 {
                cfg.vocab_size = wte[0];
            }
            cfg.n_embd = wte[1];
            cfg.n_layer = (0..)
                .take_while(|i| {
                    file.tensors
                        .contains_key(&format!("transformer.h.{i}.ln_1.weight"))
                })
                .count();
            if let Ok(w) = shape_of(&file, "transformer.h.0.mlp.c_fc.weight") {
                cfg.ff = w[0];
            }
            // nanoGPT's causal-mask buffers (older versions) are not parameters.
            let buffers: Vec<String> = file
                .tensors
                .keys()
                .filter(|n| n.ends_with(".attn.bias") || n.ends_with(".attn.masked_bias"))
                .cloned()
                .collect();
            for n in buffers {
                file.tensors.remove(&n);
                dropped.push(format!("{n} (causal-mask buffer)"));
            }
            // A tied head is stored twice by torch.save (one storage); largo keeps one copy.
            if cfg.tie_weights {
                if let Some(head) = file.tensors.remove("lm_head.weight") {
                    if Some(&head) != file.tensors.get("transformer.wte.weight") {
                        return Err(Error::format(
                            weights,
                            "lm_head.weight differs from transformer.wte.weight, but the config \
                             ties them (tie_weights = true); set tie_weights = false",
                        ));
                    }
                    dropped.push("lm_head.weight (tied to transformer.wte.weight)".into());
                }
            }
            finish_lm(ModelKind::Gpt(cfg), &mut file)?
        }
    };
    let params = model.num_params();
    save_model(out, model.as_ref(), &info, tokenizer_json.as_deref())?;
    Ok(ImportReport {
        info,
        params,
        dropped,
        renamed,
    })
}

/// A torchvision ResNet's settings from its `state_dict`: the stem's `conv1.weight` gives the
/// width and input channels, `layerK.J.conv3` the block kind, the `layerK.J` the block counts,
/// `fc.weight` the classes; the image size comes from `config` (default 224×224). A prefix
/// before the names (`backbone.conv1.weight`) is dropped, with the tensors outside it.
fn resnet_config(
    file: &mut TensorFile,
    weights: &Path,
    config: Option<&Path>,
    depth: Option<usize>,
    renamed: &mut Vec<String>,
    dropped: &mut Vec<String>,
) -> Result<ResNetConfig> {
    let has = |file: &TensorFile, n: &str| file.tensors.contains_key(n);
    if !has(file, "conv1.weight") {
        // The shortest `<prefix>conv1.weight` whose `<prefix>bn1.weight` exists.
        let prefix = file
            .tensors
            .keys()
            .filter_map(|n| n.strip_suffix("conv1.weight"))
            .filter(|p| p.ends_with('.') && has(file, &format!("{p}bn1.weight")))
            .min_by_key(|p| p.len())
            .map(str::to_string)
            .ok_or_else(|| {
                Error::format(
                    weights,
                    "no conv1.weight (nor <prefix>.conv1.weight): not a torchvision ResNet state_dict",
                )
            })?;
        let all = std::mem::take(&mut file.tensors);
        for (name, t) in all {
            match name.strip_prefix(&prefix) {
                Some(rest) => {
                    file.tensors.insert(rest.to_string(), t);
                }
                None => dropped.push(format!("{name} (outside the ResNet, {prefix}*)")),
            }
        }
        renamed.push(format!("{prefix}* → * ({} tensors)", file.tensors.len()));
    }
    let mut cfg: ResNetConfig = read_config(config, Arch::ResNet)?;
    let stem = shape_of(file, "conv1.weight")?;
    if stem.len() != 4 {
        return Err(Error::format(
            weights,
            format!("tensor conv1.weight has shape {stem:?}, expected [width, in_channels, 7, 7]"),
        ));
    }
    (cfg.width, cfg.in_channels) = (stem[0], stem[1]);
    cfg.block = if has(file, "layer1.0.conv3.weight") {
        BlockKind::Bottleneck
    } else {
        BlockKind::Basic
    };
    for (k, count) in cfg.layers.iter_mut().enumerate() {
        *count = (0..)
            .take_while(|j| has(file, &format!("layer{}.{j}.conv1.weight", k + 1)))
            .count();
    }
    let fc = shape_of(file, "fc.weight")?;
    cfg.classes = fc[0];
    if let Some(depth) = depth {
        let want = ResNetConfig::depth(depth, cfg.classes)?;
        if (want.block, want.layers) != (cfg.block, cfg.layers) {
            return Err(Error::format(
                weights,
                format!(
                    "resnet{depth} has {:?} blocks of kind {:?} in layer1 … layer4, the file has {:?} of kind {:?}",
                    want.layers, want.block, cfg.layers, cfg.block
                ),
            ));
        }
    }
    cfg.validate()
        .map_err(|e| Error::format(weights, e.to_string()))?;
    Ok(cfg)
}

/// Builds the language model `kind` describes and loads its weights from `file`.
fn finish_lm(kind: ModelKind, file: &mut TensorFile) -> Result<(Box<dyn Module>, ModelInfo)> {
    let spec = kind.lm_spec().expect("a language model");
    let mut model = TransformerLm::new(spec)?;
    load_params(&mut model, file)?;
    let info = ModelInfo {
        model: kind,
        normalization: None,
        split: None,
    };
    Ok((Box::new(model), info))
}

fn check_sinusoidal(path: &Path, name: &str, pe: &Tensor, d: usize) -> Result<()> {
    if !pe.numel().is_multiple_of(d) || pe.shape.last() != Some(&d) {
        return Err(Error::format(
            path,
            format!("{name} has shape {:?}, expected [max_len, {d}]", pe.shape),
        ));
    }
    let table = sinusoidal_table(pe.numel() / d, d);
    let worst = table
        .iter()
        .zip(&pe.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    if worst > 1e-4 {
        return Err(Error::format(
            path,
            format!("{name} is not the sinusoidal table of \"Attention Is All You Need\" (differs by {worst})"),
        ));
    }
    Ok(())
}

/// Pixel normalisation of an imported MLP: `"normalization": {"mean": …, "std": …}` in the
/// config; without it, pixels in [0, 1] as torchvision's `ToTensor()` gives them.
fn read_normalization(config: Option<&Path>) -> Result<Normalization> {
    let identity = Normalization {
        mean: 0.0,
        std: 1.0,
    };
    let Some(path) = config else {
        return Ok(identity);
    };
    let v = read_json_or_toml(path)?;
    match v.get("normalization") {
        None => Ok(identity),
        Some(n) => serde_json::from_value(n.clone())
            .map_err(|e| Error::format(path, format!("normalization: {e}"))),
    }
}

/// What `export` wrote.
#[derive(Debug)]
pub struct ExportReport {
    pub tensors: usize,
    /// One note per `--rename`: `decoder.* → fc.* (2 tensors)`.
    pub renamed: Vec<String>,
}

/// Writes every parameter of the model in `dir` to `out` (safetensors, PyTorch names, mapped by
/// `renames`), plus the tensors PyTorch's strict loading needs.
pub fn export(dir: &Path, out: &Path, renames: &[Rename]) -> Result<ExportReport> {
    let info = load_info(dir)?;
    let mut extra: Vec<(String, Tensor)> = Vec::new();
    let model: Box<dyn Module> = match &info.model {
        ModelKind::Llama(_) => {
            return Err(Error::format(
                dir,
                "a fine-tuned adapter is already in PEFT's layout (adapter_model.safetensors, loaded by PeftModel.from_pretrained); `largo merge` writes the merged model as Hugging Face safetensors or GGUF",
            ))
        }
        ModelKind::Mlp(_) => Box::new(load_mlp(dir)?.0),
        ModelKind::Cnn(_) | ModelKind::ResNet(_) => load_classifier(dir)?.0,
        ModelKind::Gpt(g) => {
            let (model, _) = super::store::load_lm_model(dir)?;
            if g.tie_weights {
                extra.push(("lm_head.weight".into(), model.wte.weight.value.clone()));
            }
            Box::new(model)
        }
        ModelKind::EncoderLm(s) => {
            let (model, _) = super::store::load_lm_model(dir)?;
            let data = sinusoidal_table(s.max_len, s.d_model);
            extra.push((
                "pe".into(),
                Tensor::from_vec(&[s.max_len, s.d_model], data)?,
            ));
            Box::new(model)
        }
    };
    let params = model.params();
    let buffers = model.buffers();
    let mut tensors = super::store::state_dict(&params, &buffers);
    tensors.extend(extra.iter().map(|(n, t)| (n.clone(), t)));
    let renamed = if renames.is_empty() {
        Vec::new()
    } else {
        let mut names: Vec<String> = tensors.iter().map(|(n, _)| n.clone()).collect();
        let notes = apply_renames(&mut names, renames, &dir.display().to_string())?;
        for ((n, _), new) in tensors.iter_mut().zip(names) {
            *n = new;
        }
        notes
    };
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    save_safetensors(out, &tensors, Some(meta))?;
    Ok(ExportReport {
        tensors: tensors.len(),
        renamed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_map_prefixes_and_refuse_what_matches_nothing() {
        let r: Rename = "fc.=decoder.".parse().unwrap();
        let mut names = vec![
            "fc.weight".to_string(),
            "fc.bias".into(),
            "fc1.weight".into(),
        ];
        let notes = apply_renames(&mut names, std::slice::from_ref(&r), "f").unwrap();
        assert_eq!(names, ["decoder.weight", "decoder.bias", "fc1.weight"]);
        assert_eq!(notes, ["fc.* → decoder.* (2 tensors)"]);
        let e = apply_renames(&mut names, &[r], "f")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--rename fc.=decoder.: no tensor name of f starts with \"fc.\""),
            "{e}"
        );
        let e = "fc.decoder.".parse::<Rename>().unwrap_err().to_string();
        assert!(e.contains("expected OLD=NEW"), "{e}");
        let clash: Rename = "a.=b.".parse().unwrap();
        let mut names = vec!["a.x".to_string(), "b.x".into()];
        let e = apply_renames(&mut names, &[clash], "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("would both be named b.x"), "{e}");
    }
}
