//! Pixel attributions of an image classifier: which pixels push the chosen class's logit up
//! (red) or down (blue).
//!
//! - Gradient (Simonyan et al.): ∂f/∂x at the image.
//! - Integrated gradients (Sundararajan et al.): (x − b) · ∫₀¹ ∂f/∂x(b + α(x − b)) dα, by the
//!   midpoint rule. Completeness — Σ attributions = f(x) − f(b) — is the check that the
//!   integral was resolved finely enough; its relative error is reported.
//!
//! f is the target class's logit (before the softmax), as Captum attributes a model's raw output.

use super::diverging_rgb;
use crate::data::mnist::Normalization;
use crate::draw;
use crate::models::ImageClassifier;
use crate::nn::Forward;
use crate::tensor::argmax;
use crate::{Error, Result};
use plotters::prelude::*;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "method")]
pub enum Method {
    Gradient,
    IntegratedGradients { steps: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Baseline {
    /// Every pixel 0 (MNIST's background).
    Black,
    /// The image under a Gaussian blur (σ = side / 7): removes the strokes' detail, keeps
    /// their mass.
    Blur,
}

#[derive(Clone, Debug, Serialize)]
pub struct Attribution {
    pub method: Method,
    pub target: usize,
    pub predicted: usize,
    pub probabilities: Vec<f32>,
    /// One value per input pixel.
    pub attributions: Vec<f32>,
    /// f(x): the target's logit at the image.
    pub output: f64,
    /// Integrated gradients only: f(b), and |Σ attributions − (f(x) − f(b))| / |f(x) − f(b)|.
    pub baseline_output: Option<f64>,
    pub completeness_error: Option<f64>,
}

/// The baseline image for integrated gradients, in the model's normalised pixel space.
pub fn baseline_input(kind: Baseline, x: &[f32], side: usize, norm: &Normalization) -> Vec<f32> {
    match kind {
        Baseline::Black => vec![norm.apply(0); x.len()],
        Baseline::Blur => gaussian_blur(x, side, side as f32 / 7.0),
    }
}

/// Separable Gaussian blur with edges clamped. Blurring commutes with the affine pixel
/// normalisation (the kernel sums to 1), so it can run on normalised values.
fn gaussian_blur(x: &[f32], side: usize, sigma: f32) -> Vec<f32> {
    let radius = (3.0 * sigma).ceil() as isize;
    let kernel: Vec<f32> = (-radius..=radius)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = kernel.iter().sum();
    let at = |i: isize| i.clamp(0, side as isize - 1) as usize;
    let pass = |src: &[f32], horizontal: bool| -> Vec<f32> {
        let mut out = vec![0.0; src.len()];
        for r in 0..side {
            for c in 0..side {
                out[r * side + c] = kernel
                    .iter()
                    .enumerate()
                    .map(|(k, w)| {
                        let d = k as isize - radius;
                        let (rr, cc) = if horizontal {
                            (r, at(c as isize + d))
                        } else {
                            (at(r as isize + d), c)
                        };
                        w * src[rr * side + cc]
                    })
                    .sum::<f32>()
                    / total;
            }
        }
        out
    };
    pass(&pass(x, true), false)
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

/// Attributes the logit of `target` (default: the predicted class) to the pixels of `x`
/// ([input], normalised). `baseline` is used by integrated gradients only.
pub fn attribute(
    model: &mut dyn ImageClassifier,
    x: &[f32],
    target: Option<usize>,
    method: Method,
    baseline: &[f32],
) -> Result<Attribution> {
    let (n_in, classes) = (model.input_len(), model.classes());
    if x.len() != n_in || baseline.len() != n_in {
        return Err(Error::Invalid(format!(
            "the image has {} values; the model takes {n_in}",
            x.len()
        )));
    }
    if let Some(k) = target.filter(|&k| k >= classes) {
        return Err(Error::Invalid(format!(
            "--class {k} is out of range: the model has {classes} classes (0–{})",
            classes - 1
        )));
    }
    let logits = model.forward(x, Forward::eval(1, 1))?.to_vec();
    let predicted = argmax(&logits);
    let target = target.unwrap_or(predicted);
    let probabilities = softmax(&logits);
    let output = logits[target] as f64;
    let one_hot = |rows: usize, weight: f32| {
        let mut d = vec![0.0; rows * classes];
        d.iter_mut()
            .skip(target)
            .step_by(classes)
            .for_each(|v| *v = weight);
        d
    };
    let (attributions, baseline_output, completeness_error) = match method {
        Method::Gradient => (model.input_grad(&one_hot(1, 1.0))?, None, None),
        Method::IntegratedGradients { steps } => {
            if steps == 0 || steps > 100_000 {
                return Err(Error::Invalid(format!(
                    "--steps {steps}: expected 1 to 100000"
                )));
            }
            let f_base = model.forward(baseline, Forward::eval(1, 1))?[target] as f64;
            // All points of the path in one batch; each row's gradient weighted 1/steps sums
            // to the midpoint-rule mean of the gradient along the path.
            let mut path = Vec::with_capacity(steps * n_in);
            for k in 0..steps {
                let alpha = (k as f32 + 0.5) / steps as f32;
                path.extend(
                    x.iter()
                        .zip(baseline)
                        .map(|(&xi, &bi)| bi + alpha * (xi - bi)),
                );
            }
            model.forward(&path, Forward::eval(steps, 1))?;
            let grads = model.input_grad(&one_hot(steps, 1.0 / steps as f32))?;
            let mut mean_grad = vec![0f32; n_in];
            for row in grads.chunks_exact(n_in) {
                mean_grad.iter_mut().zip(row).for_each(|(m, g)| *m += g);
            }
            let attr: Vec<f32> = mean_grad
                .iter()
                .zip(x.iter().zip(baseline))
                .map(|(g, (xi, bi))| g * (xi - bi))
                .collect();
            let total: f64 = attr.iter().map(|&a| a as f64).sum();
            let delta = output - f_base;
            let err = (total - delta).abs() / delta.abs().max(1e-12);
            (attr, Some(f_base), Some(err))
        }
    };
    Ok(Attribution {
        method,
        target,
        predicted,
        probabilities,
        attributions,
        output,
        baseline_output,
        completeness_error,
    })
}

/// Three panels, `scale`× the image: the digit, the attribution (red +, blue −, scaled to the
/// largest |value|), and the attribution over the digit; a caption above.
pub fn render_png(
    x: &[f32],
    side: usize,
    norm: &Normalization,
    a: &Attribution,
    caption: &str,
) -> Result<Vec<u8>> {
    let scale = 10u32;
    let panel = side as u32 * scale;
    let (gap, top) = (12u32, 30u32);
    let (w, h) = (3 * panel + 4 * gap, panel + top + gap);
    let max = a
        .attributions
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    draw::png((w, h), |root| {
        let draw_err = |e: DrawingAreaErrorKind<_>| Error::Invalid(format!("drawing: {e}"));
        root.draw(&Text::new(
            caption.to_string(),
            (gap as i32, 8),
            ("sans-serif", 14).into_font().color(&BLACK),
        ))
        .map_err(draw_err)?;
        for (i, &v) in x.iter().enumerate() {
            let (r, c) = ((i / side) as u32, (i % side) as u32);
            let ink = ((v * norm.std + norm.mean).clamp(0.0, 1.0) * 255.0).round() as u8;
            let (ar, ag, ab) = diverging_rgb(a.attributions[i] / max);
            // Overlay: the attribution's colour over the digit, as opaque as it is strong.
            let alpha = (a.attributions[i].abs() / max).sqrt();
            let blend = |col: u8| (col as f32 * alpha + ink as f32 * (1.0 - alpha)).round() as u8;
            let colours = [
                RGBColor(ink, ink, ink),
                RGBColor(ar, ag, ab),
                RGBColor(blend(ar), blend(ag), blend(ab)),
            ];
            for (p, colour) in colours.into_iter().enumerate() {
                let x0 = (gap + p as u32 * (panel + gap) + c * scale) as i32;
                let y0 = (top + r * scale) as i32;
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + scale as i32, y0 + scale as i32)],
                    colour.filled(),
                ))
                .map_err(draw_err)?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Mlp, MlpConfig};
    use crate::rng::Rng;

    fn model() -> Mlp {
        let mut m = Mlp::new(MlpConfig {
            input: 16,
            hidden: vec![12, 8],
            classes: 3,
            ..MlpConfig::default()
        })
        .unwrap();
        m.init(&mut Rng::new(3));
        m
    }

    fn image(seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..16).map(|_| r.normal()).collect()
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let mut m = model();
        let x = image(1);
        let a = attribute(&mut m, &x, Some(2), Method::Gradient, &x).unwrap();
        for i in [0, 5, 15] {
            let mut hi = x.clone();
            hi[i] += 1e-2;
            let mut lo = x.clone();
            lo[i] -= 1e-2;
            let fd = (m.forward(&hi, Forward::eval(1, 1))[2]
                - m.forward(&lo, Forward::eval(1, 1))[2])
                / 2e-2;
            assert!(
                (fd - a.attributions[i]).abs() < 1e-3,
                "pixel {i}: {fd} vs {}",
                a.attributions[i]
            );
        }
    }

    #[test]
    fn integrated_gradients_are_complete() {
        let mut m = model();
        let norm = Normalization {
            mean: 0.0,
            std: 1.0,
        };
        for seed in 0..5 {
            let x = image(10 + seed);
            let b = baseline_input(Baseline::Black, &x, 4, &norm);
            let a = attribute(
                &mut m,
                &x,
                None,
                Method::IntegratedGradients { steps: 200 },
                &b,
            )
            .unwrap();
            let sum: f64 = a.attributions.iter().map(|&v| v as f64).sum();
            let delta = a.output - a.baseline_output.unwrap();
            assert!(
                (sum - delta).abs() <= 0.01 * delta.abs(),
                "Σ {sum} vs Δ {delta}"
            );
            assert!(a.completeness_error.unwrap() <= 0.01);
        }
    }

    #[test]
    fn blur_keeps_mass_and_smooths() {
        let mut x = vec![0.0f32; 49];
        x[24] = 49.0;
        let b = gaussian_blur(&x, 7, 1.0);
        let total: f32 = b.iter().sum();
        assert!((total - 49.0).abs() < 1e-3, "{total}");
        assert!(b[24] < 49.0 && b[24] > b[25] && b[25] > 0.0);
    }

    #[test]
    fn a_class_out_of_range_is_named() {
        let mut m = model();
        let x = image(1);
        let e = attribute(&mut m, &x, Some(3), Method::Gradient, &x)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--class 3") && e.contains("3 classes"), "{e}");
        let e = attribute(
            &mut m,
            &x,
            None,
            Method::IntegratedGradients { steps: 0 },
            &x,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--steps 0"), "{e}");
    }
}
