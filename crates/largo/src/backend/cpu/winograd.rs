//! 3×3 stride-1 convolutions by Winograd's minimal filtering F(2×2, 3×3) (Lavin and Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2015). Each 2×2 block of outputs (a
//! tile) comes from a 4×4 patch of the input: with the patch transformed to V = Bᵀ·d·B and the
//! filter to U = G·g·Gᵀ, the tile is Aᵀ·(U ⊙ V)·A. Summed over input channels, the 16
//! element-wise products become 16 independent GEMMs, [C_out, C_in] · [C_in, tiles], with
//! 16 multiply-adds per tile and channel pair instead of im2col's 36: 2.25× less arithmetic.
//! The input gradient and the weight gradient run in the transformed domain as well (the
//! adjoints of the three transforms), so training gains as much as inference.
//!
//! The batch goes in chunks of tiles (whole images, or bands of tile rows of one large image)
//! whose transformed buffers stay within `CHUNK_FLOATS`; inside a chunk, the transforms run
//! one channel per task and the GEMMs one ξ (of the 16) per task, each on its thread. Every sum
//! has a fixed order, so results do not depend on the thread count.

use super::gemm::{matmul_strided_serial, Gemm};
use super::shape::{Conv2dShape, Nchw};
use super::{add_parts, copy_run, for_each_row, prefix, weight_grad_parts};
use rayon::prelude::*;

/// Transformed values per tile and channel: a 4×4 patch.
const XI: usize = 16;

/// At most this many values (4 MiB) in one chunk's transformed input or output.
const CHUNK_FLOATS: usize = 1 << 20;

/// Convolutions with fewer input or output channels stay with im2col: their GEMMs' inner
/// dimension is too short to gain from fewer products (measured: the MNIST net trains 7 %
/// faster with its 32 → 64 convolution by Winograd; ResNet-18's 64 → 64 at 56×56 runs 1.6×
/// faster).
const MIN_CHANNELS: usize = 32;

/// Batches of small images (fewer than `PER_IMAGE_MIN_TILES` tiles each, or fewer images than
/// threads) go by Winograd only when tiles × channels reach this: below it the transforms and
/// the per-chunk hand-offs between threads cost more than the products save. Measured on
/// ResNet-18 at 32×32 (batch 16), whose 8×8, 4×4 and 2×2 maps make 16 K, 8 K and 4 K: with its
/// 8×8 stage by Winograd it trained faster in 8 of 8 interleaved pairs (median 320 → 383
/// samples/s) and inferred as fast; the 4×4 stage as well lost 5 % at inference. (Before kernels
/// shared work from a pool thread, the 8×8 stage measured 2–5 % slower by Winograd.) The 14×14
/// and 7×7 maps at 224×224, 200 K and 130 K, run 2.2× and 1.5× faster.
const BATCHED_MIN_WORK: usize = 1 << 14;

/// Whether `conv2d` may use Winograd at all: yes unless `LARGO_WINOGRAD=off` (im2col for every
/// shape, to compare the two), read once.
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("LARGO_WINOGRAD").map_or(true, |v| v != "off"))
}

/// Whether a convolution goes by Winograd: a 3×3 kernel, stride 1, no dilation, one group,
/// at least `MIN_CHANNELS` each way, outputs that fill at least 2/3 of their tiles (a 3×3
/// output in 2×2 tiles computes 16 values for 9; 1×1, 4 for 1), and either images large
/// enough to go one per task or enough work in the batch (`BATCHED_MIN_WORK`).
pub(crate) fn applies(s: &Conv2dShape, out: &Nchw) -> bool {
    let tiles = out.h.div_ceil(2) * out.w.div_ceil(2);
    let channels = s.input.c.min(s.out_channels);
    s.kernel == [3, 3]
        && s.stride == [1, 1]
        && s.dilation == [1, 1]
        && s.groups == 1
        && channels >= MIN_CHANNELS
        && 3 * out.plane() >= 8 * tiles
        && (per_image(out) || out.n * tiles * channels >= BATCHED_MIN_WORK)
}

/// How the output splits into tiles and the batch into chunks.
#[derive(Clone, Copy, Debug)]
struct Tiling {
    input: Nchw,
    out: Nchw,
    pad: [usize; 2],
    /// Tile rows and columns of one image: ⌈OH/2⌉, ⌈OW/2⌉.
    th: usize,
    tw: usize,
    /// Whole images per chunk (1 when an image is banded).
    imgs: usize,
    /// Tile rows per chunk (th unless an image is banded).
    band: usize,
}

/// Images `img0..img0 + imgs`, tile rows `rows` of each.
#[derive(Clone, Copy, Debug)]
struct Chunk {
    img0: usize,
    imgs: usize,
    rows: (usize, usize),
}

impl Tiling {
    /// Tiles of the output, chunks of at most `cap_floats` transformed values.
    fn new(s: &Conv2dShape, out: Nchw, cap_floats: usize) -> Self {
        let (th, tw) = (out.h.div_ceil(2), out.w.div_ceil(2));
        let per_tile = XI * s.input.c.max(s.out_channels);
        let cap = (cap_floats / per_tile).max(1);
        let (imgs, band) = if th * tw <= cap {
            ((cap / (th * tw)).clamp(1, out.n.max(1)), th)
        } else {
            (1, (cap / tw).clamp(1, th))
        };
        Tiling {
            input: s.input,
            out,
            pad: s.padding,
            th,
            tw,
            imgs,
            band,
        }
    }

    fn chunks(&self) -> impl Iterator<Item = Chunk> {
        let (n, th, imgs, band) = (self.out.n, self.th, self.imgs, self.band);
        (0..n).step_by(imgs).flat_map(move |img0| {
            (0..th).step_by(band).map(move |r| Chunk {
                img0,
                imgs: imgs.min(n - img0),
                rows: (r, (r + band).min(th)),
            })
        })
    }

    /// Tiles in a chunk: the GEMMs' n.
    fn tiles(&self, ch: Chunk) -> usize {
        ch.imgs * (ch.rows.1 - ch.rows.0) * self.tw
    }

    /// Input row of a tile row's patch row r (0..4), None in the padding.
    fn input_row(&self, tr: usize, r: usize) -> Option<usize> {
        (2 * tr + r)
            .checked_sub(self.pad[0])
            .filter(|&i| i < self.input.h)
    }
}

// ---- The three transforms along one axis, and their adjoints. ----

/// Bᵀ·d along one axis of a 4-value patch.
#[inline(always)]
fn input_1d(d: [f32; 4]) -> [f32; 4] {
    [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]
}

/// B·v: the adjoint of `input_1d`.
#[inline(always)]
fn input_1d_adjoint(v: [f32; 4]) -> [f32; 4] {
    [v[0], v[1] - v[2] + v[3], v[1] + v[2] - v[0], -v[3]]
}

/// G·g along one axis of the 3-tap filter.
#[inline(always)]
fn filter_1d(g: [f32; 3]) -> [f32; 4] {
    [
        g[0],
        0.5 * (g[0] + g[1] + g[2]),
        0.5 * (g[0] - g[1] + g[2]),
        g[2],
    ]
}

/// Gᵀ·u: the adjoint of `filter_1d`.
#[inline(always)]
fn filter_1d_adjoint(u: [f32; 4]) -> [f32; 3] {
    [
        u[0] + 0.5 * (u[1] + u[2]),
        0.5 * (u[1] - u[2]),
        0.5 * (u[1] + u[2]) + u[3],
    ]
}

/// Aᵀ·m along one axis: 4 transformed values to 2 outputs.
#[inline(always)]
fn output_1d(m: [f32; 4]) -> [f32; 2] {
    [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]
}

/// A·y: the adjoint of `output_1d`.
#[inline(always)]
fn output_1d_adjoint(y: [f32; 2]) -> [f32; 4] {
    [y[0], y[0] + y[1], y[0] - y[1], -y[1]]
}

avx512_dispatch! {
    /// U = G·g·Gᵀ for every (c_out, c_in) filter, laid out [C_out][16][C_in]: row ξ of the
    /// GEMM's [C_out, C_in] operand is `u[ξ·C_in..]` with rows 16·C_in apart.
    fn transform_filters_into(weight: &[f32], cin: usize, u: &mut [f32]) {
        // One output channel at a time: its taps transposed to [9][C_in], so that each of the
        // 16 rows of U is a combination of 9 contiguous rows.
        let mut taps = vec![0f32; 9 * cin];
        for (w, u) in weight.chunks_exact(9 * cin).zip(u.chunks_exact_mut(XI * cin)) {
            for (c, g) in w.chunks_exact(9).enumerate() {
                for (tap, &v) in g.iter().enumerate() {
                    taps[tap * cin + c] = v;
                }
            }
            let g = |i: usize, j: usize| &taps[(3 * i + j) * cin..][..cin];
            // rows[i][b]: filter row i through G along the columns.
            let mut rows = vec![0f32; 12 * cin];
            for i in 0..3 {
                let (g0, g1, g2) = (g(i, 0), g(i, 1), g(i, 2));
                let (r0, rest) = rows[4 * i * cin..][..4 * cin].split_at_mut(cin);
                let (r1, rest) = rest.split_at_mut(cin);
                let (r2, r3) = rest.split_at_mut(cin);
                for c in 0..cin {
                    let f = filter_1d([g0[c], g1[c], g2[c]]);
                    r0[c] = f[0];
                    r1[c] = f[1];
                    r2[c] = f[2];
                    r3[c] = f[3];
                }
            }
            for b in 0..4 {
                let row = |i: usize| &rows[(4 * i + b) * cin..][..cin];
                let (h0, h1, h2) = (row(0), row(1), row(2));
                for a in 0..4 {
                    let dst = &mut u[(4 * a + b) * cin..][..cin];
                    for c in 0..cin {
                        dst[c] = filter_1d([h0[c], h1[c], h2[c]])[a];
                    }
                }
            }
        }
    }
}

/// `transform_filters_into` over all threads.
fn transform_filters(weight: &[f32], cout: usize, cin: usize, u: &mut [f32]) {
    let per = cout.div_ceil(rayon::current_num_threads()).max(1);
    u[..cout * XI * cin]
        .par_chunks_mut(per * XI * cin)
        .zip(weight.par_chunks(per * 9 * cin))
        .for_each(|(u, w)| transform_filters_into(w, cin, u));
}

avx512_dispatch! {
    /// dW[c_out, c_in] += Gᵀ·dU·G for the output channels `o0..` of `dweight`, from dU laid
    /// out [16][C_out][C_in].
    fn filter_gradient_into(du: &[f32], cout: usize, cin: usize, o0: usize, dweight: &mut [f32]) {
        let mut taps = vec![0f32; 9 * cin];
        let mut cols = vec![0f32; 12 * cin];
        for (o, dw) in (o0..).zip(dweight.chunks_exact_mut(9 * cin)) {
            let at = |a: usize, b: usize| &du[((4 * a + b) * cout + o) * cin..][..cin];
            // cols[b][i]: column b of dU through Gᵀ along the rows.
            for b in 0..4 {
                let (u0, u1, u2, u3) = (at(0, b), at(1, b), at(2, b), at(3, b));
                for i in 0..3 {
                    let dst = &mut cols[(3 * b + i) * cin..][..cin];
                    for c in 0..cin {
                        dst[c] = filter_1d_adjoint([u0[c], u1[c], u2[c], u3[c]])[i];
                    }
                }
            }
            for i in 0..3 {
                let col = |b: usize| &cols[(3 * b + i) * cin..][..cin];
                let (c0, c1, c2, c3) = (col(0), col(1), col(2), col(3));
                for j in 0..3 {
                    let dst = &mut taps[(3 * i + j) * cin..][..cin];
                    for c in 0..cin {
                        dst[c] = filter_1d_adjoint([c0[c], c1[c], c2[c], c3[c]])[j];
                    }
                }
            }
            for (c, dg) in dw.chunks_exact_mut(9).enumerate() {
                for (tap, d) in dg.iter_mut().enumerate() {
                    *d += taps[tap * cin + c];
                }
            }
        }
    }
}

/// `filter_gradient_into` over all threads.
fn filter_gradient(du: &[f32], cout: usize, cin: usize, dweight: &mut [f32]) {
    let per = cout.div_ceil(rayon::current_num_threads()).max(1);
    dweight
        .par_chunks_mut(per * 9 * cin)
        .enumerate()
        .for_each(|(i, dw)| filter_gradient_into(du, cout, cin, i * per, dw));
}

/// Tiles per block of the row kernels below: one AVX-512 vector (two AVX2 ones). Their loops
/// always run over the whole block, whatever the tiles in it, so they vectorise without a
/// scalar remainder.
const TB: usize = 16;

/// Patch rows of a block of tiles split into their even and odd columns (from column −pad):
/// tile t's row is (even[t], odd[t], even[t + 1], odd[t + 1]).
type Split = [[f32; TB + 1]; 4];

/// The 16 transformed values ξ of a block's tiles: `[ξ][t]`.
type Block16 = [[f32; TB]; XI];

/// A block's 2×2 outputs: `[r][s][t]`.
type Outputs = [[[f32; TB]; 2]; 2];

avx512_dispatch! {
    /// V = Bᵀ·d·B of a block of tiles, from their 4 patch rows.
    fn input_tiles(even: &Split, odd: &Split, v: &mut Block16) {
        // e[r][b]: patch row r through Bᵀ along the columns.
        let mut e = [[[0f32; TB]; 4]; 4];
        for r in 0..4 {
            let (ev, od) = (&even[r], &odd[r]);
            for t in 0..TB {
                let d = input_1d([ev[t], od[t], ev[t + 1], od[t + 1]]);
                for b in 0..4 {
                    e[r][b][t] = d[b];
                }
            }
        }
        for b in 0..4 {
            for t in 0..TB {
                let col = input_1d([e[0][b][t], e[1][b][t], e[2][b][t], e[3][b][t]]);
                for a in 0..4 {
                    v[4 * a + b][t] = col[a];
                }
            }
        }
    }
}

avx512_dispatch! {
    /// The adjoint of `input_tiles`: adds B·dV·Bᵀ of a block of tiles into their patch rows.
    fn input_tiles_adjoint(dv: &Block16, even: &mut Split, odd: &mut Split) {
        // q[b][r]: column b of dV through B along the rows.
        let mut q = [[[0f32; TB]; 4]; 4];
        for b in 0..4 {
            for t in 0..TB {
                let col = input_1d_adjoint([dv[b][t], dv[4 + b][t], dv[8 + b][t], dv[12 + b][t]]);
                for r in 0..4 {
                    q[b][r][t] = col[r];
                }
            }
        }
        for r in 0..4 {
            let (ev, od) = (&mut even[r], &mut odd[r]);
            let mut d = [[0f32; TB]; 4];
            for t in 0..TB {
                let v = input_1d_adjoint([q[0][r][t], q[1][r][t], q[2][r][t], q[3][r][t]]);
                for s in 0..4 {
                    d[s][t] = v[s];
                }
            }
            for t in 0..TB {
                ev[t] += d[0][t];
                od[t] += d[1][t];
            }
            for t in 0..TB {
                ev[t + 1] += d[2][t];
                od[t + 1] += d[3][t];
            }
        }
    }
}

avx512_dispatch! {
    /// Aᵀ·M·A of a block of tiles.
    fn output_tiles(m: &Block16, y: &mut Outputs) {
        // rows[a][s]: transformed row a through Aᵀ along the columns.
        let mut rows = [[[0f32; TB]; 2]; 4];
        for a in 0..4 {
            for t in 0..TB {
                let o = output_1d([m[4 * a][t], m[4 * a + 1][t], m[4 * a + 2][t], m[4 * a + 3][t]]);
                rows[a][0][t] = o[0];
                rows[a][1][t] = o[1];
            }
        }
        for s in 0..2 {
            for t in 0..TB {
                let o = output_1d([rows[0][s][t], rows[1][s][t], rows[2][s][t], rows[3][s][t]]);
                y[0][s][t] = o[0];
                y[1][s][t] = o[1];
            }
        }
    }
}

avx512_dispatch! {
    /// The adjoint of `output_tiles`: dM = A·dy·Aᵀ of a block of tiles.
    fn output_tiles_adjoint(dy: &Outputs, dm: &mut Block16) {
        // rows[r][b]: dy's row r through A along the columns.
        let mut rows = [[[0f32; TB]; 4]; 2];
        for r in 0..2 {
            for t in 0..TB {
                let o = output_1d_adjoint([dy[r][0][t], dy[r][1][t]]);
                for b in 0..4 {
                    rows[r][b][t] = o[b];
                }
            }
        }
        for b in 0..4 {
            for t in 0..TB {
                let col = output_1d_adjoint([rows[0][b][t], rows[1][b][t]]);
                for a in 0..4 {
                    dm[4 * a + b][t] = col[a];
                }
            }
        }
    }
}

/// Where a block's window of columns `first..first + len` of a patch or output row meets a
/// row of `w` columns: window positions `lo..hi` are row columns `first + lo..first + hi`.
fn overlap(first: isize, len: usize, w: usize) -> (usize, usize) {
    let lo = (-first).clamp(0, len as isize) as usize;
    let hi = (w as isize - first).clamp(lo as isize, len as isize) as usize;
    (lo, hi)
}

/// Patch row `r` of tile row `tr` of an input plane, tiles t0..t0 + n: its even and odd
/// columns (from column −pad), zeros in the padding and past the last tile.
#[allow(clippy::too_many_arguments)]
fn split_patch_row(
    t: &Tiling,
    xc: &[f32],
    tr: usize,
    r: usize,
    t0: usize,
    n: usize,
    even: &mut [f32; TB + 1],
    odd: &mut [f32; TB + 1],
) {
    let mut window = [0f32; 2 * TB + 2];
    if let Some(i) = t.input_row(tr, r) {
        let row = &xc[i * t.input.w..][..t.input.w];
        let first = (2 * t0) as isize - t.pad[1] as isize;
        let (lo, hi) = overlap(first, 2 * n + 2, row.len());
        let at = (first + lo as isize) as usize;
        copy_run(&mut window[lo..hi], &row[at..at + hi - lo]);
    }
    // A fixed-length pass: it vectorises as a split of even and odd lanes.
    for (j, pair) in window.chunks_exact(2).enumerate() {
        even[j] = pair[0];
        odd[j] = pair[1];
    }
}

/// The chunk's input patches of one channel `c` through Bᵀ·d·B: `v` is this channel's
/// [16][tiles] block.
fn input_transform(t: &Tiling, x: &[f32], ch: Chunk, c: usize, v: &mut [f32]) {
    let (plane, tw) = (t.input.plane(), t.tw);
    let stride = v.len() / XI;
    let (mut even, mut odd) = ([[0f32; TB + 1]; 4], [[0f32; TB + 1]; 4]);
    let mut out: Block16 = [[0f32; TB]; XI];
    let mut p = 0;
    for img in ch.img0..ch.img0 + ch.imgs {
        let xc = &x[(img * t.input.c + c) * plane..][..plane];
        for tr in ch.rows.0..ch.rows.1 {
            for t0 in (0..tw).step_by(TB) {
                let n = TB.min(tw - t0);
                for r in 0..4 {
                    split_patch_row(t, xc, tr, r, t0, n, &mut even[r], &mut odd[r]);
                }
                input_tiles(&even, &odd, &mut out);
                for (xi, o) in out.iter().enumerate() {
                    copy_run(&mut v[xi * stride + p..][..n], &o[..n]);
                }
                p += n;
            }
        }
    }
}

/// The adjoint of `input_transform` for image `i` of the chunk: adds the patch gradients
/// B·dV·Bᵀ of channel `c` into its plane `dxc` (tiles overlap by two rows and columns); `dv` is
/// laid out [16][C_in][tiles].
fn input_transform_adjoint(t: &Tiling, dv: &[f32], ch: Chunk, i: usize, c: usize, dxc: &mut [f32]) {
    let (w, tw, tiles, pw) = (t.input.w, t.tw, t.tiles(ch), t.pad[1]);
    let stride = t.input.c * tiles;
    let (mut even, mut odd) = ([[0f32; TB + 1]; 4], [[0f32; TB + 1]; 4]);
    let mut block: Block16 = [[0f32; TB]; XI];
    let mut p = c * tiles + i * (ch.rows.1 - ch.rows.0) * tw;
    for tr in ch.rows.0..ch.rows.1 {
        for t0 in (0..tw).step_by(TB) {
            let n = TB.min(tw - t0);
            for (xi, b) in block.iter_mut().enumerate() {
                copy_run(&mut b[..n], &dv[xi * stride + p..][..n]);
                b[n..].fill(0.0);
            }
            even.iter_mut()
                .chain(odd.iter_mut())
                .for_each(|r| r.fill(0.0));
            input_tiles_adjoint(&block, &mut even, &mut odd);
            let first = (2 * t0) as isize - pw as isize;
            let (lo, hi) = overlap(first, 2 * n + 2, w);
            let at = (first + lo as isize) as usize;
            for r in 0..4 {
                let Some(ih) = t.input_row(tr, r) else {
                    continue;
                };
                let mut window = [0f32; 2 * TB + 2];
                for (j, pair) in window.chunks_exact_mut(2).enumerate() {
                    pair[0] = even[r][j];
                    pair[1] = odd[r][j];
                }
                let row = &mut dxc[ih * w + at..][..hi - lo];
                row.iter_mut()
                    .zip(&window[lo..hi])
                    .for_each(|(d, &g)| *d += g);
            }
            p += n;
        }
    }
}

/// Image `i` of the chunk, output channel `k`: its tiles through Aᵀ·M·A, plus the bias, into
/// its plane `yk`; `m` holds the products laid out [16][C_out][tiles].
fn output_transform(
    t: &Tiling,
    m: &[f32],
    ch: Chunk,
    i: usize,
    k: usize,
    bias: f32,
    yk: &mut [f32],
) {
    let (ow, tw, tiles) = (t.out.w, t.tw, t.tiles(ch));
    let stride = t.out.c * tiles;
    let mut block: Block16 = [[0f32; TB]; XI];
    let mut y: Outputs = [[[0f32; TB]; 2]; 2];
    let mut p = k * tiles + i * (ch.rows.1 - ch.rows.0) * tw;
    for tr in ch.rows.0..ch.rows.1 {
        for t0 in (0..tw).step_by(TB) {
            let n = TB.min(tw - t0);
            for (xi, b) in block.iter_mut().enumerate() {
                copy_run(&mut b[..n], &m[xi * stride + p..][..n]);
            }
            output_tiles(&block, &mut y);
            for (r, yr) in y.iter().enumerate() {
                let oh = 2 * tr + r;
                if oh >= t.out.h {
                    break;
                }
                let mut window = [0f32; 2 * TB];
                for (j, pair) in window.chunks_exact_mut(2).enumerate() {
                    pair[0] = yr[0][j] + bias;
                    pair[1] = yr[1][j] + bias;
                }
                let cols = (2 * n).min(ow - 2 * t0);
                copy_run(&mut yk[oh * ow + 2 * t0..][..cols], &window[..cols]);
            }
            p += n;
        }
    }
}

/// The adjoint of `output_transform`: dM = A·dy·Aᵀ of the chunk's tiles of output channel `k`
/// (outside the output, dy is 0), into `dm`, this channel's [16][tiles] block.
fn output_transform_adjoint(t: &Tiling, dy: &[f32], ch: Chunk, k: usize, dm: &mut [f32]) {
    let (ohw, ow, tw) = (t.out.plane(), t.out.w, t.tw);
    let stride = dm.len() / XI;
    let mut d: Outputs = [[[0f32; TB]; 2]; 2];
    let mut block: Block16 = [[0f32; TB]; XI];
    let mut p = 0;
    for img in ch.img0..ch.img0 + ch.imgs {
        let dyk = &dy[(img * t.out.c + k) * ohw..][..ohw];
        for tr in ch.rows.0..ch.rows.1 {
            for t0 in (0..tw).step_by(TB) {
                let n = TB.min(tw - t0);
                for (r, dr) in d.iter_mut().enumerate() {
                    let oh = 2 * tr + r;
                    if oh >= t.out.h {
                        dr.iter_mut().for_each(|c| c.fill(0.0));
                        continue;
                    }
                    let mut window = [0f32; 2 * TB];
                    let cols = (2 * n).min(ow - 2 * t0);
                    copy_run(&mut window[..cols], &dyk[oh * ow + 2 * t0..][..cols]);
                    for (j, pair) in window.chunks_exact(2).enumerate() {
                        dr[0][j] = pair[0];
                        dr[1][j] = pair[1];
                    }
                }
                output_tiles_adjoint(&d, &mut block);
                for (xi, b) in block.iter().enumerate() {
                    copy_run(&mut dm[xi * stride + p..][..n], &b[..n]);
                }
                p += n;
            }
        }
    }
}

/// The transformed buffers of one chunk, reused from chunk to chunk.
#[derive(Default)]
struct Buffers {
    /// Transformed input [C_in][16][tiles].
    v: Vec<f32>,
    /// Products [16][C_out][tiles] (forward), or transformed dy [C_out][16][tiles].
    m: Vec<f32>,
    /// Transformed input gradient [16][C_in][tiles].
    dv: Vec<f32>,
    /// Transformed filters [C_out][16][C_in].
    u: Vec<f32>,
}

thread_local! {
    /// Each pool thread's buffers for the one-image-per-task path (taken while in use).
    static BUFFERS: std::cell::Cell<Buffers> = const {
        std::cell::Cell::new(Buffers {
            v: Vec::new(),
            m: Vec::new(),
            dv: Vec::new(),
            u: Vec::new(),
        })
    };
}

/// Images whose tiles fill at least this many GEMM columns run one per task, chunk after chunk
/// on that task's thread (their transformed buffers then stay in its L2); smaller images are
/// batched into chunks that all threads work on together.
const PER_IMAGE_MIN_TILES: usize = 64;

/// At most this many values in one per-image chunk's transformed input and output together
/// (1 MiB: half of this machine's L2 per core).
const PER_IMAGE_CHUNK_FLOATS: usize = 1 << 18;

/// Whether the batch goes one image per task.
fn per_image(out: &Nchw) -> bool {
    out.h.div_ceil(2) * out.w.div_ceil(2) >= PER_IMAGE_MIN_TILES
        && out.n >= rayon::current_num_threads()
}

/// The chunk's input patches through Bᵀ·d·B, into `v` laid out [C_in][16][tiles].
fn transformed_input<'a>(
    t: &Tiling,
    ch: Chunk,
    x: &[f32],
    v: &'a mut Vec<f32>,
    parallel: bool,
) -> &'a [f32] {
    let _span = crate::backend::profile::span("winograd input transform");
    let tiles = t.tiles(ch);
    let v = prefix(v, t.input.c * XI * tiles);
    for_each_row(v, XI * tiles, parallel, |c, v| {
        input_transform(t, x, ch, c, v)
    });
    v
}

/// The 16 products of a chunk, one ξ per task: c_ξ (+)= op(a_ξ) · op(b_ξ) as `g` describes
/// them, with c_ξ the ξ-th of 16 equal blocks of c and operand ξ of a at `a[ξ·step..]`, its
/// rows `ld` apart (`(a, step, ld)`; b likewise).
fn products(
    g: Gemm,
    (a, a_step, lda): (&[f32], usize, usize),
    (b, b_step, ldb): (&[f32], usize, usize),
    c: &mut [f32],
    parallel: bool,
) {
    let _span = crate::backend::profile::span("winograd gemms");
    for_each_row(&mut c[..XI * g.m * g.n], g.m * g.n, parallel, |xi, c| {
        let (a, b) = (&a[xi * a_step..], &b[xi * b_step..]);
        let ldc = g.n;
        matmul_strided_serial(
            g.ta,
            g.tb,
            g.m,
            g.n,
            g.k,
            a,
            lda,
            b,
            ldb,
            c,
            ldc,
            g.accumulate,
        )
    });
}

/// One chunk of the forward, into `y` (the chunk's images): transforms, then
/// M[ξ] [C_out, tiles] = U[ξ] [C_out, C_in] · V[ξ] [C_in, tiles], then Aᵀ·M·A.
#[allow(clippy::too_many_arguments)]
fn forward_chunk(
    t: &Tiling,
    ch: Chunk,
    x: &[f32],
    u: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    buf: &mut Buffers,
    parallel: bool,
) {
    let (cin, cout, tiles) = (t.input.c, t.out.c, t.tiles(ch));
    let v = transformed_input(t, ch, x, &mut buf.v, parallel);
    let m = prefix(&mut buf.m, XI * cout * tiles);
    // M[ξ] [C_out, tiles] = U[ξ] [C_out, C_in] · V[ξ] [C_in, tiles].
    let product = Gemm::nn(cout, tiles, cin);
    products(
        product,
        (u, cin, XI * cin),
        (v, tiles, XI * tiles),
        m,
        parallel,
    );
    let _span = crate::backend::profile::span("winograd output transform");
    let m = &*m;
    for_each_row(y, t.out.plane(), parallel, |q, yk| {
        let (i, k) = (q / cout, q % cout);
        output_transform(t, m, ch, i, k, bias.map_or(0.0, |b| b[k]), yk);
    });
}

/// One chunk of the backward: dU [16][C_out][C_in] += dM[ξ] · V[ξ]ᵀ and, when `dx` (the chunk's
/// images) is given, dV[ξ] = U[ξ]ᵀ · dM[ξ] through B·dV·Bᵀ added into it.
#[allow(clippy::too_many_arguments)]
fn backward_chunk(
    t: &Tiling,
    ch: Chunk,
    x: &[f32],
    u: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    du: &mut [f32],
    buf: &mut Buffers,
    parallel: bool,
) {
    let (cin, cout, tiles) = (t.input.c, t.out.c, t.tiles(ch));
    let v = transformed_input(t, ch, x, &mut buf.v, parallel);
    let dm = prefix(&mut buf.m, cout * XI * tiles);
    {
        let _span = crate::backend::profile::span("winograd output gradient transform");
        for_each_row(dm, XI * tiles, parallel, |k, dm| {
            output_transform_adjoint(t, dy, ch, k, dm)
        });
    }
    let dm = &*dm;
    // dU[ξ] [C_out, C_in] += dM[ξ] [C_out, tiles] · V[ξ]ᵀ [tiles, C_in].
    let product = Gemm::nt(cout, cin, tiles).accumulate();
    products(
        product,
        (dm, tiles, XI * tiles),
        (v, tiles, XI * tiles),
        du,
        parallel,
    );
    let Some(dx) = dx else {
        return;
    };
    let dv = prefix(&mut buf.dv, XI * cin * tiles);
    // dV[ξ] [C_in, tiles] = U[ξ]ᵀ [C_in, C_out] · dM[ξ] [C_out, tiles].
    let product = Gemm::tn(cin, tiles, cout);
    products(
        product,
        (u, cin, XI * cin),
        (dm, tiles, XI * tiles),
        dv,
        parallel,
    );
    let _span = crate::backend::profile::span("winograd input gradient transform");
    let dv = &*dv;
    for_each_row(dx, t.input.plane(), parallel, |q, dxc| {
        input_transform_adjoint(t, dv, ch, q / cin, q % cin, dxc)
    });
}

/// U of the weight into `u`, grown as needed.
fn filters<'a>(weight: &[f32], cout: usize, cin: usize, u: &'a mut Vec<f32>) -> &'a [f32] {
    let _span = crate::backend::profile::span("winograd filter transform");
    let u = prefix(u, cout * XI * cin);
    transform_filters(weight, cout, cin, u);
    u
}

/// Forward: x [N, C_in, H, W], weight [C_out, C_in, 3, 3] → y [N, C_out, OH, OW]. The caller
/// checked the lengths and that `applies`.
pub(crate) fn forward(
    s: &Conv2dShape,
    out: Nchw,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let mut own = BUFFERS.take();
    let mut u = std::mem::take(&mut own.u);
    let uf = filters(weight, out.c, s.input.c, &mut u);
    if per_image(&out) {
        let _span = crate::backend::profile::span("winograd forward (an image per task)");
        let t = Tiling::new(s, Nchw { n: 1, ..out }, PER_IMAGE_CHUNK_FLOATS);
        y.par_chunks_mut(out.image())
            .enumerate()
            .for_each(|(i, y)| {
                let mut buf = BUFFERS.take();
                for ch in t.chunks() {
                    let ch = Chunk { img0: i, ..ch };
                    forward_chunk(&t, ch, x, uf, bias, y, &mut buf, false);
                }
                BUFFERS.set(buf);
            });
    } else {
        let t = Tiling::new(s, out, CHUNK_FLOATS);
        forward_batched(&t, x, uf, bias, y, &mut own);
    }
    own.u = u;
    BUFFERS.set(own);
}

/// The forward in chunks that all threads work on, one after the other.
fn forward_batched(
    t: &Tiling,
    x: &[f32],
    u: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    buf: &mut Buffers,
) {
    let img = t.out.image();
    for ch in t.chunks() {
        let y = &mut y[ch.img0 * img..][..ch.imgs * img];
        forward_chunk(t, ch, x, u, bias, y, buf, true);
    }
}

/// Backward: given dy [N, C_out, OH, OW] and the forward's x, dx (when given) = the input's
/// gradient, added into (the caller zeroed it); dweight += the weight's gradient. The caller
/// checked the lengths and that `applies`.
pub(crate) fn backward(
    s: &Conv2dShape,
    out: Nchw,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dweight: &mut [f32],
) {
    let (cin, cout) = (s.input.c, out.c);
    let mut own = BUFFERS.take();
    let mut u = std::mem::take(&mut own.u);
    let uf = filters(weight, cout, cin, &mut u);
    let du = if per_image(&out) {
        let _span = crate::backend::profile::span("winograd backward (an image per task)");
        backward_per_image(s, out, x, uf, dy, dx)
    } else {
        let t = Tiling::new(s, out, CHUNK_FLOATS);
        backward_batched(&t, x, uf, dy, dx, &mut own)
    };
    own.u = u;
    BUFFERS.set(own);
    let _span = crate::backend::profile::span("winograd filter gradient");
    filter_gradient(&du, cout, cin, dweight);
}

/// The backward in chunks that all threads work on, one after the other; returns dU.
fn backward_batched(
    t: &Tiling,
    x: &[f32],
    u: &[f32],
    dy: &[f32],
    mut dx: Option<&mut [f32]>,
    buf: &mut Buffers,
) -> Vec<f32> {
    let mut du = vec![0f32; XI * t.out.c * t.input.c];
    let img = t.input.image();
    for ch in t.chunks() {
        let dx = dx
            .as_deref_mut()
            .map(|d| &mut d[ch.img0 * img..][..ch.imgs * img]);
        backward_chunk(t, ch, x, u, dy, dx, &mut du, buf, true);
    }
    du
}

/// The backward one part of the batch per task (each part's images one at a time), each part
/// summing its own dU, added in part order at the end; returns dU.
fn backward_per_image(
    s: &Conv2dShape,
    out: Nchw,
    x: &[f32],
    u: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
) -> Vec<f32> {
    let t = Tiling::new(s, Nchw { n: 1, ..out }, PER_IMAGE_CHUNK_FLOATS);
    let len = XI * out.c * s.input.c;
    // Parts fixed by the batch and the sizes alone, so the sums do not depend on the threads.
    let per = weight_grad_parts(out.n, len);
    let parts = out.n.div_ceil(per);
    let img = s.input.image();
    let mut partial = vec![0f32; parts * len];
    let dx_parts: Vec<Option<&mut [f32]>> = match dx {
        Some(dx) => dx.chunks_mut(per * img).map(Some).collect(),
        None => (0..parts).map(|_| None).collect(),
    };
    partial
        .par_chunks_mut(len)
        .zip(dx_parts)
        .enumerate()
        .for_each(|(part, (du, mut dx))| {
            let mut buf = BUFFERS.take();
            for i in part * per..((part + 1) * per).min(out.n) {
                for ch in t.chunks() {
                    let ch = Chunk { img0: i, ..ch };
                    let dx = dx
                        .as_deref_mut()
                        .map(|d| &mut d[(i - part * per) * img..][..img]);
                    backward_chunk(&t, ch, x, u, dy, dx, du, &mut buf, false);
                }
            }
            BUFFERS.set(buf);
        });
    let mut du = vec![0f32; len];
    add_parts(&partial, &mut du);
    du
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::conv::tests::assert_close;
    use crate::backend::cpu::conv::{conv2d_backward_with, conv2d_forward_with};
    use crate::rng::Rng;

    fn shape(
        n: usize,
        cin: usize,
        cout: usize,
        h: usize,
        w: usize,
        pad: [usize; 2],
    ) -> Conv2dShape {
        Conv2dShape {
            input: Nchw::new(n, cin, h, w),
            out_channels: cout,
            kernel: [3, 3],
            stride: [1, 1],
            padding: pad,
            dilation: [1, 1],
            groups: 1,
        }
    }

    fn random(rng: &mut Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.normal()).collect()
    }

    /// Winograd against im2col (itself checked against PyTorch's fixtures): the output, dx,
    /// dweight and dbias, for chunks of the given size.
    fn check(s: Conv2dShape, cap_floats: usize) {
        let out = s.output().unwrap();
        let mut rng = Rng::new(7);
        let x = random(&mut rng, s.input.len());
        let w: Vec<f32> = random(&mut rng, s.weight_len())
            .iter()
            .map(|v| v * 0.2)
            .collect();
        let b = random(&mut rng, s.out_channels);
        let dy = random(&mut rng, out.len());
        let t = Tiling::new(&s, out, cap_floats);
        let mut u = Vec::new();
        let u = filters(&w, s.out_channels, s.input.c, &mut u);
        let mut buf = Buffers::default();
        let what = format!("{s:?} in chunks of {cap_floats}");

        let mut want = vec![0f32; out.len()];
        conv2d_forward_with(&s, &x, &w, Some(&b), &mut want, false, None).unwrap();
        let mut got = vec![f32::NAN; out.len()];
        forward_batched(&t, &x, u, Some(&b), &mut got, &mut buf);
        assert_close(&format!("y of {what}"), &got, &want, 1e-5);

        let (mut dx_want, mut dw_want) = (vec![0f32; x.len()], vec![0.5f32; w.len()]);
        let mut db_want = vec![0f32; b.len()];
        conv2d_backward_with(
            &s,
            &x,
            &w,
            &dy,
            Some(&mut dx_want),
            &mut dw_want,
            Some(&mut db_want),
            false,
            None,
        )
        .unwrap();
        let (mut dx, mut dw) = (vec![0f32; x.len()], vec![0.5f32; w.len()]);
        let du = backward_batched(&t, &x, u, &dy, Some(&mut dx), &mut buf);
        filter_gradient(&du, s.out_channels, s.input.c, &mut dw);
        assert_close(&format!("dx of {what}"), &dx, &dx_want, 1e-5);
        assert_close(&format!("dweight of {what}"), &dw, &dw_want, 1e-5);

        // Through the public entry points: the same dbias, and no dx when none is asked for.
        let (mut dw2, mut db) = (vec![0.5f32; w.len()], vec![0f32; b.len()]);
        conv2d_backward_with(&s, &x, &w, &dy, None, &mut dw2, Some(&mut db), true, None).unwrap();
        assert_close(
            &format!("dweight without dx of {what}"),
            &dw2,
            &dw_want,
            1e-5,
        );
        assert_close(&format!("dbias of {what}"), &db, &db_want, 1e-6);
    }

    #[test]
    fn winograd_matches_im2col_with_and_without_padding() {
        check(shape(4, 64, 72, 9, 7, [1, 1]), CHUNK_FLOATS);
        check(shape(4, 65, 64, 10, 12, [0, 0]), CHUNK_FLOATS);
        check(shape(6, 64, 66, 6, 5, [2, 1]), CHUNK_FLOATS);
        check(shape(64, 64, 64, 2, 2, [1, 1]), CHUNK_FLOATS);
    }

    #[test]
    fn winograd_matches_im2col_in_bands_and_in_chunks_of_images() {
        let s = shape(3, 64, 70, 11, 9, [1, 1]);
        // One tile row per chunk, a band of a few, and two images per chunk.
        let per_tile = XI * 70;
        for cap in [1, 3 * 5 * per_tile, 2 * 6 * 5 * per_tile] {
            check(s, cap);
        }
    }

    /// The public entry points with and without Winograd, on a pool of 2 threads.
    fn check_public(s: Conv2dShape) {
        let out = s.output().unwrap();
        let mut rng = Rng::new(3);
        let x = random(&mut rng, s.input.len());
        let w: Vec<f32> = random(&mut rng, s.weight_len())
            .iter()
            .map(|v| v * 0.2)
            .collect();
        let b = random(&mut rng, s.out_channels);
        let dy = random(&mut rng, out.len());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let run = |winograd: bool| {
            pool.install(|| {
                let mut y = vec![f32::NAN; out.len()];
                conv2d_forward_with(&s, &x, &w, Some(&b), &mut y, winograd, None).unwrap();
                let (mut dx, mut dw) = (vec![f32::NAN; x.len()], vec![0.5f32; w.len()]);
                let mut db = vec![0f32; b.len()];
                let (dx_, db_) = (Some(dx.as_mut_slice()), Some(db.as_mut_slice()));
                conv2d_backward_with(&s, &x, &w, &dy, dx_, &mut dw, db_, winograd, None).unwrap();
                [y, dx, dw, db]
            })
        };
        let (got, want) = (run(true), run(false));
        for (name, (g, w)) in ["y", "dx", "dweight", "dbias"]
            .iter()
            .zip(got.iter().zip(&want))
        {
            assert_close(&format!("{name} of {s:?}"), g, w, 1e-5);
        }
    }

    #[test]
    fn winograd_one_image_per_task_matches_im2col() {
        // 81 tiles an image: one image per task, in one chunk.
        let s = shape(3, 64, 64, 18, 17, [1, 1]);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        assert!(pool.install(|| per_image(&s.output().unwrap())));
        check_public(s);
        // 306 tiles an image (a chunk holds 256): one image per task, in bands of tile rows.
        check_public(shape(2, 64, 64, 36, 34, [1, 1]));
        check_public(shape(2, 64, 65, 20, 21, [0, 0]));
    }

    #[test]
    fn winograd_takes_only_the_shapes_it_gains_on() {
        let s = shape(1, 64, 64, 56, 56, [1, 1]);
        assert!(applies(&s, &s.output().unwrap()));
        let one = shape(1, 64, 64, 1, 1, [1, 1]);
        assert!(!applies(&one, &one.output().unwrap()), "1×1 outputs");
        let few = shape(1, 16, 64, 28, 28, [1, 1]);
        assert!(!applies(&few, &few.output().unwrap()), "16 input channels");
        let small = shape(16, 128, 128, 4, 4, [1, 1]);
        assert!(
            !applies(&small, &small.output().unwrap()),
            "8 K tile-channels"
        );
        let stage1 = shape(16, 64, 64, 8, 8, [1, 1]);
        assert!(
            applies(&stage1, &stage1.output().unwrap()),
            "16 K tile-channels"
        );
        let large = shape(16, 256, 256, 14, 14, [1, 1]);
        assert!(
            applies(&large, &large.output().unwrap()),
            "200 K tile-channels"
        );
        let strided = Conv2dShape {
            stride: [2, 2],
            ..s
        };
        assert!(!applies(&strided, &strided.output().unwrap()), "stride 2");
    }
}
