//! Layer normalisation over the last dimension, with affine weight and bias.

use super::rows_per_task;
use rayon::prelude::*;

/// x, y: [rows, c]; saves per-row mean and 1/σ for backward.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    eps: f32,
    c: usize,
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
) {
    let rows = rows_per_task(c);
    y.par_chunks_mut(c * rows)
        .zip(x.par_chunks(c * rows))
        .zip(mean.par_chunks_mut(rows).zip(rstd.par_chunks_mut(rows)))
        .for_each(|((y, x), (mean, rstd))| {
            for (((y, x), m), r) in y
                .chunks_exact_mut(c)
                .zip(x.chunks_exact(c))
                .zip(mean.iter_mut())
                .zip(rstd.iter_mut())
            {
                let mu = x.iter().sum::<f32>() / c as f32;
                // Biased variance, as PyTorch's layer_norm.
                let var = x.iter().map(|v| (v - mu) * (v - mu)).sum::<f32>() / c as f32;
                let s = 1.0 / (var + eps).sqrt();
                for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(weight).zip(bias) {
                    *y = (x - mu) * s * w + b;
                }
                *m = mu;
                *r = s;
            }
        });
}

/// dx = (1/σ)·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) with ĝ = dy·w; dweight += Σ dy·x̂, dbias += Σ dy.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    x: &[f32],
    weight: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dy: &[f32],
    c: usize,
    dx: &mut [f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
) {
    let rows = rows_per_task(c);
    dx.par_chunks_mut(c * rows)
        .zip(x.par_chunks(c * rows).zip(dy.par_chunks(c * rows)))
        .zip(mean.par_chunks(rows).zip(rstd.par_chunks(rows)))
        .for_each(|((dx, (x, dy)), (mean, rstd))| {
            for ((((dx, x), dy), &mu), &s) in dx
                .chunks_exact_mut(c)
                .zip(x.chunks_exact(c))
                .zip(dy.chunks_exact(c))
                .zip(mean)
                .zip(rstd)
            {
                let (mut g_mean, mut gx_mean) = (0f32, 0f32);
                for ((&x, &dy), &w) in x.iter().zip(dy).zip(weight) {
                    let g = dy * w;
                    g_mean += g;
                    gx_mean += g * (x - mu) * s;
                }
                g_mean /= c as f32;
                gx_mean /= c as f32;
                for (((dx, &x), &dy), &w) in dx.iter_mut().zip(x).zip(dy).zip(weight) {
                    let xhat = (x - mu) * s;
                    *dx = s * (dy * w - g_mean - xhat * gx_mean);
                }
            }
        });
    // Parameter gradients: column sums over rows (deterministic for any thread count).
    let rows = mean.len().min(x.len() / c);
    super::add_column_sums(dweight, c, rows, |r, cols, out| {
        let (mu, s) = (mean[r], rstd[r]);
        let base = r * c;
        for (j, dw) in cols.zip(out.iter_mut()) {
            *dw += dy[base + j] * (x[base + j] - mu) * s;
        }
    });
    super::add_column_sums(dbias, c, rows, |r, cols, out| {
        let base = r * c;
        for (j, db) in cols.zip(out.iter_mut()) {
            *db += dy[base + j];
        }
    });
}
