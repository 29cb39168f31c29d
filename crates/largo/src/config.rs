//! Run configuration: TOML with every key checked against the defaults.
//!
//! The defaults, serialised, are the schema: a user file or `--set key=value` may only name keys
//! the defaults have, with values of the same type. Unknown keys are rejected with the nearest
//! valid name; then the merged table is deserialised into `Config`.

use crate::models::{
    Arch, CnnConfig, EncoderLmConfig, GptConfig, LlamaAdapterConfig, LoraSettings, MlpConfig,
    ModelKind, Positions, ResNetConfig,
};
use crate::nn::Activation;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use toml::Value;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub run: RunConfig,
    pub data: DataConfig,
    pub model: ModelConfig,
    pub mlp: MlpConfig,
    pub cnn: CnnConfig,
    pub resnet: ResNetConfig,
    pub gpt: GptConfig,
    pub encoder_lm: EncoderLmConfig,
    /// Adapters of a LoRA fine-tuning run (`model.arch = "llama"`).
    pub lora: LoraSettings,
    pub train: TrainConfig,
    pub optim: OptimConfig,
    pub schedule: ScheduleConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// The run is written to `<out_dir>/<name>/`.
    pub name: String,
    pub out_dir: String,
    /// Seeds initialisation, split, shuffling and dropout (separate streams).
    pub seed: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataConfig {
    /// "mnist" (IDX files in `path`), "image_folder" (`path/<class>/*.png|jpg`, resized and
    /// center-cropped to the model's input), "text" (a `largo prepare text` directory, or raw
    /// text files / a directory of them, prepared into the run with `tokenizer`; for a
    /// pretrained model: documents packed into `context`-token windows) or "chat" (pretrained
    /// models: JSONL conversations, the loss on the assistant's tokens).
    pub kind: String,
    pub path: String,
    /// Fraction held out for validation (samples for MNIST, whole documents for text).
    pub val_fraction: f64,
    /// Train on only the first N samples of the training split (MNIST; 0: all of them). The
    /// validation split is unchanged, so a small N shows overfitting.
    pub max_train_samples: usize,
    /// For raw text: "char", "bpe:<vocab size>" or a tokenizer.json path.
    pub tokenizer: String,
    /// MNIST only: a directory of `t10k-*` (or else `train-*`) files scored once after
    /// training, reported apart from validation ("": none).
    pub test_path: String,
    /// Image classifiers, training only: pad by N pixels and crop back at a random offset
    /// (torchvision's `RandomCrop(size, padding=N)`); 0: off. Seeded; off for digits.
    pub augment_padding: usize,
    /// Image classifiers, training only: mirror left–right with probability ½.
    pub augment_flip: bool,
    /// Fine-tuning a pretrained model: tokens per training sequence (text windows; longer
    /// conversations are cut).
    pub context: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// "mlp", "cnn", "resnet", "gpt" or "encoder_lm" ("seed_transformer" in earlier versions); its settings
    /// live in the section of the same name. "llama": LoRA fine-tuning of the pretrained
    /// `base`, with the `[lora]` section.
    pub arch: Arch,
    /// `model.arch = "llama"`: the pretrained model (a .gguf file or a Hugging Face directory).
    pub base: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Passes over the data (MLP). Language models run `max_steps` instead.
    pub epochs: usize,
    /// Micro-batch size; an optimiser step sums `grad_accum` micro-batches.
    pub batch_size: usize,
    pub grad_accum: usize,
    /// Global-norm gradient clipping; 0 disables.
    pub clip_grad_norm: f64,
    pub label_smoothing: f64,
    /// Stop after this many optimiser steps (0: run all epochs); a checkpoint is written there.
    /// For language models: the length of the run.
    pub max_steps: u64,
    /// End this session at this step with a checkpoint, without changing the schedule (which
    /// `max_steps` sets for language models); `--resume` continues. 0: off.
    pub stop_at: u64,
    /// End this session after this many minutes of training, like `stop_at` (validated and
    /// checkpointed; `--resume` continues). 0: off.
    pub max_minutes: f64,
    /// Language models: validate (and checkpoint) every N steps, on `eval_batches` batches.
    pub eval_every: u64,
    pub eval_batches: usize,
    /// Write a metrics line every N optimiser steps.
    pub log_every: u64,
    /// Also checkpoint every N steps (0: only at the end of each epoch).
    pub checkpoint_every: u64,
    /// Checkpoints kept on disk (the newest ones).
    pub keep_checkpoints: usize,
    /// Validation metric for `best/` and early stopping: "val_accuracy" or "val_loss".
    pub metric: String,
    /// Validations without improvement by more than `min_delta` before stopping; 0 disables.
    pub patience: usize,
    pub min_delta: f64,
    /// Pretrained models: keep only each block's input in the forward pass and recompute the
    /// block during backward (memory of one block's activations instead of all of them).
    pub checkpoint_activations: bool,
}

impl Default for Config {
    /// The main job: a small character-level GPT on the bundled Shakespeare.
    fn default() -> Self {
        Config {
            run: RunConfig {
                name: "shakespeare-gpt".into(),
                out_dir: "runs".into(),
                seed: 1337,
            },
            data: DataConfig {
                kind: "text".into(),
                path: "data/shakespeare".into(),
                val_fraction: 0.1,
                max_train_samples: 0,
                tokenizer: "char".into(),
                test_path: String::new(),
                augment_padding: 0,
                augment_flip: false,
                context: 512,
            },
            model: ModelConfig {
                arch: Arch::Gpt,
                base: String::new(),
            },
            mlp: MlpConfig::default(),
            cnn: CnnConfig::default(),
            resnet: ResNetConfig::default(),
            gpt: GptConfig {
                positions: Positions::Learned,
                activation: Activation::Gelu,
                ..GptConfig::default()
            },
            encoder_lm: EncoderLmConfig::default(),
            lora: LoraSettings::default(),
            train: TrainConfig {
                epochs: 10,
                batch_size: 16,
                grad_accum: 1,
                clip_grad_norm: 1.0,
                label_smoothing: 0.0,
                max_steps: 1200,
                stop_at: 0,
                max_minutes: 0.0,
                eval_every: 200,
                eval_batches: 16,
                log_every: 10,
                checkpoint_every: 0,
                keep_checkpoints: 2,
                metric: "val_loss".into(),
                patience: 0,
                min_delta: 0.0,
                checkpoint_activations: false,
            },
            optim: OptimConfig {
                lr: 1e-3,
                beta2: 0.99,
                weight_decay: 0.1,
                no_decay_1d: true,
                ..OptimConfig::default()
            },
            schedule: ScheduleConfig {
                kind: "cosine".into(),
                warmup_steps: 100,
                min_lr: 1e-4,
                ..ScheduleConfig::default()
            },
        }
    }
}

impl Config {
    /// Defaults, then the file (if any), then each `key=value` override, all type-checked.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self> {
        Self::load_with_preset(&[], path, overrides)
    }

    /// As [`load`](Self::load), with `preset` overrides applied to the defaults first (a
    /// command's own defaults, such as [`FINETUNE_PRESET`]), which the file and the overrides
    /// may change.
    pub fn load_with_preset(
        preset: &[String],
        path: Option<&Path>,
        overrides: &[String],
    ) -> Result<Self> {
        let mut table = schema();
        for kv in preset {
            apply_override(&mut table, kv)?;
        }
        if let Some(path) = path {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let user: toml::Table = toml::from_str(&text)
                .map_err(|e| Error::format(path, format!("invalid TOML: {e}")))?;
            with_current_names(user)
                .and_then(|user| merge(&mut table, user, ""))
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        }
        for kv in overrides {
            apply_override(&mut table, kv)?;
        }
        Self::from_table(table)
    }

    pub fn from_table(table: toml::Table) -> Result<Self> {
        let cfg: Config = Value::Table(table)
            .try_into()
            .map_err(|e| Error::Config(format!("{e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn is_lm(&self) -> bool {
        self.model.arch.is_lm()
    }

    /// The model kind with its section's settings.
    pub fn model(&self) -> ModelKind {
        match self.model.arch {
            Arch::Mlp => ModelKind::Mlp(self.mlp.clone()),
            Arch::Cnn => ModelKind::Cnn(self.cnn.clone()),
            Arch::ResNet => ModelKind::ResNet(self.resnet.clone()),
            Arch::Gpt => ModelKind::Gpt(self.gpt.clone()),
            Arch::EncoderLm => ModelKind::EncoderLm(self.encoder_lm.clone()),
            Arch::Llama => ModelKind::Llama(LlamaAdapterConfig {
                base: self.model.base.clone(),
                lora: self.lora.clone(),
            }),
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(Error::Config(m));
        let (arch, kind) = (self.model.arch, self.data.kind.as_str());
        let data_kinds: &[&str] = match arch {
            Arch::Mlp | Arch::Cnn | Arch::ResNet => &["mnist", "image_folder"],
            Arch::Gpt | Arch::EncoderLm => &["text"],
            Arch::Llama => &["text", "chat"],
        };
        if !data_kinds.contains(&kind) {
            return err(format!(
                "data.kind = {kind:?} does not suit model.arch = \"{arch}\": image classifiers (mlp, cnn, resnet) take \"mnist\" or \"image_folder\", language models take \"text\", pretrained ones (llama) \"text\" or \"chat\""
            ));
        }
        if arch == Arch::Llama {
            self.model().validate()?;
            if self.data.context < 2 {
                return err(format!(
                    "data.context = {} must be ≥ 2 tokens",
                    self.data.context
                ));
            }
        } else if !self.model.base.is_empty() {
            return err(format!(
                "model.base = {:?} is for fine-tuning a pretrained model (model.arch = \"llama\"), not {arch}",
                self.model.base
            ));
        }
        if self.is_lm() && !self.data.test_path.is_empty() {
            return err(format!(
                "data.test_path = {:?}: a test set after training is for the MLP (MNIST files); score a language model with `largo eval`",
                self.data.test_path
            ));
        }
        if self.is_lm() && self.train.max_steps == 0 {
            return err("train.max_steps must be ≥ 1 for a language model".into());
        }
        if !(0.0..1.0).contains(&self.data.val_fraction) {
            return err(format!(
                "data.val_fraction = {} must be in [0, 1)",
                self.data.val_fraction
            ));
        }
        if !(self.train.max_minutes.is_finite() && self.train.max_minutes >= 0.0) {
            return err(format!(
                "train.max_minutes = {} must be a finite number ≥ 0",
                self.train.max_minutes
            ));
        }
        if self.train.batch_size == 0 || self.train.grad_accum == 0 || self.train.epochs == 0 {
            return err("train.batch_size, train.grad_accum and train.epochs must be ≥ 1".into());
        }
        if !["val_accuracy", "val_loss"].contains(&self.train.metric.as_str()) {
            return err(format!(
                "train.metric = {:?}: expected \"val_accuracy\" or \"val_loss\"",
                self.train.metric
            ));
        }
        if self.run.name.is_empty() || self.run.name.contains(['/', '\\']) || self.run.name == ".."
        {
            return err(format!(
                "run.name = {:?} must be a plain directory name",
                self.run.name
            ));
        }
        if !self.is_lm() {
            self.model().validate()?;
        }
        self.optim.validate()?;
        self.schedule.validate()?;
        Ok(())
    }
}

/// `largo finetune`'s defaults for LoRA on a pretrained model, where they differ from
/// training a small model from scratch: PEFT's usual learning rate without weight decay, a
/// short warm-up, small batches, and a run measured in a few hundred steps.
pub const FINETUNE_PRESET: &[&str] = &[
    "model.arch=\"llama\"",
    "optim.lr=2e-4",
    "optim.weight_decay=0.0",
    "optim.beta2=0.999",
    "schedule.kind=\"cosine\"",
    "schedule.warmup_steps=10",
    "schedule.min_lr=2e-5",
    "train.batch_size=4",
    "train.max_steps=200",
    "train.eval_every=50",
    "train.eval_batches=8",
    "train.log_every=5",
];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    /// "adamw" or "sgd".
    pub kind: String,
    pub lr: f64,
    pub weight_decay: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub nesterov: bool,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Skip weight decay for 1-D parameters (biases, norms), as nanoGPT and Hugging Face do.
    pub no_decay_1d: bool,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            kind: "adamw".into(),
            lr: 1e-3,
            weight_decay: 0.01,
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            no_decay_1d: false,
        }
    }
}

impl OptimConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if !["adamw", "sgd"].contains(&self.kind.as_str()) {
            return bad(format!(
                "optim.kind = {:?}: expected \"adamw\" or \"sgd\"",
                self.kind
            ));
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad(format!(
                "optim.lr = {} must be a finite number ≥ 0",
                self.lr
            ));
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return bad("optim.beta1 and optim.beta2 must be in [0, 1)".into());
        }
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return bad("optim.nesterov needs momentum > 0 and dampening = 0 (as PyTorch)".into());
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleConfig {
    /// "constant", "step", "linear" or "cosine".
    pub kind: String,
    /// Linear ramp from lr/warmup to lr over the first steps.
    pub warmup_steps: u64,
    /// Floor of the linear and cosine decays.
    pub min_lr: f64,
    /// "step": multiply by `gamma` every `step_size` steps.
    pub step_size: u64,
    pub gamma: f64,
    /// Steps over which "linear" and "cosine" decay to `min_lr`, staying there after
    /// (nanoGPT's `lr_decay_iters`); 0: the run's length.
    pub decay_steps: u64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            kind: "cosine".into(),
            warmup_steps: 0,
            min_lr: 0.0,
            step_size: 1000,
            gamma: 0.1,
            decay_steps: 0,
        }
    }
}

impl ScheduleConfig {
    pub fn validate(&self) -> Result<()> {
        if !["constant", "step", "linear", "cosine"].contains(&self.kind.as_str()) {
            return Err(Error::Config(format!(
                "schedule.kind = {:?}: expected one of constant, step, linear, cosine",
                self.kind
            )));
        }
        if self.kind == "step" && self.step_size == 0 {
            return Err(Error::Config("schedule.step_size must be ≥ 1".into()));
        }
        Ok(())
    }
}

/// Sections renamed since earlier versions: (old name, current name). Files and `--set` keys
/// that use an old name keep working.
fn renamed_sections() -> impl Iterator<Item = (&'static str, &'static str)> {
    Arch::ALL
        .into_iter()
        .filter_map(|a| a.earlier_name().map(|old| (old, a.name())))
}

/// A user table with renamed sections under their current names.
fn with_current_names(mut user: toml::Table) -> std::result::Result<toml::Table, String> {
    for (old, new) in renamed_sections() {
        if let Some(v) = user.remove(old) {
            if user.contains_key(new) {
                return Err(format!(
                    "both `[{old}]` and `[{new}]`: `{old}` is the earlier name of `{new}`; keep one"
                ));
            }
            user.insert(new.to_string(), v);
        }
    }
    Ok(user)
}

/// A `--set` key with a renamed section under its current name.
fn current_key(key: &str) -> String {
    for (old, new) in renamed_sections() {
        if let Some(rest) = key
            .strip_prefix(old)
            .filter(|r| r.starts_with('.') || r.is_empty())
        {
            return format!("{new}{rest}");
        }
    }
    key.to_string()
}

/// The default configuration as a TOML table: the schema every input is checked against.
pub fn schema() -> toml::Table {
    match Value::try_from(Config::default()).expect("defaults serialise") {
        Value::Table(t) => t,
        _ => unreachable!("a struct serialises to a table"),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a number",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// Returns `new` converted to the type of `old`, or an error naming `key`.
fn check_type(key: &str, old: &Value, new: Value) -> std::result::Result<Value, String> {
    match (old, new) {
        (Value::Float(_), Value::Integer(i)) => Ok(Value::Float(i as f64)),
        (Value::Integer(_), Value::Integer(i)) if i < 0 => {
            Err(format!("`{key}` must not be negative, got {i}"))
        }
        (Value::Array(o), Value::Array(n)) => {
            let Some(first) = o.first() else {
                return Ok(Value::Array(n));
            };
            n.into_iter()
                .enumerate()
                .map(|(i, v)| check_type(&format!("{key}[{i}]"), first, v))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map(Value::Array)
        }
        (o, n) if std::mem::discriminant(o) == std::mem::discriminant(&n) => Ok(n),
        (o, n) => Err(format!(
            "`{key}` expects {}, got {} ({n})",
            type_name(o),
            type_name(&n)
        )),
    }
}

fn merge(
    base: &mut toml::Table,
    user: toml::Table,
    prefix: &str,
) -> std::result::Result<(), String> {
    for (k, v) in user {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let Some(old) = base.get_mut(&k) else {
            return Err(unknown_key(&key, base));
        };
        match (old, v) {
            (Value::Table(bt), Value::Table(ut)) => merge(bt, ut, &key)?,
            (old, v) => *old = check_type(&key, old, v)?,
        }
    }
    Ok(())
}

fn unknown_key(key: &str, siblings: &toml::Table) -> String {
    let leaf = key.rsplit('.').next().unwrap_or(key);
    let nearest = siblings
        .keys()
        .min_by_key(|k| edit_distance(k, leaf))
        .map(|k| match key.rsplit_once('.') {
            Some((parent, _)) => format!("{parent}.{k}"),
            None => k.clone(),
        });
    match nearest {
        Some(n) => format!("unknown key `{key}` (did you mean `{n}`?)"),
        None => format!("unknown key `{key}`"),
    }
}

/// Levenshtein distance, for "did you mean" suggestions.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// `section.key=value`: the value is parsed as TOML, or taken as a string when it isn't TOML.
pub fn apply_override(table: &mut toml::Table, kv: &str) -> Result<()> {
    let Some((key, raw)) = kv.split_once('=') else {
        return Err(Error::Config(format!(
            "--set {kv:?}: expected key=value, e.g. train.epochs=5"
        )));
    };
    let key = current_key(key.trim());
    let key = key.as_str();
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("parsed key"),
        Err(_) => Value::String(raw.to_string()),
    };
    let mut node = &mut *table;
    let parts: Vec<&str> = key.split('.').collect();
    let mut path = String::new();
    for (i, part) in parts.iter().enumerate() {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(part);
        if !node.contains_key(*part) {
            return Err(Error::Config(format!(
                "--set: {}",
                unknown_key(&path, node)
            )));
        }
        if i + 1 == parts.len() {
            let old = node.get_mut(*part).expect("checked");
            if old.is_table() {
                return Err(Error::Config(format!(
                    "--set: `{path}` is a section; name one of its keys"
                )));
            }
            // A string key takes the text as written: `run.name=2024` names a run "2024".
            let value = match (&*old, value) {
                (Value::String(_), v) if !v.is_str() => Value::String(raw.trim().to_string()),
                (_, v) => v,
            };
            *old =
                check_type(&path, old, value).map_err(|e| Error::Config(format!("--set: {e}")))?;
            return Ok(());
        }
        node = match node.get_mut(*part) {
            Some(Value::Table(t)) => t,
            _ => return Err(Error::Config(format!("--set: `{path}` is not a section"))),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let c = Config::load(None, &[]).unwrap();
        assert_eq!(c, Config::default());
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn unknown_key_names_it_and_suggests_the_nearest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[train]\nepoch = 3\n").unwrap();
        let e = Config::load(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("unknown key `train.epoch`"), "{e}");
        assert!(e.contains("did you mean `train.epochs`"), "{e}");
        std::fs::write(&p, "[trian]\nepochs = 3\n").unwrap();
        let e = Config::load(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("did you mean `train`"), "{e}");
    }

    #[test]
    fn a_fine_tuning_config_names_its_base_and_valid_adapters() {
        let load = |kv: &[&str]| {
            let kv: Vec<String> = kv.iter().map(|s| s.to_string()).collect();
            Config::load_with_preset(
                &FINETUNE_PRESET
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>(),
                None,
                &kv,
            )
        };
        let c = load(&["model.base=m.gguf", "data.kind=chat"]).unwrap();
        assert_eq!(c.model.arch, Arch::Llama);
        assert_eq!(
            (c.optim.lr, c.train.batch_size, c.data.context),
            (2e-4, 4, 512)
        );
        let ModelKind::Llama(m) = c.model() else {
            panic!("a llama model")
        };
        assert_eq!(
            (m.base.as_str(), m.lora.r, m.lora.targets.len()),
            ("m.gguf", 8, 7)
        );
        let err = |kv: &[&str]| load(kv).unwrap_err().to_string();
        assert!(err(&[]).contains("model.base is empty"));
        assert!(err(&["model.base=m.gguf", "lora.r=0"]).contains("lora.r must be ≥ 1"));
        assert!(err(&["model.base=m.gguf", "data.kind=mnist"]).contains("does not suit"));
        assert!(err(&["model.base=m.gguf", "data.context=1"]).contains("data.context = 1"));
        let e = Config::load(None, &["model.base=m.gguf".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("is for fine-tuning a pretrained model"), "{e}");
    }

    #[test]
    fn overrides_are_type_checked() {
        let c = Config::load(None, &["train.epochs=3".into(), "optim.lr=0.5".into()]).unwrap();
        assert_eq!(c.model.arch, Arch::Gpt);
        assert_eq!(c.train.epochs, 3);
        assert_eq!(c.optim.lr, 0.5);
        let c = Config::load(None, &["mlp.hidden=[32, 16]".into(), "run.name=x".into()]).unwrap();
        assert_eq!(c.mlp.hidden, vec![32, 16]);
        assert_eq!(c.run.name, "x");
        let e = Config::load(None, &["train.epochs=ten".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`train.epochs` expects an integer, got a string"),
            "{e}"
        );
        let e = Config::load(None, &["train.epochs=-1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("must not be negative"), "{e}");
        let e = Config::load(None, &["optim.lrr=1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean `optim.lr`"), "{e}");
        let e = Config::load(None, &["mlp.hidden=[1.5]".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("mlp.hidden[0]"), "{e}");
        assert!(Config::load(None, &["novalue".into()]).is_err());
        let e = Config::load(None, &["model.arch=mlp".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not suit"), "{e}");
        let e = Config::load(None, &["model.arch=rnn".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "expected \"mlp\", \"cnn\", \"resnet\", \"gpt\", \"encoder_lm\" or \"llama\""
            ),
            "{e}"
        );
        let mlp_dropout = [
            "model.arch=mlp".into(),
            "data.kind=mnist".into(),
            "mlp.dropout=1.5".into(),
        ];
        let e = Config::load(None, &mlp_dropout).unwrap_err().to_string();
        assert!(e.contains("dropout"), "{e}");
    }

    #[test]
    fn earlier_names_of_the_encoder_lm_still_load() {
        // A config written before the rename: the arch value and its section.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("old.toml");
        std::fs::write(
            &p,
            "[model]\narch = \"seed_transformer\"\n[seed_transformer]\nnhead = 2\n",
        )
        .unwrap();
        let c = Config::load(Some(&p), &["seed_transformer.d_model=64".into()]).unwrap();
        assert_eq!(c.model.arch, Arch::EncoderLm);
        assert_eq!((c.encoder_lm.nhead, c.encoder_lm.d_model), (2, 64));
        assert!(c.to_toml().contains("[encoder_lm]"), "{}", c.to_toml());
        let c = Config::load(None, &["model.arch=seed-transformer".into()]).unwrap();
        assert_eq!(c.model.arch, Arch::EncoderLm);
        let c = Config::load(None, &["model.arch=encoder_lm".into()]).unwrap();
        assert!(matches!(c.model(), ModelKind::EncoderLm(_)));
        std::fs::write(
            &p,
            "[seed_transformer]\nnhead = 2\n[encoder_lm]\nnhead = 4\n",
        )
        .unwrap();
        let e = Config::load(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("earlier name of `encoder_lm`"), "{e}");
    }
}
