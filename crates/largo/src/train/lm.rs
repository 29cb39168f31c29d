//! The language-model loop: random windows of the training tokens, AdamW with warmup and cosine,
//! clipping and accumulation; every `eval_every` steps validation loss and perplexity, `best/`,
//! a checkpoint, early stopping and the curves.

use super::checkpoint::{self, TrainState};
use super::dist::Dist;
use super::metrics::Record;
use super::optim::Optimizer;
use super::session::{
    non_finite, optimizer_step, progress_bar, say, RunLog, TrainOptions, TrainOutcome,
};
use crate::backend::{cross_entropy_backward, cross_entropy_forward};
use crate::config::Config;
use crate::data::text::{prepare_text, random_windows, CleanOptions, TokenData, TokenizerSpec};
use crate::models::store::{save_model, ModelInfo};
use crate::models::{LmSpec, TransformerLm};
use crate::rng::{stream, Rng};
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The model's spec with the vocabulary taken from the data when the config leaves it at 0.
pub fn lm_spec(cfg: &Config, vocab: usize) -> Result<(LmSpec, ModelInfo)> {
    let mut info = ModelInfo {
        arch: cfg.model.arch.clone(),
        mlp: None,
        normalization: None,
        split: None,
        gpt: None,
        seed_transformer: None,
    };
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
    let spec = if cfg.model.arch == "gpt" {
        let mut g = cfg.gpt.clone();
        set(&mut g.vocab_size)?;
        let spec = g.spec();
        info.gpt = Some(g);
        spec
    } else {
        let mut s = cfg.seed_transformer.clone();
        set(&mut s.ntoken)?;
        let spec = s.spec();
        info.seed_transformer = Some(s);
        spec
    };
    spec.validate()?;
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
        let logits = model.forward(&x, crate::nn::Forward::eval(chunk.len(), t))?;
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

pub(crate) fn train_lm(
    cfg: &Config,
    opts: &TrainOptions,
    run: &Path,
    dist: &Dist,
) -> Result<TrainOutcome> {
    let lead = dist.is_lead();
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
    let tokenizer_json = if lead {
        std::fs::read_to_string(data.dir.join("tokenizer.json"))
            .map_err(|e| Error::io(data.dir.join("tokenizer.json"), e))?
    } else {
        String::new()
    };
    let mut model = TransformerLm::new(spec)?;
    let mut full_opt = Optimizer::new(cfg.optim.clone());
    let seed = cfg.run.seed;
    let mut state = TrainState::start(seed, Some(Rng::for_stream(seed, stream::SHUFFLE)), None);
    if opts.resume {
        dist.lead_then_share(|| {
            let (dir, s) = checkpoint::latest(run)?;
            checkpoint::restore(&dir, &s, &mut model, &mut full_opt)?;
            state = s;
            Ok(())
        })?;
    } else {
        model.init(&mut Rng::for_stream(seed, stream::INIT));
    }
    dist.sync_start(&mut model, &mut full_opt, &mut state)?;
    let mut opt = dist.optimizer(full_opt, &model)?;
    if lead {
        eprintln!(
            "{} parameters; {}",
            crate::nn::Module::num_params(&model),
            crate::backend::describe_matmul_precision()
        );
    }
    let mut log = RunLog::open(cfg, run, lead, opts.resume.then_some(state.step))?;
    let tr = &cfg.train;
    let total = tr.max_steps;
    let v = model.spec.vocab_size;
    let bar = progress_bar(opts.progress && lead, total, state.step);
    let tell = |line: String| {
        if lead {
            say(&bar, line)
        }
    };
    let (mut x, mut y, mut rows, mut dlogits) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut win_loss, mut win_norm, mut win_steps) = (0f64, 0f64, 0u64);
    let mut win_start = Instant::now();
    let session_start = Instant::now();
    let (mut last_val, mut stopped_early) = (f64::NAN, false);

    while state.step < total && !state.finished {
        let mut step_loss = 0f64;
        // Every rank draws the whole global batch of windows and keeps its share of them.
        let mine = dist.slice(b);
        let bm = mine.len();
        for micro in 0..tr.grad_accum {
            let rng = state
                .data_rng
                .get_or_insert_with(|| Rng::for_stream(seed, stream::SHUFFLE));
            random_windows(&data.train, b, t, rng, &mut x, &mut y);
            let drop_seed = dist.rank_seed(state.dropout_rng.next_u64());
            if bm == 0 {
                continue;
            }
            let (xs, ys) = (
                &x[mine.start * t..mine.end * t],
                &y[mine.start * t..mine.end * t],
            );
            let logits = model.forward(xs, crate::nn::Forward::train(bm, t, drop_seed))?;
            rows.resize(bm * t, 0.0);
            let smoothing = tr.label_smoothing as f32;
            let loss = cross_entropy_forward(logits, ys, v, -100, smoothing, &mut rows)?;
            dlogits.resize(logits.len(), 0.0);
            // This rank's mean is weighted by its share of the global batch.
            let scale = if bm == b {
                1.0 / tr.grad_accum as f32
            } else {
                bm as f32 / (b * tr.grad_accum) as f32
            };
            cross_entropy_backward(logits, ys, v, -100, smoothing, scale, &mut dlogits)?;
            // The last micro-batch's backward starts the gradient all-reduce as it goes.
            match dist.grad_hook(micro + 1 == tr.grad_accum) {
                Some(h) => model.backward_with(&dlogits, &mut |w, p| h.ready(w, p)),
                None => model.backward(&dlogits),
            }
            if bm == b {
                step_loss += loss as f64 / tr.grad_accum as f64;
            } else {
                step_loss += loss as f64 * (bm as f64 / b as f64) / tr.grad_accum as f64;
            }
        }
        dist.grads_done(&mut model)?;
        let mut sum = [step_loss];
        dist.sum_f64(&mut sum)?;
        step_loss = sum[0];
        if !step_loss.is_finite() {
            return Err(non_finite(run, "loss", step_loss, &state));
        }
        let (norm, lr) = optimizer_step(cfg, &mut model, &mut opt, dist, &state, total, run)?;
        state.step += 1;
        dist.after_step(state.step);
        win_loss += step_loss;
        win_norm += norm;
        win_steps += 1;
        if state.step.is_multiple_of(tr.log_every.max(1)) {
            let secs = win_start.elapsed().as_secs_f64().max(1e-9);
            let tokens_per_sec = (win_steps as usize * tr.grad_accum * b * t) as f64 / secs;
            let loss = win_loss / win_steps as f64;
            log.write(&Record::Train {
                step: state.step,
                epoch: 0,
                loss,
                accuracy: None,
                lr,
                grad_norm: win_norm / win_steps as f64,
                samples_per_sec: tokens_per_sec,
            })?;
            bar.set_message(format!("loss {loss:.4}  {tokens_per_sec:.0} tokens/s"));
            state.last_train_loss = Some(loss);
            (win_loss, win_norm, win_steps) = (0.0, 0.0, 0);
            win_start = Instant::now();
        }
        bar.set_position(state.step);
        let timed_out = dist.out_of_time(session_start, tr.max_minutes)?;
        let eval_now = state.step == total
            || timed_out
            || (tr.eval_every > 0 && state.step.is_multiple_of(tr.eval_every));
        if eval_now {
            let val = evaluate_lm_dist(&mut model, &data.val, b, t, tr.eval_batches.max(1), dist)?;
            let train_loss = state.last_train_loss.unwrap_or(step_loss);
            log.write(&Record::Eval {
                step: state.step,
                train_loss,
                val_loss: val,
                val_perplexity: val.exp(),
            })?;
            tell(format!(
                "step {:>6}  train loss {train_loss:.4}  val loss {val:.4}  perplexity {:.2}",
                state.step,
                val.exp()
            ));
            last_val = val;
            if state
                .best_metric
                .is_none_or(|best| val < best - tr.min_delta)
            {
                state.best_metric = Some(val);
                state.best_epoch = Some(state.step as usize);
                state.epochs_without_improvement = 0;
                if lead {
                    save_model(&run.join("best"), &model, &info, Some(&tokenizer_json))?;
                }
            } else {
                state.epochs_without_improvement += 1;
                if tr.patience > 0 && state.epochs_without_improvement >= tr.patience {
                    tell(format!(
                        "early stopping: no improvement of val_loss in {} evaluations",
                        tr.patience
                    ));
                    stopped_early = true;
                    state.finished = true;
                }
            }
            dist.save_checkpoint(run, &state, &model, &opt, tr.keep_checkpoints)?;
            if lead {
                super::plot::plot_run(run)?;
            }
        } else if (tr.checkpoint_every > 0 && state.step.is_multiple_of(tr.checkpoint_every))
            || state.step == tr.stop_at
        {
            dist.save_checkpoint(run, &state, &model, &opt, tr.keep_checkpoints)?;
        }
        if state.step == tr.stop_at {
            tell(format!(
                "stopped at step {} (train.stop_at); continue with --resume",
                state.step
            ));
            break;
        }
        if timed_out {
            tell(format!(
                "stopped at step {} after train.max_minutes = {}; continue with --resume",
                state.step, tr.max_minutes
            ));
            break;
        }
    }
    bar.finish_and_clear();
    if lead {
        save_model(&run.join("model"), &model, &info, Some(&tokenizer_json))?;
    }
    dist.finish(run)?;
    Ok(TrainOutcome {
        run_dir: run.to_path_buf(),
        steps: state.step,
        epochs_run: 0,
        best_metric: state.best_metric,
        best_epoch: state.best_epoch,
        last_val_loss: last_val,
        last_val_accuracy: f64::NAN,
        stopped_early,
    })
}
