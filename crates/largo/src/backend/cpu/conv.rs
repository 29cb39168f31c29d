//! 2-D convolution over NCHW images (PyTorch's `conv2d`: stride, padding, dilation, groups):
//! im2col + the GEMM, one band of output rows at a time, so the im2col buffer is bounded
//! (`COL_TILE_FLOATS`) whatever the image size, and lives in a per-thread scratch reused
//! across calls. Images run in parallel, one per task, each GEMM on its own thread.

use super::gemm::{matmul_strided_serial, Trans};
use super::math::lanes_sum;
use crate::{bail, Result};
use rayon::prelude::*;
use std::cell::RefCell;

/// An activation's shape: [n, c, h, w], row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nchw {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Nchw {
    pub fn new(n: usize, c: usize, h: usize, w: usize) -> Self {
        Nchw { n, c, h, w }
    }

    /// h·w: one channel's plane.
    pub fn plane(&self) -> usize {
        self.h * self.w
    }

    /// c·h·w: one image.
    pub fn image(&self) -> usize {
        self.c * self.plane()
    }

    pub fn len(&self) -> usize {
        self.n * self.image()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Display for Nchw {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "[{}, {}, {}, {}]", self.n, self.c, self.h, self.w)
    }
}

/// `what` must hold exactly `want` values: the error names the tensor and its expected shape.
pub(crate) fn check_len(
    op: &str,
    what: &str,
    got: usize,
    want: usize,
    shape: impl std::fmt::Display,
) -> Result<()> {
    if got != want {
        bail!("{op}: {what} has {got} values, expected {want} ({shape})");
    }
    Ok(())
}

/// Output length along one axis: ⌊(in + 2·pad − dil·(k−1) − 1) / stride⌋ + 1, or an error when
/// the dilated kernel does not fit in the padded input.
pub(crate) fn out_len(
    op: &str,
    axis: &str,
    input: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
) -> Result<usize> {
    if kernel == 0 || stride == 0 || dilation == 0 {
        bail!("{op}: kernel, stride and dilation must be ≥ 1, got {kernel}, {stride}, {dilation} along the {axis}");
    }
    let span = dilation * (kernel - 1) + 1;
    if span > input + 2 * pad {
        bail!(
            "{op}: the kernel spans {span} along the {axis} (size {kernel}, dilation {dilation}), \
             more than the padded input's {} ({input} + 2·{pad} padding)",
            input + 2 * pad
        );
    }
    Ok((input + 2 * pad - span) / stride + 1)
}

/// One conv2d call: input [N, C_in, H, W] → output [N, C_out, OH, OW], weight
/// [C_out, C_in/groups, KH, KW]. Pairs are (height, width).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dShape {
    pub input: Nchw,
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

impl Conv2dShape {
    /// Checks the hyper-parameters against the input and returns the output's shape.
    pub fn output(&self) -> Result<Nchw> {
        let (i, g) = (&self.input, self.groups);
        if i.c == 0 || i.h == 0 || i.w == 0 || self.out_channels == 0 {
            bail!(
                "conv2d: channels, height and width must be ≥ 1, got input [{}, {}, {}, {}] and {} \
                 out_channels",
                i.n,
                i.c,
                i.h,
                i.w,
                self.out_channels
            );
        }
        if g == 0 || !i.c.is_multiple_of(g) || !self.out_channels.is_multiple_of(g) {
            bail!(
                "conv2d: in_channels {} and out_channels {} must both be divisible by groups {g}",
                i.c,
                self.out_channels
            );
        }
        let oh = out_len(
            "conv2d",
            "height",
            i.h,
            self.kernel[0],
            self.stride[0],
            self.padding[0],
            self.dilation[0],
        )?;
        let ow = out_len(
            "conv2d",
            "width",
            i.w,
            self.kernel[1],
            self.stride[1],
            self.padding[1],
            self.dilation[1],
        )?;
        Ok(Nchw::new(i.n, self.out_channels, oh, ow))
    }

    /// Values in the weight: C_out · C_in/groups · KH · KW.
    pub fn weight_len(&self) -> usize {
        self.out_channels * self.col_rows()
    }

    /// Rows of one group's im2col matrix (the GEMM's k): C_in/groups · KH · KW.
    fn col_rows(&self) -> usize {
        self.input.c / self.groups * self.kernel[0] * self.kernel[1]
    }

    /// A 1×1 kernel with stride 1 and no padding reads the input as it is: no im2col.
    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.padding == [0, 0]
    }

    fn check(
        &self,
        x: usize,
        weight: usize,
        bias: Option<usize>,
        y: usize,
    ) -> Result<(Geometry, Nchw)> {
        let (out, i, op) = (self.output()?, &self.input, "conv2d");
        let (k, cin_g) = (self.kernel, i.c / self.groups);
        let ws = format_args!("[{}, {cin_g}, {}, {}]", self.out_channels, k[0], k[1]);
        check_len(op, "the input", x, i.len(), i)?;
        check_len(op, "the weight", weight, self.weight_len(), ws)?;
        if let Some(b) = bias {
            let bs = format_args!("[{}]", self.out_channels);
            check_len(op, "the bias", b, self.out_channels, bs)?;
        }
        check_len(op, "the output", y, out.len(), out)?;
        Ok((Geometry::new(self, out, COL_TILE_FLOATS), out))
    }
}

/// At most this many im2col values per band (1 MiB): large images go a band of rows at a time.
const COL_TILE_FLOATS: usize = 1 << 18;

/// What the kernels derive once per call: per-group sizes and the band height.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    s: Conv2dShape,
    out: Nchw,
    /// C_in / groups, C_out / groups.
    cin_g: usize,
    cout_g: usize,
    /// The GEMM's k: C_in/groups · KH · KW.
    k: usize,
    /// Output rows per band.
    band: usize,
}

impl Geometry {
    fn new(s: &Conv2dShape, out: Nchw, col_cap: usize) -> Self {
        let k = s.col_rows();
        let band = if s.is_pointwise() {
            out.h
        } else {
            (col_cap / (k * out.w).max(1)).clamp(1, out.h.max(1))
        };
        Geometry {
            s: *s,
            out,
            cin_g: s.input.c / s.groups,
            cout_g: s.out_channels / s.groups,
            k,
            band,
        }
    }

    /// (first, end) output rows of each band.
    fn bands(&self) -> impl Iterator<Item = (usize, usize)> {
        let (h, band) = (self.out.h, self.band);
        (0..h).step_by(band).map(move |r| (r, (r + band).min(h)))
    }

    fn col_len(&self) -> usize {
        self.k * self.band * self.out.w
    }
}

thread_local! {
    /// Each pool thread's im2col band and its gradient, kept between calls.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Output positions o in 0..out whose input index o·stride + offset falls in 0..input.
fn valid_range(out: usize, input: usize, stride: usize, offset: isize) -> (usize, usize) {
    let lo = if offset >= 0 { 0 } else { (-offset) as usize }.div_ceil(stride);
    let room = input as isize - offset;
    let hi = if room <= 0 {
        0
    } else {
        (room as usize).div_ceil(stride).min(out)
    };
    (lo.min(hi), hi)
}

/// col [C_g·KH·KW, (oh1−oh0)·OW] for one group's input x [C_g, H, W]: row (c, i, j) holds
/// x[c, oh·sh − ph + i·dh, ow·sw − pw + j·dw] at column (oh−oh0, ow); zero in the padding.
fn im2col_band(g: &Geometry, x: &[f32], (oh0, oh1): (usize, usize), col: &mut [f32]) {
    let (s, ow_n) = (&g.s, g.out.w);
    let (h, w) = (s.input.h, s.input.w);
    let cols = (oh1 - oh0) * ow_n;
    let mut rows = col[..g.k * cols].chunks_exact_mut(cols);
    for plane in x.chunks_exact(h * w).take(g.cin_g) {
        for i in 0..s.kernel[0] {
            let off_h = (i * s.dilation[0]) as isize - s.padding[0] as isize;
            for j in 0..s.kernel[1] {
                let off_w = (j * s.dilation[1]) as isize - s.padding[1] as isize;
                let (lo, hi) = valid_range(ow_n, w, s.stride[1], off_w);
                let row = rows.next().expect("k rows");
                for (oh, out) in (oh0..oh1).zip(row.chunks_exact_mut(ow_n)) {
                    let ih = (oh * s.stride[0]) as isize + off_h;
                    if ih < 0 || ih >= h as isize {
                        out.fill(0.0);
                        continue;
                    }
                    let src = &plane[ih as usize * w..][..w];
                    out[..lo].fill(0.0);
                    out[hi..].fill(0.0);
                    let start = (lo * s.stride[1]) as isize + off_w;
                    if s.stride[1] == 1 {
                        out[lo..hi].copy_from_slice(&src[start as usize..][..hi - lo]);
                    } else {
                        let src = src[start as usize..].iter().step_by(s.stride[1]);
                        out[lo..hi].iter_mut().zip(src).for_each(|(o, &v)| *o = v);
                    }
                }
            }
        }
    }
}

/// The adjoint of `im2col_band`: dx [C_g, H, W] += each value of dcol at the input position it
/// was read from (positions read by several kernel taps sum their gradients).
fn col2im_band(g: &Geometry, dcol: &[f32], (oh0, oh1): (usize, usize), dx: &mut [f32]) {
    let (s, ow_n) = (&g.s, g.out.w);
    let (h, w) = (s.input.h, s.input.w);
    let cols = (oh1 - oh0) * ow_n;
    let mut rows = dcol[..g.k * cols].chunks_exact(cols);
    for plane in dx.chunks_exact_mut(h * w).take(g.cin_g) {
        for i in 0..s.kernel[0] {
            let off_h = (i * s.dilation[0]) as isize - s.padding[0] as isize;
            for j in 0..s.kernel[1] {
                let off_w = (j * s.dilation[1]) as isize - s.padding[1] as isize;
                let (lo, hi) = valid_range(ow_n, w, s.stride[1], off_w);
                let row = rows.next().expect("k rows");
                for (oh, d) in (oh0..oh1).zip(row.chunks_exact(ow_n)) {
                    let ih = (oh * s.stride[0]) as isize + off_h;
                    if ih < 0 || ih >= h as isize || lo == hi {
                        continue;
                    }
                    let dst = &mut plane[ih as usize * w..][..w];
                    let start = ((lo * s.stride[1]) as isize + off_w) as usize;
                    let dst = dst[start..].iter_mut().step_by(s.stride[1]);
                    dst.zip(&d[lo..hi]).for_each(|(o, &v)| *o += v);
                }
            }
        }
    }
}

/// x [N, C_in, H, W], weight [C_out, C_in/g, KH, KW], bias [C_out] → y [N, C_out, OH, OW].
/// Per image, group and band: y_g[:, band] = W_g [C_out/g, k] · col [k, band] (+ bias).
pub fn conv2d_forward(
    s: &Conv2dShape,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) -> Result<()> {
    let (g, _) = s.check(x.len(), weight.len(), bias.map(<[f32]>::len), y.len())?;
    conv2d_forward_tiled(&g, x, weight, bias, y);
    Ok(())
}

fn conv2d_forward_tiled(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let (in_img, ohw) = (g.s.input.image(), g.out.plane());
    let (hw, ow) = (g.s.input.plane(), g.out.w);
    if g.out.is_empty() {
        return;
    }
    y.par_chunks_mut(g.out.image())
        .zip(x.par_chunks(in_img))
        .for_each(|(y, x)| {
            // The sums start from the bias (or zero) so every GEMM accumulates.
            for (co, plane) in y.chunks_exact_mut(ohw).enumerate() {
                plane.fill(bias.map_or(0.0, |b| b[co]));
            }
            SCRATCH.with_borrow_mut(|(col, _)| {
                if !g.s.is_pointwise() && col.len() < g.col_len() {
                    col.resize(g.col_len(), 0.0);
                }
                for gi in 0..g.s.groups {
                    let xg = &x[gi * g.cin_g * hw..][..g.cin_g * hw];
                    let wg = &weight[gi * g.cout_g * g.k..][..g.cout_g * g.k];
                    let yg = &mut y[gi * g.cout_g * ohw..][..g.cout_g * ohw];
                    for band in g.bands() {
                        let cols = (band.1 - band.0) * ow;
                        let (b, ldb) = if g.s.is_pointwise() {
                            (&xg[band.0 * ow..], hw)
                        } else {
                            im2col_band(g, xg, band, col);
                            (&col[..], cols)
                        };
                        let c = &mut yg[band.0 * ow..];
                        let (m, k) = (g.cout_g, g.k);
                        matmul_strided_serial(
                            Trans::N,
                            Trans::N,
                            m,
                            cols,
                            k,
                            wg,
                            k,
                            b,
                            ldb,
                            c,
                            ohw,
                            true,
                        );
                    }
                }
            });
        });
}

/// Images per part of the weight gradient: parts are summed in a fixed order afterwards, so
/// the result does not depend on the thread count. Their partial sums are bounded to about
/// 16 MiB.
fn weight_grad_parts(n: usize, weight_len: usize) -> usize {
    let parts = n.min(8).min((1 << 22) / weight_len.max(1)).max(1);
    n.div_ceil(parts).max(1)
}

/// Given dy [N, C_out, OH, OW] and the forward's x: dx = the input's gradient (overwritten; skip
/// it with None, as for a network's first layer), dweight += Σ dy_g · colᵀ, dbias += Σ dy.
/// Per image, group and band: dW_g += dy_g[:, band] · colᵀ and dcol = W_gᵀ · dy_g[:, band],
/// which col2im adds into dx.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward(
    s: &Conv2dShape,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dweight: &mut [f32],
    dbias: Option<&mut [f32]>,
) -> Result<()> {
    let (g, _) = s.check(
        x.len(),
        weight.len(),
        dbias.as_ref().map(|b| b.len()),
        dy.len(),
    )?;
    check_len(
        "conv2d backward",
        "dweight",
        dweight.len(),
        weight.len(),
        "the weight's shape",
    )?;
    if let Some(dx) = &dx {
        check_len(
            "conv2d backward",
            "dx",
            dx.len(),
            x.len(),
            "the input's shape",
        )?;
    }
    conv2d_backward_tiled(&g, x, weight, dy, dx, dweight, dbias);
    Ok(())
}

fn conv2d_backward_tiled(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dweight: &mut [f32],
    dbias: Option<&mut [f32]>,
) {
    let (in_img, out_img, ohw) = (g.s.input.image(), g.out.image(), g.out.plane());
    if let Some(db) = dbias {
        // dbias[co] += Σ_n Σ_p dy[n, co, p], one channel per task (a fixed sum order).
        db.par_iter_mut().enumerate().for_each(|(co, db)| {
            *db += dy
                .chunks_exact(ohw)
                .skip(co)
                .step_by(g.out.c)
                .map(|p| lanes_sum(p, |v| v))
                .sum::<f32>();
        });
    }
    if g.out.is_empty() {
        return;
    }
    let n = g.s.input.n;
    let per = weight_grad_parts(n, weight.len());
    let parts = n.div_ceil(per);
    let mut partial = vec![0.0f32; parts * weight.len()];
    let dx_parts: Vec<Option<&mut [f32]>> = match dx {
        Some(dx) => dx.chunks_mut(per * in_img).map(Some).collect(),
        None => (0..parts).map(|_| None).collect(),
    };
    partial
        .par_chunks_mut(weight.len())
        .zip(x.par_chunks(per * in_img).zip(dy.par_chunks(per * out_img)))
        .zip(dx_parts)
        .for_each(|((dw, (x, dy)), mut dx)| {
            SCRATCH.with_borrow_mut(|(col, dcol)| {
                for buf in [&mut *col, &mut *dcol] {
                    if buf.len() < g.col_len() {
                        buf.resize(g.col_len(), 0.0);
                    }
                }
                for (i, (x, dy)) in x
                    .chunks_exact(in_img)
                    .zip(dy.chunks_exact(out_img))
                    .enumerate()
                {
                    let dx = dx.as_deref_mut().map(|d| &mut d[i * in_img..][..in_img]);
                    conv2d_backward_image(g, x, weight, dy, dx, dw, col, dcol);
                }
            });
        });
    for p in partial.chunks_exact(weight.len()) {
        dweight.iter_mut().zip(p).for_each(|(d, &v)| *d += v);
    }
}

/// One image: x [C_in, H, W], dy [C_out, OH, OW]; dw += its weight gradient; dx = its input's.
#[allow(clippy::too_many_arguments)]
fn conv2d_backward_image(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    mut dx: Option<&mut [f32]>,
    dw: &mut [f32],
    col: &mut [f32],
    dcol: &mut [f32],
) {
    let (hw, ohw, ow, k, m) = (g.s.input.plane(), g.out.plane(), g.out.w, g.k, g.cout_g);
    let pointwise = g.s.is_pointwise();
    if let Some(dx) = dx.as_deref_mut() {
        dx.fill(0.0);
    }
    for gi in 0..g.s.groups {
        let xg = &x[gi * g.cin_g * hw..][..g.cin_g * hw];
        let wg = &weight[gi * m * k..][..m * k];
        let dwg = &mut dw[gi * m * k..][..m * k];
        let dyg = &dy[gi * m * ohw..][..m * ohw];
        let mut dxg = dx
            .as_deref_mut()
            .map(|d| &mut d[gi * g.cin_g * hw..][..g.cin_g * hw]);
        for band in g.bands() {
            let cols = (band.1 - band.0) * ow;
            let dyb = &dyg[band.0 * ow..];
            let (b, ldb) = if pointwise {
                (&xg[band.0 * ow..], hw)
            } else {
                im2col_band(g, xg, band, col);
                (&col[..], cols)
            };
            // dW_g [m, k] += dy_band [m, cols] · colᵀ (col is [k, cols]).
            matmul_strided_serial(
                Trans::N,
                Trans::T,
                m,
                k,
                cols,
                dyb,
                ohw,
                b,
                ldb,
                dwg,
                k,
                true,
            );
            let Some(dxg) = dxg.as_deref_mut() else {
                continue;
            };
            // dcol [k, cols] = W_gᵀ (W_g is [m, k]) · dy_band [m, cols].
            if pointwise {
                let c = &mut dxg[band.0 * ow..];
                matmul_strided_serial(
                    Trans::T,
                    Trans::N,
                    k,
                    cols,
                    m,
                    wg,
                    k,
                    dyb,
                    ohw,
                    c,
                    hw,
                    false,
                );
            } else {
                matmul_strided_serial(
                    Trans::T,
                    Trans::N,
                    k,
                    cols,
                    m,
                    wg,
                    k,
                    dyb,
                    ohw,
                    dcol,
                    cols,
                    false,
                );
                col2im_band(g, dcol, band, dxg);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::io::TensorFile;
    use std::path::Path;

    pub(crate) fn fixtures(name: &str) -> TensorFile {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cnn");
        TensorFile::load(&dir.join(name)).expect("fixture file (tools/gen_cnn_fixtures.py)")
    }

    /// |got − want| ≤ tol · max(1, max |want|) everywhere (relative to the tensor's scale); a
    /// NaN anywhere fails.
    #[track_caller]
    pub(crate) fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let scale = want.iter().fold(1f32, |m, w| m.max(w.abs()));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let err = (g - w).abs();
            assert!(
                err <= tol * scale,
                "{what}[{i}]: {g} vs {w}, error {err:.3e} > {tol:.0e} × {scale}"
            );
        }
    }

    /// The cases of `tools/gen_cnn_fixtures.py`'s `conv()`: (name, C_out, kernel, stride,
    /// padding, dilation, groups); N, C_in, H, W come from the input's shape.
    type Case = (
        &'static str,
        usize,
        [usize; 2],
        [usize; 2],
        [usize; 2],
        [usize; 2],
        usize,
    );
    const CASES: [Case; 7] = [
        ("basic", 4, [3, 3], [1, 1], [1, 1], [1, 1], 1),
        ("stride2", 5, [3, 2], [2, 2], [0, 1], [1, 1], 1),
        ("dilation2", 3, [3, 3], [1, 1], [2, 2], [2, 2], 1),
        ("groups2", 6, [3, 3], [2, 2], [1, 1], [1, 1], 2),
        ("depthwise", 8, [3, 3], [1, 1], [1, 1], [1, 1], 4),
        ("pointwise", 4, [1, 1], [1, 1], [0, 0], [1, 1], 1),
        ("mixed", 4, [5, 3], [2, 1], [2, 0], [1, 2], 2),
    ];

    /// Runs every fixture case through forward and backward with im2col bands of at most
    /// `col_cap` values and compares outputs and all three gradients with PyTorch's.
    fn check_cases(col_cap: usize) {
        let f = fixtures("conv.safetensors");
        for (name, cout, kernel, stride, padding, dilation, groups) in CASES {
            let t = |what: &str| f.get(&format!("conv.{name}.{what}")).expect(what);
            let xt = t("x");
            let [n, c, h, w] = xt.shape[..] else {
                panic!("4-d input")
            };
            let s = Conv2dShape {
                input: Nchw::new(n, c, h, w),
                out_channels: cout,
                kernel,
                stride,
                padding,
                dilation,
                groups,
            };
            let out = s.output().unwrap();
            assert_eq!(
                t("y").shape,
                [out.n, out.c, out.h, out.w],
                "{name}: output shape"
            );
            let g = Geometry::new(&s, out, col_cap);
            let bias = f
                .get(&format!("conv.{name}.bias"))
                .ok()
                .map(|b| b.data.as_slice());
            let weight = &t("weight").data;
            let mut y = vec![f32::NAN; out.len()];
            conv2d_forward_tiled(&g, &xt.data, weight, bias, &mut y);
            assert_close(&format!("{name} y (cap {col_cap})"), &y, &t("y").data, 1e-5);

            let mut dx = vec![f32::NAN; xt.data.len()];
            let mut dw = vec![0.5; weight.len()]; // gradients accumulate
            let mut db = vec![0.5; cout];
            let dbias = bias.is_some().then_some(db.as_mut_slice());
            conv2d_backward_tiled(
                &g,
                &xt.data,
                weight,
                &t("dy").data,
                Some(&mut dx),
                &mut dw,
                dbias,
            );
            assert_close(&format!("{name} dx"), &dx, &t("dx").data, 1e-5);
            let want: Vec<f32> = t("dweight").data.iter().map(|v| v + 0.5).collect();
            assert_close(&format!("{name} dweight"), &dw, &want, 1e-5);
            if bias.is_some() {
                let want: Vec<f32> = t("dbias").data.iter().map(|v| v + 0.5).collect();
                assert_close(&format!("{name} dbias"), &db, &want, 1e-5);
            }
        }
    }

    #[test]
    fn conv2d_matches_pytorch_whole_images() {
        check_cases(COL_TILE_FLOATS);
    }

    #[test]
    fn conv2d_matches_pytorch_one_output_row_per_band() {
        // A cap below one row's im2col forces bands of one output row: the tiling path.
        check_cases(1);
    }

    #[test]
    fn conv2d_backward_without_dx_still_gives_weight_grads() {
        let f = fixtures("conv.safetensors");
        let t = |what: &str| &f.get(&format!("conv.basic.{what}")).expect(what).data;
        let s = Conv2dShape {
            input: Nchw::new(2, 3, 7, 9),
            out_channels: 4,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
            dilation: [1, 1],
            groups: 1,
        };
        let mut dw = vec![0.0; s.weight_len()];
        conv2d_backward(&s, t("x"), t("weight"), t("dy"), None, &mut dw, None).unwrap();
        assert_close("dweight", &dw, t("dweight"), 1e-5);
    }

    #[test]
    fn conv2d_rejects_bad_shapes_with_clear_errors() {
        let base = Conv2dShape {
            input: Nchw::new(1, 4, 5, 5),
            out_channels: 6,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
        };
        let err = |s: Conv2dShape| s.output().unwrap_err().to_string();
        let e = err(Conv2dShape { groups: 3, ..base });
        assert!(e.contains("divisible by groups 3"), "{e}");
        let e = err(Conv2dShape {
            out_channels: 5,
            groups: 2,
            ..base
        });
        assert!(e.contains("out_channels 5"), "{e}");
        let e = err(Conv2dShape {
            kernel: [7, 3],
            ..base
        });
        assert!(e.contains("more than the padded input's 5"), "{e}");
        let e = err(Conv2dShape {
            kernel: [3, 3],
            dilation: [1, 3],
            ..base
        });
        assert!(e.contains("spans 7 along the width"), "{e}");
        let e = err(Conv2dShape {
            stride: [0, 1],
            ..base
        });
        assert!(e.contains("stride"), "{e}");
        assert!(err(Conv2dShape { groups: 0, ..base }).contains("groups 0"));
        let e = err(Conv2dShape {
            input: Nchw::new(1, 4, 0, 5),
            padding: [1, 1],
            kernel: [1, 1],
            ..base
        });
        assert!(e.contains("height and width must be ≥ 1"), "{e}");
        // Fits once padded.
        assert_eq!(
            Conv2dShape {
                kernel: [7, 7],
                padding: [1, 1],
                ..base
            }
            .output()
            .unwrap()
            .h,
            1
        );
        // Slices of the wrong length are errors too, not panics.
        let (x, w) = (vec![0.0; 99], vec![0.0; base.weight_len()]);
        let mut y = vec![0.0; 6 * 9];
        let e = conv2d_forward(&base, &x, &w, None, &mut y)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the input has 99 values, expected 100 ([1, 4, 5, 5])"),
            "{e}"
        );
        let x = vec![0.0; 100];
        conv2d_forward(&base, &x, &w, None, &mut y).unwrap();
        let mut dw = vec![0.0; 3];
        let e = conv2d_backward(&base, &x, &w, &y, None, &mut dw, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("dweight"), "{e}");
    }

    #[test]
    fn valid_range_matches_a_direct_scan() {
        for out in 0..6 {
            for input in 1..7 {
                for stride in 1..4 {
                    for offset in -5..5isize {
                        let want: Vec<usize> = (0..out)
                            .filter(|&o| {
                                (0..input as isize)
                                    .contains(&(o as isize * stride as isize + offset))
                            })
                            .collect();
                        let (lo, hi) = valid_range(out, input, stride, offset);
                        assert_eq!(
                            (lo..hi).collect::<Vec<_>>(),
                            want,
                            "{out} {input} {stride} {offset}"
                        );
                    }
                }
            }
        }
    }
}
