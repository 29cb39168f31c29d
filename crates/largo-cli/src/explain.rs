use anyhow::{bail, Context, Result};
use largo::data::image::{load_digit, Invert};
use largo::explain::attention::AttentionMaps;
use largo::explain::saliency::{attribute, baseline_input, render_png, Baseline, Method};
use largo::explain::tokens::attribute_tokens;
use largo::io::write_atomic;
use largo::models::store::{load_classifier, load_info, resolve_model_dir};
use largo::models::ModelKind;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum What {
    /// Attention heatmaps of every layer and head (or the chosen ones) over a text, as PNG;
    /// `--json` prints the weights.
    Attention(AttentionArgs),
    /// Pixel attributions of a digit classifier's prediction, overlaid on the image.
    Saliency(SaliencyArgs),
    /// Which prompt tokens drive a language model's next token (gradient × input).
    Tokens(TokensArgs),
}

#[derive(clap::Args)]
pub struct AttentionArgs {
    /// A largo language model (or run) directory, or a Hugging Face BERT directory.
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    text: String,
    #[arg(long, default_value = "attention.png")]
    out: PathBuf,
    /// Only this layer (from 0).
    #[arg(long)]
    layer: Option<usize>,
    /// Only this head (from 0).
    #[arg(long)]
    head: Option<usize>,
    /// Print the tokens and the chosen maps' weights as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum MethodArg {
    Gradient,
    IntegratedGradients,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BaselineArg {
    Black,
    Blur,
}

#[derive(clap::Args)]
pub struct SaliencyArgs {
    /// An MLP digit classifier (model or run directory).
    #[arg(long)]
    model: PathBuf,
    /// A PNG or JPEG of one digit.
    image: PathBuf,
    #[arg(long, value_enum, default_value = "integrated-gradients")]
    method: MethodArg,
    /// Integrated gradients: points on the path from the baseline to the image.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Integrated gradients: the image that stands for "no signal".
    #[arg(long, value_enum, default_value = "black")]
    baseline: BaselineArg,
    /// Explain this class's logit (default: the predicted class).
    #[arg(long = "class")]
    class: Option<usize>,
    #[arg(long, default_value = "saliency.png")]
    out: PathBuf,
    /// Print the result (attributions included) as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ColorArg {
    Auto,
    Always,
    Never,
}

#[derive(clap::Args)]
pub struct TokensArgs {
    /// A largo language model (or run) directory.
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    text: String,
    /// Explain this next token (one token of the vocabulary) instead of the most likely one.
    #[arg(long)]
    target: Option<String>,
    /// Also write the coloured prompt and the scores as an HTML page.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Print the scores as JSON instead of coloured text.
    #[arg(long)]
    json: bool,
    #[arg(long, value_enum, default_value = "auto")]
    color: ColorArg,
}

pub fn run(what: What) -> Result<()> {
    match what {
        What::Attention(a) => attention(a),
        What::Saliency(a) => saliency(a),
        What::Tokens(a) => tokens(a),
    }
}

fn attention(a: AttentionArgs) -> Result<()> {
    let maps = AttentionMaps::compute(&a.model, &a.text)?;
    let chosen = maps.select(a.layer, a.head)?;
    let png = maps.render_png(&chosen)?;
    write_atomic(&a.out, &png)?;
    if a.json {
        println!("{}", maps.to_json(&chosen));
    } else {
        println!(
            "{} tokens, {} of {} layers × {} heads  →  {}",
            maps.tokens.len(),
            chosen.len(),
            maps.layers,
            maps.heads,
            a.out.display()
        );
    }
    Ok(())
}

fn saliency(a: SaliencyArgs) -> Result<()> {
    let dir = resolve_model_dir(&a.model)?;
    let info = load_info(&dir)?;
    match info.model {
        ModelKind::Mlp(_) | ModelKind::Cnn(_) | ModelKind::ResNet(_) => {}
        ModelKind::Gpt(_) | ModelKind::EncoderLm(_) | ModelKind::Llama(_) => bail!(
            "{}: saliency explains an image classifier (an MLP, CNN or ResNet trained on digits); this is a {} model",
            dir.display(),
            info.arch()
        ),
    }
    let (mut model, _, norm) = load_classifier(&dir)?;
    let [c, h, w] = model.input();
    if c != 1 || h != w {
        bail!(
            "{}: the model takes {c}×{h}×{w} inputs; saliency maps are drawn for one grey square image",
            dir.display(),
        );
    }
    let side = h;
    let x = load_digit(&a.image, side as u32, Invert::Auto, &norm)?;
    let method = match a.method {
        MethodArg::Gradient => Method::Gradient,
        MethodArg::IntegratedGradients => Method::IntegratedGradients { steps: a.steps },
    };
    let kind = match a.baseline {
        BaselineArg::Black => Baseline::Black,
        BaselineArg::Blur => Baseline::Blur,
    };
    let base = baseline_input(kind, &x, side, &norm);
    let r = attribute(model.as_mut(), &x, a.class, method, &base)?;
    let name = match method {
        Method::Gradient => "gradient".to_string(),
        Method::IntegratedGradients { steps } => {
            format!(
                "integrated gradients, {steps} steps, {} baseline",
                a.baseline_name()
            )
        }
    };
    let caption = format!(
        "predicted {} (p {:.3}); class {} by {name}",
        r.predicted, r.probabilities[r.predicted], r.target
    );
    let png = render_png(&x, side, &norm, &r, &caption)?;
    write_atomic(&a.out, &png)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!("{}: {caption}", a.image.display());
    if let (Some(fb), Some(err)) = (r.baseline_output, r.completeness_error) {
        let total: f64 = r.attributions.iter().map(|&v| v as f64).sum();
        println!(
            "completeness: Σ attributions {total:.4}, f(x) − f(baseline) {:.4} (logit {:.4} − {fb:.4}); error {:.3}%",
            r.output - fb,
            r.output,
            100.0 * err
        );
    }
    println!("saliency map  →  {}", a.out.display());
    Ok(())
}

impl SaliencyArgs {
    fn baseline_name(&self) -> &'static str {
        match self.baseline {
            BaselineArg::Black => "black",
            BaselineArg::Blur => "blur",
        }
    }
}

fn tokens(a: TokensArgs) -> Result<()> {
    let r = attribute_tokens(&a.model, &a.text, a.target.as_deref())?;
    if let Some(path) = &a.html {
        write_atomic(path, r.to_html().as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    let colour = match a.color {
        ColorArg::Always => true,
        ColorArg::Never => false,
        ColorArg::Auto => std::io::stdout().is_terminal(),
    };
    if colour {
        println!("{}", r.to_ansi());
    }
    println!(
        "next token {:?}: probability {:.4}, logit {:.4}; gradient × input per token (+ raises it, − lowers it):",
        r.target, r.probability, r.logit
    );
    for (i, (tok, s)) in r.tokens.iter().zip(&r.scores).enumerate() {
        println!("{i:>4}  {:<12} {s:+.4}", largo::explain::visible_token(tok));
    }
    if let Some(path) = &a.html {
        println!("html  →  {}", path.display());
    }
    Ok(())
}
