//! RMS normalisation over the last dimension (Llama's `RMSNorm`): y = x / √(mean(x²) + ε) ⊙ w,
//! forward and backward (the input's gradient; the weight is frozen when fine-tuning).

use super::rows_per_task;
use rayon::prelude::*;

/// x, y: [rows, w.len()]. Each row's mean of squares is summed in f32 in order, as Hugging
/// Face's `LlamaRMSNorm` does in f32.
pub fn rms_norm_forward(x: &[f32], weight: &[f32], eps: f32, y: &mut [f32]) {
    let _span = crate::backend::profile::span("rms norm forward");
    let c = weight.len();
    let rows = rows_per_task(c);
    y.par_chunks_mut(c * rows)
        .zip(x.par_chunks(c * rows))
        .for_each(|(yb, xb)| {
            for (yr, xr) in yb.chunks_exact_mut(c).zip(xb.chunks_exact(c)) {
                let mean_square = xr.iter().map(|v| v * v).sum::<f32>() / c as f32;
                let rstd = 1.0 / (mean_square + eps).sqrt();
                for ((y, &x), &w) in yr.iter_mut().zip(xr).zip(weight) {
                    *y = w * (x * rstd);
                }
            }
        });
}

/// Backward of [`rms_norm_forward`] for the input, added into `dx` (the residual stream's
/// gradient). x, dy, dx: [rows, C]; with r = 1/√(mean(x²) + ε) recomputed per row,
/// dx += r·(w ⊙ dy) − r³/C · x · Σ(x ⊙ w ⊙ dy).
pub fn rms_norm_backward(x: &[f32], weight: &[f32], eps: f32, dy: &[f32], dx: &mut [f32]) {
    let _span = crate::backend::profile::span("rms norm backward");
    let c = weight.len();
    let rows = rows_per_task(c);
    dx.par_chunks_mut(c * rows)
        .zip(x.par_chunks(c * rows).zip(dy.par_chunks(c * rows)))
        .for_each(|(dxb, (xb, dyb))| {
            for ((dxr, xr), dyr) in dxb
                .chunks_exact_mut(c)
                .zip(xb.chunks_exact(c))
                .zip(dyb.chunks_exact(c))
            {
                let mean_square = xr.iter().map(|v| v * v).sum::<f32>() / c as f32;
                let rstd = 1.0 / (mean_square + eps).sqrt();
                let dot: f32 = xr
                    .iter()
                    .zip(dyr)
                    .zip(weight)
                    .map(|((x, dy), w)| x * w * dy)
                    .sum();
                let k = rstd * rstd * rstd * dot / c as f32;
                for (((dx, &x), &dy), &w) in dxr.iter_mut().zip(xr).zip(dyr).zip(weight) {
                    *dx += rstd * w * dy - k * x;
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_have_unit_mean_square_before_the_weight() {
        let x = [3.0, 4.0, 0.0, 0.0, 1.0, -1.0, 1.0, -1.0];
        let w = [1.0, 2.0, 1.0, 1.0];
        let mut y = [0.0; 8];
        rms_norm_forward(&x, &w, 0.0, &mut y);
        // Row 0: mean square 25/4, rstd 2/5.
        assert_eq!(&y[..4], &[1.2, 3.2, 0.0, 0.0]);
        assert_eq!(&y[4..], &[1.0, -2.0, 1.0, -1.0]);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let (rows, c) = (3, 5);
        let x: Vec<f32> = (0..rows * c)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let w: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 * 0.25).collect();
        let dy: Vec<f32> = (0..rows * c)
            .map(|i| ((i * 5 % 13) as f32 - 6.0) / 4.0)
            .collect();
        let eps = 1e-5;
        // L = Σ dy ⊙ y, so dL/dx is the backward of dy; the residual's 1.0 checks the "+=".
        let loss = |x: &[f32]| -> f64 {
            let mut y = vec![0f32; x.len()];
            rms_norm_forward(x, &w, eps, &mut y);
            y.iter().zip(&dy).map(|(a, b)| (a * b) as f64).sum()
        };
        let mut dx = vec![1f32; rows * c];
        rms_norm_backward(&x, &w, eps, &dy, &mut dx);
        for i in 0..rows * c {
            let h = 1e-2;
            let (mut up, mut down) = (x.clone(), x.clone());
            up[i] += h;
            down[i] -= h;
            let numeric = (loss(&up) - loss(&down)) / (2.0 * h as f64);
            assert!(
                (dx[i] as f64 - 1.0 - numeric).abs() < 2e-3,
                "dx[{i}] = {} − 1, numeric {numeric}",
                dx[i]
            );
        }
    }
}
