//! Softmax cross-entropy fused with its gradient (PyTorch's `F.cross_entropy` semantics:
//! mean over targets that are not `ignore_index`, optional label smoothing).

use super::rows_per_task;
use crate::{bail, Result};
use rayon::prelude::*;

/// Checks targets once so the kernels below can index without failing.
pub fn check_targets(targets: &[i64], classes: usize, ignore_index: i64) -> Result<usize> {
    let mut valid = 0;
    for (i, &t) in targets.iter().enumerate() {
        if t == ignore_index {
            continue;
        }
        if t < 0 || t as usize >= classes {
            bail!("target {t} at position {i} is outside 0..{classes}");
        }
        valid += 1;
    }
    Ok(valid)
}

/// Loss of one row: −Σ q·log p with q = (1−ε)·onehot + ε/C, computed via log-sum-exp.
fn row_loss(logits: &[f32], target: usize, smoothing: f32) -> f32 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let lse = logits.iter().map(|&z| (z - max).exp()).sum::<f32>().ln() + max;
    let nll = lse - logits[target];
    if smoothing == 0.0 {
        return nll;
    }
    let mean_nll = lse - logits.iter().sum::<f32>() / logits.len() as f32;
    (1.0 - smoothing) * nll + smoothing * mean_nll
}

/// logits: [rows, classes]. Writes each row's loss (0 for ignored rows) and returns the mean over
/// valid rows (0 when every row is ignored, where PyTorch would return NaN).
pub fn cross_entropy_forward(
    logits: &[f32],
    targets: &[i64],
    classes: usize,
    ignore_index: i64,
    smoothing: f32,
    row_losses: &mut [f32],
) -> Result<f32> {
    let _span = crate::backend::profile::span("cross entropy forward");
    let valid = check_targets(targets, classes, ignore_index)?;
    row_losses
        .par_iter_mut()
        .zip(logits.par_chunks_exact(classes))
        .zip(targets.par_iter())
        .for_each(|((l, z), &t)| {
            *l = if t == ignore_index {
                0.0
            } else {
                row_loss(z, t as usize, smoothing)
            };
        });
    let total: f64 = row_losses.iter().map(|&l| l as f64).sum();
    Ok(if valid == 0 {
        0.0
    } else {
        (total / valid as f64) as f32
    })
}

/// dlogits = scale·(softmax − q)/valid for each valid row, 0 for ignored rows.
/// `scale` multiplies the gradient of the mean loss (1/accumulation steps, for instance).
pub fn cross_entropy_backward(
    logits: &[f32],
    targets: &[i64],
    classes: usize,
    ignore_index: i64,
    smoothing: f32,
    scale: f32,
    dlogits: &mut [f32],
) -> Result<()> {
    let _span = crate::backend::profile::span("cross entropy backward");
    let valid = check_targets(targets, classes, ignore_index)?;
    let g = if valid == 0 {
        0.0
    } else {
        scale / valid as f32
    };
    let rows = rows_per_task(classes);
    dlogits
        .par_chunks_mut(classes * rows)
        .zip(logits.par_chunks(classes * rows))
        .zip(targets.par_chunks(rows))
        .for_each(|((d, z), t)| {
            for ((d, z), &t) in d
                .chunks_exact_mut(classes)
                .zip(z.chunks_exact(classes))
                .zip(t)
            {
                if t == ignore_index {
                    d.fill(0.0);
                    continue;
                }
                let max = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let mut sum = 0.0;
                for (d, &z) in d.iter_mut().zip(z) {
                    *d = (z - max).exp();
                    sum += *d;
                }
                let off = smoothing / classes as f32;
                for d in d.iter_mut() {
                    *d = g * (*d / sum - off);
                }
                d[t as usize] -= g * (1.0 - smoothing);
            }
        });
    Ok(())
}
