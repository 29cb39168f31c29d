//! The classifier task (an image classifier — MLP, CNN or ResNet — on MNIST-style IDX files): epochs of shuffled mini-batches, validation after
//! each epoch, `best/` by `train.metric` (accuracy or loss).

use super::checkpoint::TrainState;
use super::dist::Dist;
use super::session::{Metric, Schedule, StepSums, Task, TestScore, Validation};
use crate::backend::{cross_entropy_backward, cross_entropy_forward};
use crate::config::Config;
use crate::data::augment::Augment;
use crate::data::image_folder::load_image_folder;
use crate::data::mnist::{epoch_order, gather_batch, Mnist, MnistFiles, Normalization};
use crate::models::classifier::score;
use crate::models::store::{save_model, ModelInfo, SplitInfo};
use crate::models::{ImageClassifier, ModelKind};
use crate::nn::{Forward, Module};
use crate::rng::{stream, Rng};
use crate::tensor::argmax;
use crate::{Error, Result};
use std::path::Path;

pub(crate) struct ClassifierTask<'a> {
    cfg: &'a Config,
    kind: ModelKind,
    model: Box<dyn ImageClassifier>,
    data: Mnist,
    split: SplitInfo,
    train_idx: Vec<usize>,
    val_idx: Vec<usize>,
    /// `data.test_path`'s files, scored once after training.
    test: Option<Mnist>,
    /// Fitted on the training split at the start; carried by the checkpoints.
    norm: Option<Normalization>,
    /// The current epoch's order of training positions (computed when the epoch starts).
    order: Vec<usize>,
    order_epoch: Option<usize>,
    /// Scratch: a batch of pixels and labels, per-row losses, the logits' gradient.
    x: Vec<f32>,
    y: Vec<i64>,
    row_losses: Vec<f32>,
    dlogits: Vec<f32>,
}

impl<'a> ClassifierTask<'a> {
    pub(crate) fn new(cfg: &'a Config, kind: ModelKind) -> Result<Self> {
        let model = build(&kind, cfg.run.seed)?;
        let data = load_images(cfg, Path::new(&cfg.data.path), model.as_ref())?;
        check_pixels(model.as_ref(), &kind, &data, &cfg.data.path)?;
        let split = SplitInfo {
            seed: cfg.run.seed,
            val_fraction: cfg.data.val_fraction,
            max_train_samples: cfg.data.max_train_samples,
        };
        let (train_idx, val_idx) = split.indices(data.len());
        if train_idx.is_empty() {
            return Err(Error::Config(
                "data.val_fraction leaves no training samples".into(),
            ));
        }
        let test = match cfg.data.test_path.as_str() {
            "" => None,
            path if cfg.data.kind == "image_folder" => {
                Some(load_images(cfg, Path::new(path), model.as_ref())?)
            }
            path => Some(load_test(Path::new(path), &kind, model.as_ref())?),
        };
        Ok(ClassifierTask {
            cfg,
            kind,
            model,
            data,
            split,
            train_idx,
            val_idx,
            test,
            norm: None,
            order: Vec::new(),
            order_epoch: None,
            x: Vec::new(),
            y: Vec::new(),
            row_losses: Vec::new(),
            dlogits: Vec::new(),
        })
    }

    /// Micro-batches per epoch.
    fn micro_batches(&self) -> usize {
        self.train_idx.len().div_ceil(self.cfg.train.batch_size)
    }

    fn norm(&self) -> Normalization {
        self.norm.expect("set by begin()")
    }
}

impl Task for ClassifierTask<'_> {
    fn model(&mut self) -> &mut dyn Module {
        self.model.as_mut()
    }

    fn init(&mut self, state: &mut TrainState) {
        self.model = build(&self.kind, self.cfg.run.seed).expect("built once in new()");
        state.normalization = Some(Normalization::fit(&self.data, &self.train_idx));
    }

    fn begin(&mut self, state: &TrainState) -> Result<()> {
        self.norm =
            Some(state.normalization.ok_or_else(|| {
                Error::Invalid("checkpoint lacks the pixel normalisation".into())
            })?);
        Ok(())
    }

    fn schedule(&self) -> Schedule {
        Schedule::Epochs {
            micro_batches: self.micro_batches(),
        }
    }

    /// Up to `grad_accum` micro-batches of the epoch's order, from `state.next_batch`.
    fn forward_backward(&mut self, state: &mut TrainState, dist: &Dist) -> Result<StepSums> {
        let t = &self.cfg.train;
        if self.order_epoch != Some(state.epoch) {
            self.order = epoch_order(self.train_idx.len(), self.cfg.run.seed, state.epoch);
            self.order_epoch = Some(state.epoch);
        }
        let norm = self.norm();
        let classes = self.model.classes();
        let smoothing = t.label_smoothing as f32;
        let micro: Vec<&[usize]> = self.order.chunks(t.batch_size).collect();
        let group = &micro[state.next_batch..(state.next_batch + t.grad_accum).min(micro.len())];
        let group_samples: usize = group.iter().map(|b| b.len()).sum();
        let (mut loss_sum, mut correct_sum) = (0f64, 0u64);
        for (i, positions) in group.iter().enumerate() {
            // This rank's contiguous share of the micro-batch; every rank draws the seed.
            let dropout_seed = dist.rank_seed(state.dropout_rng.next_u64());
            let positions = &positions[dist.slice(positions.len())];
            if positions.is_empty() {
                continue;
            }
            let idx: Vec<usize> = positions.iter().map(|&p| self.train_idx[p]).collect();
            gather_batch(&self.data, &norm, &idx, &mut self.x, &mut self.y);
            let augment = Augment {
                padding: self.cfg.data.augment_padding,
                flip: self.cfg.data.augment_flip,
            };
            let (seed, input) = (self.cfg.run.seed, self.model.input());
            augment.apply(
                &mut self.x,
                input,
                norm.apply(0),
                seed,
                state.epoch,
                positions,
            );
            let n = idx.len();
            let logits = self
                .model
                .forward(&self.x, Forward::train(n, 1, dropout_seed))?;
            self.row_losses.resize(n, 0.0);
            let loss = cross_entropy_forward(
                logits,
                &self.y,
                classes,
                -100,
                smoothing,
                &mut self.row_losses,
            )?;
            let correct = logits
                .chunks_exact(classes)
                .zip(&self.y)
                .filter(|(r, &t)| argmax(r) == t as usize)
                .count() as u64;
            // Each micro-batch's mean loss is weighted by its share of the step's samples
            // (with several ranks: this rank's part of it, by its share).
            let weight = n as f32 / group_samples as f32;
            self.dlogits.resize(logits.len(), 0.0);
            cross_entropy_backward(
                logits,
                &self.y,
                classes,
                -100,
                smoothing,
                weight,
                &mut self.dlogits,
            )?;
            match dist.grad_hook(i + 1 == group.len()) {
                Some(h) => self
                    .model
                    .backward_with(&self.dlogits, true, &mut |w, p| h.ready(w, p))?,
                None => self.model.backward(&self.dlogits, true)?,
            }
            loss_sum += loss as f64 * weight as f64;
            correct_sum += correct;
        }
        Ok(StepSums {
            loss: loss_sum,
            correct: Some(correct_sum),
            items: group_samples as u64,
        })
    }

    fn validate(&mut self, dist: &Dist) -> Result<Validation> {
        let norm = self.norm();
        let (loss, accuracy) =
            validate(self.model.as_mut(), &self.data, &norm, &self.val_idx, dist)?;
        Ok(Validation {
            loss,
            accuracy: Some(accuracy),
        })
    }

    fn unit(&self) -> &'static str {
        "samples"
    }

    fn metric(&self) -> Metric {
        match self.cfg.train.metric.as_str() {
            "val_loss" => Metric::lower_loss(),
            name => Metric {
                name: name.to_string(),
                higher_is_better: true,
            },
        }
    }

    fn test(&mut self, dist: &Dist) -> Result<Option<TestScore>> {
        let Some(test) = &self.test else {
            return Ok(None);
        };
        let norm = self.norm();
        let all: Vec<usize> = (0..test.len()).collect();
        let (loss, accuracy) = validate(self.model.as_mut(), test, &norm, &all, dist)?;
        Ok(Some(TestScore {
            loss,
            accuracy,
            samples: test.len(),
            files: test.files.to_vec(),
        }))
    }

    fn save(&self, dir: &Path) -> Result<()> {
        let info = ModelInfo {
            model: self.kind.clone(),
            normalization: self.norm,
            split: Some(self.split),
        };
        save_model(dir, self.model.as_ref(), &info, None)
    }
}

/// `data.kind`'s images at `path`: IDX files ("mnist") or class folders ("image_folder"),
/// the latter resized and cropped to the model's input.
fn load_images(cfg: &Config, path: &Path, model: &dyn ImageClassifier) -> Result<Mnist> {
    if cfg.data.kind == "image_folder" {
        let [c, h, w] = model.input();
        return load_image_folder(path, c, [h, w], model.classes());
    }
    Mnist::load(path, model.classes())
}

/// The model `kind` describes, initialised from the run's seed.
fn build(kind: &ModelKind, seed: u64) -> Result<Box<dyn ImageClassifier>> {
    kind.build_classifier(&mut Rng::for_stream(seed, stream::INIT))?
        .ok_or_else(|| {
            Error::Config(format!(
                "model.arch = \"{}\" is not an image classifier",
                kind.arch()
            ))
        })
}

/// The images of `data` (from `path`) must have the values one input of `model` takes.
fn check_pixels(
    model: &dyn ImageClassifier,
    kind: &ModelKind,
    data: &Mnist,
    path: &str,
) -> Result<()> {
    if data.pixels != model.input_len() {
        let [c, h, w] = model.input();
        return Err(Error::Config(format!(
            "{path}: the images have {} pixels, but the {} model takes {c}×{h}×{w} = {} values (see its [{}] section)",
            data.pixels,
            kind.arch(),
            model.input_len(),
            kind.arch()
        )));
    }
    Ok(())
}

/// `data.test_path`: its `t10k-*` files, or else its `train-*` files, all of them.
fn load_test(dir: &Path, kind: &ModelKind, model: &dyn ImageClassifier) -> Result<Mnist> {
    let which = if !MnistFiles::Test.present_in(dir) && MnistFiles::Train.present_in(dir) {
        MnistFiles::Train
    } else {
        MnistFiles::Test
    };
    let test = Mnist::load_files(dir, which, model.classes()).map_err(|e| {
        Error::Config(format!(
            "data.test_path: {e} (it takes a directory of t10k-* or train-* files)"
        ))
    })?;
    let path = format!("data.test_path {}", dir.display());
    check_pixels(model, kind, &test, &path)?;
    Ok(test)
}

/// Validation loss and accuracy; with several ranks each scores every N-th batch of 256 and
/// the sums are added.
fn validate(
    model: &mut dyn ImageClassifier,
    data: &Mnist,
    norm: &Normalization,
    val_idx: &[usize],
    dist: &Dist,
) -> Result<(f64, f64)> {
    const BATCH: usize = 256;
    let mine: Vec<usize> = val_idx
        .chunks(BATCH)
        .skip(dist.rank())
        .step_by(dist.world_size())
        .flatten()
        .copied()
        .collect();
    let scores = score(model, data, norm, &mine, BATCH)?;
    let mut sums = [scores.loss_sum, scores.correct() as f64];
    dist.sum_f64(&mut sums)?;
    let n = val_idx.len();
    Ok(if n > 0 {
        (sums[0] / n as f64, sums[1] / n as f64)
    } else {
        (0.0, 0.0)
    })
}
