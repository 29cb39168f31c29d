//! What every image classifier (the MLP, the CNN, ResNet) offers the classifier task, `eval`,
//! `classify` and `serve`: batches of images in, logits out, and the way back.

use crate::backend::cross_entropy_forward;
use crate::data::mnist::{gather_batch, Mnist, Normalization};
use crate::nn::{Forward, GradsReady, Module};
use crate::tensor::argmax;
use crate::{Error, Result};

/// A model from images [N, C, H, W] (flattened rows of C·H·W normalised pixels) to logits
/// [N, classes].
pub trait ImageClassifier: Module + Send {
    /// One input image: [channels, height, width].
    fn input(&self) -> [usize; 3];

    fn classes(&self) -> usize;

    /// x: [pass.rows(), C·H·W] → logits [pass.rows(), classes]. Training passes (dropout,
    /// batch statistics) keep what backward needs.
    fn forward(&mut self, x: &[f32], pass: Forward) -> Result<&[f32]>;

    /// Back-propagates dlogits from the last forward, adding into every parameter's grad.
    fn backward(&mut self, dlogits: &[f32], train: bool) -> Result<()>;

    /// [`ImageClassifier::backward`] that reports gradients as they become final: `on_ready(w,
    /// params)` means every parameter with index ≥ w (`params_mut` order) is final. This
    /// default reports once, at the end, with w = 0.
    fn backward_with(
        &mut self,
        dlogits: &[f32],
        train: bool,
        on_ready: &mut GradsReady<'_>,
    ) -> Result<()> {
        self.backward(dlogits, train)?;
        on_ready(0, &mut self.params_mut());
        Ok(())
    }

    /// Gradient of Σ dlogits·logits with respect to the input of the last (inference) forward;
    /// parameter gradients are left at zero.
    fn input_grad(&mut self, dlogits: &[f32]) -> Result<Vec<f32>>;

    /// C·H·W: the values of one image.
    fn input_len(&self) -> usize {
        self.input().iter().product()
    }

    /// Checks that images of `pixels` values each fit the model; `source` names them.
    fn check_input(&self, pixels: usize, source: &str) -> Result<()> {
        let [c, h, w] = self.input();
        if pixels != c * h * w {
            return Err(Error::Invalid(format!(
                "{source}: the images have {pixels} values each, the model takes {c}×{h}×{w} = {}",
                c * h * w
            )));
        }
        Ok(())
    }
}

/// What a classifier's pass over samples counts.
#[derive(Clone, Debug, PartialEq)]
pub struct Scores {
    /// Cross-entropy summed over the samples.
    pub loss_sum: f64,
    /// confusion[true][predicted]
    pub confusion: Vec<Vec<u64>>,
}

impl Scores {
    pub fn correct(&self) -> u64 {
        (0..self.confusion.len())
            .map(|c| self.confusion[c][c])
            .sum()
    }
}

/// Scores samples `indices` of `data` in batches, in evaluation mode: the summed loss and the
/// confusion counts that validation and evaluation are made from.
pub fn score(
    model: &mut dyn ImageClassifier,
    data: &Mnist,
    norm: &Normalization,
    indices: &[usize],
    batch_size: usize,
) -> Result<Scores> {
    let classes = model.classes();
    let mut confusion = vec![vec![0u64; classes]; classes];
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let mut losses = Vec::new();
    let mut loss_sum = 0f64;
    for chunk in indices.chunks(batch_size.max(1)) {
        gather_batch(data, norm, chunk, &mut x, &mut y);
        let logits = model.forward(&x, Forward::eval(chunk.len(), 1))?;
        losses.resize(chunk.len(), 0.0);
        let mean = cross_entropy_forward(logits, &y, classes, -100, 0.0, &mut losses)?;
        loss_sum += mean as f64 * chunk.len() as f64;
        for (row, &t) in logits.chunks_exact(classes).zip(&y) {
            confusion[t as usize][argmax(row)] += 1;
        }
    }
    Ok(Scores {
        loss_sum,
        confusion,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::backend::cpu::conv::tests::{assert_close, fixtures};

    /// Runs `model` through the case `prefix` of `models.safetensors` (tools/gen_cnn_fixtures.py):
    /// loads its parameters and buffers, takes a training forward and backward, and compares
    /// the logits, every parameter's gradient, the input's gradient, the running statistics
    /// after the step and the evaluation logits after that with PyTorch's, to `tol` relative to
    /// each tensor's largest value (see `assert_close`).
    pub(crate) fn check_training_step(model: &mut dyn ImageClassifier, prefix: &str, tol: f32) {
        let f = fixtures("models.safetensors");
        let t = |name: &str| {
            f.get(&format!("{prefix}.{name}"))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        for (name, p) in model.params_mut() {
            let want = t(&format!("init.{name}"));
            assert_eq!(p.value.shape, want.shape, "{name}");
            p.value.data = want.data.clone();
        }
        model
            .load_buffers(&mut |name, shape| {
                let want = t(&format!("init.{name}"));
                assert_eq!(want.shape, shape, "{name}");
                Ok(want.clone())
            })
            .unwrap();
        let x = &t("x").data;
        let n = t("x").shape[0];
        model.zero_grad();
        let logits = model.forward(x, Forward::train(n, 1, 7)).unwrap().to_vec();
        assert_close("logits", &logits, &t("logits").data, tol);
        let dlogits = &t("dlogits").data;
        model.backward(dlogits, true).unwrap();
        for (name, p) in model.params() {
            assert_close(&name, &p.grad, &t(&format!("grad.{name}")).data, tol);
        }
        for (name, b) in model.buffers() {
            assert_close(&name, &b.data, &t(&format!("after.{name}")).data, 1e-5);
        }
        let dx = model.input_grad(dlogits).unwrap();
        assert_close("dx", &dx, &t("dx").data, tol);
        assert!(model
            .params()
            .iter()
            .all(|(_, p)| p.grad.iter().all(|&g| g == 0.0)));
        let eval = model.forward(x, Forward::eval(n, 1)).unwrap();
        assert_close("eval logits", eval, &t("eval_logits").data, tol);
    }
}
