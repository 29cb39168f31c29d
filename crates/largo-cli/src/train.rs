use anyhow::{Context, Result};
use largo::config::Config;
use largo::train::{train, TrainOptions};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// TOML config; keys not given keep their defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key, e.g. --set train.epochs=5 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Continue the run in this directory from its latest checkpoint.
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "config")]
    resume: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
}

pub fn run(a: Args) -> Result<()> {
    let cfg = match &a.resume {
        Some(dir) => {
            let saved = dir.join("config.toml");
            if !saved.is_file() {
                anyhow::bail!("{}: not a run directory (no config.toml)", dir.display());
            }
            let mut cfg = Config::load(Some(&saved), &a.overrides)?;
            // The run lives where it was found, whatever out_dir said when it started.
            cfg.run.out_dir = dir
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|| ".".into());
            cfg.run.name = dir
                .file_name()
                .context("run directory has no name")?
                .to_string_lossy()
                .into_owned();
            cfg
        }
        None => {
            let mut cfg = Config::load(a.config.as_deref(), &a.overrides)?;
            // Never train over an existing run: number the new one, as Lightning's versions do.
            let base = cfg.run.name.clone();
            let mut n = 1;
            while largo::train::run_dir(&cfg).exists() {
                n += 1;
                cfg.run.name = format!("{base}-{n}");
            }
            if n > 1 {
                eprintln!(
                    "note: {} exists; this run is {} (continue the old one with --resume)",
                    std::path::Path::new(&cfg.run.out_dir).join(&base).display(),
                    cfg.run.name
                );
            }
            cfg
        }
    };
    let progress = !a.no_progress && std::io::stderr().is_terminal();
    eprintln!(
        "training {} on {}  →  {}",
        cfg.model.arch,
        cfg.data.path,
        largo::train::run_dir(&cfg).display()
    );
    let out = train(
        &cfg,
        &TrainOptions {
            resume: a.resume.is_some(),
            progress,
        },
    )?;
    let run = out.run_dir.display();
    if cfg.is_lm() {
        println!(
            "done: {} steps; last validation loss {:.4} (perplexity {:.2})",
            out.steps,
            out.last_val_loss,
            out.last_val_loss.exp()
        );
        if let (Some(m), Some(step)) = (out.best_metric, out.best_epoch) {
            println!("best val_loss = {m:.4} at step {step}  →  {run}/best");
        }
        print_sample(&out.run_dir)?;
    } else {
        println!(
            "done: {} steps, {} epochs this session; last validation loss {:.4}, accuracy {:.2}%",
            out.steps,
            out.epochs_run,
            out.last_val_loss,
            100.0 * out.last_val_accuracy
        );
        if let (Some(m), Some(e)) = (out.best_metric, out.best_epoch) {
            println!(
                "best {} = {m:.4} at epoch {}  →  {run}/best",
                cfg.train.metric,
                e + 1
            );
        }
    }
    if out.stopped_early {
        println!("stopped early (patience {})", cfg.train.patience);
    }
    println!("metrics: {run}/metrics.jsonl   curves: {run}/curves.png");
    if cfg.is_lm() {
        println!(
            "next: largo generate --model {run} --prompt \"{SAMPLE_PROMPT}\" --max-tokens 300 --temperature 0.8 --top-k 40 --top-p 0.95 --seed 7"
        );
        println!("      largo eval --model {run} --data {run}/data");
    } else {
        println!(
            "next: largo eval --model {run} --data {} --split val",
            cfg.data.path
        );
    }
    Ok(())
}

const SAMPLE_PROMPT: &str = "ROMEO:";

/// A short sample from the best model, so the run shows what it learned.
fn print_sample(run: &std::path::Path) -> Result<()> {
    let dir = largo::models::store::resolve_model_dir(run)?;
    let (model, _, tokenizer) = largo::models::store::load_lm(&dir)?;
    let sampling = largo::generate::Sampling {
        max_tokens: 200,
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        seed: 7,
        stop: Vec::new(),
    };
    // A prompt the vocabulary can spell, else the first token of the vocabulary.
    let prompt = if largo::data::text::encode(&tokenizer, SAMPLE_PROMPT).is_ok() {
        SAMPLE_PROMPT.to_string()
    } else {
        largo::data::text::decode(&tokenizer, &[0])?
    };
    let g = largo::generate::generate(&model, &tokenizer, &prompt, &sampling, |_| true)?;
    println!(
        "\nsample ({} tokens, temperature 0.8):\n{prompt}{}\n",
        g.new_tokens, g.text
    );
    Ok(())
}
