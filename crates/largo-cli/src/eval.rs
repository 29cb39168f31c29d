use anyhow::Result;
use largo::data::mnist::{split_indices, Mnist};
use largo::eval::evaluate;
use largo::models::store::{load_mlp, resolve_model_dir};
use std::path::PathBuf;

#[derive(Clone, Copy, clap::ValueEnum)]
enum Split {
    /// Every sample in the directory.
    All,
    /// The validation split the model was trained with (same seed and fraction).
    Val,
    /// The training split the model was trained with.
    Train,
}

#[derive(clap::Args)]
pub struct Args {
    /// A model directory, or a run directory (uses its best/ model).
    #[arg(long)]
    model: PathBuf,
    /// MNIST directory with train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz].
    #[arg(long)]
    data: PathBuf,
    #[arg(long, value_enum, default_value = "all")]
    split: Split,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
}

pub fn run(a: Args) -> Result<()> {
    let dir = resolve_model_dir(&a.model)?;
    let (mut model, info) = load_mlp(&dir)?;
    let data = Mnist::load(&a.data, model.config.classes)?;
    if data.pixels != model.config.input {
        anyhow::bail!(
            "{}: images have {} pixels, the model expects {}",
            a.data.display(),
            data.pixels,
            model.config.input
        );
    }
    let indices: Vec<usize> = match a.split {
        Split::All => (0..data.len()).collect(),
        Split::Val | Split::Train => {
            let Some(s) = info.split else {
                anyhow::bail!(
                    "{}: the model does not record its split; use --split all",
                    dir.display()
                );
            };
            let (train, val) = split_indices(data.len(), s.val_fraction, s.seed);
            if matches!(a.split, Split::Val) {
                val
            } else {
                train
            }
        }
    };
    if indices.is_empty() {
        anyhow::bail!("the chosen split of {} is empty", a.data.display());
    }
    let e = evaluate(
        &mut model,
        &data,
        &info.normalization,
        &indices,
        a.batch_size.max(1),
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        println!("model {}", dir.display());
        print!("{}", e.render());
    }
    Ok(())
}
