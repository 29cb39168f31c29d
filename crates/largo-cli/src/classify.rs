use anyhow::Result;
use largo::data::image::{load_digit, Invert};
use largo::models::store::{load_classifier, resolve_model_dir};
use largo::nn::Forward;
use std::path::PathBuf;

#[derive(Clone, Copy, clap::ValueEnum)]
enum InvertArg {
    Auto,
    Yes,
    No,
}

#[derive(clap::Args)]
pub struct Args {
    /// A model directory, or a run directory (uses its best/ model).
    #[arg(long)]
    model: PathBuf,
    /// PNG or JPEG images of single digits.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// How many classes to print per image.
    #[arg(long, default_value_t = 3)]
    top_k: usize,
    /// MNIST digits are light on dark; `auto` inverts images with a light border.
    #[arg(long, value_enum, default_value = "auto")]
    invert: InvertArg,
    /// One JSON object per image.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let dir = resolve_model_dir(&a.model)?;
    let (mut model, _, norm) = load_classifier(&dir)?;
    let [c, h, w] = model.input();
    if c != 1 || h != w {
        anyhow::bail!(
            "{}: the model takes {c}×{h}×{w} images; classify reads digit images (one grey square channel)",
            dir.display()
        );
    }
    let side = h as u32;
    let invert = match a.invert {
        InvertArg::Auto => Invert::Auto,
        InvertArg::Yes => Invert::Yes,
        InvertArg::No => Invert::No,
    };
    // Decode every image first: a bad file fails before anything is printed.
    let inputs: Vec<Vec<f32>> = a
        .images
        .iter()
        .map(|p| load_digit(p, side, invert, &norm))
        .collect::<Result<_, _>>()?;
    let classes = model.classes();
    for (path, x) in a.images.iter().zip(inputs) {
        let logits = model.forward(&x, Forward::eval(1, 1))?;
        let probs = softmax(logits);
        let mut order: Vec<usize> = (0..classes).collect();
        order.sort_by(|&i, &j| probs[j].total_cmp(&probs[i]));
        order.truncate(a.top_k.clamp(1, classes));
        if a.json {
            let top: Vec<_> = order
                .iter()
                .map(|&c| serde_json::json!({"class": c, "probability": probs[c]}))
                .collect();
            println!("{}", serde_json::json!({"image": path, "top": top}));
        } else {
            let top: Vec<String> = order
                .iter()
                .map(|&c| format!("{c} ({:.1}%)", 100.0 * probs[c]))
                .collect();
            println!("{}: {}", path.display(), top.join(", "));
        }
    }
    Ok(())
}

fn softmax(z: &[f32]) -> Vec<f32> {
    let max = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let e: Vec<f32> = z.iter().map(|&v| (v - max).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}
