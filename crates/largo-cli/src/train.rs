use anyhow::{Context, Result};
use largo::config::Config;
use largo::train::{train_distributed, Dist, DistOptions, TrainOptions};
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
    /// Data-parallel training: `mpi` under `mpirun -np N` (a largo built with `--features
    /// largo-cli/mpi`); train.batch_size is then the global batch, split over the ranks.
    #[arg(long, value_enum, default_value = "none")]
    distributed: Distributed,
    /// ZeRO-1: partition the optimiser state over the ranks (same results, less memory).
    #[arg(long)]
    shard_optimizer: bool,
    /// Gradient all-reduce bucket size in MB.
    #[arg(long, default_value_t = 25.0, value_name = "MB")]
    bucket_mb: f64,
    /// Seconds a rank waits in a collective for the others before it stops the job (a rank
    /// that died or hangs); more than rank 0 takes to write a checkpoint; 0: forever.
    #[arg(long, default_value_t = 300.0, value_name = "SECONDS")]
    dist_timeout: f64,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Distributed {
    /// One process.
    None,
    /// MPI (OpenMPI): one rank per process started by mpirun.
    Mpi,
}

fn communicator(a: &Args) -> Result<Dist> {
    if !(a.bucket_mb > 0.0 && a.bucket_mb.is_finite()) {
        anyhow::bail!("--bucket-mb must be a positive number, got {}", a.bucket_mb);
    }
    if !(a.dist_timeout >= 0.0 && a.dist_timeout.is_finite()) {
        anyhow::bail!("--dist-timeout must be a number of seconds ≥ 0");
    }
    let opts = DistOptions {
        shard_optimizer: a.shard_optimizer,
        bucket_mb: a.bucket_mb,
    };
    match a.distributed {
        Distributed::None => Ok(Dist::new(Box::new(largo::train::dist::SingleProcess), opts)),
        #[cfg(feature = "mpi")]
        Distributed::Mpi => {
            let timeout = std::time::Duration::from_secs_f64(a.dist_timeout);
            Ok(Dist::new(Box::new(largo::train::dist::Mpi::init(timeout)?), opts))
        }
        #[cfg(not(feature = "mpi"))]
        Distributed::Mpi => anyhow::bail!(
            "--distributed mpi needs a largo built with MPI: install OpenMPI (apt-get install libopenmpi-dev openmpi-bin libclang-dev), then `cargo build --release --features largo-cli/mpi`"
        ),
    }
}

pub fn run(a: Args) -> Result<()> {
    let dist = communicator(&a)?;
    match train_run(&a, &dist) {
        Ok(()) => Ok(()),
        Err(e) if dist.world_size() > 1 => {
            if dist.error_was_shared() {
                // Every rank has rank 0's error and stops; rank 0 alone reports it.
                if dist.is_lead() {
                    return Err(e);
                }
                drop(dist);
                std::process::exit(1);
            }
            // This rank failed alone: the others would wait for it, so end the job.
            eprintln!(
                "error: rank {} of {}: {e:#}",
                dist.rank(),
                dist.world_size()
            );
            dist.abort(1)
        }
        Err(e) => Err(e),
    }
}

fn train_run(a: &Args, dist: &Dist) -> Result<()> {
    let cfg = dist.share_config(|| {
        load_config(&[], a.config.as_deref(), &a.overrides, a.resume.as_deref())
            .map_err(|e| largo::Error::Invalid(format!("{e:#}")))
    })?;
    train_and_report(&cfg, a.resume.is_some(), a.no_progress, dist)
}

/// Trains `cfg` (continuing its run with `resume`) and prints what came of it.
pub fn train_and_report(cfg: &Config, resume: bool, no_progress: bool, dist: &Dist) -> Result<()> {
    let lead = dist.is_lead();
    let progress = lead && !no_progress && std::io::stderr().is_terminal();
    if lead && cfg.model.arch != largo::models::Arch::Llama {
        eprintln!(
            "training {} on {}  →  {}",
            cfg.model.arch,
            cfg.data.path,
            largo::train::run_dir(cfg).display()
        );
    }
    let out = train_distributed(cfg, &TrainOptions { resume, progress }, dist)?;
    if !lead {
        return Ok(());
    }

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
        if cfg.model.arch != largo::models::Arch::Llama {
            print_sample(&out.run_dir)?;
        }
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
        if let Some(t) = &out.test {
            println!(
                "test (final model, not used for training or selection): loss {:.4}, accuracy {:.2}% on {} samples of {}",
                t.loss,
                100.0 * t.accuracy,
                t.samples,
                cfg.data.test_path
            );
        }
    }
    if out.stopped_early {
        println!("stopped early (patience {})", cfg.train.patience);
    }
    println!("metrics: {run}/metrics.jsonl   curves: {run}/curves.png");
    if cfg.model.arch == largo::models::Arch::Llama {
        let talk = if cfg.data.kind == "chat" {
            format!("largo chat --model {run} --message \"…\"")
        } else {
            format!("largo generate --model {run} --prompt \"…\"")
        };
        println!("next: {talk}");
        println!("      largo eval --model {run} --text <held-out text>");
        println!(
            "      largo merge --model {} --adapter {run} --out merged.gguf",
            cfg.model.base
        );
    } else if cfg.is_lm() {
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

/// The configuration of a new run (numbered past existing ones): `preset` on the defaults,
/// then the file `config` and the `overrides`; or, with `resume`, of the run to continue.
pub fn load_config(
    preset: &[String],
    config: Option<&std::path::Path>,
    overrides: &[String],
    resume: Option<&std::path::Path>,
) -> Result<Config> {
    Ok(match resume {
        Some(dir) => {
            let saved = dir.join("config.toml");
            if !saved.is_file() {
                anyhow::bail!("{}: not a run directory (no config.toml)", dir.display());
            }
            let mut cfg = Config::load(Some(&saved), overrides)?;
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
            let mut cfg = Config::load_with_preset(preset, config, overrides)?;
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
    })
}
