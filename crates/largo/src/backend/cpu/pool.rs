//! 2-D pooling over NCHW activations, PyTorch's semantics: `max_pool2d` (padding never wins;
//! indices saved for backward), `avg_pool2d` (count_include_pad=True), `adaptive_avg_pool2d`.
//! Every (image, channel) plane is independent: one task per plane.

use super::conv::{check_len, out_len, valid_range, Nchw};
use super::rows_per_task;
use crate::{bail, Result};
use rayon::prelude::*;

/// One pooling call: a `kernel` window every `stride`, the input padded by `padding` on each
/// side. Pairs are (height, width).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dShape {
    pub input: Nchw,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
}

impl Pool2dShape {
    /// The output's shape, or an error naming what does not fit (PyTorch's limits: padding at
    /// most half the kernel, a window inside the padded input).
    pub fn output(&self, op: &str) -> Result<Nchw> {
        let i = &self.input;
        if i.h == 0 || i.w == 0 {
            bail!(
                "{op}: the input [{}, {}, {}, {}] has no pixels",
                i.n,
                i.c,
                i.h,
                i.w
            );
        }
        for (axis, k, p) in [
            ("height", self.kernel[0], self.padding[0]),
            ("width", self.kernel[1], self.padding[1]),
        ] {
            if p > k / 2 {
                bail!("{op}: padding {p} along the {axis} is more than half the kernel size {k}");
            }
        }
        let oh = out_len(
            op,
            "height",
            i.h,
            self.kernel[0],
            self.stride[0],
            self.padding[0],
            1,
        )?;
        let ow = out_len(
            op,
            "width",
            i.w,
            self.kernel[1],
            self.stride[1],
            self.padding[1],
            1,
        )?;
        Ok(Nchw::new(i.n, i.c, oh, ow))
    }

    fn check(&self, op: &str, x: usize, y: usize) -> Result<Nchw> {
        let (i, out) = (self.input, self.output(op)?);
        check_len(op, "the input", x, i.len(), i)?;
        check_len(op, "the output", y, out.len(), out)?;
        Ok(out)
    }

    /// Each output row's and each output column's window clipped to the input: (first, end,
    /// size within the padded input), worked out once per call rather than per output.
    fn windows(&self, out: Nchw) -> [Vec<(usize, usize, usize)>; 2] {
        let (i, k, s, p) = (&self.input, self.kernel, self.stride, self.padding);
        let clip = |o: usize, axis: usize, len: usize| {
            let start = (o * s[axis]) as isize - p[axis] as isize;
            let end = (start + k[axis] as isize).min((len + p[axis]) as isize);
            let padded = (end - start) as usize;
            (
                start.max(0) as usize,
                end.min(len as isize) as usize,
                padded,
            )
        };
        [
            (0..out.h).map(|o| clip(o, 0, i.h)).collect(),
            (0..out.w).map(|o| clip(o, 1, i.w)).collect(),
        ]
    }
}

/// x [N, C, H, W] → y [N, C, OH, OW], each the maximum of its window; `indices` [N, C, OH, OW]
/// keeps where it came from as h·W + w in its plane (PyTorch's `return_indices`). A NaN wins
/// (the window's last), as in PyTorch's CPU kernel.
pub fn max_pool2d_forward(
    s: &Pool2dShape,
    x: &[f32],
    y: &mut [f32],
    indices: &mut [u32],
) -> Result<()> {
    let _span = crate::backend::profile::span("max pool forward");
    let op = "max_pool2d";
    let out = s.check(op, x.len(), y.len())?;
    check_len(op, "indices", indices.len(), y.len(), "the output's shape")?;
    if s.kernel == [2, 2] && s.stride == [2, 2] && s.padding == [0, 0] {
        max_pool_2x2(s.input, out, x, y, indices);
        return Ok(());
    }
    if s.kernel == [3, 3] && s.stride == [2, 2] && s.padding == [1, 1] {
        max_pool_3x3_s2(s.input, out, x, y, indices);
        return Ok(());
    }
    max_pool_general(s, out, x, y, indices);
    Ok(())
}

/// Any window, stride and padding: per output row, each kernel tap's inputs gathered into a row
/// and compared in lanes.
fn max_pool_general(s: &Pool2dShape, out: Nchw, x: &[f32], y: &mut [f32], indices: &mut [u32]) {
    let (plane, w, sw) = (s.input.plane(), s.input.w, s.stride[1]);
    let [rows, cols] = s.windows(out);
    // Kernel column j reads input column ow·sw − pw + j for output columns in taps[j].
    let taps: Vec<(isize, (usize, usize))> = (0..s.kernel[1])
        .map(|j| {
            let off = j as isize - s.padding[1] as isize;
            (off, valid_range(out.w, w, sw, off))
        })
        .collect();
    y.par_chunks_mut(out.plane())
        .zip(indices.par_chunks_mut(out.plane()))
        .zip(x.par_chunks(plane))
        .with_min_len(rows_per_task(plane))
        .for_each_with(vec![0f32; out.w], |tap_row, ((y, idx), x)| {
            let y_rows = y.chunks_exact_mut(out.w).zip(idx.chunks_exact_mut(out.w));
            for ((y, idx), &(h0, h1, _)) in y_rows.zip(&rows) {
                y.fill(f32::NEG_INFINITY);
                for (i, &(w0, _, _)) in idx.iter_mut().zip(&cols) {
                    *i = (h0 * w + w0) as u32;
                }
                // Window positions in scan order (row, then column) for all the row's outputs
                // at once: each output's comparisons are independent of its neighbours', so
                // with the tap's inputs gathered into a contiguous row they vectorise.
                for r in h0..h1 {
                    let xr = &x[r * w..][..w];
                    for &(off, (lo, hi)) in &taps {
                        let tap = &mut tap_row[..hi - lo];
                        for (t, ow) in tap.iter_mut().zip(lo..hi) {
                            *t = xr[((ow * sw) as isize + off) as usize];
                        }
                        let at0 = ((r * w + lo * sw) as isize + off) as u32;
                        select_max(tap, &mut y[lo..hi], &mut idx[lo..hi], at0, sw as u32);
                    }
                }
            }
        });
}

/// The 2×2 windows of stride 2 without padding (the MNIST net's, VGG's): each output's four
/// inputs in scan order with branch-free selects, a row of outputs at a time, so the loop
/// over the row vectorises (the general path's per-tap passes cost 5 ns an output here).
fn max_pool_2x2(input: Nchw, out: Nchw, x: &[f32], y: &mut [f32], indices: &mut [u32]) {
    let (plane, w) = (input.plane(), input.w);
    y.par_chunks_mut(out.plane())
        .zip(indices.par_chunks_mut(out.plane()))
        .zip(x.par_chunks(plane))
        .with_min_len(rows_per_task(plane))
        .for_each(|((y, idx), x)| {
            let rows = y.chunks_exact_mut(out.w).zip(idx.chunks_exact_mut(out.w));
            for (i, (y, idx)) in rows.enumerate() {
                let (top, bottom) = (2 * i * w, (2 * i + 1) * w);
                let r0 = &x[top..][..2 * out.w];
                let r1 = &x[bottom..][..2 * out.w];
                max_of_pairs(r0, r1, top as u32, bottom as u32, y, idx);
            }
        });
}

/// The 3×3 windows of stride 2 with padding 1 (ResNet's stem pool): each input row split once
/// into its even and odd columns, so that output j's three taps in that row, columns 2j − 1, 2j
/// and 2j + 1, are odd[j − 1], even[j] and odd[j]: rows of values `select_max` compares in
/// lanes, in the window's scan order.
fn max_pool_3x3_s2(input: Nchw, out: Nchw, x: &[f32], y: &mut [f32], indices: &mut [u32]) {
    let plane = input.plane();
    y.par_chunks_mut(out.plane())
        .zip(indices.par_chunks_mut(out.plane()))
        .zip(x.par_chunks(plane))
        .with_min_len(rows_per_task(plane))
        .for_each_init(
            || (vec![0f32; input.w.div_ceil(2)], vec![0f32; input.w / 2]),
            |(even, odd), ((y, idx), x)| {
                max_pool_3x3_s2_plane(x, [input.h, input.w], out.w, even, odd, y, idx)
            },
        );
}

avx512_dispatch! {
    /// One plane of `max_pool_3x3_s2`: x [h, w] → y, idx [⌈h/2⌉, ow]; `even` and `odd` hold
    /// ⌈w/2⌉ and ⌊w/2⌋ values. One call per plane, so the selects of small maps (ResNet-18's
    /// 16×16 stem output at 32×32: rows of 8) are not a call each.
    fn max_pool_3x3_s2_plane(
        x: &[f32],
        hw: [usize; 2],
        ow: usize,
        even: &mut [f32],
        odd: &mut [f32],
        y: &mut [f32],
        idx: &mut [u32],
    ) {
        let [h, w] = hw;
        // Outputs whose column 2j + 1 is inside the row.
        let right = (w / 2).min(ow);
        let rows = y.chunks_exact_mut(ow).zip(idx.chunks_exact_mut(ow));
        for (i, (y, idx)) in rows.enumerate() {
            // The window's first position inside the input, as the general path starts.
            let top = (2 * i).saturating_sub(1) * w;
            y.fill(f32::NEG_INFINITY);
            for (j, at) in idx.iter_mut().enumerate() {
                *at = (top + (2 * j).saturating_sub(1)) as u32;
            }
            for ih in (2 * i).saturating_sub(1)..(2 * i + 2).min(h) {
                let row = &x[ih * w..][..w];
                for (j, pair) in row.chunks_exact(2).enumerate() {
                    even[j] = pair[0];
                    odd[j] = pair[1];
                }
                if w % 2 == 1 {
                    even[w / 2] = row[w - 1];
                }
                let at = (ih * w) as u32;
                select_max_lanes(&odd[..ow - 1], &mut y[1..], &mut idx[1..], at + 1, 2);
                select_max_lanes(&even[..ow], y, idx, at, 2);
                select_max_lanes(&odd[..right], &mut y[..right], &mut idx[..right], at + 1, 2);
            }
        }
    }
}

avx512_dispatch! {
    /// y[j], idx[j] = the maximum of r0[2j], r0[2j+1], r1[2j], r1[2j+1] and where it is (a NaN
    /// wins, the last one, as `select_max` does), 16 outputs at a time: the four inputs are
    /// split into lanes first, so the comparisons compile to masked blends, not branches.
    #[allow(clippy::needless_range_loop)] // lanes of four arrays, indexed alike
    fn max_of_pairs(r0: &[f32], r1: &[f32], at0: u32, at1: u32, y: &mut [f32], idx: &mut [u32]) {
        const L: usize = 16;
        let n = y.len();
        for j0 in (0..n).step_by(L) {
            let len = L.min(n - j0);
            let mut taps = [[f32::NEG_INFINITY; L]; 4];
            for l in 0..len {
                let c = 2 * (j0 + l);
                taps[0][l] = r0[c];
                taps[1][l] = r0[c + 1];
                taps[2][l] = r1[c];
                taps[3][l] = r1[c + 1];
            }
            let (mut m, mut at) = (taps[0], [0u32; L]);
            for (k, tap) in taps.iter().enumerate().skip(1) {
                for l in 0..L {
                    let v = tap[l];
                    let take = (v > m[l]) | v.is_nan();
                    m[l] = if take { v } else { m[l] };
                    at[l] = if take { k as u32 } else { at[l] };
                }
            }
            for l in 0..len {
                let c = 2 * (j0 + l) as u32;
                // Tap k: row k / 2 of the window, column k % 2.
                let row = if at[l] >= 2 { at1 } else { at0 };
                y[j0 + l] = m[l];
                idx[j0 + l] = row + c + (at[l] & 1);
            }
        }
    }
}

avx512_dispatch! {
    /// y[o], idx[o] = v[o], at0 + o·step where v[o] > y[o] or is NaN (a NaN wins, the window's
    /// last, as in PyTorch's CPU kernel): one kernel tap's update of a row of max-pool outputs.
    /// Compiled for the wide instruction sets, the selects become masked blends: which input
    /// wins is data, random for activations, and branches on it made the pool 3× slower.
    fn select_max(v: &[f32], y: &mut [f32], idx: &mut [u32], at0: u32, step: u32) {
        select_max_lanes(v, y, idx, at0, step)
    }
}

/// `select_max`'s loop, inlined into the kernels that call it many times a plane.
#[inline(always)]
fn select_max_lanes(v: &[f32], y: &mut [f32], idx: &mut [u32], at0: u32, step: u32) {
    for (o, ((&v, y), idx)) in v.iter().zip(y.iter_mut()).zip(idx.iter_mut()).enumerate() {
        let take = (v > *y) | v.is_nan();
        *y = if take { v } else { *y };
        *idx = if take { at0 + o as u32 * step } else { *idx };
    }
}

/// dx [N, C, H, W] = each dy routed to the input its maximum came from (summed where windows
/// overlap on the same maximum).
pub fn max_pool2d_backward(
    s: &Pool2dShape,
    dy: &[f32],
    indices: &[u32],
    dx: &mut [f32],
) -> Result<()> {
    let _span = crate::backend::profile::span("max pool backward");
    let op = "max_pool2d backward";
    let out = s.check(op, dx.len(), dy.len())?;
    check_len(op, "indices", indices.len(), dy.len(), "the output's shape")?;
    let plane = s.input.plane();
    if let Some(&bad) = indices.iter().find(|&&i| i as usize >= plane) {
        bail!(
            "{op}: index {bad} is outside the {}×{} input plane",
            s.input.h,
            s.input.w
        );
    }
    dx.par_chunks_mut(plane)
        .zip(
            dy.par_chunks(out.plane())
                .zip(indices.par_chunks(out.plane())),
        )
        .with_min_len(rows_per_task(plane))
        .for_each(|(dx, (dy, idx))| {
            dx.fill(0.0);
            for (&d, &i) in dy.iter().zip(idx) {
                dx[i as usize] += d;
            }
        });
    Ok(())
}

/// x [N, C, H, W] → y [N, C, OH, OW], each the mean of its window with padding counted as
/// zeros (count_include_pad=True, PyTorch's default).
pub fn avg_pool2d_forward(s: &Pool2dShape, x: &[f32], y: &mut [f32]) -> Result<()> {
    let _span = crate::backend::profile::span("avg pool forward");
    let out = s.check("avg_pool2d", x.len(), y.len())?;
    let (plane, w) = (s.input.plane(), s.input.w);
    let [rows, cols] = s.windows(out);
    y.par_chunks_mut(out.plane())
        .zip(x.par_chunks(plane))
        .with_min_len(rows_per_task(plane))
        .for_each(|(y, x)| {
            for (y, &(h0, h1, ph)) in y.chunks_exact_mut(out.w).zip(&rows) {
                for (y, &(w0, w1, pw)) in y.iter_mut().zip(&cols) {
                    let sum: f32 = (h0..h1)
                        .map(|r| x[r * w..][w0..w1].iter().sum::<f32>())
                        .sum();
                    *y = sum / (ph * pw) as f32;
                }
            }
        });
    Ok(())
}

/// dx [N, C, H, W] = Σ over the windows holding each input of dy / the window's count.
pub fn avg_pool2d_backward(s: &Pool2dShape, dy: &[f32], dx: &mut [f32]) -> Result<()> {
    let _span = crate::backend::profile::span("avg pool backward");
    let out = s.check("avg_pool2d backward", dx.len(), dy.len())?;
    let (plane, w) = (s.input.plane(), s.input.w);
    let [rows, cols] = s.windows(out);
    dx.par_chunks_mut(plane)
        .zip(dy.par_chunks(out.plane()))
        .with_min_len(rows_per_task(plane))
        .for_each(|(dx, dy)| {
            dx.fill(0.0);
            for (dy, &(h0, h1, ph)) in dy.chunks_exact(out.w).zip(&rows) {
                for (&d, &(w0, w1, pw)) in dy.iter().zip(&cols) {
                    let g = d / (ph * pw) as f32;
                    for r in h0..h1 {
                        dx[r * w..][w0..w1].iter_mut().for_each(|v| *v += g);
                    }
                }
            }
        });
    Ok(())
}

/// Output cell i of `out` over an input of `len`: rows ⌊i·len/out⌋ .. ⌈(i+1)·len/out⌉.
fn adaptive_range(i: usize, out: usize, len: usize) -> (usize, usize) {
    (i * len / out, ((i + 1) * len).div_ceil(out))
}

fn adaptive_check(op: &str, input: Nchw, output: [usize; 2], x: usize, y: usize) -> Result<Nchw> {
    let i = input;
    if i.h == 0 || i.w == 0 || output[0] == 0 || output[1] == 0 {
        bail!(
            "{op}: input [{}, {}, {}, {}] and output size {output:?} must be non-empty",
            i.n,
            i.c,
            i.h,
            i.w
        );
    }
    let out = Nchw::new(i.n, i.c, output[0], output[1]);
    check_len(op, "the input", x, i.len(), i)?;
    check_len(op, "the output", y, out.len(), out)?;
    Ok(out)
}

/// x [N, C, H, W] → y [N, C, output[0], output[1]], each the mean of its adaptive window
/// (`adaptive_range`); (1, 1) is global average pooling.
pub fn adaptive_avg_pool2d_forward(
    input: Nchw,
    output: [usize; 2],
    x: &[f32],
    y: &mut [f32],
) -> Result<()> {
    let _span = crate::backend::profile::span("adaptive avg pool forward");
    let out = adaptive_check("adaptive_avg_pool2d", input, output, x.len(), y.len())?;
    let w = input.w;
    y.par_chunks_mut(out.plane())
        .zip(x.par_chunks(input.plane()))
        .for_each(|(y, x)| {
            for (o, y) in y.iter_mut().enumerate() {
                let (h0, h1) = adaptive_range(o / out.w, out.h, input.h);
                let (w0, w1) = adaptive_range(o % out.w, out.w, input.w);
                let sum: f32 = (h0..h1)
                    .map(|r| x[r * w..][w0..w1].iter().sum::<f32>())
                    .sum();
                *y = sum / ((h1 - h0) * (w1 - w0)) as f32;
            }
        });
    Ok(())
}

/// dx [N, C, H, W] = Σ over the adaptive windows holding each input of dy / the window's size.
pub fn adaptive_avg_pool2d_backward(
    input: Nchw,
    output: [usize; 2],
    dy: &[f32],
    dx: &mut [f32],
) -> Result<()> {
    let _span = crate::backend::profile::span("adaptive avg pool backward");
    let out = adaptive_check(
        "adaptive_avg_pool2d backward",
        input,
        output,
        dx.len(),
        dy.len(),
    )?;
    let w = input.w;
    dx.par_chunks_mut(input.plane())
        .zip(dy.par_chunks(out.plane()))
        .for_each(|(dx, dy)| {
            dx.fill(0.0);
            for (o, &d) in dy.iter().enumerate() {
                let (h0, h1) = adaptive_range(o / out.w, out.h, input.h);
                let (w0, w1) = adaptive_range(o % out.w, out.w, input.w);
                let g = d / ((h1 - h0) * (w1 - w0)) as f32;
                for r in h0..h1 {
                    dx[r * w..][w0..w1].iter_mut().for_each(|v| *v += g);
                }
            }
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::conv::tests::{assert_close, fixtures};
    use crate::io::TensorFile;

    /// The cases of `tools/gen_cnn_fixtures.py`'s `pool()`: (name, kernel, stride, padding).
    type Case = (&'static str, [usize; 2], [usize; 2], [usize; 2]);
    const CASES: [Case; 3] = [
        ("k3s2p1", [3, 3], [2, 2], [1, 1]),
        ("k2s2", [2, 2], [2, 2], [0, 0]),
        ("k3x2s1", [3, 2], [1, 2], [1, 0]),
    ];

    fn input<'a>(f: &'a TensorFile, case: &str) -> (Nchw, &'a [f32]) {
        let x = f.get(&format!("{case}.x")).expect("x");
        let [n, c, h, w] = x.shape[..] else {
            panic!("4-d input")
        };
        (Nchw::new(n, c, h, w), &x.data)
    }

    #[test]
    fn max_pool2d_matches_pytorch_with_its_indices() {
        let f = fixtures("pool.safetensors");
        for (name, kernel, stride, padding) in CASES {
            let case = format!("maxpool.{name}");
            let t = |what: &str| &f.get(&format!("{case}.{what}")).expect(what).data;
            let (input, x) = input(&f, &case);
            let s = Pool2dShape {
                input,
                kernel,
                stride,
                padding,
            };
            let (mut y, mut idx) = (vec![f32::NAN; t("y").len()], vec![0u32; t("y").len()]);
            max_pool2d_forward(&s, x, &mut y, &mut idx).unwrap();
            assert_close(&format!("{case} y"), &y, t("y"), 0.0);
            let idx: Vec<f32> = idx.iter().map(|&i| i as f32).collect();
            assert_close(&format!("{case} indices"), &idx, t("indices"), 0.0);
            let mut dx = vec![f32::NAN; x.len()];
            let idx: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
            max_pool2d_backward(&s, t("dy"), &idx, &mut dx).unwrap();
            assert_close(&format!("{case} dx"), &dx, t("dx"), 1e-6);
        }
    }

    #[test]
    fn avg_pool2d_matches_pytorch() {
        let f = fixtures("pool.safetensors");
        for (name, kernel, stride, padding) in CASES {
            let case = format!("avgpool.{name}");
            let t = |what: &str| &f.get(&format!("{case}.{what}")).expect(what).data;
            let (input, x) = input(&f, &case);
            let s = Pool2dShape {
                input,
                kernel,
                stride,
                padding,
            };
            let mut y = vec![f32::NAN; t("y").len()];
            avg_pool2d_forward(&s, x, &mut y).unwrap();
            assert_close(&format!("{case} y"), &y, t("y"), 1e-6);
            let mut dx = vec![f32::NAN; x.len()];
            avg_pool2d_backward(&s, t("dy"), &mut dx).unwrap();
            assert_close(&format!("{case} dx"), &dx, t("dx"), 1e-6);
        }
    }

    #[test]
    fn adaptive_avg_pool2d_matches_pytorch() {
        let f = fixtures("pool.safetensors");
        for (name, output) in [
            ("3x4", [3, 4]),
            ("1x1", [1, 1]),
            ("5x7", [5, 7]),
            ("8x10", [8, 10]),
        ] {
            let case = format!("adaptive.{name}");
            let t = |what: &str| &f.get(&format!("{case}.{what}")).expect(what).data;
            let (input, x) = input(&f, &case);
            let mut y = vec![f32::NAN; t("y").len()];
            adaptive_avg_pool2d_forward(input, output, x, &mut y).unwrap();
            assert_close(&format!("{case} y"), &y, t("y"), 1e-6);
            let mut dx = vec![f32::NAN; x.len()];
            adaptive_avg_pool2d_backward(input, output, t("dy"), &mut dx).unwrap();
            assert_close(&format!("{case} dx"), &dx, t("dx"), 1e-6);
        }
    }

    #[test]
    fn max_pool2d_lets_nan_win_and_ignores_padding() {
        let s = Pool2dShape {
            input: Nchw::new(1, 1, 2, 2),
            kernel: [2, 2],
            stride: [1, 1],
            padding: [1, 1],
        };
        let x = [-3.0, -1.0, f32::NAN, -2.0];
        let (mut y, mut idx) = (vec![0.0; 9], vec![0; 9]);
        max_pool2d_forward(&s, &x, &mut y, &mut idx).unwrap();
        // Top-left window holds only x[0] and padding: the padding (−∞) never wins.
        assert_eq!((y[0], idx[0]), (-3.0, 0));
        assert_eq!((y[2], idx[2]), (-1.0, 1));
        assert!(y[4].is_nan() && idx[4] == 2, "{y:?} {idx:?}");
    }

    #[test]
    fn max_pool_2x2_lets_the_last_nan_win_and_keeps_the_first_of_ties() {
        let s = Pool2dShape {
            input: Nchw::new(1, 1, 3, 5),
            kernel: [2, 2],
            stride: [2, 2],
            padding: [0, 0],
        };
        // The third row and fifth column fall outside every window.
        let x = [
            1.0,
            f32::NAN,
            5.0,
            2.0,
            99.0, //
            3.0,
            f32::NAN,
            7.0,
            7.0,
            99.0, //
            99.0,
            99.0,
            99.0,
            99.0,
            99.0,
        ];
        let (mut y, mut idx) = (vec![0.0; 2], vec![0; 2]);
        max_pool2d_forward(&s, &x, &mut y, &mut idx).unwrap();
        assert!(y[0].is_nan() && idx[0] == 6, "{y:?} {idx:?}");
        assert_eq!((y[1], idx[1]), (7.0, 7));
    }

    /// The 3×3 stride-2 path against the general one, on odd and even sizes with NaNs and ties.
    #[test]
    fn max_pool_3x3_stride_2_matches_the_general_path() {
        let mut rng = crate::rng::Rng::new(9);
        for (h, w) in [(7, 7), (8, 6), (5, 9), (2, 3), (1, 1)] {
            let s = Pool2dShape {
                input: Nchw::new(2, 3, h, w),
                kernel: [3, 3],
                stride: [2, 2],
                padding: [1, 1],
            };
            let out = s.output("max_pool2d").unwrap();
            let x: Vec<f32> = (0..s.input.len())
                .map(|i| match i % 11 {
                    3 => f32::NAN,
                    5 | 6 => 1.0,
                    _ => rng.normal(),
                })
                .collect();
            let (mut y, mut idx) = (vec![0f32; out.len()], vec![0u32; out.len()]);
            max_pool_3x3_s2(s.input, out, &x, &mut y, &mut idx);
            let (mut y2, mut idx2) = (vec![0f32; out.len()], vec![0u32; out.len()]);
            max_pool_general(&s, out, &x, &mut y2, &mut idx2);
            assert_eq!(idx, idx2, "{h}×{w} indices");
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&y), bits(&y2), "{h}×{w} values");
        }
    }

    #[test]
    fn pools_reject_bad_shapes() {
        let s = Pool2dShape {
            input: Nchw::new(1, 1, 4, 4),
            kernel: [2, 2],
            stride: [2, 2],
            padding: [0, 0],
        };
        let (x, mut y, mut idx) = (vec![0.0; 16], vec![0.0; 4], vec![0; 4]);
        let e = |r: Result<()>| r.unwrap_err().to_string();
        let bad = Pool2dShape {
            padding: [2, 0],
            ..s
        };
        assert!(e(max_pool2d_forward(&bad, &x, &mut y, &mut idx))
            .contains("padding 2 along the height is more than half the kernel size 2"));
        let bad = Pool2dShape {
            stride: [2, 0],
            ..s
        };
        assert!(e(avg_pool2d_forward(&bad, &x, &mut y)).contains("stride"));
        let bad = Pool2dShape {
            kernel: [7, 2],
            padding: [1, 0],
            ..s
        };
        assert!(e(avg_pool2d_forward(&bad, &x, &mut y)).contains("more than the padded input"));
        assert!(e(max_pool2d_forward(&s, &x[..15], &mut y, &mut idx))
            .contains("the input has 15 values, expected 16"));
        assert!(
            e(max_pool2d_forward(&s, &x, &mut y, &mut idx[..3])).contains("indices has 3 values")
        );
        let mut dx = vec![0.0; 16];
        assert!(
            e(max_pool2d_backward(&s, &y, &[0, 1, 2, 16], &mut dx)).contains("index 16 is outside")
        );
        assert!(e(adaptive_avg_pool2d_forward(s.input, [0, 1], &x, &mut y)).contains("non-empty"));
        assert!(e(adaptive_avg_pool2d_forward(s.input, [3, 3], &x, &mut y))
            .contains("the output has 4 values, expected 9"));
    }
}
