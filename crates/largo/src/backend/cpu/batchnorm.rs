//! Batch normalisation over NCHW activations (PyTorch's `batch_norm` on 4-d input): each
//! channel normalised with its statistics over N·H·W, then scaled and shifted per channel.

use super::conv::{check_len, Nchw};
use super::math::lanes_sum;
use crate::{bail, Result};
use rayon::prelude::*;

/// The planes [H·W] of channel `c` in every image of x [N, C, H, W].
fn channel_planes(x: &[f32], s: Nchw, c: usize) -> impl Iterator<Item = &[f32]> {
    x.chunks_exact(s.plane()).skip(c).step_by(s.c)
}

/// Σ dy·(x − μ) in 16 lanes (as `math::dot`).
fn centred_dot(dy: &[f32], x: &[f32], mu: f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let (cd, cx) = (dy.chunks_exact(16), x.chunks_exact(16));
    let tail: f32 = cd
        .remainder()
        .iter()
        .zip(cx.remainder())
        .map(|(&d, &x)| d * (x - mu))
        .sum();
    for (cd, cx) in cd.zip(cx) {
        for ((a, &d), &x) in acc.iter_mut().zip(cd).zip(cx) {
            *a += d * (x - mu);
        }
    }
    tail + acc.iter().sum::<f32>()
}

fn check(op: &str, s: Nchw, x: usize, per_channel: &[(&str, usize)]) -> Result<()> {
    check_len(op, "the input", x, s.len(), s)?;
    for &(what, len) in per_channel {
        check_len(
            op,
            what,
            len,
            s.c,
            format_args!("one per channel, [{}]", s.c),
        )?;
    }
    Ok(())
}

/// y = (x − μ)·rstd·w + b per channel, x, y [N, C, H, W]; mean and rstd [C].
#[allow(clippy::too_many_arguments)]
fn normalize(
    s: Nchw,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    mean: &[f32],
    rstd: &[f32],
    y: &mut [f32],
    relu: bool,
) {
    y.par_chunks_mut(s.plane())
        .zip(x.par_chunks(s.plane()))
        .enumerate()
        .for_each(|(i, (y, x))| {
            let c = i % s.c;
            let scale = rstd[c] * weight[c];
            let shift = bias[c] - mean[c] * scale;
            let pairs = y.iter_mut().zip(x);
            if relu {
                pairs.for_each(|(y, &x)| *y = (x * scale + shift).max(0.0));
            } else {
                pairs.for_each(|(y, &x)| *y = x * scale + shift);
            }
        });
}

/// Training: x [N, C, H, W] → y, each channel normalised with the batch's mean and biased
/// variance; saves mean and rstd = 1/√(var + ε) [C] for backward, and moves the running
/// statistics: r ← (1 − f)·r + f·batch stat, the variance unbiased (×M/(M−1), M = N·H·W), as
/// PyTorch. `factor` is the momentum, or 1/num_batches_tracked for PyTorch's `momentum=None`.
/// `relu`: y = max(0, ·) in the same pass (the ReLU after a ResNet norm).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm2d_forward_train(
    s: Nchw,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    eps: f32,
    factor: f32,
    running_mean: &mut [f32],
    running_var: &mut [f32],
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    relu: bool,
) -> Result<()> {
    let _span = crate::backend::profile::span("batch norm forward");
    let op = "batch_norm2d";
    let lens = [
        ("the weight", weight.len()),
        ("the bias", bias.len()),
        ("running_mean", running_mean.len()),
        ("running_var", running_var.len()),
        ("mean", mean.len()),
        ("rstd", rstd.len()),
    ];
    check(op, s, x.len(), &lens)?;
    check_len(op, "the output", y.len(), x.len(), "the input's shape")?;
    let m = s.n * s.plane();
    if m < 2 {
        bail!(
            "{op}: training needs more than one value per channel, got input [{}, {}, {}, {}]",
            s.n,
            s.c,
            s.h,
            s.w
        );
    }
    // Two passes per channel: the mean, then Σ(x − μ)²; planes summed in f64.
    (&mut *mean, &mut *rstd, running_mean, running_var)
        .into_par_iter()
        .enumerate()
        .for_each(|(c, (mu, r, rm, rv))| {
            let sum: f64 = channel_planes(x, s, c)
                .map(|p| lanes_sum(p, |v| v) as f64)
                .sum();
            let mu64 = sum / m as f64;
            let m32 = mu64 as f32;
            let sq: f64 = channel_planes(x, s, c)
                .map(|p| lanes_sum(p, |v| (v - m32) * (v - m32)) as f64)
                .sum();
            let var = sq / m as f64;
            *mu = m32;
            *r = (1.0 / (var + eps as f64).sqrt()) as f32;
            *rm = ((1.0 - factor as f64) * *rm as f64 + factor as f64 * mu64) as f32;
            let unbiased = var * m as f64 / (m - 1) as f64;
            *rv = ((1.0 - factor as f64) * *rv as f64 + factor as f64 * unbiased) as f32;
        });
    normalize(s, x, weight, bias, mean, rstd, y, relu);
    Ok(())
}

/// Evaluation: y = (x − running_mean)/√(running_var + ε)·w + b. Writes the mean and rstd it
/// used into `mean` and `rstd` [C], so backward (a saliency map's input gradient) can follow.
/// `relu`: y = max(0, ·) in the same pass.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm2d_forward_eval(
    s: Nchw,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    eps: f32,
    running_mean: &[f32],
    running_var: &[f32],
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    relu: bool,
) -> Result<()> {
    let _span = crate::backend::profile::span("batch norm forward (eval)");
    let op = "batch_norm2d";
    let lens = [
        ("the weight", weight.len()),
        ("the bias", bias.len()),
        ("running_mean", running_mean.len()),
        ("running_var", running_var.len()),
        ("mean", mean.len()),
        ("rstd", rstd.len()),
    ];
    check(op, s, x.len(), &lens)?;
    check_len(op, "the output", y.len(), x.len(), "the input's shape")?;
    mean.copy_from_slice(running_mean);
    for (r, &v) in rstd.iter_mut().zip(running_var) {
        *r = 1.0 / (v + eps).sqrt();
    }
    normalize(s, x, weight, bias, mean, rstd, y, relu);
    Ok(())
}

/// Given dy and what forward saved: dweight += Σ dy·x̂, dbias += Σ dy per channel, and
/// dx = w·rstd·(dy − Σdy/M − x̂·Σ(dy·x̂)/M) with batch statistics (`train`; the mean and
/// variance depend on x), or dx = w·rstd·dy with running ones (eval).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm2d_backward(
    s: Nchw,
    x: &[f32],
    weight: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dy: &[f32],
    train: bool,
    dx: &mut [f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
) -> Result<()> {
    let op = "batch_norm2d backward";
    check_len(op, "dy", dy.len(), x.len(), "the input's shape")?;
    check_len(op, "dx", dx.len(), x.len(), "the input's shape")?;
    dx.par_chunks_mut(1 << 16)
        .zip(dy.par_chunks(1 << 16))
        .for_each(|(dx, dy)| dx.copy_from_slice(dy));
    batch_norm2d_backward_in_place(s, x, weight, mean, rstd, dx, train, dweight, dbias)
}

/// `batch_norm2d_backward` with dy given in `d` and dx written over it: for the largest
/// activations, where a second buffer of their size would be most of the peak memory.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm2d_backward_in_place(
    s: Nchw,
    x: &[f32],
    weight: &[f32],
    mean: &[f32],
    rstd: &[f32],
    d: &mut [f32],
    train: bool,
    dweight: &mut [f32],
    dbias: &mut [f32],
) -> Result<()> {
    let _span = crate::backend::profile::span("batch norm backward");
    let op = "batch_norm2d backward";
    let lens = [
        ("the weight", weight.len()),
        ("mean", mean.len()),
        ("rstd", rstd.len()),
        ("dweight", dweight.len()),
        ("dbias", dbias.len()),
    ];
    check(op, s, x.len(), &lens)?;
    check_len(op, "dy", d.len(), x.len(), "the input's shape")?;
    // Per channel: Σ dy and Σ dy·x̂ (centred before multiplying: no cancellation when |μ| ≫ σ),
    // all read before any dx is written.
    let mut sums = vec![(0f32, 0f32); s.c];
    let dy: &[f32] = d;
    sums.par_iter_mut().enumerate().for_each(|(c, out)| {
        let (mu, mut sdy, mut sdyx) = (mean[c], 0f64, 0f64);
        for (x, dy) in channel_planes(x, s, c).zip(channel_planes(dy, s, c)) {
            sdy += lanes_sum(dy, |v| v) as f64;
            sdyx += centred_dot(dy, x, mu) as f64;
        }
        *out = (sdy as f32, (rstd[c] as f64 * sdyx) as f32);
    });
    for (c, &(sdy, sdy_xhat)) in sums.iter().enumerate() {
        dweight[c] += sdy_xhat;
        dbias[c] += sdy;
    }
    let m = (s.n * s.plane()) as f32;
    d.par_chunks_mut(s.plane())
        .zip(x.par_chunks(s.plane()))
        .enumerate()
        .for_each(|(i, (d, x))| {
            let c = i % s.c;
            let (mu, r, k) = (mean[c], rstd[c], weight[c] * rstd[c]);
            if !train {
                d.iter_mut().for_each(|d| *d *= k);
                return;
            }
            let (mean_dy, mean_dy_xhat) = (sums[c].0 / m, sums[c].1 / m);
            for (d, &x) in d.iter_mut().zip(x) {
                *d = k * (*d - mean_dy - (x - mu) * r * mean_dy_xhat);
            }
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::conv::tests::{assert_close, fixtures};

    #[test]
    fn batch_norm2d_training_matches_pytorch() {
        let f = fixtures("batchnorm.safetensors");
        // (case, factor): `train` has momentum 0.1; `train_cma` is momentum=None after two
        // earlier batches, so num_batches_tracked becomes 3 and the factor 1/3.
        for (name, factor) in [("train", 0.1), ("train_cma", 1.0 / 3.0)] {
            let t = |what: &str| f.get(&format!("bn.{name}.{what}")).expect(what);
            let [n, c, h, w] = t("x").shape[..] else {
                panic!("4-d input")
            };
            let s = Nchw::new(n, c, h, w);
            let (x, weight, bias) = (&t("x").data, &t("weight").data, &t("bias").data);
            let mut rm = t("running_mean_in").data.clone();
            let mut rv = t("running_var_in").data.clone();
            let (mut y, mut mean, mut rstd) = (vec![f32::NAN; x.len()], vec![0.0; c], vec![0.0; c]);
            batch_norm2d_forward_train(
                s, x, weight, bias, 1e-5, factor, &mut rm, &mut rv, &mut y, &mut mean, &mut rstd,
                false,
            )
            .unwrap();
            assert_close(&format!("{name} y"), &y, &t("y").data, 1e-5);
            assert_close(
                &format!("{name} running_mean"),
                &rm,
                &t("running_mean").data,
                1e-6,
            );
            assert_close(
                &format!("{name} running_var"),
                &rv,
                &t("running_var").data,
                1e-6,
            );
            let mut dx = vec![f32::NAN; x.len()];
            let (mut dw, mut db) = (vec![1.0; c], vec![1.0; c]); // gradients accumulate
            batch_norm2d_backward(
                s,
                x,
                weight,
                &mean,
                &rstd,
                &t("dy").data,
                true,
                &mut dx,
                &mut dw,
                &mut db,
            )
            .unwrap();
            assert_close(&format!("{name} dx"), &dx, &t("dx").data, 1e-5);
            let plus1 = |v: &[f32]| v.iter().map(|v| v + 1.0).collect::<Vec<_>>();
            assert_close(
                &format!("{name} dweight"),
                &dw,
                &plus1(&t("dweight").data),
                1e-5,
            );
            assert_close(
                &format!("{name} dbias"),
                &db,
                &plus1(&t("dbias").data),
                1e-5,
            );
        }
    }

    #[test]
    fn batch_norm2d_eval_matches_pytorch() {
        let f = fixtures("batchnorm.safetensors");
        let t = |what: &str| f.get(&format!("bn.eval.{what}")).expect(what);
        let [n, c, h, w] = t("x").shape[..] else {
            panic!("4-d input")
        };
        let s = Nchw::new(n, c, h, w);
        let (x, weight, bias) = (&t("x").data, &t("weight").data, &t("bias").data);
        let (rm, rv) = (&t("running_mean").data, &t("running_var").data);
        let (mut y, mut mean, mut rstd) = (vec![f32::NAN; x.len()], vec![0.0; c], vec![0.0; c]);
        batch_norm2d_forward_eval(
            s, x, weight, bias, 1e-5, rm, rv, &mut y, &mut mean, &mut rstd, false,
        )
        .unwrap();
        assert_close("eval y", &y, &t("y").data, 1e-5);
        let mut dx = vec![f32::NAN; x.len()];
        let (mut dw, mut db) = (vec![0.0; c], vec![0.0; c]);
        batch_norm2d_backward(
            s,
            x,
            weight,
            &mean,
            &rstd,
            &t("dy").data,
            false,
            &mut dx,
            &mut dw,
            &mut db,
        )
        .unwrap();
        assert_close("eval dx", &dx, &t("dx").data, 1e-5);
        assert_close("eval dweight", &dw, &t("dweight").data, 1e-5);
        assert_close("eval dbias", &db, &t("dbias").data, 1e-5);
    }

    #[test]
    fn batch_norm2d_rejects_bad_shapes() {
        let s = Nchw::new(1, 2, 1, 1);
        let (x, p) = (vec![0.0; 2], vec![0.0; 2]);
        let (mut rm, mut rv, mut y, mut m, mut r) =
            (p.clone(), p.clone(), x.clone(), p.clone(), p.clone());
        let e = batch_norm2d_forward_train(
            s, &x, &p, &p, 1e-5, 0.1, &mut rm, &mut rv, &mut y, &mut m, &mut r, false,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("more than one value per channel"),
            "{e}"
        );
        let s = Nchw::new(2, 2, 1, 1);
        let e = batch_norm2d_forward_train(
            s, &x, &p, &p, 1e-5, 0.1, &mut rm, &mut rv, &mut y, &mut m, &mut r, false,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("the input has 2 values, expected 4"),
            "{e}"
        );
        let s = Nchw::new(1, 1, 2, 1);
        let e =
            batch_norm2d_forward_eval(s, &x, &p, &p, 1e-5, &p, &p, &mut y, &mut m, &mut r, false)
                .unwrap_err();
        assert!(
            e.to_string()
                .contains("the weight has 2 values, expected 1"),
            "{e}"
        );
    }
}
