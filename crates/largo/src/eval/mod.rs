//! Evaluating a trained model. A classifier: loss, accuracy, per-class precision/recall/F1
//! and the confusion matrix over a set of samples, from the same pass training validates with
//! (`models::classifier::score`). A language model: loss and perplexity over fixed windows
//! (`train::lm::evaluate_lm`, training's validation).

pub mod perplexity;

use crate::data::mnist::{Mnist, Normalization};
use crate::models::ImageClassifier;
use crate::Result;
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct ClassMetrics {
    pub class: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Evaluation {
    pub samples: usize,
    pub loss: f64,
    pub accuracy: f64,
    pub per_class: Vec<ClassMetrics>,
    /// confusion[true][predicted]
    pub confusion: Vec<Vec<u64>>,
}

/// Runs the model over `indices` of `data` in batches, without dropout.
pub fn evaluate(
    model: &mut dyn ImageClassifier,
    data: &Mnist,
    norm: &Normalization,
    indices: &[usize],
    batch_size: usize,
) -> Result<Evaluation> {
    let scores = crate::models::classifier::score(model, data, norm, indices, batch_size)?;
    Ok(summarize(scores.confusion, scores.loss_sum, indices.len()))
}

pub fn summarize(confusion: Vec<Vec<u64>>, loss_sum: f64, samples: usize) -> Evaluation {
    let classes = confusion.len();
    let correct: u64 = (0..classes).map(|c| confusion[c][c]).sum();
    let per_class = (0..classes)
        .map(|c| {
            let tp = confusion[c][c] as f64;
            let support: u64 = confusion[c].iter().sum();
            let predicted: u64 = confusion.iter().map(|r| r[c]).sum();
            let precision = if predicted > 0 {
                tp / predicted as f64
            } else {
                0.0
            };
            let recall = if support > 0 {
                tp / support as f64
            } else {
                0.0
            };
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            ClassMetrics {
                class: c,
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect();
    Evaluation {
        samples,
        loss: if samples > 0 {
            loss_sum / samples as f64
        } else {
            0.0
        },
        accuracy: if samples > 0 {
            correct as f64 / samples as f64
        } else {
            0.0
        },
        per_class,
        confusion,
    }
}

impl Evaluation {
    /// A human-readable report: headline, per-class table, confusion matrix.
    pub fn render(&self) -> String {
        let mut s = format!(
            "samples {}  loss {:.4}  accuracy {:.2}%\n\nclass  precision  recall     f1  support\n",
            self.samples,
            self.loss,
            100.0 * self.accuracy
        );
        for c in &self.per_class {
            s += &format!(
                "{:>5}  {:>9.4}  {:>6.4}  {:>5.4}  {:>7}\n",
                c.class, c.precision, c.recall, c.f1, c.support
            );
        }
        s += "\nconfusion matrix (rows: true class, columns: predicted)\n      ";
        for c in 0..self.confusion.len() {
            s += &format!("{c:>5}");
        }
        s.push('\n');
        for (t, row) in self.confusion.iter().enumerate() {
            s += &format!("{t:>5} ");
            for v in row {
                s += &format!("{v:>5}");
            }
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_from_a_known_confusion_matrix() {
        // true 0: 3 right, 1 predicted as 1; true 1: 2 right.
        let e = summarize(vec![vec![3, 1], vec![0, 2]], 0.0, 6);
        assert!((e.accuracy - 5.0 / 6.0).abs() < 1e-12);
        assert!((e.per_class[0].precision - 1.0).abs() < 1e-12);
        assert!((e.per_class[0].recall - 0.75).abs() < 1e-12);
        assert!((e.per_class[1].precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((e.per_class[1].f1 - 0.8).abs() < 1e-12);
        assert!(e.render().contains("accuracy 83.33%"));
    }
}
