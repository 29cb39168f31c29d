//! 2-D convolution over NCHW images (PyTorch's `conv2d`: stride, padding, dilation, groups):
//! im2col + the GEMM. Small images are batched, so one GEMM on all threads covers many images
//! (ResNet's last stages at 32×32 are 4×4 or smaller: one image alone is a GEMM of 16 columns
//! or fewer); an image whose im2col matrix exceeds `COL_TILE_FLOATS` goes a band of output rows
//! at a time, so the buffer is bounded whatever the image size; images with enough output
//! positions for a GEMM of their own run one per task (`PER_IMAGE_MIN_POSITIONS`). The buffers
//! are reused across calls.
//!
//! `conv2d_forward` and `conv2d_backward` are the entry points for every algorithm: a kernel
//! that reaches past a small map is first cut to its live taps (`LiveTaps`), then 3×3 stride-1
//! convolutions that gain from it go by Winograd (`winograd.rs`), the rest by im2col here.

use super::gemm::Gemm;
use super::math::lanes_sum;
use super::{
    add_parts, copy_run, fill_run, for_each_row, prefix, rows_per_task, weight_grad_parts,
};
use crate::Result;
use rayon::prelude::*;

pub(crate) use super::shape::{check_len, out_len};
pub use super::shape::{Conv2dShape, Nchw};

impl Conv2dShape {
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

/// At most this many values (4 MiB) in one GEMM's im2col matrix, or in its [C_out/g, columns]
/// output: small images are batched up to it, one image that exceeds it goes a band of output
/// rows at a time. (Measured on the MNIST net and ResNet-18 at 32×32: 1 MiB and 8 MiB were
/// both slower.)
const COL_TILE_FLOATS: usize = 1 << 20;

/// Images with at least this many output positions, and an im2col matrix within
/// `BATCH_FLOATS`, run one per task, each GEMM on its own thread (the MNIST net's 24×24 and
/// 26×26): batching them adds copies into and out of NCHW and a wait for both threads at every
/// chunk, and measured slower and less steady on this shared 2-core machine.
const PER_IMAGE_MIN_POSITIONS: usize = 512;

/// The part of the batch one GEMM per group covers: whole images `img0..img0 + imgs`, or output
/// rows `rows` of one image when a single image's im2col exceeds the cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Chunk {
    img0: usize,
    imgs: usize,
    rows: (usize, usize),
}

impl Chunk {
    /// Output positions of one image in the chunk: (rows.1 − rows.0) · OW.
    fn seg(&self, ow: usize) -> usize {
        (self.rows.1 - self.rows.0) * ow
    }

    /// The GEMM's n: imgs · seg.
    fn cols(&self, ow: usize) -> usize {
        self.imgs * self.seg(ow)
    }
}

/// What the kernels derive once per call: per-group sizes and how the batch is chunked.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    s: Conv2dShape,
    out: Nchw,
    /// C_in / groups, C_out / groups.
    cin_g: usize,
    cout_g: usize,
    /// The GEMM's k: C_in/groups · KH · KW.
    k: usize,
    /// Whole images per chunk (1 when an image is banded).
    imgs: usize,
    /// Output rows per chunk (OH unless an image is banded).
    band: usize,
    /// Images run one per task with serial GEMMs instead of in batched chunks.
    per_image: bool,
}

impl Geometry {
    fn new(s: &Conv2dShape, out: Nchw, cap: usize) -> Self {
        let (k, cout_g) = (s.col_rows(), s.out_channels / s.groups);
        // The larger of the im2col matrix and the GEMM's output bounds a chunk.
        let per_row = k.max(cout_g) * out.w;
        let per_image = per_row * out.h;
        let (imgs, band) = if per_image <= cap {
            ((cap / per_image.max(1)).clamp(1, out.n.max(1)), out.h)
        } else {
            (1, (cap / per_row.max(1)).clamp(1, out.h.max(1)))
        };
        let per_image = out.plane() >= PER_IMAGE_MIN_POSITIONS
            && imgs > 1
            && out.n >= rayon::current_num_threads();
        Geometry {
            s: *s,
            out,
            cin_g: s.input.c / s.groups,
            cout_g,
            k,
            imgs,
            band,
            per_image,
        }
    }

    /// The chunks in order: groups of whole images, or bands of one image.
    fn chunks(&self) -> impl Iterator<Item = Chunk> {
        let (n, h, imgs, band) = (self.out.n, self.out.h, self.imgs, self.band);
        (0..n).step_by(imgs).flat_map(move |img0| {
            (0..h).step_by(band).map(move |r| Chunk {
                img0,
                imgs: imgs.min(n - img0),
                rows: (r, (r + band).min(h)),
            })
        })
    }

    /// Whether the chunk is one whole image: its group blocks of x and y are then contiguous
    /// matrices ([C_in/g, H·W] and [C_out/g, OH·OW]) the GEMMs read and write in place.
    fn whole_image(&self, ch: Chunk) -> bool {
        ch.imgs == 1 && ch.rows == (0, self.out.h)
    }

    /// One whole image as a chunk.
    fn image(&self, i: usize) -> Chunk {
        Chunk {
            img0: i,
            imgs: 1,
            rows: (0, self.out.h),
        }
    }

    /// A pointwise kernel on a whole image multiplies x's group block as it is: no im2col.
    fn reads_x_in_place(&self, ch: Chunk) -> bool {
        self.s.is_pointwise() && self.whole_image(ch)
    }
}

/// Buffers reused across calls: the im2col matrix, its gradient, and a GEMM output (or dy)
/// gathered as [C_out/g, columns].
#[derive(Default)]
struct Scratch {
    col: Vec<f32>,
    dcol: Vec<f32>,
    out: Vec<f32>,
}

thread_local! {
    /// The calling thread's buffers, taken out while a call runs (so a nested call on the same
    /// thread, from inside rayon, finds an empty one instead of a borrowed one).
    static SCRATCH: std::cell::Cell<Scratch> = const {
        std::cell::Cell::new(Scratch {
            col: Vec::new(),
            dcol: Vec::new(),
            out: Vec::new(),
        })
    };
}

/// Output positions o in 0..out whose input index o·stride + offset falls in 0..input.
pub(crate) fn valid_range(
    out: usize,
    input: usize,
    stride: usize,
    offset: isize,
) -> (usize, usize) {
    let lo = if offset >= 0 { 0 } else { (-offset) as usize }.div_ceil(stride);
    let room = input as isize - offset;
    let hi = if room <= 0 {
        0
    } else {
        (room as usize).div_ceil(stride).min(out)
    };
    (lo.min(hi), hi)
}

/// One contiguous piece of a kernel tap's reads: `len` output positions from `dst` (in one
/// image's segment of a chunk) read the inputs from `src` on (in one input plane), `stride`
/// apart.
#[derive(Clone, Copy, Debug)]
struct Run {
    src: usize,
    dst: usize,
    len: usize,
}

/// Where every kernel tap (i, j) reads, for output rows `rows` of any image and channel: the
/// same for all of them, so it is worked out once per chunk instead of once per image and
/// channel (ResNet's 1×1 and 2×2 outputs make that overhead most of im2col's time otherwise).
struct TapRuns {
    runs: Vec<Run>,
    /// Tap t's runs are `runs[first[t]..first[t + 1]]`.
    first: Vec<usize>,
    /// Whether tap t reads a value for every output position (no padding to zero).
    full: Vec<bool>,
    /// Input positions between a run's consecutive reads: the width stride.
    stride: usize,
    /// Output positions per image: (rows.1 − rows.0) · OW.
    seg: usize,
}

impl TapRuns {
    fn new(s: &Conv2dShape, ow_n: usize, (oh0, oh1): (usize, usize)) -> TapRuns {
        let (h, w) = (s.input.h, s.input.w);
        let seg = (oh1 - oh0) * ow_n;
        let mut t = TapRuns {
            runs: Vec::new(),
            first: vec![0],
            full: Vec::new(),
            stride: s.stride[1],
            seg,
        };
        for i in 0..s.kernel[0] {
            let off_h = (i * s.dilation[0]) as isize - s.padding[0] as isize;
            for j in 0..s.kernel[1] {
                let off_w = (j * s.dilation[1]) as isize - s.padding[1] as isize;
                let (lo, hi) = valid_range(ow_n, w, s.stride[1], off_w);
                let mut covered = 0;
                for oh in oh0..oh1 {
                    let ih = (oh * s.stride[0]) as isize + off_h;
                    if ih < 0 || ih >= h as isize || lo == hi {
                        continue;
                    }
                    t.runs.push(Run {
                        src: ih as usize * w + ((lo * s.stride[1]) as isize + off_w) as usize,
                        dst: (oh - oh0) * ow_n + lo,
                        len: hi - lo,
                    });
                    covered += hi - lo;
                }
                t.first.push(t.runs.len());
                t.full.push(covered == seg);
            }
        }
        t
    }

    fn tap(&self, t: usize) -> &[Run] {
        &self.runs[self.first[t]..self.first[t + 1]]
    }

    /// out [seg] = what tap t reads from one input plane, zero in the padding.
    #[inline(always)]
    fn gather(&self, t: usize, plane: &[f32], out: &mut [f32]) {
        if !self.full[t] {
            fill_run(out, 0.0);
        }
        for r in self.tap(t) {
            let dst = &mut out[r.dst..][..r.len];
            match (self.stride, r.len) {
                (_, 1) => dst[0] = plane[r.src],
                (1, _) => copy_run(dst, &plane[r.src..][..r.len]),
                // Stride 2 (ResNet's stem and its downsampling convolutions) as pairs: a
                // loop the compiler turns into vector shuffles.
                (2, _) => {
                    let src = plane[r.src..][..2 * r.len - 1].chunks(2);
                    dst.iter_mut().zip(src).for_each(|(o, pair)| *o = pair[0]);
                }
                (st, _) => {
                    let src = plane[r.src..].iter().step_by(st);
                    dst.iter_mut().zip(src).for_each(|(o, &v)| *o = v);
                }
            }
        }
    }

    /// The adjoint of `gather`: plane[each position tap t read] += its value of d [seg].
    fn scatter_add(&self, t: usize, d: &[f32], plane: &mut [f32]) {
        for r in self.tap(t) {
            let d = &d[r.dst..][..r.len];
            match (self.stride, r.len) {
                (_, 1) => plane[r.src] += d[0],
                (1, _) => {
                    let dst = &mut plane[r.src..][..r.len];
                    dst.iter_mut().zip(d).for_each(|(o, &v)| *o += v);
                }
                (st, _) => {
                    let dst = plane[r.src..].iter_mut().step_by(st);
                    dst.zip(d).for_each(|(o, &v)| *o += v);
                }
            }
        }
    }
}

avx512_dispatch! {
    /// `TapRuns::gather` compiled for the wide instruction sets as well: its copies, fills and
    /// strided reads are most of im2col's time.
    fn gather_tap(taps: &TapRuns, t: usize, plane: &[f32], out: &mut [f32]) {
        taps.gather(t, plane, out)
    }
}

/// col [C_g·KH·KW, imgs·seg] for group `gi` of the chunk's images: row (c, i, j), column
/// (image, oh − oh0, ow) holds x[image, gi·C_g + c, oh·sh − ph + i·dh, ow·sw − pw + j·dw]; zero
/// in the padding. Rows in parallel when `parallel`.
fn im2col(
    g: &Geometry,
    x: &[f32],
    ch: Chunk,
    gi: usize,
    taps: &TapRuns,
    col: &mut [f32],
    parallel: bool,
) {
    let _span = crate::backend::profile::span("im2col");
    let (hw, in_img) = (g.s.input.plane(), g.s.input.image());
    let n_taps = g.s.kernel[0] * g.s.kernel[1];
    let cols = ch.cols(g.out.w);
    for_each_row(&mut col[..g.k * cols], cols, parallel, |r, row| {
        let (c, tap) = (r / n_taps, r % n_taps);
        for (img, out) in row.chunks_exact_mut(taps.seg).enumerate() {
            let plane = &x[(ch.img0 + img) * in_img + (gi * g.cin_g + c) * hw..][..hw];
            gather_tap(taps, tap, plane, out);
        }
    });
}

/// The GEMM's [k, columns] operand for group `gi` of the chunk: x's group block itself for a
/// pointwise kernel on a whole image, else its im2col, built in `col`.
#[allow(clippy::too_many_arguments)]
fn im2col_or_x<'a>(
    g: &Geometry,
    x: &'a [f32],
    ch: Chunk,
    gi: usize,
    taps: &TapRuns,
    col: &'a mut Vec<f32>,
    parallel: bool,
) -> &'a [f32] {
    if g.reads_x_in_place(ch) {
        let hw = g.s.input.plane();
        &x[ch.img0 * g.s.input.image() + gi * g.cin_g * hw..][..g.k * hw]
    } else {
        let col = prefix(col, g.k * ch.cols(g.out.w));
        im2col(g, x, ch, gi, taps, col, parallel);
        col
    }
}

/// The adjoint of `im2col`: dx[image, gi·C_g + c] += each value of dcol's rows (c, ·, ·) at the
/// position it was read from; `dx` holds the chunk's images. Planes in parallel when `parallel`.
#[allow(clippy::too_many_arguments)]
fn col2im(
    g: &Geometry,
    dcol: &[f32],
    ch: Chunk,
    gi: usize,
    taps: &TapRuns,
    dx: &mut [f32],
    parallel: bool,
) {
    let _span = crate::backend::profile::span("col2im");
    let (hw, in_img, cin) = (g.s.input.plane(), g.s.input.image(), g.s.input.c);
    let n_taps = g.s.kernel[0] * g.s.kernel[1];
    let cols = ch.cols(g.out.w);
    for_each_row(&mut dx[..ch.imgs * in_img], hw, parallel, |p, plane| {
        if (p % cin) / g.cin_g != gi {
            return;
        }
        let (img, c) = (p / cin, p % cin - gi * g.cin_g);
        for tap in 0..n_taps {
            let d = &dcol[(c * n_taps + tap) * cols + img * taps.seg..][..taps.seg];
            taps.scatter_add(tap, d, plane);
        }
    });
}

/// y[image, gi·C_out/g + co, rows] = out[co, (image, ·)] (+ bias[co]): the chunk's GEMM output
/// back into NCHW, one task per output plane.
fn scatter_output(
    g: &Geometry,
    out: &[f32],
    ch: Chunk,
    gi: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let _span = crate::backend::profile::span("conv output to nchw");
    let (ow, cout, out_img) = (g.out.w, g.out.c, g.out.image());
    let (seg, cols) = (ch.seg(ow), ch.cols(ow));
    y[ch.img0 * out_img..][..ch.imgs * out_img]
        .par_chunks_mut(g.out.plane())
        .with_min_len(rows_per_task(seg))
        .enumerate()
        .filter(|(p, _)| (p % cout) / g.cout_g == gi)
        .for_each(|(p, plane)| {
            let (img, co) = (p / cout, p % cout - gi * g.cout_g);
            let src = &out[co * cols + img * seg..][..seg];
            let dst = &mut plane[ch.rows.0 * ow..][..seg];
            let b = bias.map_or(0.0, |b| b[gi * g.cout_g + co]);
            dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v + b);
        });
}

/// out [C_out/g, imgs·seg] = dy[image, gi·C_out/g + co, rows]: the chunk's output gradient as
/// the GEMMs' matrix, one task per row.
fn gather_output_grad(g: &Geometry, dy: &[f32], ch: Chunk, gi: usize, out: &mut [f32]) {
    let _span = crate::backend::profile::span("conv dy from nchw");
    let (ow, ohw, out_img) = (g.out.w, g.out.plane(), g.out.image());
    let (seg, cols) = (ch.seg(ow), ch.cols(ow));
    out[..g.cout_g * cols]
        .par_chunks_mut(cols)
        .with_min_len(rows_per_task(cols))
        .enumerate()
        .for_each(|(co, row)| {
            for (img, dst) in row.chunks_exact_mut(seg).enumerate() {
                let plane = (ch.img0 + img) * out_img + (gi * g.cout_g + co) * ohw;
                dst.copy_from_slice(&dy[plane + ch.rows.0 * ow..][..seg]);
            }
        });
}

/// The kernel taps that read the input somewhere, when some read only padding: on maps smaller
/// than the kernel's reach (ResNet-18's 1×1 maps at 32×32, where a 3×3 kernel with padding 1
/// reads only its centre) the convolution is the one with the kernel cut to these taps and the
/// padding reduced to match, which skips products with zeros (8 of 9 there).
struct LiveTaps {
    /// The convolution with the cut kernel.
    shape: Conv2dShape,
    /// The live kernel rows and columns.
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
}

impl LiveTaps {
    fn of(s: &Conv2dShape, out: &Nchw) -> Option<LiveTaps> {
        // (first live tap, end, padding of the cut kernel) along one axis.
        let axis = |a: usize, input: usize, outputs: usize| {
            let (k, stride, pad, dil) = (s.kernel[a], s.stride[a], s.padding[a], s.dilation[a]);
            // Tap t reads input rows t·dil − pad + o·stride for o in 0..outputs.
            let live = |t: &usize| {
                let first = (t * dil) as isize - pad as isize;
                first + ((outputs - 1) * stride) as isize >= 0 && first < input as isize
            };
            let lo = (0..k).find(live)?;
            let hi = (0..k).rfind(live)? + 1;
            Some((lo, hi, pad.checked_sub(lo * dil)?))
        };
        if out.is_empty() {
            return None;
        }
        let (r0, r1, ph) = axis(0, s.input.h, out.h)?;
        let (c0, c1, pw) = axis(1, s.input.w, out.w)?;
        if (r0, r1, c0, c1) == (0, s.kernel[0], 0, s.kernel[1]) {
            return None;
        }
        let shape = Conv2dShape {
            kernel: [r1 - r0, c1 - c0],
            padding: [ph, pw],
            ..*s
        };
        let same = shape.output().ok()? == *out;
        same.then_some(LiveTaps {
            shape,
            rows: r0..r1,
            cols: c0..c1,
        })
    }

    /// The weight [C_out, C_in/g, KH, KW] cut to the live taps, one output channel per task.
    fn cut(&self, s: &Conv2dShape, weight: &[f32]) -> Vec<f32> {
        let (full, cut) = (s.kernel[0] * s.kernel[1], self.rows.len() * self.cols.len());
        let per_channel = s.input.c / s.groups;
        let mut out = vec![0f32; self.shape.weight_len()];
        out.par_chunks_mut(per_channel * cut)
            .zip(weight.par_chunks(per_channel * full))
            .for_each(|(out, w)| {
                for (dst, filter) in out.chunks_exact_mut(cut).zip(w.chunks_exact(full)) {
                    for (t, d) in self.taps(s).zip(dst.iter_mut()) {
                        *d = filter[t];
                    }
                }
            });
        out
    }

    /// Positions of the live taps in a full filter, in the cut filter's order.
    fn taps<'a>(&'a self, s: &Conv2dShape) -> impl Iterator<Item = usize> + 'a {
        let kw = s.kernel[1];
        self.rows
            .clone()
            .flat_map(move |r| self.cols.clone().map(move |c| r * kw + c))
    }

    /// dweight += the cut kernel's gradient at the live taps (the others' gradient is 0: they
    /// multiply padding).
    fn add_gradient(&self, s: &Conv2dShape, dcut: &[f32], dweight: &mut [f32]) {
        let (full, cut) = (s.kernel[0] * s.kernel[1], self.rows.len() * self.cols.len());
        let per_channel = s.input.c / s.groups;
        dweight
            .par_chunks_mut(per_channel * full)
            .zip(dcut.par_chunks(per_channel * cut))
            .for_each(|(dw, d)| {
                for (filter, g) in dw.chunks_exact_mut(full).zip(d.chunks_exact(cut)) {
                    for (t, &g) in self.taps(s).zip(g) {
                        filter[t] += g;
                    }
                }
            });
    }
}

/// x [N, C_in, H, W], weight [C_out, C_in/g, KH, KW], bias [C_out] → y [N, C_out, OH, OW].
/// Per chunk of images and group: y_g[:, chunk] = W_g [C_out/g, k] · col [k, chunk] (+ bias),
/// one GEMM over all threads.
pub fn conv2d_forward(
    s: &Conv2dShape,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) -> Result<()> {
    conv2d_forward_with(s, x, weight, bias, y, super::winograd::enabled(), None)
}

/// `conv2d_forward`, by Winograd where `winograd` and the shape allow, else by im2col; a kernel
/// cut to its live taps is taken from `prepared` (or cut and kept there) when one is given.
pub(crate) fn conv2d_forward_with(
    s: &Conv2dShape,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    winograd: bool,
    prepared: Option<&mut PreparedWeight>,
) -> Result<()> {
    let (g, out) = s.check(x.len(), weight.len(), bias.map(<[f32]>::len), y.len())?;
    if let Some(live) = LiveTaps::of(s, &out) {
        let fresh;
        let cut = match prepared {
            Some(prepared) => prepared.cut(s, &live, weight),
            None => {
                fresh = live.cut(s, weight);
                &fresh
            }
        };
        return conv2d_forward_with(&live.shape, x, cut, bias, y, winograd, None);
    }
    if winograd && super::winograd::applies(s, &out) {
        super::winograd::forward(s, out, x, weight, bias, y);
    } else {
        conv2d_forward_tiled(&g, x, weight, bias, y);
    }
    Ok(())
}

/// A convolution's kernel cut to its live taps (`LiveTaps`), kept between forwards: cutting reads
/// the whole weight (at 32×32, stage 4's 3×3 kernels cut to their centres read 33 MB a forward,
/// 8 % of ResNet-18's inference). Valid for one input shape and one weight: the owner clears
/// it whenever the weight may change (`Conv2d` does, on every mutable access).
#[derive(Clone, Debug, Default)]
pub struct PreparedWeight {
    shape: Option<Conv2dShape>,
    cut: Option<Vec<f32>>,
}

impl PreparedWeight {
    /// Forgets the cut kernel: the weight has changed (or may have).
    pub fn clear(&mut self) {
        *self = PreparedWeight::default();
    }

    /// Whether a cut kernel is kept.
    pub fn is_empty(&self) -> bool {
        self.cut.is_none()
    }

    /// The kept cut kernel, if it was cut for `s`.
    fn cut_for(&self, s: &Conv2dShape) -> Option<&[f32]> {
        (self.shape == Some(*s))
            .then_some(self.cut.as_deref())
            .flatten()
    }

    /// The kernel cut for `s`: the kept one, or `weight` cut now and kept (replacing a cut for
    /// another shape).
    fn cut(&mut self, s: &Conv2dShape, live: &LiveTaps, weight: &[f32]) -> &[f32] {
        if self.shape != Some(*s) {
            *self = PreparedWeight {
                shape: Some(*s),
                cut: None,
            };
        }
        self.cut.get_or_insert_with(|| live.cut(s, weight))
    }
}

/// `conv2d_forward` with the kernel cut to its live taps taken from `prepared`, or cut and kept
/// there when it holds none for this shape. The caller guarantees that `weight` is the weight
/// `prepared` was filled from, unchanged, or that `prepared` is empty.
pub fn conv2d_forward_prepared(
    s: &Conv2dShape,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    prepared: &mut PreparedWeight,
) -> Result<()> {
    let winograd = super::winograd::enabled();
    conv2d_forward_with(s, x, weight, bias, y, winograd, Some(prepared))
}

fn conv2d_forward_tiled(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    if g.per_image {
        return conv2d_forward_per_image(g, x, weight, bias, y);
    }
    let (out_img, ohw, ow) = (g.out.image(), g.out.plane(), g.out.w);
    let (m, k) = (g.cout_g, g.k);
    let mut sc = SCRATCH.take();
    for ch in g.chunks() {
        let cols = ch.cols(ow);
        // Where each kernel tap reads: the same for every group of the chunk.
        let taps = TapRuns::new(&g.s, ow, ch.rows);
        for gi in 0..g.s.groups {
            let wg = &weight[gi * m * k..][..m * k];
            let b = im2col_or_x(g, x, ch, gi, &taps, &mut sc.col, true);
            let product = Gemm::nn(m, cols, k);
            if g.whole_image(ch) {
                // y's group block is the product's [m, OH·OW] matrix: the sums start from the bias.
                let yg = &mut y[ch.img0 * out_img + gi * m * ohw..][..m * ohw];
                match bias {
                    Some(bias) => {
                        yg.par_chunks_mut(ohw)
                            .zip(&bias[gi * m..][..m])
                            .for_each(|(plane, &b)| plane.fill(b));
                        product.accumulate().run(wg, b, yg);
                    }
                    None => product.run(wg, b, yg),
                }
            } else {
                let out = prefix(&mut sc.out, m * cols);
                product.run(wg, b, out);
                scatter_output(g, out, ch, gi, bias, y);
            }
        }
    }
    SCRATCH.set(sc);
}

/// The forward with one task per image: im2col and the GEMMs on that task's thread, the
/// product written into y in place.
fn conv2d_forward_per_image(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let ohw = g.out.plane();
    let _span = crate::backend::profile::span("conv2d forward (an image per task)");
    let (m, k) = (g.cout_g, g.k);
    let taps = TapRuns::new(&g.s, g.out.w, (0, g.out.h));
    y.par_chunks_mut(g.out.image())
        .enumerate()
        .for_each(|(i, y)| {
            let mut sc = SCRATCH.take();
            let ch = g.image(i);
            for gi in 0..g.s.groups {
                let wg = &weight[gi * m * k..][..m * k];
                let b = im2col_or_x(g, x, ch, gi, &taps, &mut sc.col, false);
                let yg = &mut y[gi * m * ohw..][..m * ohw];
                match bias {
                    Some(bias) => {
                        yg.chunks_exact_mut(ohw)
                            .zip(&bias[gi * m..][..m])
                            .for_each(|(plane, &b)| plane.fill(b));
                        Gemm::nn(m, ohw, k).accumulate().run_serial(wg, b, yg);
                    }
                    None => Gemm::nn(m, ohw, k).run_serial(wg, b, yg),
                }
            }
            SCRATCH.set(sc);
        });
}

/// The backward with one task per part of the batch (`weight_grad_parts`), its images one at a
/// time on that task's thread: dW into the part's own partial sums, dx into its images.
#[allow(clippy::too_many_arguments)]
fn conv2d_backward_per_image(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dweight: &mut [f32],
) {
    let (in_img, out_img, ohw, hw) = (
        g.s.input.image(),
        g.out.image(),
        g.out.plane(),
        g.s.input.plane(),
    );
    let _span = crate::backend::profile::span("conv2d backward (an image per task)");
    let (m, k, n) = (g.cout_g, g.k, g.out.n);
    let taps = TapRuns::new(&g.s, g.out.w, (0, g.out.h));
    let per = weight_grad_parts(n, weight.len());
    let parts = n.div_ceil(per);
    let mut partial = vec![0.0f32; parts * weight.len()];
    let dx_parts: Vec<Option<&mut [f32]>> = match dx {
        Some(dx) => dx.chunks_mut(per * in_img).map(Some).collect(),
        None => (0..parts).map(|_| None).collect(),
    };
    partial
        .par_chunks_mut(weight.len())
        .zip(dx_parts)
        .enumerate()
        .for_each(|(part, (dw, mut dx))| {
            let mut sc = SCRATCH.take();
            for i in part * per..((part + 1) * per).min(n) {
                let ch = g.image(i);
                let mut dx_img = dx
                    .as_deref_mut()
                    .map(|d| &mut d[(i - part * per) * in_img..][..in_img]);
                for gi in 0..g.s.groups {
                    let wg = &weight[gi * m * k..][..m * k];
                    let dwg = &mut dw[gi * m * k..][..m * k];
                    let dyg = &dy[i * out_img + gi * m * ohw..][..m * ohw];
                    let in_place = g.reads_x_in_place(ch);
                    let col = im2col_or_x(g, x, ch, gi, &taps, &mut sc.col, false);
                    Gemm::nt(m, k, ohw).accumulate().run_serial(dyg, col, dwg);
                    let Some(dx) = dx_img.as_deref_mut() else {
                        continue;
                    };
                    if in_place {
                        let dxg = &mut dx[gi * g.cin_g * hw..][..k * hw];
                        Gemm::tn(k, ohw, m).run_serial(wg, dyg, dxg);
                    } else {
                        let dcol = prefix(&mut sc.dcol, k * ohw);
                        Gemm::tn(k, ohw, m).run_serial(wg, dyg, dcol);
                        col2im(g, dcol, ch, gi, &taps, dx, false);
                    }
                }
            }
            SCRATCH.set(sc);
        });
    add_parts(&partial, dweight);
}

/// Given dy [N, C_out, OH, OW] and the forward's x: dx = the input's gradient (overwritten; skip
/// it with None, as for a network's first layer), dweight += Σ dy_g · colᵀ, dbias += Σ dy.
/// Per chunk of images and group: dW_g += dy_g[:, chunk] · colᵀ and dcol = W_gᵀ · dy_g[:, chunk],
/// which col2im adds into dx; the chunks run in order, so the sums do not depend on the threads.
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
    let winograd = super::winograd::enabled();
    conv2d_backward_with(s, x, weight, dy, dx, dweight, dbias, winograd, None)
}

/// `conv2d_backward` with the kernel cut to its live taps taken from `prepared` when it holds
/// one for this shape (the forward's, for the same weight, as `conv2d_forward_prepared` asks).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_prepared(
    s: &Conv2dShape,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dweight: &mut [f32],
    dbias: Option<&mut [f32]>,
    prepared: &PreparedWeight,
) -> Result<()> {
    let winograd = super::winograd::enabled();
    conv2d_backward_with(
        s,
        x,
        weight,
        dy,
        dx,
        dweight,
        dbias,
        winograd,
        Some(prepared),
    )
}

/// `conv2d_backward`, by Winograd where `winograd` and the shape allow, else by im2col.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv2d_backward_with(
    s: &Conv2dShape,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dweight: &mut [f32],
    dbias: Option<&mut [f32]>,
    winograd: bool,
    prepared: Option<&PreparedWeight>,
) -> Result<()> {
    let (g, out) = s.check(
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
    if let Some(live) = LiveTaps::of(s, &out) {
        let fresh;
        let cut = match prepared.and_then(|p| p.cut_for(s)) {
            Some(cut) => cut,
            None => {
                fresh = live.cut(s, weight);
                &fresh
            }
        };
        let mut dcut = vec![0f32; cut.len()];
        let shape = &live.shape;
        conv2d_backward_with(shape, x, cut, dy, dx, &mut dcut, dbias, winograd, None)?;
        live.add_gradient(s, &dcut, dweight);
        return Ok(());
    }
    conv2d_backward_tiled(&g, x, weight, dy, dx, dweight, dbias, winograd);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn conv2d_backward_tiled(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    mut dx: Option<&mut [f32]>,
    dweight: &mut [f32],
    dbias: Option<&mut [f32]>,
    winograd: bool,
) {
    let (ohw, ow, in_img, out_img) = (g.out.plane(), g.out.w, g.s.input.image(), g.out.image());
    let (m, k, hw) = (g.cout_g, g.k, g.s.input.plane());
    if let Some(db) = dbias {
        let _span = crate::backend::profile::span("conv bias grad");
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
    if let Some(dx) = dx.as_deref_mut() {
        dx.par_chunks_mut(1 << 16).for_each(|d| d.fill(0.0));
    }
    if g.out.is_empty() {
        return;
    }
    if winograd && super::winograd::applies(&g.s, &g.out) {
        return super::winograd::backward(&g.s, g.out, x, weight, dy, dx, dweight);
    }
    if g.per_image {
        return conv2d_backward_per_image(g, x, weight, dy, dx, dweight);
    }
    let mut sc = SCRATCH.take();
    for ch in g.chunks() {
        let cols = ch.cols(ow);
        // Where each kernel tap reads: the same for every group of the chunk.
        let taps = TapRuns::new(&g.s, ow, ch.rows);
        for gi in 0..g.s.groups {
            let wg = &weight[gi * m * k..][..m * k];
            let dwg = &mut dweight[gi * m * k..][..m * k];
            // dy's block as the [m, cols] matrix.
            let dyg: &[f32] = if g.whole_image(ch) {
                &dy[ch.img0 * out_img + gi * m * ohw..][..m * ohw]
            } else {
                let out = prefix(&mut sc.out, m * cols);
                gather_output_grad(g, dy, ch, gi, out);
                out
            };
            let in_place = g.reads_x_in_place(ch);
            let col = im2col_or_x(g, x, ch, gi, &taps, &mut sc.col, true);
            // dW_g [m, k] += dy_g [m, cols] · colᵀ (col is [k, cols]).
            Gemm::nt(m, k, cols).accumulate().run(dyg, col, dwg);
            let Some(dx) = dx.as_deref_mut() else {
                continue;
            };
            // dcol [k, cols] = W_gᵀ (W_g is [m, k]) · dy_g [m, cols].
            let dcol_product = Gemm::tn(k, cols, m);
            if in_place {
                let dxg = &mut dx[ch.img0 * in_img + gi * g.cin_g * hw..][..k * hw];
                dcol_product.run(wg, dyg, dxg);
            } else {
                let dcol = prefix(&mut sc.dcol, k * cols);
                dcol_product.run(wg, dyg, dcol);
                col2im(g, dcol, ch, gi, &taps, &mut dx[ch.img0 * in_img..], true);
            }
        }
    }
    SCRATCH.set(sc);
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
    fn check_cases(cap_for: impl Fn(&Conv2dShape, Nchw) -> usize) {
        check_cases_with(cap_for, false);
    }

    /// `check_cases`, with the per-image path forced on when `per_image`.
    fn check_cases_with(cap_for: impl Fn(&Conv2dShape, Nchw) -> usize, per_image: bool) {
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
            let col_cap = cap_for(&s, out);
            let mut g = Geometry::new(&s, out, col_cap);
            if per_image {
                g.per_image = true;
            }
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
                false,
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

    /// Kernels that reach past small maps: the convolution by the cut kernel (and its
    /// gradients, the dead taps' 0) against the full kernel's im2col.
    #[test]
    fn a_kernel_cut_to_its_live_taps_gives_the_full_kernels_results() {
        let mut rng = crate::rng::Rng::new(5);
        let shape = |n, c, h, w, stride, pad, out_channels| Conv2dShape {
            input: Nchw::new(n, c, h, w),
            out_channels,
            kernel: [3, 3],
            stride: [stride, stride],
            padding: [pad, pad],
            dilation: [1, 1],
            groups: 1,
        };
        // A 1×1 map (the centre tap alone), 2×2 with stride 2 (a 2×2 corner), one row.
        let cases = [
            (shape(2, 6, 1, 1, 1, 1, 5), [1, 1]),
            (shape(2, 6, 2, 2, 2, 1, 4), [2, 2]),
            (shape(3, 4, 1, 4, 1, 1, 3), [1, 3]),
        ];
        for (s, cut) in cases {
            let out = s.output().unwrap();
            let live = LiveTaps::of(&s, &out).expect("dead taps");
            assert_eq!(live.shape.kernel, cut, "{s:?}");
            let mut random = |len: usize| (0..len).map(|_| rng.normal()).collect::<Vec<f32>>();
            let (x, w, b, dy) = (
                random(s.input.len()),
                random(s.weight_len()),
                random(s.out_channels),
                random(out.len()),
            );
            let g = Geometry::new(&s, out, COL_TILE_FLOATS);
            let mut want = vec![0f32; out.len()];
            conv2d_forward_tiled(&g, &x, &w, Some(&b), &mut want);
            let mut got = vec![f32::NAN; out.len()];
            conv2d_forward(&s, &x, &w, Some(&b), &mut got).unwrap();
            assert_close(&format!("{s:?} y"), &got, &want, 1e-6);

            let (mut dx_want, mut dw_want) = (vec![0f32; x.len()], vec![0.5f32; w.len()]);
            let mut db_want = vec![0f32; b.len()];
            let (dxw, dbw) = (Some(dx_want.as_mut_slice()), Some(db_want.as_mut_slice()));
            conv2d_backward_tiled(&g, &x, &w, &dy, dxw, &mut dw_want, dbw, false);
            let (mut dx, mut dw) = (vec![f32::NAN; x.len()], vec![0.5f32; w.len()]);
            let mut db = vec![0f32; b.len()];
            let (dxg, dbg) = (Some(dx.as_mut_slice()), Some(db.as_mut_slice()));
            conv2d_backward(&s, &x, &w, &dy, dxg, &mut dw, dbg).unwrap();
            assert_close(&format!("{s:?} dx"), &dx, &dx_want, 1e-6);
            assert_close(&format!("{s:?} dweight"), &dw, &dw_want, 1e-6);
            assert_close(&format!("{s:?} dbias"), &db, &db_want, 1e-6);
        }
        let full = shape(1, 2, 5, 5, 1, 1, 2);
        assert!(LiveTaps::of(&full, &full.output().unwrap()).is_none());
    }

    #[test]
    fn conv2d_matches_pytorch_with_the_batch_in_one_gemm() {
        check_cases(|_, _| COL_TILE_FLOATS);
    }

    #[test]
    fn conv2d_matches_pytorch_one_whole_image_per_gemm() {
        // A cap of exactly one image: the GEMMs read x and write y in place.
        check_cases(|s, out| {
            let g = Geometry::new(s, out, usize::MAX);
            let cap = g.k.max(g.cout_g) * out.plane();
            let one = Geometry::new(s, out, cap);
            assert_eq!((one.imgs, one.band), (1, out.h));
            cap
        });
    }

    #[test]
    fn conv2d_matches_pytorch_one_image_per_task() {
        check_cases_with(|_, _| COL_TILE_FLOATS, true);
    }

    #[test]
    fn conv2d_matches_pytorch_one_output_row_per_band() {
        // A cap below one row's im2col forces bands of one output row: the tiling path.
        check_cases(|_, _| 1);
    }

    /// A 3×3 convolution with stride 1 and padding 1 (the output keeps the input's size).
    fn same_3x3(input: Nchw, out_channels: usize) -> Conv2dShape {
        Conv2dShape {
            input,
            out_channels,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
            dilation: [1, 1],
            groups: 1,
        }
    }

    #[test]
    fn chunks_cover_every_image_and_row_once() {
        let s = same_3x3(Nchw::new(5, 3, 9, 7), 4);
        let out = s.output().unwrap();
        let per_image = 27 * 63;
        for cap in [1, 27 * 7 * 2, per_image, 2 * per_image + 5, usize::MAX] {
            let g = Geometry::new(&s, out, cap);
            let mut seen = vec![0; 5 * 9];
            for ch in g.chunks() {
                assert!(ch.imgs == 1 || ch.rows == (0, 9), "{cap}: {ch:?}");
                assert!(g.k * ch.cols(7) <= cap.max(27 * 7), "{cap}: {ch:?}");
                for img in ch.img0..ch.img0 + ch.imgs {
                    (ch.rows.0..ch.rows.1).for_each(|r| seen[img * 9 + r] += 1);
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "{cap}: {seen:?}");
        }
    }

    #[test]
    fn conv2d_backward_without_dx_still_gives_weight_grads() {
        let f = fixtures("conv.safetensors");
        let t = |what: &str| &f.get(&format!("conv.basic.{what}")).expect(what).data;
        let s = same_3x3(Nchw::new(2, 3, 7, 9), 4);
        let mut dw = vec![0.0; s.weight_len()];
        conv2d_backward(&s, t("x"), t("weight"), t("dy"), None, &mut dw, None).unwrap();
        assert_close("dweight", &dw, t("dweight"), 1e-5);
    }

    #[test]
    fn conv2d_rejects_bad_shapes_with_clear_errors() {
        let base = Conv2dShape {
            padding: [0, 0],
            ..same_3x3(Nchw::new(1, 4, 5, 5), 6)
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
