use anyhow::Result;
use largo::config::FINETUNE_PRESET;
use largo::data::finetune::{absolute, looks_like_chat};
use largo::train::Dist;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// The pretrained model: a GGUF file (its quantised matrices stay quantised) or a Hugging
    /// Face directory of a Llama-family model. Sets `model.base`.
    #[arg(long, required_unless_present = "resume")]
    model: Option<PathBuf>,
    /// Training data: a text file or a directory of them (`data.kind = "text"`), or chat
    /// JSONL, one `{"messages": [...]}` per line (`.jsonl`: `data.kind = "chat"`). Sets
    /// `data.path`.
    #[arg(long, required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// TOML config for the rest (`[lora]`, `[train]`, `[optim]`, …); keys not given keep
    /// `largo finetune`'s defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key, e.g. --set lora.r=16 --set train.max_steps=500 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Continue the fine-tuning run in this directory from its latest checkpoint.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["config", "model", "data"])]
    resume: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
}

/// The config keys the command line sets: the base, the data and its kind, and the run's
/// name (`<base name>-lora`).
fn shorthand(model: &Path, data: &Path) -> Vec<String> {
    let kind = if looks_like_chat(data) {
        "chat"
    } else {
        "text"
    };
    let name = model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    // A JSON string is a TOML basic string.
    let quoted = |p: &Path| serde_json::to_string(&absolute(p).display().to_string()).unwrap();
    vec![
        format!("model.base={}", quoted(model)),
        format!("data.path={}", quoted(data)),
        format!("data.kind=\"{kind}\""),
        format!(
            "run.name={}",
            serde_json::to_string(&format!("{name}-lora")).unwrap()
        ),
    ]
}

pub fn run(a: Args) -> Result<()> {
    let mut preset: Vec<String> = FINETUNE_PRESET.iter().map(|s| s.to_string()).collect();
    if let (Some(model), Some(data)) = (&a.model, &a.data) {
        if !model.exists() {
            anyhow::bail!("--model {}: no such file or directory", model.display());
        }
        preset.extend(shorthand(model, data));
    }
    let cfg = crate::train::load_config(
        &preset,
        a.config.as_deref(),
        &a.overrides,
        a.resume.as_deref(),
    )?;
    if cfg.model.arch != largo::models::Arch::Llama {
        anyhow::bail!(
            "model.arch = \"{}\": `largo finetune` adapts a pretrained model (model.arch = \"llama\"); use `largo train` for this config",
            cfg.model.arch
        );
    }
    eprintln!(
        "fine-tuning {} with LoRA (r {}, alpha {}, targets {}) on {} ({})  →  {}",
        cfg.model.base,
        cfg.lora.r,
        cfg.lora.alpha,
        cfg.lora.targets.join(" "),
        cfg.data.path,
        cfg.data.kind,
        largo::train::run_dir(&cfg).display()
    );
    crate::train::train_and_report(&cfg, a.resume.is_some(), a.no_progress, &Dist::single())
}
