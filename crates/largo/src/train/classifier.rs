//! The classifier loop (the MLP on MNIST): epochs of shuffled mini-batches, validation after
//! each epoch, `best/` by the validation metric, early stopping, checkpoints that resume exactly.

use super::checkpoint::{self, TrainState};
use super::dist::Dist;
use super::eval::evaluate;
use super::metrics::Record;
use super::optim::Optimizer;
use super::session::{
    non_finite, optimizer_step, progress_bar, say, RunLog, TrainOptions, TrainOutcome,
};
use crate::backend::{cross_entropy_backward, cross_entropy_forward};
use crate::config::Config;
use crate::data::mnist::{epoch_order, gather_batch, Mnist, Normalization};
use crate::models::store::{save_model, ModelInfo, SplitInfo};
use crate::models::Mlp;
use crate::rng::{stream, Rng};
use crate::tensor::argmax;
use crate::{Error, Result};
use std::path::Path;
use std::time::Instant;

pub(crate) fn train_classifier(
    cfg: &Config,
    opts: &TrainOptions,
    run: &Path,
    dist: &Dist,
) -> Result<TrainOutcome> {
    let run = run.to_path_buf();
    let lead = dist.is_lead();

    let data = Mnist::load(Path::new(&cfg.data.path), cfg.mlp.classes)?;
    if data.pixels != cfg.mlp.input {
        return Err(Error::Config(format!(
            "mlp.input = {} but the images in {} have {} pixels",
            cfg.mlp.input, cfg.data.path, data.pixels
        )));
    }
    let seed = cfg.run.seed;
    let split = SplitInfo {
        seed,
        val_fraction: cfg.data.val_fraction,
        max_train_samples: cfg.data.max_train_samples,
    };
    let (train_idx, val_idx) = split.indices(data.len());
    if train_idx.is_empty() {
        return Err(Error::Config(
            "data.val_fraction leaves no training samples".into(),
        ));
    }
    let mut model = Mlp::new(cfg.mlp.clone())?;
    let mut full_opt = Optimizer::new(cfg.optim.clone());

    let mut state = TrainState::start(seed, None, None);
    if opts.resume {
        dist.lead_then_share(|| {
            let (dir, s) = checkpoint::latest(&run)?;
            checkpoint::restore(&dir, &s, &mut model, &mut full_opt)?;
            state = s;
            Ok(())
        })?;
    } else {
        model.init(&mut Rng::for_stream(seed, stream::INIT));
        state.normalization = Some(Normalization::fit(&data, &train_idx));
    }
    dist.sync_start(&mut model, &mut full_opt, &mut state)?;
    let mut opt = dist.optimizer(full_opt, &model)?;
    let mut log = RunLog::open(cfg, &run, lead, opts.resume.then_some(state.step))?;
    let norm = state
        .normalization
        .ok_or_else(|| Error::Invalid("checkpoint lacks the pixel normalisation".into()))?;
    let info = ModelInfo {
        arch: "mlp".into(),
        mlp: Some(cfg.mlp.clone()),
        normalization: Some(norm),
        split: Some(split),
        gpt: None,
        seed_transformer: None,
    };

    if lead {
        eprintln!(
            "{} parameters; {}",
            crate::nn::Module::num_params(&model),
            crate::backend::describe_matmul_precision()
        );
    }
    let t = &cfg.train;
    let micro_per_epoch = train_idx.len().div_ceil(t.batch_size);
    let steps_per_epoch = micro_per_epoch.div_ceil(t.grad_accum) as u64;
    let total_steps = steps_per_epoch * t.epochs as u64;
    let classes = cfg.mlp.classes;

    let bar = progress_bar(opts.progress && lead, total_steps, state.step);
    let tell = |line: String| {
        if lead {
            say(&bar, line)
        }
    };
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let mut dlogits = Vec::new();
    let mut row_losses = Vec::new();
    // Sums over the current logging window.
    let (mut win_loss, mut win_correct, mut win_samples, mut win_norm, mut win_steps) =
        (0f64, 0u64, 0u64, 0f64, 0u64);
    let mut win_start = Instant::now();
    let session_start = Instant::now();
    let out_of_time = || dist.out_of_time(session_start, t.max_minutes);
    let mut last_val = (f64::NAN, f64::NAN);
    let mut stopped_early = false;
    let mut epochs_run = 0;

    'epochs: while state.epoch < t.epochs && !state.finished {
        let order = epoch_order(train_idx.len(), seed, state.epoch);
        let micro: Vec<&[usize]> = order.chunks(t.batch_size).collect();
        while state.next_batch < micro.len() {
            // One optimiser step over up to `grad_accum` micro-batches.
            let group_end = (state.next_batch + t.grad_accum).min(micro.len());
            let group = &micro[state.next_batch..group_end];
            let group_samples: usize = group.iter().map(|b| b.len()).sum();
            let mut step_loss = 0f64;
            let mut step_correct = 0u64;
            for (i, positions) in group.iter().enumerate() {
                // This rank's contiguous share of the micro-batch; every rank draws the seed.
                let dropout_seed = dist.rank_seed(state.dropout_rng.next_u64());
                let positions = &positions[dist.slice(positions.len())];
                if positions.is_empty() {
                    continue;
                }
                let idx: Vec<usize> = positions.iter().map(|&p| train_idx[p]).collect();
                gather_batch(&data, &norm, &idx, &mut x, &mut y);
                let n = idx.len();
                let logits = model.forward(&x, n, true, dropout_seed);
                row_losses.resize(n, 0.0);
                let smoothing = t.label_smoothing as f32;
                let loss =
                    cross_entropy_forward(logits, &y, classes, -100, smoothing, &mut row_losses)?;
                let correct = logits
                    .chunks_exact(classes)
                    .zip(&y)
                    .filter(|(r, &t)| argmax(r) == t as usize)
                    .count() as u64;
                // Each micro-batch's mean loss is weighted by its share of the step's samples
                // (with several ranks: this rank's part of it, by its share).
                let weight = n as f32 / group_samples as f32;
                dlogits.resize(logits.len(), 0.0);
                cross_entropy_backward(logits, &y, classes, -100, smoothing, weight, &mut dlogits)?;
                // The last micro-batch's backward starts the gradient all-reduce as it goes.
                match dist.grad_hook(i + 1 == group.len()) {
                    Some(h) => model.backward_with(&dlogits, true, &mut |w, p| h.ready(w, p)),
                    None => model.backward(&dlogits, true),
                }
                step_loss += loss as f64 * weight as f64;
                step_correct += correct;
            }
            dist.grads_done(&mut model)?;
            if dist.world_size() > 1 {
                let mut sums = [step_loss, step_correct as f64];
                dist.sum_f64(&mut sums)?;
                (step_loss, step_correct) = (sums[0], sums[1] as u64);
            }
            win_correct += step_correct;
            state.epoch_correct += step_correct;
            if !step_loss.is_finite() {
                return Err(non_finite(&run, "loss", step_loss, &state));
            }
            let (norm_before, lr) =
                optimizer_step(cfg, &mut model, &mut opt, dist, &state, total_steps, &run)?;
            state.step += 1;
            dist.after_step(state.step);
            state.next_batch = group_end;
            state.epoch_loss_sum += step_loss * group_samples as f64;
            state.epoch_samples += group_samples as u64;
            win_loss += step_loss;
            win_norm += norm_before;
            win_samples += group_samples as u64;
            win_steps += 1;

            if state.step.is_multiple_of(t.log_every.max(1)) || state.next_batch == micro.len() {
                let secs = win_start.elapsed().as_secs_f64().max(1e-9);
                let r = Record::Train {
                    step: state.step,
                    epoch: state.epoch,
                    loss: win_loss / win_steps as f64,
                    accuracy: Some(win_correct as f64 / win_samples as f64),
                    lr,
                    grad_norm: win_norm / win_steps as f64,
                    samples_per_sec: win_samples as f64 / secs,
                };
                log.write(&r)?;
                if let Record::Train {
                    loss,
                    accuracy,
                    samples_per_sec,
                    ..
                } = r
                {
                    bar.set_message(format!(
                        "epoch {} loss {loss:.4} acc {:.1}% {samples_per_sec:.0} samples/s",
                        state.epoch + 1,
                        100.0 * accuracy.unwrap_or(0.0)
                    ));
                }
                (win_loss, win_correct, win_samples, win_norm, win_steps) = (0.0, 0, 0, 0.0, 0);
                win_start = Instant::now();
            }
            bar.set_position(state.step);

            let at_max = (t.max_steps > 0 && state.step >= t.max_steps)
                || state.step == t.stop_at
                || out_of_time()?;
            if state.next_batch < micro.len()
                && (at_max
                    || (t.checkpoint_every > 0 && state.step.is_multiple_of(t.checkpoint_every)))
            {
                dist.save_checkpoint(&run, &state, &model, &opt, t.keep_checkpoints)?;
            }
            if at_max && state.next_batch < micro.len() {
                // Mid-epoch: validate the model as it stands so the session ends with a metric,
                // without a `val` record (the epoch is not over; `--resume` finishes it).
                last_val = validate(&mut model, &data, &norm, &val_idx, dist)?;
                break 'epochs;
            }
        }

        // End of epoch: validate, keep the best, maybe stop, checkpoint.
        let val = validate(&mut model, &data, &norm, &val_idx, dist)?;
        let train_loss = state.epoch_loss_sum / state.epoch_samples.max(1) as f64;
        let train_acc = state.epoch_correct as f64 / state.epoch_samples.max(1) as f64;
        log.write(&Record::Val {
            step: state.step,
            epoch: state.epoch,
            train_loss,
            train_accuracy: train_acc,
            val_loss: val.0,
            val_accuracy: val.1,
        })?;
        tell(format!(
            "epoch {:>3}  step {:>6}  train loss {train_loss:.4} acc {:.2}%  val loss {:.4} acc {:.2}%",
            state.epoch + 1,
            state.step,
            100.0 * train_acc,
            val.0,
            100.0 * val.1
        ));
        last_val = val;
        let (metric, higher_better) = match t.metric.as_str() {
            "val_loss" => (val.0, false),
            _ => (val.1, true),
        };
        let improved = match state.best_metric {
            None => true,
            Some(b) if higher_better => metric > b + t.min_delta,
            Some(b) => metric < b - t.min_delta,
        };
        if improved {
            state.best_metric = Some(metric);
            state.best_epoch = Some(state.epoch);
            state.epochs_without_improvement = 0;
            if lead {
                save_model(&run.join("best"), &model, &info, None)?;
            }
        } else {
            state.epochs_without_improvement += 1;
        }
        epochs_run += 1;
        state.epoch += 1;
        state.next_batch = 0;
        state.epoch_loss_sum = 0.0;
        state.epoch_correct = 0;
        state.epoch_samples = 0;
        if t.patience > 0 && state.epochs_without_improvement >= t.patience {
            tell(format!(
                "early stopping: no improvement of {} in {} epochs",
                t.metric, t.patience
            ));
            stopped_early = true;
            state.finished = true;
        }
        dist.save_checkpoint(&run, &state, &model, &opt, t.keep_checkpoints)?;
        if lead {
            super::plot::plot_run(&run)?;
        }
        if (t.max_steps > 0 && state.step >= t.max_steps)
            || state.step == t.stop_at
            || out_of_time()?
        {
            break;
        }
    }
    bar.finish_and_clear();
    if lead {
        save_model(&run.join("model"), &model, &info, None)?;
    }
    dist.finish(&run)?;
    Ok(TrainOutcome {
        run_dir: run,
        steps: state.step,
        epochs_run,
        best_metric: state.best_metric,
        best_epoch: state.best_epoch,
        last_val_loss: last_val.0,
        last_val_accuracy: last_val.1,
        stopped_early,
    })
}

/// Validation loss and accuracy; with several ranks each evaluates every N-th batch of 256
/// and the sums are added.
fn validate(
    model: &mut Mlp,
    data: &Mnist,
    norm: &Normalization,
    val_idx: &[usize],
    dist: &Dist,
) -> Result<(f64, f64)> {
    const BATCH: usize = 256;
    if dist.world_size() == 1 {
        return evaluate(model, data, norm, val_idx, BATCH).map(|v| (v.loss, v.accuracy));
    }
    let mine: Vec<usize> = val_idx
        .chunks(BATCH)
        .skip(dist.rank())
        .step_by(dist.world_size())
        .flatten()
        .copied()
        .collect();
    let mut sums = [0.0, 0.0];
    if !mine.is_empty() {
        let v = evaluate(model, data, norm, &mine, BATCH)?;
        let correct: u64 = (0..v.confusion.len()).map(|c| v.confusion[c][c]).sum();
        sums = [v.loss * mine.len() as f64, correct as f64];
    }
    dist.sum_f64(&mut sums)?;
    let n = val_idx.len();
    Ok(if n > 0 {
        (sums[0] / n as f64, sums[1] / n as f64)
    } else {
        (0.0, 0.0)
    })
}
