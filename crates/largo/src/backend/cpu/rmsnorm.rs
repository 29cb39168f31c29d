//! RMS normalisation over the last dimension (Llama's `RMSNorm`): y = x / √(mean(x²) + ε) ⊙ w.

use super::rows_per_task;
use rayon::prelude::*;

/// x, y: [rows, w.len()]. Each row's mean of squares is summed in f32 in order, as Hugging
/// Face's `LlamaRMSNorm` does in f32.
pub fn rms_norm_forward(x: &[f32], weight: &[f32], eps: f32, y: &mut [f32]) {
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
}
