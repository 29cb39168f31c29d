//! The report of one training run: summary and metrics table, curves, then what the saved
//! model does — a classifier's confusion matrix and pixel attributions, a language model's
//! samples and attention maps — and the resolved config.
//!
//! Only the config and the metrics are required; a part that cannot be built (no saved model
//! yet, the data moved) becomes a note saying why, so a run in progress still gets a report.

use super::charts::{self, Band, LineChart, Series, TRAIN_COLOR, TRAIN_LIGHT, VAL_COLOR};
use super::html::{self, escape, Page, Section};
use crate::config::Config;
use crate::data::mnist::{split_indices, Mnist};
use crate::data::text::{decode, encode, TokenData};
use crate::eval::{evaluate, Evaluation};
use crate::explain::attention::AttentionMaps;
use crate::explain::saliency::{attribute, baseline_input, render_png, Baseline, Method};
use crate::generate::{generate, Sampling};
use crate::models::store::{load_classifier, load_lm, resolve_model_dir};
use crate::nn::{Forward, Module};
use crate::tensor::argmax;
use crate::train::metrics::{read_records, Record};
use crate::{Error, Result};
use std::path::{Component, Path, PathBuf};

/// One validation of the run, from a `val` (classifier) or `eval` (language model) record.
#[derive(Clone, Debug, PartialEq)]
pub struct Validation {
    pub step: u64,
    /// Classifiers validate after each epoch.
    pub epoch: Option<usize>,
    /// Classifier: the epoch's mean training loss; language model: the last logged window's.
    pub train_loss: f64,
    pub val_loss: f64,
    pub train_accuracy: Option<f64>,
    pub val_accuracy: Option<f64>,
}

/// The best validation by the run's metric.
#[derive(Clone, Debug, PartialEq)]
pub struct Best {
    pub metric: &'static str,
    pub value: f64,
    pub step: u64,
    pub epoch: Option<usize>,
}

/// What `metrics.jsonl` says, gathered for the table and the charts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunStats {
    /// The last step any record mentions.
    pub steps: u64,
    /// (step, mean loss, mean accuracy) of each logging window.
    pub windows: Vec<(u64, f64, Option<f64>)>,
    pub validations: Vec<Validation>,
    /// Of the last logging window: samples (classifier) or tokens (language model) per second.
    pub throughput: Option<f64>,
}

impl RunStats {
    pub fn from_records(records: &[Record]) -> Self {
        let mut s = RunStats::default();
        for r in records {
            s.steps = s.steps.max(r.step());
            match *r {
                Record::Train {
                    step,
                    loss,
                    accuracy,
                    samples_per_sec,
                    ..
                } => {
                    s.windows.push((step, loss, accuracy));
                    s.throughput = Some(samples_per_sec);
                }
                Record::Val {
                    step,
                    epoch,
                    train_loss,
                    train_accuracy,
                    val_loss,
                    val_accuracy,
                } => s.validations.push(Validation {
                    step,
                    epoch: Some(epoch),
                    train_loss,
                    val_loss,
                    train_accuracy: Some(train_accuracy),
                    val_accuracy: Some(val_accuracy),
                }),
                Record::Eval {
                    step,
                    train_loss,
                    val_loss,
                    ..
                } => s.validations.push(Validation {
                    step,
                    epoch: None,
                    train_loss,
                    val_loss,
                    train_accuracy: None,
                    val_accuracy: None,
                }),
                Record::Test { .. } => {}
            }
        }
        s
    }

    /// The first validation with the best value of `metric` ("val_accuracy" or "val_loss");
    /// a run without accuracies is judged by its loss.
    pub fn best(&self, metric: &str) -> Option<Best> {
        let by_accuracy =
            metric == "val_accuracy" && self.validations.iter().any(|v| v.val_accuracy.is_some());
        let value = |v: &Validation| {
            if by_accuracy {
                v.val_accuracy.unwrap_or(f64::NAN)
            } else {
                v.val_loss
            }
        };
        let better = |a: f64, b: f64| if by_accuracy { a > b } else { a < b };
        let mut best: Option<&Validation> = None;
        for v in self.validations.iter().filter(|v| value(v).is_finite()) {
            if best.is_none_or(|b| better(value(v), value(b))) {
                best = Some(v);
            }
        }
        best.map(|v| Best {
            metric: if by_accuracy {
                "val_accuracy"
            } else {
                "val_loss"
            },
            value: value(v),
            step: v.step,
            epoch: v.epoch,
        })
    }
}

fn signed(x: f64) -> String {
    format!("{x:+.4}")
}

fn percent(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

/// The table of the last validation: train, validation and the gap between them.
pub fn metrics_table(stats: &RunStats) -> Option<(Vec<String>, Vec<Vec<String>>)> {
    let v = stats.validations.last()?;
    let head = ["", "train", "validation", "gap (validation − train)"]
        .map(String::from)
        .to_vec();
    let mut rows = vec![vec![
        "loss".to_string(),
        format!("{:.4}", v.train_loss),
        format!("{:.4}", v.val_loss),
        signed(v.val_loss - v.train_loss),
    ]];
    if let (Some(ta), Some(va)) = (v.train_accuracy, v.val_accuracy) {
        rows.push(vec![
            "accuracy".into(),
            percent(ta),
            percent(va),
            format!("{:+.2} points", 100.0 * (va - ta)),
        ]);
    } else {
        rows.push(vec![
            "perplexity".into(),
            format!("{:.3}", v.train_loss.exp()),
            format!("{:.3}", v.val_loss.exp()),
            format!("{:+.3}", v.val_loss.exp() - v.train_loss.exp()),
        ]);
    }
    Some((head, rows))
}

/// A path from the run's config as `largo train` saw it: as written (relative to the current
/// directory), else relative to the directory `run.out_dir` was relative to, so a report
/// written from elsewhere still finds the data.
pub fn resolve_config_path(path: &str, run: &Path, out_dir: &str) -> PathBuf {
    let p = PathBuf::from(path);
    if p.is_absolute() || p.exists() {
        return p;
    }
    let out = Path::new(out_dir);
    if out.is_relative() {
        let depth = out
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .count();
        // run = <base>/<out_dir>/<name>
        let mut base = run.parent();
        for _ in 0..depth {
            base = base.and_then(Path::parent);
        }
        if let Some(candidate) = base.map(|b| b.join(&p)).filter(|c| c.exists()) {
            return candidate;
        }
    }
    p
}

pub fn build(run: &Path) -> Result<(Page, Vec<String>)> {
    let config_path = run.join("config.toml");
    let config_text =
        std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let cfg = Config::load(Some(&config_path), &[])?;
    let records = read_records(&run.join("metrics.jsonl"))?;
    let stats = RunStats::from_records(&records);
    let mut notes = Vec::new();

    let kind = if cfg.is_lm() {
        "language model"
    } else {
        "classifier"
    };
    let mut sections = vec![summary_section(run, &cfg, &stats)];
    sections.push(curves_section(&cfg, &stats, &mut notes));
    if cfg.is_lm() {
        sections.extend(lm_sections(run, &cfg, &mut notes));
    } else {
        sections.extend(classifier_sections(run, &cfg, &mut notes));
    }
    sections.push(Section::new(
        "config",
        "Configuration",
        format!(
            "{}{}",
            html::note("The resolved config the run trained with: every key, defaults included (config.toml)."),
            html::pre(&config_text)
        ),
    ));
    let page = Page {
        title: format!("largo report: {}", cfg.run.name),
        subtitle: vec![format!(
            "{kind} ({}) on {} · run directory {}",
            cfg.model.arch,
            cfg.data.path,
            run.display()
        )],
        sections,
    };
    Ok((page, notes))
}

fn summary_section(run: &Path, cfg: &Config, stats: &RunStats) -> Section {
    let mut facts: Vec<(&str, String)> = vec![
        ("run", run.display().to_string()),
        ("model", cfg.model.arch.to_string()),
        ("data", cfg.data.path.clone()),
        ("steps", stats.steps.to_string()),
    ];
    if let Some(epoch) = stats.validations.last().and_then(|v| v.epoch) {
        facts.push(("epochs", (epoch + 1).to_string()));
    }
    facts.push(("validations", stats.validations.len().to_string()));
    if let Some(b) = stats.best(&cfg.train.metric) {
        let value = if b.metric == "val_accuracy" {
            percent(b.value)
        } else {
            format!("{:.4}", b.value)
        };
        let at = match b.epoch {
            Some(e) => format!("step {} (epoch {})", b.step, e + 1),
            None => format!("step {}", b.step),
        };
        facts.push(("best", format!("{} {value} at {at}", b.metric)));
    }
    if let Some(&(step, loss, _)) = stats.windows.last() {
        facts.push((
            "last training window",
            format!("loss {loss:.4} at step {step}"),
        ));
    }
    if let Some(t) = stats.throughput {
        let unit = if cfg.is_lm() { "tokens" } else { "samples" };
        facts.push(("throughput", format!("{t:.0} {unit}/s (last window)")));
    }
    let mut body = html::facts(&facts);
    match metrics_table(stats) {
        Some((head, rows)) => {
            let v = stats
                .validations
                .last()
                .expect("a table needs a validation");
            body.push_str(&format!(
                "<h3>At the last validation (step {})</h3>\n",
                v.step
            ));
            body.push_str(&html::table(&head, &rows, None));
        }
        None => body.push_str(&html::note("No validation has been logged yet.")),
    }
    Section::new("summary", "Summary and metrics", body)
}

fn curves_section(cfg: &Config, stats: &RunStats, notes: &mut Vec<String>) -> Section {
    if stats.validations.is_empty() && stats.windows.is_empty() {
        return Section::new(
            "curves",
            "Curves",
            html::note("metrics.jsonl holds no records yet."),
        );
    }
    let vals = &stats.validations;
    let at_val = |f: fn(&Validation) -> Option<f64>| -> Vec<(f64, f64)> {
        vals.iter()
            .filter_map(|v| f(v).map(|y| (v.step as f64, y)))
            .collect()
    };
    let train_at_val_label = if cfg.is_lm() {
        "train (last window at each validation)"
    } else {
        "train (epoch mean)"
    };
    let gap_label = |last: Option<f64>, unit: &str| match last {
        Some(g) => format!("gap validation − train (last {g:+.3}{unit})"),
        None => "gap validation − train".into(),
    };
    let last_loss_gap = vals.last().map(|v| v.val_loss - v.train_loss);
    let loss = LineChart {
        title: "loss: train and validation".into(),
        x_desc: "step".into(),
        y_desc: "cross-entropy loss".into(),
        series: vec![
            Series {
                label: "train (per log window)".into(),
                points: stats.windows.iter().map(|w| (w.0 as f64, w.1)).collect(),
                color: TRAIN_LIGHT,
                main: false,
            },
            Series {
                label: train_at_val_label.into(),
                points: at_val(|v| Some(v.train_loss)),
                color: TRAIN_COLOR,
                main: true,
            },
            Series {
                label: "validation".into(),
                points: at_val(|v| Some(v.val_loss)),
                color: VAL_COLOR,
                main: true,
            },
        ],
        band: Some(Band {
            label: gap_label(last_loss_gap, ""),
            lower: at_val(|v| Some(v.train_loss)),
            upper: at_val(|v| Some(v.val_loss)),
            color: VAL_COLOR,
        }),
    };
    let second = if cfg.is_lm() {
        let last = vals.last().map(|v| v.val_loss.exp() - v.train_loss.exp());
        LineChart {
            title: "perplexity: train and validation".into(),
            x_desc: "step".into(),
            y_desc: "perplexity".into(),
            series: vec![
                Series {
                    label: "train (last window at each validation)".into(),
                    points: at_val(|v| Some(v.train_loss.exp())),
                    color: TRAIN_COLOR,
                    main: true,
                },
                Series {
                    label: "validation".into(),
                    points: at_val(|v| Some(v.val_loss.exp())),
                    color: VAL_COLOR,
                    main: true,
                },
            ],
            band: Some(Band {
                label: gap_label(last, ""),
                lower: at_val(|v| Some(v.train_loss.exp())),
                upper: at_val(|v| Some(v.val_loss.exp())),
                color: VAL_COLOR,
            }),
        }
    } else {
        let pct = |x: Option<f64>| x.map(|a| 100.0 * a);
        let last = vals
            .last()
            .and_then(|v| Some(100.0 * (v.train_accuracy? - v.val_accuracy?)));
        LineChart {
            title: "accuracy: train and validation".into(),
            x_desc: "step".into(),
            y_desc: "accuracy %".into(),
            series: vec![
                Series {
                    label: "train (per log window)".into(),
                    points: stats
                        .windows
                        .iter()
                        .filter_map(|w| Some((w.0 as f64, 100.0 * w.2?)))
                        .collect(),
                    color: TRAIN_LIGHT,
                    main: false,
                },
                Series {
                    label: "train (epoch mean)".into(),
                    points: vals
                        .iter()
                        .filter_map(|v| Some((v.step as f64, pct(v.train_accuracy)?)))
                        .collect(),
                    color: TRAIN_COLOR,
                    main: true,
                },
                Series {
                    label: "validation".into(),
                    points: vals
                        .iter()
                        .filter_map(|v| Some((v.step as f64, pct(v.val_accuracy)?)))
                        .collect(),
                    color: VAL_COLOR,
                    main: true,
                },
            ],
            band: Some(Band {
                label: match last {
                    Some(g) => format!("gap train − validation (last {g:+.2} points)"),
                    None => "gap train − validation".into(),
                },
                lower: vals
                    .iter()
                    .filter_map(|v| Some((v.step as f64, pct(v.val_accuracy)?)))
                    .collect(),
                upper: vals
                    .iter()
                    .filter_map(|v| Some((v.step as f64, pct(v.train_accuracy)?)))
                    .collect(),
                color: VAL_COLOR,
            }),
        }
    };
    let mut body = html::note(
        "The shaded band is the gap between the validation and the training curve at each validation: \
         a band that widens while the training loss keeps falling is overfitting.",
    );
    for (chart, alt) in [(&loss, "loss curves"), (&second, "second curves")] {
        match charts::line_chart(chart) {
            Ok(png) => body.push_str(&html::figure(&png, &chart.title, &chart.title)),
            Err(e) => {
                notes.push(format!("{}: {e}", chart.title));
                body.push_str(&html::note(&format!("{alt}: {e}")));
            }
        }
    }
    Section::new("curves", "Curves", body)
}

/// A section that could not be built says why, and the reason is passed on to the caller.
fn unavailable(id: &str, title: &str, e: &Error, notes: &mut Vec<String>) -> Section {
    notes.push(format!("{title}: {e}"));
    Section::new(id, title, html::note(&format!("Not available: {e}")))
}

fn classifier_sections(run: &Path, cfg: &Config, notes: &mut Vec<String>) -> Vec<Section> {
    match classifier_parts(run, cfg) {
        Ok(sections) => sections,
        Err(e) => vec![unavailable(
            "evaluation",
            "Evaluation: confusion matrix",
            &e,
            notes,
        )],
    }
}

fn classifier_parts(run: &Path, cfg: &Config) -> Result<Vec<Section>> {
    let model_dir = resolve_model_dir(run)?;
    let (mut model, info, norm) = load_classifier(&model_dir)?;
    let data_path = resolve_config_path(&cfg.data.path, run, &cfg.run.out_dir);
    let data = if cfg.data.kind == "image_folder" {
        let [c, h, w] = model.input();
        crate::data::image_folder::load_image_folder(&data_path, c, [h, w], model.classes())?
    } else {
        Mnist::load(&data_path, model.classes())?
    };
    model.check_input(data.pixels, &data_path.display().to_string())?;
    // The model records the split it trained with; older models fall back on the config's.
    let (seed, fraction) = info
        .split
        .map_or((cfg.run.seed, cfg.data.val_fraction), |s| {
            (s.seed, s.val_fraction)
        });
    let (_, val) = split_indices(data.len(), fraction, seed);
    if val.is_empty() {
        return Err(Error::Invalid(format!(
            "the run has no validation split (val_fraction {fraction})"
        )));
    }
    let e = evaluate(model.as_mut(), &data, &norm, &val, 256)?;
    let params: usize = model.params().iter().map(|(_, p)| p.value.data.len()).sum();
    let mut body = html::facts(&[
        ("model", model_dir.display().to_string()),
        ("parameters", params.to_string()),
        (
            "validation split",
            format!(
                "{} of {} samples in {} (seed {seed}, fraction {fraction})",
                val.len(),
                data.len(),
                data_path.display()
            ),
        ),
        ("loss", format!("{:.4}", e.loss)),
        ("accuracy", percent(e.accuracy)),
    ]);
    body.push_str("<h3>Confusion matrix</h3>\n");
    body.push_str(&html::note(
        "Rows: true class; columns: predicted class. Shading: the share of the row (recall on \
         the diagonal, blue; confusions off it, red).",
    ));
    body.push_str(&confusion_html(&e));
    body.push_str("<h3>Per-class precision, recall and F1</h3>\n");
    let head = ["class", "precision", "recall", "F1", "support"]
        .map(String::from)
        .to_vec();
    let rows: Vec<Vec<String>> = e
        .per_class
        .iter()
        .map(|c| {
            vec![
                c.class.to_string(),
                format!("{:.4}", c.precision),
                format!("{:.4}", c.recall),
                format!("{:.4}", c.f1),
                c.support.to_string(),
            ]
        })
        .collect();
    body.push_str(&html::table(&head, &rows, None));
    let mut sections = vec![Section::new(
        "evaluation",
        "Evaluation: confusion matrix",
        body,
    )];
    sections.push(saliency_section(model.as_mut(), &data, &norm, &val)?);
    Ok(sections)
}

/// The confusion matrix as a table whose cells are shaded by their share of the row.
pub fn confusion_html(e: &Evaluation) -> String {
    let classes = e.confusion.len();
    let mut out = String::from(
        "<div class=\"scroll\"><table class=\"confusion\">\n<thead><tr><th>true \\ predicted</th>",
    );
    for c in 0..classes {
        out.push_str(&format!("<th>{c}</th>"));
    }
    out.push_str("<th>support</th></tr></thead>\n<tbody>\n");
    for (t, row) in e.confusion.iter().enumerate() {
        let support: u64 = row.iter().sum();
        out.push_str(&format!("<tr><th>{t}</th>"));
        for (p, &n) in row.iter().enumerate() {
            let share = if support > 0 {
                n as f64 / support as f64
            } else {
                0.0
            };
            let (r, g, b) = if p == t {
                (31, 119, 180)
            } else {
                (214, 39, 40)
            };
            let ink = if share > 0.55 { "#fff" } else { "#1d2330" };
            out.push_str(&format!(
                "<td style=\"background: rgba({r}, {g}, {b}, {share:.3}); color: {ink}\" title=\"true {t}, predicted {p}: {n} ({:.1}% of class {t})\">{n}</td>",
                100.0 * share
            ));
        }
        out.push_str(&format!("<td>{support}</td></tr>\n"));
    }
    out.push_str("</tbody></table></div>\n");
    out
}

/// Integrated-gradients maps of a few validation digits: two the model gets right and two it
/// gets wrong, when it gets any wrong.
fn saliency_section(
    model: &mut dyn crate::models::ImageClassifier,
    data: &Mnist,
    norm: &crate::data::mnist::Normalization,
    val: &[usize],
) -> Result<Section> {
    const STEPS: usize = 64;
    let [c, side, w] = model.input();
    if c != 1 || side != w {
        return Ok(Section::new(
            "saliency",
            "Explanations: pixel attributions",
            html::note("The inputs are not grey square images; no saliency maps."),
        ));
    }
    let (mut right, mut wrong) = (Vec::new(), Vec::new());
    for &i in val.iter().take(500) {
        let x: Vec<f32> = data.images[i * data.pixels..(i + 1) * data.pixels]
            .iter()
            .map(|&p| norm.apply(p))
            .collect();
        let predicted = argmax(model.forward(&x, Forward::eval(1, 1))?);
        let label = data.labels[i] as usize;
        let list = if predicted == label {
            &mut right
        } else {
            &mut wrong
        };
        if list.len() < 2 {
            list.push((i, x, label));
        }
        if right.len() == 2 && wrong.len() == 2 {
            break;
        }
    }
    let mut body = html::note(&format!(
        "Integrated gradients ({STEPS} steps from a black image) of the predicted class's logit: \
         red pixels raise it, blue ones lower it. Digits from the validation split."
    ));
    body.push_str("<div class=\"gallery\">\n");
    for (i, x, label) in right.into_iter().chain(wrong) {
        let base = baseline_input(Baseline::Black, &x, side, norm);
        let a = attribute(
            model,
            &x,
            None,
            Method::IntegratedGradients { steps: STEPS },
            &base,
        )?;
        let caption = format!(
            "sample {i}: true {label}, predicted {} (p {:.3})",
            a.predicted, a.probabilities[a.predicted]
        );
        let png = render_png(&x, side, norm, &a, &caption)?;
        body.push_str(&html::figure(&png, &caption, &caption));
    }
    body.push_str("</div>\n");
    Ok(Section::new(
        "saliency",
        "Explanations: pixel attributions",
        body,
    ))
}

const SAMPLE_PROMPT: &str = "ROMEO:";
const SAMPLE_SEEDS: [u64; 3] = [1, 2, 3];

fn lm_sections(run: &Path, cfg: &Config, notes: &mut Vec<String>) -> Vec<Section> {
    let model_dir = match resolve_model_dir(run) {
        Ok(d) => d,
        Err(e) => {
            return vec![
                unavailable("samples", "Samples", &e, notes),
                unavailable("attention", "Attention maps", &e, notes),
            ]
        }
    };
    if cfg.model.arch == crate::models::Arch::Llama {
        let samples = pretrained_samples_section(&model_dir, cfg)
            .unwrap_or_else(|e| unavailable("samples", "Samples", &e, notes));
        return vec![samples];
    }
    let text = training_text(run, cfg);
    let samples = samples_section(&model_dir)
        .unwrap_or_else(|e| unavailable("samples", "Samples", &e, notes));
    let attention = attention_section(&model_dir, text.as_deref())
        .unwrap_or_else(|e| unavailable("attention", "Attention maps", &e, notes));
    vec![samples, attention]
}

/// The start of the training text: the run's prepared tokens, decoded.
fn training_text(run: &Path, cfg: &Config) -> Option<String> {
    let configured = resolve_config_path(&cfg.data.path, run, &cfg.run.out_dir);
    let dir = [run.join("data"), configured]
        .into_iter()
        .find(|d| d.join("meta.json").is_file())?;
    let data = TokenData::load(&dir).ok()?;
    let n = data.train.len().min(4000);
    decode(&data.tokenizer, &data.train[..n]).ok()
}

fn samples_section(model_dir: &Path) -> Result<Section> {
    let (model, _, tokenizer) = load_lm(model_dir)?;
    // A prompt the vocabulary can spell, else its first token (as `largo train` does).
    let prompt = if encode(&tokenizer, SAMPLE_PROMPT).is_ok() {
        SAMPLE_PROMPT.to_string()
    } else {
        decode(&tokenizer, &[0])?
    };
    let sampling = |seed| Sampling {
        max_tokens: 200,
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        seed,
        stop: Vec::new(),
    };
    let params: usize = model.params().iter().map(|(_, p)| p.value.data.len()).sum();
    let mut body = html::facts(&[
        ("model", model_dir.display().to_string()),
        ("parameters", params.to_string()),
        ("prompt", format!("{prompt:?}")),
        (
            "sampling",
            "200 tokens, temperature 0.8, top-k 40, top-p 0.95".into(),
        ),
    ]);
    for seed in SAMPLE_SEEDS {
        let g = generate(&model, &tokenizer, &prompt, &sampling(seed), |_| true)?;
        body.push_str(&format!(
            "<h3>seed {seed}</h3>\n<pre class=\"sample\"><b>{}</b>{}</pre>\n",
            escape(&prompt),
            escape(&g.text)
        ));
    }
    Ok(Section::new("samples", "Samples", body))
}

/// A fine-tuned pretrained model's replies (chat data: to the first user message of the data)
/// or continuations (text: of "ROMEO:"), greedy and sampled.
fn pretrained_samples_section(model_dir: &Path, cfg: &Config) -> Result<Section> {
    use crate::data::chat_template::{ChatMessage, ChatTemplate};
    use crate::generate::llm::generate_llm;
    let files = crate::models::llama_load::LlmFiles::find(model_dir)?
        .ok_or_else(|| Error::format(model_dir, "not a fine-tuned pretrained model"))?;
    let model = files.load(false)?;
    let tokenizer = files.load_tokenizer()?;
    let (shown, ids) = match (cfg.data.kind.as_str(), &tokenizer.chat_template) {
        ("chat", Some(source)) => {
            let path = Path::new(&cfg.data.path);
            let first = crate::data::finetune::read_chat_jsonl(path)?
                .into_iter()
                .next()
                .and_then(|c| c.messages.into_iter().find(|m| m.role == "user"))
                .ok_or_else(|| Error::format(path, "no user message to ask"))?;
            let template = ChatTemplate::with_name("the chat template", source.clone())?;
            let ask = [ChatMessage::new("user", &first.content)];
            let text = tokenizer.render_chat(&template, &ask, true)?;
            (first.content, tokenizer.encode(&text, false)?)
        }
        _ => (
            SAMPLE_PROMPT.to_string(),
            tokenizer.encode(SAMPLE_PROMPT, true)?,
        ),
    };
    let mut body = html::facts(&[
        ("model", files.describe()),
        ("prompt", format!("{shown:?}")),
        (
            "sampling",
            "120 tokens: greedy, then temperature 0.8, top-k 40, top-p 0.95".into(),
        ),
    ]);
    for (label, temperature, seed) in [("greedy", 0.0, 0), ("seed 1", 0.8, 1), ("seed 2", 0.8, 2)] {
        let sampling = Sampling {
            max_tokens: 120,
            temperature,
            top_k: 40,
            top_p: 0.95,
            seed,
            stop: Vec::new(),
        };
        let g = generate_llm(&model, &tokenizer, &ids, &sampling, |_| true)?;
        body.push_str(&format!(
            "<h3>{label}</h3>\n<pre class=\"sample\"><b>{}</b>\n{}</pre>\n",
            escape(&shown),
            escape(&g.text)
        ));
    }
    Ok(Section::new("samples", "Samples", body))
}

/// A line of the training text of at most `max_tokens` tokens (whole words where possible).
pub fn attention_prompt(
    text: &str,
    tokenizer: &tokenizers::Tokenizer,
    max_tokens: usize,
) -> Option<String> {
    let fits =
        |s: &str| encode(tokenizer, s).is_ok_and(|ids| !ids.is_empty() && ids.len() <= max_tokens);
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.chars().count() >= 12 && encode(tokenizer, l).is_ok())?;
    let mut words: Vec<&str> = line.split_whitespace().collect();
    while words.len() > 1 && !fits(&words.join(" ")) {
        words.pop();
    }
    let mut prompt = words.join(" ");
    while !fits(&prompt) && prompt.chars().count() > 1 {
        let keep = prompt.chars().count() - 1;
        prompt = prompt.chars().take(keep).collect();
    }
    fits(&prompt).then_some(prompt)
}

fn attention_section(model_dir: &Path, text: Option<&str>) -> Result<Section> {
    let (model, _, tokenizer) = load_lm(model_dir)?;
    let max_tokens = model.spec.block_size.min(24);
    let prompt = text
        .and_then(|t| attention_prompt(t, &tokenizer, max_tokens))
        .or_else(|| attention_prompt(SAMPLE_PROMPT, &tokenizer, max_tokens))
        .ok_or_else(|| Error::Invalid("no prompt the vocabulary can encode".into()))?;
    let maps = AttentionMaps::compute(model_dir, &prompt)?;
    // Every head while the grid stays legible; else the first and the last layer's.
    let selection = if maps.layers * maps.heads <= 16 {
        maps.select(None, None)?
    } else {
        let mut s = maps.select(Some(0), None)?;
        s.extend(maps.select(Some(maps.layers - 1), None)?);
        s
    };
    let png = maps.render_png(&selection)?;
    let shown = if selection.len() == maps.layers * maps.heads {
        let layers = if maps.layers == 1 { "layer" } else { "layers" };
        format!(
            "every head: {} {layers} × {} heads",
            maps.layers, maps.heads
        )
    } else {
        format!(
            "the first and the last of {} layers, {} heads each",
            maps.layers, maps.heads
        )
    };
    let mut body = html::facts(&[
        ("prompt", format!("{prompt:?} (from the training text)")),
        ("tokens", maps.tokens.len().to_string()),
        ("maps", shown),
    ]);
    body.push_str(&html::note(
        "Each panel: rows are the query tokens, columns the keys they attend to (softmax \
         probabilities, dark = 0, yellow = 1). The model is causal, so nothing lies above the \
         diagonal.",
    ));
    body.push_str(&html::figure(
        &png,
        "attention maps",
        &format!("Attention over {prompt:?}"),
    ));
    Ok(Section::new("attention", "Attention maps", body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Vec<Record> {
        let train = |step, loss| Record::Train {
            step,
            epoch: 0,
            loss,
            accuracy: Some(0.5),
            lr: 1e-3,
            grad_norm: 1.0,
            samples_per_sec: 1000.0,
        };
        let val = |step, epoch, tl, ta, vl, va| Record::Val {
            step,
            epoch,
            train_loss: tl,
            train_accuracy: ta,
            val_loss: vl,
            val_accuracy: va,
        };
        vec![
            train(5, 2.0),
            val(10, 0, 1.5, 0.6, 1.6, 0.55),
            train(15, 1.0),
            val(20, 1, 0.8, 0.8, 1.2, 0.70),
            val(30, 2, 0.4, 0.95, 1.3, 0.70),
        ]
    }

    #[test]
    fn stats_find_the_best_validation_and_the_gap() {
        let s = RunStats::from_records(&records());
        assert_eq!(s.steps, 30);
        assert_eq!(s.windows.len(), 2);
        assert_eq!(s.validations.len(), 3);
        // Ties keep the first: the model saved as best/ is the earlier one.
        let b = s.best("val_accuracy").unwrap();
        assert_eq!((b.metric, b.step, b.epoch), ("val_accuracy", 20, Some(1)));
        let b = s.best("val_loss").unwrap();
        assert_eq!((b.value, b.step), (1.2, 20));
        let (head, rows) = metrics_table(&s).unwrap();
        assert_eq!(head.len(), 4);
        assert_eq!(rows[0], ["loss", "0.4000", "1.3000", "+0.9000"]);
        assert_eq!(rows[1], ["accuracy", "95.00%", "70.00%", "-25.00 points"]);
        assert!(metrics_table(&RunStats::default()).is_none());
    }

    #[test]
    fn language_models_are_judged_by_loss_and_show_perplexity() {
        let s = RunStats::from_records(&[Record::Eval {
            step: 40,
            train_loss: 1.0,
            val_loss: 2.0,
            val_perplexity: 2f64.exp(),
        }]);
        assert_eq!(s.best("val_accuracy").unwrap().metric, "val_loss");
        let (_, rows) = metrics_table(&s).unwrap();
        assert_eq!(rows[1][0], "perplexity");
        assert_eq!(rows[1][2], format!("{:.3}", 2f64.exp()));
    }

    #[test]
    fn confusion_cells_are_shaded_by_their_share_of_the_row() {
        let e = crate::eval::summarize(vec![vec![3, 1], vec![0, 4]], 0.0, 8);
        let html = confusion_html(&e);
        assert!(html.contains("rgba(31, 119, 180, 0.750)"), "{html}");
        assert!(html.contains("rgba(214, 39, 40, 0.250)"), "{html}");
        assert!(
            html.contains("rgba(31, 119, 180, 1.000); color: #fff"),
            "{html}"
        );
        assert_eq!(html.matches("<tr>").count(), 3);
    }

    #[test]
    fn config_paths_are_found_from_the_run_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("out/runs/r");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::create_dir_all(tmp.path().join("out/data/x")).unwrap();
        assert_eq!(
            resolve_config_path("data/x", &run, "runs"),
            tmp.path().join("out/data/x")
        );
        let nested = tmp.path().join("out/runs/sweep/t000");
        std::fs::create_dir_all(&nested).unwrap();
        assert_eq!(
            resolve_config_path("data/x", &nested, "runs/sweep"),
            tmp.path().join("out/data/x")
        );
        assert_eq!(
            resolve_config_path("nowhere", &run, "runs"),
            PathBuf::from("nowhere")
        );
    }
}
