//! Layer normalisation over the last dimension, with affine weight and bias.

use super::math::lanes_sum;
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
    let _span = crate::backend::profile::span("layernorm forward");
    let rows = rows_per_task(c);
    y.par_chunks_mut(c * rows)
        .zip(x.par_chunks(c * rows))
        .zip(mean.par_chunks_mut(rows).zip(rstd.par_chunks_mut(rows)))
        .for_each(|((y, x), (mean, rstd))| {
            #[cfg(target_arch = "x86_64")]
            if super::isa::avx512() {
                // SAFETY: isa::avx512 checked the CPU for AVX-512F, the only feature enabled.
                return unsafe { forward_rows_avx512(x, weight, bias, eps, c, y, mean, rstd) };
            }
            forward_rows(x, weight, bias, eps, c, y, mean, rstd)
        });
}

/// The rows of one task; reductions in 16 lanes (`math::lanes_sum`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_rows(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    eps: f32,
    c: usize,
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
) {
    for (((y, x), m), r) in y
        .chunks_exact_mut(c)
        .zip(x.chunks_exact(c))
        .zip(mean.iter_mut())
        .zip(rstd.iter_mut())
    {
        let mu = lanes_sum(x, |x| x) / c as f32;
        // Biased variance, as PyTorch's layer_norm.
        let var = lanes_sum(x, |v| (v - mu) * (v - mu)) / c as f32;
        let s = 1.0 / (var + eps).sqrt();
        for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(weight).zip(bias) {
            *y = (x - mu) * s * w + b;
        }
        *m = mu;
        *r = s;
    }
}

/// Σ f(a, b), accumulated in 16 lanes.
#[inline(always)]
fn lanes_sum2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&a, &b)| f(a, b))
        .sum();
    for (ca, cb) in ca.zip(cb) {
        for ((acc, &a), &b) in acc.iter_mut().zip(ca).zip(cb) {
            *acc += f(a, b);
        }
    }
    tail + acc.iter().sum::<f32>()
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
    let _span = crate::backend::profile::span("layernorm backward");
    // One pass per block of rows: dx, then the block's partial dweight | dbias while its rows
    // are in cache; the partial sums are added in block order (blocks are a fixed number of
    // rows, so the result does not depend on the thread count).
    let rows = rows_per_task(c);
    let blocks = mean.len().min(x.len() / c).div_ceil(rows);
    let mut partial = vec![0f32; blocks * 2 * c];
    dx.par_chunks_mut(c * rows)
        .zip(x.par_chunks(c * rows).zip(dy.par_chunks(c * rows)))
        .zip(mean.par_chunks(rows).zip(rstd.par_chunks(rows)))
        .zip(partial.par_chunks_mut(2 * c))
        .for_each(|(((dx, (x, dy)), (mean, rstd)), partial)| {
            #[cfg(target_arch = "x86_64")]
            if super::isa::avx512() {
                // SAFETY: isa::avx512 checked the CPU for AVX-512F, the only feature enabled.
                return unsafe { backward_rows_avx512(x, weight, dy, mean, rstd, c, dx, partial) };
            }
            backward_rows(x, weight, dy, mean, rstd, c, dx);
            param_grad_rows(x, dy, mean, rstd, c, partial);
        });
    for block in partial.chunks(2 * c) {
        let (dw, db) = block.split_at(c);
        dweight.iter_mut().zip(dw).for_each(|(a, b)| *a += b);
        dbias.iter_mut().zip(db).for_each(|(a, b)| *a += b);
    }
}

/// partial[..c] = Σ_rows dy·x̂ (dweight), partial[c..] = Σ_rows dy (dbias) over a block of rows.
#[inline(always)]
fn param_grad_rows(
    x: &[f32],
    dy: &[f32],
    mean: &[f32],
    rstd: &[f32],
    c: usize,
    partial: &mut [f32],
) {
    let (dw, db) = partial.split_at_mut(c);
    for ((x, dy), (&mu, &s)) in x.chunks(c).zip(dy.chunks(c)).zip(mean.iter().zip(rstd)) {
        for (((dw, db), &x), &dy) in dw.iter_mut().zip(db.iter_mut()).zip(x).zip(dy) {
            *dw += dy * (x - mu) * s;
            *db += dy;
        }
    }
}

#[inline(always)]
fn backward_rows(
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    mean: &[f32],
    rstd: &[f32],
    c: usize,
    dx: &mut [f32],
) {
    for ((((dx, x), dy), &mu), &s) in dx
        .chunks_exact_mut(c)
        .zip(x.chunks_exact(c))
        .zip(dy.chunks_exact(c))
        .zip(mean)
        .zip(rstd)
    {
        // ĝ = dy·w; the two means dx needs.
        let g_mean = lanes_sum2(dy, weight, |dy, w| dy * w) / c as f32;
        let mut acc = [0.0f32; 16];
        let mut gx_sum = 0.0;
        let (cd, cw, cx) = (
            dy.chunks_exact(16),
            weight.chunks_exact(16),
            x.chunks_exact(16),
        );
        for ((&dy, &w), &x) in cd
            .remainder()
            .iter()
            .zip(cw.remainder())
            .zip(cx.remainder())
        {
            gx_sum += dy * w * (x - mu) * s;
        }
        for ((cd, cw), cx) in cd.zip(cw).zip(cx) {
            for (((a, &dy), &w), &x) in acc.iter_mut().zip(cd).zip(cw).zip(cx) {
                *a += dy * w * (x - mu) * s;
            }
        }
        let gx_mean = (gx_sum + acc.iter().sum::<f32>()) / c as f32;
        for (((dx, &x), &dy), &w) in dx.iter_mut().zip(x).zip(dy).zip(weight) {
            let xhat = (x - mu) * s;
            *dx = s * (dy * w - g_mean - xhat * gx_mean);
        }
    }
}

/// The row loops compiled a second time with 16-lane vectors, chosen at run time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
fn forward_rows_avx512(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    eps: f32,
    c: usize,
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
) {
    forward_rows(x, weight, bias, eps, c, y, mean, rstd)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
fn backward_rows_avx512(
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    mean: &[f32],
    rstd: &[f32],
    c: usize,
    dx: &mut [f32],
    partial: &mut [f32],
) {
    backward_rows(x, weight, dy, mean, rstd, c, dx);
    param_grad_rows(x, dy, mean, rstd, c, partial);
}
