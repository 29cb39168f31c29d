//! The language-model task: random windows of the training tokens; every `eval_every` steps
//! validation loss and perplexity over fixed windows of the validation tokens.

use super::checkpoint::TrainState;
use super::dist::Dist;
use super::session::{Metric, Schedule, StepSums, Task, Validation};
use crate::backend::{cross_entropy_backward, cross_entropy_forward};
use crate::config::Config;
use crate::data::text::{prepare_text, random_windows, CleanOptions, TokenData, TokenizerSpec};
use crate::models::store::{save_model, ModelInfo};
use crate::models::{LmSpec, ModelKind, TransformerLm};
use crate::nn::{Forward, Module};
use crate::rng::{stream, Rng};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// The model's spec with the vocabulary taken from the data when the config leaves it at 0.
pub fn lm_spec(cfg: &Config, vocab: usize) -> Result<(LmSpec, ModelInfo)> {
    let set = |v: &mut usize| -> Result<()> {
        if *v == 0 {
            *v = vocab;
        } else if *v != vocab {
            return Err(Error::Config(format!(
                "the model's vocabulary is {v} but the tokenizer has {vocab} tokens"
            )));
        }
        Ok(())
    };
    let mut model = cfg.model();
    match &mut model {
        ModelKind::Gpt(g) => set(&mut g.vocab_size)?,
        ModelKind::EncoderLm(s) => set(&mut s.ntoken)?,
        ModelKind::Mlp(_) | ModelKind::Cnn(_) | ModelKind::ResNet(_) | ModelKind::Llama(_) => {
            return Err(Error::Config(format!(
                "model.arch = \"{}\" is not a language model",
                cfg.model.arch
            )))
        }
    }
    let spec = model.lm_spec().expect("a language model");
    spec.validate()?;
    let info = ModelInfo {
        model,
        normalization: None,
        split: None,
    };
    Ok((spec, info))
}

/// A prepared directory as is; raw text is prepared into `<run>/data` first.
pub fn load_or_prepare(cfg: &Config, run: &Path) -> Result<TokenData> {
    let path = PathBuf::from(&cfg.data.path);
    if path.join("meta.json").is_file() {
        return TokenData::load(&path);
    }
    let prepared = run.join("data");
    if !prepared.join("meta.json").is_file() {
        let spec: TokenizerSpec = cfg.data.tokenizer.parse()?;
        let clean = CleanOptions::default();
        let s = prepare_text(
            &[path],
            &spec,
            cfg.data.val_fraction,
            &clean,
            cfg.run.seed,
            &prepared,
            crate::data::text::Unknown::Error,
        )?;
        let m = &s.meta;
        eprintln!(
            "prepared {} → {}: {} tokenizer, vocabulary {}, {} training tokens, {} validation tokens ({})",
            cfg.data.path,
            prepared.display(),
            m.tokenizer,
            m.vocab_size,
            m.train_tokens,
            m.val_tokens,
            m.val_documents.join(", ")
        );
    }
    TokenData::load(&prepared)
}

/// Mean loss over `batches` fixed batches of windows spread evenly over `tokens`.
pub fn evaluate_lm(
    model: &mut TransformerLm,
    tokens: &[u32],
    batch: usize,
    t: usize,
    batches: usize,
) -> Result<f64> {
    let (total, n) = evaluate_lm_part(model, tokens, batch, t, batches, 0, 1)?;
    Ok(total / n as f64)
}

/// [`evaluate_lm`] over the ranks: each takes every `world`-th batch; the sums are added.
fn evaluate_lm_dist(
    model: &mut TransformerLm,
    tokens: &[u32],
    batch: usize,
    t: usize,
    batches: usize,
    dist: &Dist,
) -> Result<f64> {
    if dist.world_size() == 1 {
        return evaluate_lm(model, tokens, batch, t, batches);
    }
    let (total, n) = evaluate_lm_part(
        model,
        tokens,
        batch,
        t,
        batches,
        dist.rank(),
        dist.world_size(),
    )?;
    let mut sum = [total];
    dist.sum_f64(&mut sum)?;
    Ok(sum[0] / n as f64)
}

/// The summed loss (mean per batch × its windows) of batches `rank`, `rank + world`, … and the
/// number of windows over all batches.
fn evaluate_lm_part(
    model: &mut TransformerLm,
    tokens: &[u32],
    batch: usize,
    t: usize,
    batches: usize,
    rank: usize,
    world: usize,
) -> Result<(f64, usize)> {
    let v = model.spec.vocab_size;
    let last_start = tokens.len() - t - 1;
    let n = (batches * batch).max(1);
    let starts: Vec<usize> = (0..n)
        .map(|i| if n == 1 { 0 } else { i * last_start / (n - 1) })
        .collect();
    let (mut x, mut y, mut rows) = (Vec::new(), Vec::new(), Vec::new());
    let mut total = 0f64;
    for chunk in starts.chunks(batch).skip(rank).step_by(world) {
        x.clear();
        y.clear();
        for &i in chunk {
            x.extend_from_slice(&tokens[i..i + t]);
            y.extend(tokens[i + 1..i + t + 1].iter().map(|&v| v as i64));
        }
        let logits = model.forward(&x, Forward::eval(chunk.len(), t))?;
        rows.resize(chunk.len() * t, 0.0);
        total +=
            cross_entropy_forward(logits, &y, v, -100, 0.0, &mut rows)? as f64 * chunk.len() as f64;
    }
    Ok((total, n))
}

/// Rank 0 prepares the data (raw text into `<run>/data`); the others then load what it wrote.
fn load_data(cfg: &Config, run: &Path, dist: &Dist) -> Result<TokenData> {
    let mut data = None;
    dist.lead_then_share(|| {
        data = Some(load_or_prepare(cfg, run)?);
        Ok(())
    })?;
    if let Some(d) = data {
        return Ok(d);
    }
    let given = PathBuf::from(&cfg.data.path);
    let dir = if given.join("meta.json").is_file() {
        given
    } else {
        run.join("data")
    };
    TokenData::load(&dir).map_err(|e| {
        Error::Invalid(format!(
            "rank {}: cannot load the data rank 0 prepared ({e}); with several machines, prepare it once with `largo prepare text` at the same path on every machine, or keep runs/ on a shared filesystem",
            dist.rank()
        ))
    })
}

pub(crate) struct LmTask<'a> {
    cfg: &'a Config,
    model: TransformerLm,
    info: ModelInfo,
    data: TokenData,
    /// The tokenizer saved next to the model (lead rank only).
    tokenizer_json: String,
    /// Scratch: input and target windows, per-row losses, the logits' gradient.
    x: Vec<u32>,
    y: Vec<i64>,
    row_losses: Vec<f32>,
    dlogits: Vec<f32>,
}

impl<'a> LmTask<'a> {
    pub(crate) fn new(cfg: &'a Config, run: &Path, dist: &Dist) -> Result<Self> {
        let data = load_data(cfg, run, dist)?;
        let (spec, info) = lm_spec(cfg, data.meta.vocab_size)?;
        let (t, b) = (spec.block_size, cfg.train.batch_size);
        for (name, tokens) in [("training", &data.train), ("validation", &data.val)] {
            if tokens.len() < t + 2 {
                return Err(Error::Invalid(format!(
                    "the {name} split of {} has {} tokens, fewer than block_size + 2 = {}",
                    data.dir.display(),
                    tokens.len(),
                    t + 2
                )));
            }
        }
        if b < dist.world_size() {
            return Err(Error::Config(format!(
                "train.batch_size = {b} is the global batch: it must be at least the number of ranks ({})",
                dist.world_size()
            )));
        }
        let tokenizer_json = if dist.is_lead() {
            std::fs::read_to_string(data.dir.join("tokenizer.json"))
                .map_err(|e| Error::io(data.dir.join("tokenizer.json"), e))?
        } else {
            String::new()
        };
        Ok(LmTask {
            cfg,
            model: TransformerLm::new(spec)?,
            info,
            data,
            tokenizer_json,
            x: Vec::new(),
            y: Vec::new(),
            row_losses: Vec::new(),
            dlogits: Vec::new(),
        })
    }
}

impl Task for LmTask<'_> {
    fn model(&mut self) -> &mut dyn Module {
        &mut self.model
    }

    fn init(&mut self, state: &mut TrainState) {
        let seed = self.cfg.run.seed;
        self.model.init(&mut Rng::for_stream(seed, stream::INIT));
        state.data_rng = Some(Rng::for_stream(seed, stream::SHUFFLE));
    }

    fn schedule(&self) -> Schedule {
        Schedule::Steps
    }

    /// `grad_accum` micro-batches of `batch_size` random windows; this rank keeps its share.
    fn forward_backward(&mut self, state: &mut TrainState, dist: &Dist) -> Result<StepSums> {
        let tr = &self.cfg.train;
        let (b, t, v) = (
            tr.batch_size,
            self.model.spec.block_size,
            self.model.spec.vocab_size,
        );
        let smoothing = tr.label_smoothing as f32;
        let mine = dist.slice(b);
        let bm = mine.len();
        let mut sums = StepSums {
            loss: 0.0,
            correct: None,
            items: (tr.grad_accum * b * t) as u64,
        };
        for micro in 0..tr.grad_accum {
            // Every rank draws the whole global batch of windows and keeps its share of them.
            let rng = state
                .data_rng
                .get_or_insert_with(|| Rng::for_stream(self.cfg.run.seed, stream::SHUFFLE));
            random_windows(&self.data.train, b, t, rng, &mut self.x, &mut self.y);
            let drop_seed = dist.rank_seed(state.dropout_rng.next_u64());
            if bm == 0 {
                continue;
            }
            let (xs, ys) = (
                &self.x[mine.start * t..mine.end * t],
                &self.y[mine.start * t..mine.end * t],
            );
            let logits = self.model.forward(xs, Forward::train(bm, t, drop_seed))?;
            self.row_losses.resize(bm * t, 0.0);
            let loss = cross_entropy_forward(logits, ys, v, -100, smoothing, &mut self.row_losses)?;
            self.dlogits.resize(logits.len(), 0.0);
            // This rank's mean is weighted by its share of the global batch.
            let scale = if bm == b {
                1.0 / tr.grad_accum as f32
            } else {
                bm as f32 / (b * tr.grad_accum) as f32
            };
            cross_entropy_backward(logits, ys, v, -100, smoothing, scale, &mut self.dlogits)?;
            match dist.grad_hook(micro + 1 == tr.grad_accum) {
                Some(h) => self
                    .model
                    .backward_with(&self.dlogits, &mut |w, p| h.ready(w, p)),
                None => self.model.backward(&self.dlogits),
            }
            if bm == b {
                sums.loss += loss as f64 / tr.grad_accum as f64;
            } else {
                sums.loss += loss as f64 * (bm as f64 / b as f64) / tr.grad_accum as f64;
            }
        }
        Ok(sums)
    }

    fn validate(&mut self, dist: &Dist) -> Result<Validation> {
        let tr = &self.cfg.train;
        let t = self.model.spec.block_size;
        let loss = evaluate_lm_dist(
            &mut self.model,
            &self.data.val,
            tr.batch_size,
            t,
            tr.eval_batches.max(1),
            dist,
        )?;
        Ok(Validation {
            loss,
            accuracy: None,
        })
    }

    fn unit(&self) -> &'static str {
        "tokens"
    }

    /// Language models keep the lowest validation loss whatever `train.metric` says.
    fn metric(&self) -> Metric {
        Metric::lower_loss()
    }

    fn save(&self, dir: &Path) -> Result<()> {
        save_model(dir, &self.model, &self.info, Some(&self.tokenizer_json))
    }
}
