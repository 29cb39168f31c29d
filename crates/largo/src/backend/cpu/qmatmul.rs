//! Matrix products with quantised weights (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K;
//! see `Packing`) that never expand the weights to f32: the activations are quantised per 32-value block to 8 bits (scale max|x|/127, the
//! block's integer sum kept, as llama.cpp's `q8_1`), and every output is
//!
//! ```text
//! y = Σ_blocks (d_w·d_x)·isum  [+ m_w·(d_x·Σq_x) for Q4_1]
//! ```
//!
//! accumulated in f32 block by block in order, where `isum` is the exact integer dot product
//! of the block's weight and activation integers. Integer sums are exact, and the float
//! combination is the same operations in the same order in every path (AVX2 and the portable
//! fallback, one row or many), so each output row's result does not depend on the batch it
//! ran in, nor on the instruction set: SIMD and scalar agree bit for bit.
//!
//! Weights are repacked at load into groups of 8 output rows (the row count padded with zero
//! rows to a multiple of 8), interleaved 4 values at a time: for block b of group g, chunk c
//! holds values 4c..4c+4 of each of the 8 rows (32 bytes; for Q4, the low nibbles are values
//! 4c.., the high nibbles values 16 + 4c..; ggml's own byte order within a row, so repacking
//! only moves 4-byte pieces). A SIMD lane then accumulates one output row: multiplying a chunk
//! by the activation's 4 matching bytes broadcast gives 8 rows' partial dots with no
//! horizontal sums. The f16 scales (and Q4_1 minimums) of a group's block are 8 consecutive
//! u16. A kernel computes 8 outputs of up to 4 activation rows at a time, each weight chunk
//! unpacked once for all of them; work is split over output-row groups across threads, and
//! for many activation rows it is tiled (a chunk of weight groups × a tile of activation rows)
//! so weight blocks are reused from cache across rows: the GEMM path.

use super::half::{f16_to_f32, f32_to_f16};
use super::quant::{dequantize_row_q6_k, scale_min_k4, GgmlType};
use crate::{Error, Result};
use rayon::prelude::*;

/// Values per block of the quantised types handled here (and of the activation blocks).
pub const QK: usize = 32;
/// Output rows per packed group.
const GROUP: usize = 8;

/// How the kernels hold a matrix's 32-value blocks: 8-bit or 4-bit integers q, an f16 scale
/// d and, for the `…Min` kinds, an f16 minimum m; a value is d·q (+ m), with 8 subtracted
/// from each nibble of `Nibbles`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packing {
    /// Q8_0; Q5_0 (its 5-bit values less 16, exactly); Q6_K (requantised to 8 bits).
    Bytes,
    /// Q5_1 and Q5_K (unsigned 5-bit values, exactly; Q5_K's scale·sub-scale in f16).
    BytesMin,
    /// Q4_0.
    Nibbles,
    /// Q4_1 and Q4_K (Q4_K's scale·sub-scale and minimum·sub-minimum in f16).
    NibblesMin,
}

impl Packing {
    fn of(dtype: GgmlType) -> Option<Packing> {
        Some(match dtype {
            GgmlType::Q8_0 | GgmlType::Q5_0 | GgmlType::Q6_K => Packing::Bytes,
            GgmlType::Q5_1 | GgmlType::Q5_K => Packing::BytesMin,
            GgmlType::Q4_0 => Packing::Nibbles,
            GgmlType::Q4_1 | GgmlType::Q4_K => Packing::NibblesMin,
            _ => return None,
        })
    }

    fn bytes(self) -> bool {
        matches!(self, Packing::Bytes | Packing::BytesMin)
    }

    fn has_min(self) -> bool {
        matches!(self, Packing::BytesMin | Packing::NibblesMin)
    }

    /// Bytes of integers per block.
    fn qbytes(self) -> usize {
        if self.bytes() {
            32
        } else {
            16
        }
    }
}

/// A weight matrix [rows, cols] of one of the types [`QMatrix::supports`] lists, repacked for
/// the kernels (see the module documentation).
#[derive(Clone, Debug)]
pub struct QMatrix {
    /// The type it was read as.
    pub dtype: GgmlType,
    pub packing: Packing,
    pub rows: usize,
    pub cols: usize,
    /// [groups][blocks][4 (nibbles) or 8 (bytes) chunks][8 rows][4 bytes].
    qs: Vec<u8>,
    /// f16 scales [groups][blocks][8 rows].
    d: Vec<u16>,
    /// f16 minimums (`…Min` packings only), laid out as `d`.
    m: Vec<u16>,
}

/// Activations quantised to 8 bits per block: per row, `cols` i8 values, and per block a scale
/// and the sum of its integers.
struct QActs {
    blocks: usize,
    qs: Vec<i8>,
    d: Vec<f32>,
    s: Vec<i32>,
}

/// One 32-value block as the kernels take it: value i = d·q[i] (+ m), d and m f16 bits.
struct IntBlock {
    d: u16,
    m: u16,
    q: [i8; QK],
}

impl QMatrix {
    /// Whether `dtype` runs on the integer kernels. Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 keep
    /// their values exactly; Q4_K and Q5_K too, with each sub-block's scale and minimum
    /// rounded to f16 (a relative 2⁻¹², far below their quantisation step); Q6_K is
    /// requantised to 8 bits per 32 values (an error below a quarter of its own step).
    pub fn supports(dtype: GgmlType) -> bool {
        Packing::of(dtype).is_some()
    }

    /// Repacks ggml blocks: `bytes` holds `rows` rows of `cols` values of `dtype`.
    pub fn from_ggml(dtype: GgmlType, rows: usize, cols: usize, bytes: &[u8]) -> Result<Self> {
        let Some(packing) = Packing::of(dtype) else {
            return Err(Error::Invalid(format!(
                "no quantised matmul for {dtype}: supported are Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, \
                 Q4_K, Q5_K, Q6_K"
            )));
        };
        let bv = dtype.block_values();
        if cols == 0 || !cols.is_multiple_of(bv) {
            return Err(Error::Invalid(format!(
                "a {dtype} [{rows}, {cols}] matrix needs cols a nonzero multiple of {bv}"
            )));
        }
        let nb = cols / QK;
        let row_bytes = cols / bv * dtype.block_bytes();
        if bytes.len() != rows * row_bytes {
            return Err(Error::Invalid(format!(
                "{dtype} [{rows}, {cols}]: {} bytes, expected {}",
                bytes.len(),
                rows * row_bytes
            )));
        }
        let qb = packing.qbytes();
        let groups = rows.div_ceil(GROUP);
        let mut qs = vec![0u8; groups * nb * GROUP * qb];
        let mut d = vec![0u16; groups * nb * GROUP];
        let mut m = if packing.has_min() {
            vec![0u16; groups * nb * GROUP]
        } else {
            Vec::new()
        };
        let mut blocks = Vec::with_capacity(nb);
        for (r, row) in bytes.chunks_exact(row_bytes).enumerate() {
            let (g, lane) = (r / GROUP, r % GROUP);
            blocks.clear();
            int_blocks(dtype, row, &mut blocks)?;
            for (b, blk) in blocks.iter().enumerate() {
                let at = (g * nb + b) * GROUP + lane;
                d[at] = blk.d;
                if packing.has_min() {
                    m[at] = blk.m;
                }
                // ggml's byte order: for nibbles, byte j holds values j (low) and 16 + j.
                let mut packed = [0u8; 32];
                if packing.bytes() {
                    for (p, &q) in packed.iter_mut().zip(&blk.q) {
                        *p = q as u8;
                    }
                } else {
                    let (low, high) = blk.q.split_at(16);
                    for ((p, &l), &h) in packed.iter_mut().zip(low).zip(high) {
                        *p = (l as u8 & 0x0f) | (h as u8) << 4;
                    }
                }
                let gb = (g * nb + b) * GROUP * qb;
                for (c, piece) in packed[..qb].chunks_exact(4).enumerate() {
                    let to = gb + c * GROUP * 4 + lane * 4;
                    qs[to..to + 4].copy_from_slice(piece);
                }
            }
        }
        Ok(QMatrix {
            dtype,
            packing,
            rows,
            cols,
            qs,
            d,
            m,
        })
    }

    /// Bytes a product reads (integers and scales, padding rows included).
    pub fn bytes(&self) -> usize {
        self.qs.len() + 2 * (self.d.len() + self.m.len())
    }

    /// Row `lane` of group `g`'s block `b` in ggml's byte order (16 or 32 bytes used).
    fn row_bytes(&self, g: usize, b: usize, lane: usize) -> [u8; 32] {
        let qb = self.packing.qbytes();
        let gb = (g * (self.cols / QK) + b) * GROUP * qb;
        let mut out = [0u8; 32];
        for c in 0..qb / 4 {
            let from = gb + c * GROUP * 4 + lane * 4;
            out[c * 4..c * 4 + 4].copy_from_slice(&self.qs[from..from + 4]);
        }
        out
    }

    /// Row `r` as f32 (for embedding lookups): the values the kernels multiply.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let nb = self.cols / QK;
        let (g, lane) = (r / GROUP, r % GROUP);
        for (b, y) in out[..self.cols].chunks_exact_mut(QK).enumerate() {
            let at = (g * nb + b) * GROUP + lane;
            let q = self.row_bytes(g, b, lane);
            let d = f16_to_f32(self.d[at]);
            let m = if self.packing.has_min() {
                f16_to_f32(self.m[at])
            } else {
                0.0
            };
            let int = |j: usize| -> i32 {
                match self.packing {
                    Packing::Bytes | Packing::BytesMin => q[j] as i8 as i32,
                    Packing::Nibbles => (q[j % 16] >> (4 * (j / 16)) & 0x0f) as i32 - 8,
                    Packing::NibblesMin => (q[j % 16] >> (4 * (j / 16)) & 0x0f) as i32,
                }
            };
            for (j, v) in y.iter_mut().enumerate() {
                *v = if self.packing.has_min() {
                    d * int(j) as f32 + m
                } else {
                    int(j) as f32 * d
                };
            }
        }
    }
}

/// The 32-value integer blocks of one row of `dtype` blocks (see [`QMatrix::supports`]).
fn int_blocks(dtype: GgmlType, row: &[u8], out: &mut Vec<IntBlock>) -> Result<()> {
    let h16 = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    // Q5's values: nibble j (low) and 16 + j (high) of qs, fifth bits in qh.
    let five = |qs: &[u8], qh: u32, q: &mut [i8; QK], less: i8| {
        for j in 0..16 {
            q[j] = ((qs[j] & 0x0f) | (((qh >> j) & 1) << 4) as u8) as i8 - less;
            q[j + 16] = ((qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4) as u8) as i8 - less;
        }
    };
    let mut q = [0i8; QK];
    match dtype {
        GgmlType::Q8_0 => {
            for b in row.chunks_exact(34) {
                q.iter_mut().zip(&b[2..]).for_each(|(q, &v)| *q = v as i8);
                out.push(IntBlock {
                    d: h16(b, 0),
                    m: 0,
                    q,
                });
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let (bb, at) = if dtype == GgmlType::Q4_0 {
                (18, 2)
            } else {
                (20, 4)
            };
            for b in row.chunks_exact(bb) {
                for j in 0..16 {
                    q[j] = (b[at + j] & 0x0f) as i8;
                    q[j + 16] = (b[at + j] >> 4) as i8;
                }
                let m = if at == 4 { h16(b, 2) } else { 0 };
                out.push(IntBlock { d: h16(b, 0), m, q });
            }
        }
        GgmlType::Q5_0 => {
            for b in row.chunks_exact(22) {
                five(
                    &b[6..22],
                    u32::from_le_bytes([b[2], b[3], b[4], b[5]]),
                    &mut q,
                    16,
                );
                out.push(IntBlock {
                    d: h16(b, 0),
                    m: 0,
                    q,
                });
            }
        }
        GgmlType::Q5_1 => {
            for b in row.chunks_exact(24) {
                five(
                    &b[8..24],
                    u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
                    &mut q,
                    0,
                );
                out.push(IntBlock {
                    d: h16(b, 0),
                    m: h16(b, 2),
                    q,
                });
            }
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let bb = dtype.block_bytes();
            let qs_at = if dtype == GgmlType::Q4_K { 16 } else { 48 };
            for b in row.chunks_exact(bb) {
                let (dd, dmin) = (f16_to_f32(h16(b, 0)), f16_to_f32(h16(b, 2)));
                for j in 0..8 {
                    let (sc, mn) = scale_min_k4(j, &b[4..16]);
                    let nib = &b[qs_at + 32 * (j / 2)..][..32];
                    let shift = 4 * (j % 2);
                    for (l, q) in q.iter_mut().enumerate() {
                        let mut v = (nib[l] >> shift) & 0x0f;
                        if dtype == GgmlType::Q5_K {
                            v |= ((b[16 + l] >> j) & 1) << 4;
                        }
                        *q = v as i8;
                    }
                    let (d, m) = (dd * sc as f32, -(dmin * mn as f32));
                    out.push(IntBlock {
                        d: half_of(dtype, d)?,
                        m: half_of(dtype, m)?,
                        q,
                    });
                }
            }
        }
        GgmlType::Q6_K => {
            let mut vals = [0f32; 256];
            for b in row.chunks_exact(210) {
                dequantize_row_q6_k(b, &mut vals);
                for v in vals.chunks_exact(QK) {
                    let amax = v.iter().fold(0f32, |a, x| a.max(x.abs()));
                    let d = half_of(dtype, amax / 127.0)?;
                    let step = f16_to_f32(d);
                    let inv = if step > 0.0 { 1.0 / step } else { 0.0 };
                    for (q, &x) in q.iter_mut().zip(v) {
                        *q = (x * inv).round().clamp(-127.0, 127.0) as i8;
                    }
                    out.push(IntBlock { d, m: 0, q });
                }
            }
        }
        other => return Err(Error::Invalid(format!("no quantised matmul for {other}"))),
    }
    Ok(())
}

/// `x` as f16 bits, or an error when a scale of `dtype` has no finite f16.
fn half_of(dtype: GgmlType, x: f32) -> Result<u16> {
    let h = f32_to_f16(x);
    if f16_to_f32(h).is_finite() {
        Ok(h)
    } else {
        Err(Error::Invalid(format!(
            "a {dtype} block scale ({x}) is outside f16's range"
        )))
    }
}

/// One activation block being quantised: (values, integers), (scale, integer sum).
type ActBlock<'a> = ((&'a [f32], &'a mut [i8]), (&'a mut f32, &'a mut i32));

/// 1.5·2^23: adding and subtracting it rounds an f32 of magnitude < 2^22 to the nearest
/// integer, ties to even, in plain arithmetic (no libm call, vectorisable).
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Quantises `n` rows of `cols` values to 8 bits per 32-block (llama.cpp's `quantize_row_q8_1`
/// with an f32 scale, an exact integer sum, and ties rounded to even).
fn quantize_acts(x: &[f32], n: usize, cols: usize) -> QActs {
    let nb = cols / QK;
    let mut a = QActs {
        blocks: nb,
        qs: vec![0; n * cols],
        d: vec![0.0; n * nb],
        s: vec![0; n * nb],
    };
    let one = |((xs, qs), (d, s)): ActBlock| {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in qs.iter_mut().zip(xs) {
            // |v·inv| ≤ 127 (NaN and infinities aside, which give garbage, not UB).
            let r = ((v * inv + ROUND_MAGIC) - ROUND_MAGIC) as i32;
            *q = r as i8;
            sum += r;
        }
        *d = scale;
        *s = sum;
    };
    if n * nb >= 4096 {
        x[..n * cols]
            .par_chunks_exact(QK)
            .zip(a.qs.par_chunks_exact_mut(QK))
            .zip(a.d.par_iter_mut().zip(a.s.par_iter_mut()))
            .with_min_len(256)
            .for_each(one);
    } else {
        x[..n * cols]
            .chunks_exact(QK)
            .zip(a.qs.chunks_exact_mut(QK))
            .zip(a.d.iter_mut().zip(a.s.iter_mut()))
            .for_each(one);
    }
    a
}

/// Which kernels this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QKernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX2 with AVX-512 VNNI's `vpdpbusd` on 256-bit vectors (u8 × i8 dot products of 4,
    /// accumulated in i32, in one instruction).
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

impl QKernel {
    /// Every kernel this CPU runs, the portable one first.
    pub fn available() -> Vec<QKernel> {
        let mut k = vec![QKernel::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            let best = QKernel::detect();
            if best != QKernel::Scalar {
                k.push(QKernel::Avx2);
            }
            if best == QKernel::Avx512Vnni {
                k.push(QKernel::Avx512Vnni);
            }
        }
        k
    }

    /// The best the kernels may use (`isa::isa`, detected once), capped further by the
    /// environment variable `LARGO_QKERNEL` = `scalar` or `avx2` (to measure or test the
    /// lesser kernels).
    pub fn detect() -> QKernel {
        static K: std::sync::OnceLock<QKernel> = std::sync::OnceLock::new();
        *K.get_or_init(|| {
            let cap = std::env::var("LARGO_QKERNEL").unwrap_or_default();
            if cap == "scalar" || !super::isa::avx2() {
                return QKernel::Scalar;
            }
            #[cfg(target_arch = "x86_64")]
            if cap != "avx2"
                && super::isa::avx512()
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("avx512vl")
            {
                return QKernel::Avx512Vnni;
            }
            QKernel::Avx2
        })
    }
}

/// y [n, rows] = x [n, cols] · wᵀ with the best kernels of this CPU.
pub fn qmatmul(w: &QMatrix, x: &[f32], n: usize, y: &mut [f32]) -> Result<()> {
    qmatmul_many_with(QKernel::detect(), &[w], x, n, &mut [y])
}

/// [`qmatmul`] of several matrices with the same input (a layer's query, key and value
/// projections): x is quantised once and all their rows share one parallel pass, so a decoding
/// step pays one dispatch, not one per matrix.
pub fn qmatmul_many(ws: &[&QMatrix], x: &[f32], n: usize, ys: &mut [&mut [f32]]) -> Result<()> {
    qmatmul_many_with(QKernel::detect(), ws, x, n, ys)
}

/// [`qmatmul`] with the kernels named (tests compare them).
pub fn qmatmul_with(
    kernel: QKernel,
    w: &QMatrix,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) -> Result<()> {
    qmatmul_many_with(kernel, &[w], x, n, &mut [y])
}

/// Activation rows per cache tile.
const ACT_TILE: usize = 64;
/// From this many activation rows on (a prompt), work is split by rows rather than by output
/// groups; below it (a batch of decoding sequences) each weight group is read once.
const ROW_SPLIT: usize = 64;

/// [`qmatmul_many`] with the kernels named.
pub fn qmatmul_many_with(
    kernel: QKernel,
    ws: &[&QMatrix],
    x: &[f32],
    n: usize,
    ys: &mut [&mut [f32]],
) -> Result<()> {
    let Some(cols) = ws.first().map(|w| w.cols) else {
        return Ok(());
    };
    if ws.len() != ys.len() {
        return Err(Error::Invalid(format!(
            "qmatmul: {} matrices but {} outputs",
            ws.len(),
            ys.len()
        )));
    }
    for (w, y) in ws.iter().zip(ys.iter()) {
        if w.cols != cols || x.len() < n * w.cols || y.len() < n * w.rows {
            return Err(Error::Invalid(format!(
                "qmatmul: x has {} values and y {}, [{n}, {cols}] · [{}, {}]ᵀ needs {} and {}",
                x.len(),
                y.len(),
                w.rows,
                w.cols,
                n * w.cols,
                n * w.rows
            )));
        }
    }
    if n == 0 {
        return Ok(());
    }
    let acts = quantize_acts(x, n, cols);
    let threads = rayon::current_num_threads().max(1);
    if n >= ROW_SPLIT {
        // Many rows (a prompt): tasks are tiles of activation rows of one matrix, each over
        // all its output groups, writing their rows of y in place. Within a tile each weight
        // group is read from memory once and reused from cache for every row.
        let tile = (n.div_ceil(threads * 4).next_multiple_of(4)).clamp(4, ACT_TILE);
        let mut jobs: Vec<(usize, usize, &mut [f32])> = Vec::new();
        for (m, y) in ys.iter_mut().enumerate() {
            let rows = ws[m].rows;
            for (k, out) in y[..n * rows].chunks_mut(tile * rows).enumerate() {
                jobs.push((m, k * tile, out));
            }
        }
        jobs.into_par_iter().for_each(|(m, i0, out)| {
            let w = ws[m];
            let i1 = i0 + out.len() / w.rows;
            for g in 0..w.rows.div_ceil(GROUP) {
                let keep = GROUP.min(w.rows - g * GROUP);
                let mut i = i0;
                while i < i1 {
                    let take = (i1 - i).min(4);
                    let mut acc = [[0f32; GROUP]; 4];
                    group_dot(kernel, w, g, &acts, i, take, &mut acc);
                    for (k, a) in acc[..take].iter().enumerate() {
                        let o = (i + k - i0) * w.rows + g * GROUP;
                        out[o..o + keep].copy_from_slice(&a[..keep]);
                    }
                    i += take;
                }
            }
        });
        return Ok(());
    }
    // Few rows (decoding, or a short batch): tasks are runs of output-row groups of one
    // matrix, about 8 per thread over all matrices.
    let total: usize = ws.iter().map(|w| w.rows.div_ceil(GROUP)).sum();
    let per_task = (total / (threads * 8)).clamp(1, 16);
    if n == 1 {
        // One row: each task writes its run of outputs in place.
        let mut jobs: Vec<(usize, usize, &mut [f32])> = Vec::new();
        for (m, y) in ys.iter_mut().enumerate() {
            for (k, out) in y[..ws[m].rows].chunks_mut(per_task * GROUP).enumerate() {
                jobs.push((m, k * per_task, out));
            }
        }
        jobs.into_par_iter().for_each(|(m, g0, out)| {
            for (j, rows) in out.chunks_mut(GROUP).enumerate() {
                let mut acc = [[0f32; GROUP]; 4];
                group_dot(kernel, ws[m], g0 + j, &acts, 0, 1, &mut acc);
                rows.copy_from_slice(&acc[0][..rows.len()]);
            }
        });
        return Ok(());
    }
    let tasks: Vec<(usize, usize, usize)> = ws
        .iter()
        .enumerate()
        .flat_map(|(m, w)| {
            let groups = w.rows.div_ceil(GROUP);
            (0..groups)
                .step_by(per_task)
                .map(move |g0| (m, g0, (g0 + per_task).min(groups)))
        })
        .collect();
    // Each task computes [n, its rows] into its own buffer; the buffers are scattered after.
    let parts: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(m, g0, g1)| {
            let w = ws[m];
            let width = (g1 - g0) * GROUP;
            let mut out = vec![0f32; n * width];
            for i0 in (0..n).step_by(ACT_TILE) {
                let i1 = (i0 + ACT_TILE).min(n);
                for g in g0..g1 {
                    let mut i = i0;
                    while i < i1 {
                        let take = (i1 - i).min(4);
                        let mut acc = [[0f32; GROUP]; 4];
                        group_dot(kernel, w, g, &acts, i, take, &mut acc);
                        for (k, a) in acc[..take].iter().enumerate() {
                            let o = (i + k) * width + (g - g0) * GROUP;
                            out[o..o + GROUP].copy_from_slice(a);
                        }
                        i += take;
                    }
                }
            }
            out
        })
        .collect();
    for (&(m, g0, _), part) in tasks.iter().zip(&parts) {
        let rows = ws[m].rows;
        let r0 = g0 * GROUP;
        let width = part.len() / n;
        let keep = width.min(rows - r0);
        for i in 0..n {
            ys[m][i * rows + r0..][..keep].copy_from_slice(&part[i * width..][..keep]);
        }
    }
    Ok(())
}

/// acc[k][lane] = output row 4g + lane of activation row i + k, k < take (≤ 4).
fn group_dot(
    kernel: QKernel,
    w: &QMatrix,
    g: usize,
    a: &QActs,
    i: usize,
    take: usize,
    acc: &mut [[f32; GROUP]; 4],
) {
    match kernel {
        QKernel::Scalar => {
            for (k, acc) in acc[..take].iter_mut().enumerate() {
                group_dot_scalar(w, g, a, i + k, acc);
            }
        }
        #[cfg(target_arch = "x86_64")]
        QKernel::Avx512Vnni => {
            assert!(
                QKernel::detect() == QKernel::Avx512Vnni,
                "AVX-512 VNNI not available"
            );
            let nb = a.blocks;
            assert!(w.cols == nb * QK && a.qs.len() >= (i + take) * w.cols);
            assert!((g + 1) * nb * GROUP <= w.d.len());
            // SAFETY: the CPU has AVX2, F16C, AVX-512 VL and VNNI (asserted); group g's blocks
            // and activation rows i..i+take are in bounds (asserted), the kernels' contract.
            unsafe {
                match take {
                    4 => avx2::group_dot_vnni::<4>(w, g, a, i, acc),
                    3 => avx2::group_dot_vnni::<3>(w, g, a, i, acc),
                    2 => avx2::group_dot_vnni::<2>(w, g, a, i, acc),
                    _ => avx2::group_dot_vnni::<1>(w, g, a, i, acc),
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        QKernel::Avx2 => {
            assert!(
                QKernel::detect() != QKernel::Scalar,
                "AVX2/F16C not available"
            );
            let nb = a.blocks;
            assert!(w.cols == nb * QK && a.qs.len() >= (i + take) * w.cols);
            assert!((g + 1) * nb * GROUP <= w.d.len());
            // SAFETY: the CPU has AVX2 and F16C (asserted); group g's blocks and activation
            // rows i..i+take are in bounds (asserted above), which is the kernels' contract.
            unsafe {
                match take {
                    4 => avx2::group_dot::<4>(w, g, a, i, acc),
                    3 => avx2::group_dot::<3>(w, g, a, i, acc),
                    2 => avx2::group_dot::<2>(w, g, a, i, acc),
                    _ => avx2::group_dot::<1>(w, g, a, i, acc),
                }
            }
        }
    }
}

/// The portable kernel: one activation row against the 4 rows of group g.
fn group_dot_scalar(w: &QMatrix, g: usize, a: &QActs, i: usize, acc: &mut [f32; GROUP]) {
    let nb = a.blocks;
    for b in 0..nb {
        let xq = &a.qs[(i * nb + b) * QK..][..QK];
        let dx = a.d[i * nb + b];
        let sx = a.s[i * nb + b];
        for (lane, acc) in acc.iter_mut().enumerate() {
            let at = (g * nb + b) * GROUP + lane;
            let q = w.row_bytes(g, b, lane);
            let isum: i32 = if w.packing.bytes() {
                q.iter()
                    .zip(xq)
                    .map(|(&w, &x)| w as i8 as i32 * x as i32)
                    .sum()
            } else {
                let mut s = 0i32;
                for j in 0..16 {
                    s += (q[j] & 0x0f) as i32 * xq[j] as i32;
                    s += (q[j] >> 4) as i32 * xq[j + 16] as i32;
                }
                if w.packing == Packing::Nibbles {
                    s - 8 * sx
                } else {
                    s
                }
            };
            let dw = f16_to_f32(w.d[at]);
            *acc += (dw * dx) * isum as f32;
            if w.packing.has_min() {
                *acc += f16_to_f32(w.m[at]) * (dx * sx as f32);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Packing, QActs, QMatrix, GROUP, QK};
    use std::arch::x86_64::*;

    /// acc[k] = the 8 outputs of group g for activation row i + k, k < R, with the float
    /// operations of `group_dot_scalar` lane by lane.
    ///
    /// # Safety
    /// The CPU supports AVX2 and F16C; `w` and `a` have the same block count; group `g` exists
    /// in `w` and activation rows `i..i + R` exist in `a`.
    /// Bytes ahead of the block being read that the kernel prefetches.
    const PREFETCH: usize = 1024;

    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn group_dot<const R: usize>(
        w: &QMatrix,
        g: usize,
        a: &QActs,
        i: usize,
        acc: &mut [[f32; GROUP]; 4],
    ) {
        let nb = a.blocks;
        let qb = w.packing.qbytes();
        let ones = _mm256_set1_epi16(1);
        let low = _mm256_set1_epi8(0x0f);
        let mut facc = [_mm256_setzero_ps(); R];
        let xq = a.qs.as_ptr();
        // The 4 activation bytes of chunk c of block b of row i + k, broadcast to every lane.
        let xb = |k: usize, b: usize, c: usize| {
            let p = xq.add(((i + k) * nb + b) * QK + 4 * c) as *const i32;
            _mm256_set1_epi32(p.read_unaligned())
        };
        for b in 0..nb {
            let gb = (g * nb + b) * GROUP;
            let base = w.qs.as_ptr().add(gb * qb);
            // Weights stream from memory once per product: ask for the bytes a few blocks
            // ahead (a prefetch never faults, even past the end).
            for line in (0..GROUP * qb).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(PREFETCH + line) as *const i8);
            }
            let mut isum = [_mm256_setzero_si256(); R];
            if w.packing.bytes() {
                for c in 0..8 {
                    let v = _mm256_loadu_si256(base.add(c * 32) as *const __m256i);
                    let av = _mm256_sign_epi8(v, v);
                    for (k, s) in isum.iter_mut().enumerate() {
                        // |w| · (x with w's sign): pairs ≤ 2·128·127, exact in i16.
                        let p = _mm256_maddubs_epi16(av, _mm256_sign_epi8(xb(k, b, c), v));
                        *s = _mm256_add_epi32(*s, _mm256_madd_epi16(p, ones));
                    }
                }
            } else {
                // Nibbles 0..15 times |x| ≤ 127: a pair ≤ 3810, eight chunks ≤ 30480, exact in
                // i16 until the one widening multiply-add.
                let mut s16 = [_mm256_setzero_si256(); R];
                for c in 0..4 {
                    let v = _mm256_loadu_si256(base.add(c * 32) as *const __m256i);
                    let lo = _mm256_and_si256(v, low);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                    for (k, s) in s16.iter_mut().enumerate() {
                        let pl = _mm256_maddubs_epi16(lo, xb(k, b, c));
                        let ph = _mm256_maddubs_epi16(hi, xb(k, b, c + 4));
                        *s = _mm256_add_epi16(*s, _mm256_add_epi16(pl, ph));
                    }
                }
                for (s, s16) in isum.iter_mut().zip(s16) {
                    *s = _mm256_madd_epi16(s16, ones);
                }
            }
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(w.d.as_ptr().add(gb) as *const __m128i));
            let mw = if w.packing.has_min() {
                _mm256_cvtph_ps(_mm_loadu_si128(w.m.as_ptr().add(gb) as *const __m128i))
            } else {
                _mm256_setzero_ps()
            };
            for (k, (f, mut is)) in facc.iter_mut().zip(isum).enumerate() {
                let row = (i + k) * nb + b;
                let dx = *a.d.get_unchecked(row);
                let sx = *a.s.get_unchecked(row);
                if w.packing == Packing::Nibbles {
                    is = _mm256_sub_epi32(is, _mm256_set1_epi32(8 * sx));
                }
                let t = _mm256_mul_ps(
                    _mm256_mul_ps(dw, _mm256_set1_ps(dx)),
                    _mm256_cvtepi32_ps(is),
                );
                *f = _mm256_add_ps(*f, t);
                if w.packing.has_min() {
                    *f = _mm256_add_ps(*f, _mm256_mul_ps(mw, _mm256_set1_ps(dx * sx as f32)));
                }
            }
        }
        for (out, v) in acc.iter_mut().zip(facc) {
            _mm256_storeu_ps(out.as_mut_ptr(), v);
        }
    }

    /// [`group_dot`] with `vpdpbusd`: the same integer sums (exact), the same float operations.
    ///
    /// # Safety
    /// As [`group_dot`], and the CPU supports AVX-512 VL and VNNI.
    #[target_feature(enable = "avx2,f16c,avx512vnni,avx512vl")]
    pub unsafe fn group_dot_vnni<const R: usize>(
        w: &QMatrix,
        g: usize,
        a: &QActs,
        i: usize,
        acc: &mut [[f32; GROUP]; 4],
    ) {
        let nb = a.blocks;
        let qb = w.packing.qbytes();
        let low = _mm256_set1_epi8(0x0f);
        let flip = _mm256_set1_epi8(-128);
        let mut facc = [_mm256_setzero_ps(); R];
        let xq = a.qs.as_ptr();
        let xb = |k: usize, b: usize, c: usize| {
            let p = xq.add(((i + k) * nb + b) * QK + 4 * c) as *const i32;
            _mm256_set1_epi32(p.read_unaligned())
        };
        for b in 0..nb {
            let gb = (g * nb + b) * GROUP;
            let base = w.qs.as_ptr().add(gb * qb);
            for line in (0..GROUP * qb).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(PREFETCH + line) as *const i8);
            }
            // Four partial sums per row: `vpdpbusd` accumulates in place, and one chain of
            // eight would wait on its latency (decoding has a single row). Integer sums are
            // exact, so splitting them changes nothing.
            let mut part = [[_mm256_setzero_si256(); 4]; R];
            if w.packing.bytes() {
                // w + 128 as u8 (flip the sign bit): Σ(w + 128)·x − 128·Σx.
                for c in 0..8 {
                    let v = _mm256_loadu_si256(base.add(c * 32) as *const __m256i);
                    let u = _mm256_xor_si256(v, flip);
                    for (k, p) in part.iter_mut().enumerate() {
                        p[c % 4] = _mm256_dpbusd_epi32(p[c % 4], u, xb(k, b, c));
                    }
                }
            } else {
                for c in 0..4 {
                    let v = _mm256_loadu_si256(base.add(c * 32) as *const __m256i);
                    let lo = _mm256_and_si256(v, low);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                    let j = 2 * (c % 2);
                    for (k, p) in part.iter_mut().enumerate() {
                        p[j] = _mm256_dpbusd_epi32(p[j], lo, xb(k, b, c));
                        p[j + 1] = _mm256_dpbusd_epi32(p[j + 1], hi, xb(k, b, c + 4));
                    }
                }
            }
            let isum = part.map(|[p0, p1, p2, p3]| {
                _mm256_add_epi32(_mm256_add_epi32(p0, p1), _mm256_add_epi32(p2, p3))
            });
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(w.d.as_ptr().add(gb) as *const __m128i));
            let mw = if w.packing.has_min() {
                _mm256_cvtph_ps(_mm_loadu_si128(w.m.as_ptr().add(gb) as *const __m128i))
            } else {
                _mm256_setzero_ps()
            };
            for (k, (f, mut is)) in facc.iter_mut().zip(isum).enumerate() {
                let row = (i + k) * nb + b;
                let dx = *a.d.get_unchecked(row);
                let sx = *a.s.get_unchecked(row);
                match w.packing {
                    Packing::Nibbles => is = _mm256_sub_epi32(is, _mm256_set1_epi32(8 * sx)),
                    Packing::Bytes | Packing::BytesMin => {
                        is = _mm256_sub_epi32(is, _mm256_set1_epi32(128 * sx))
                    }
                    Packing::NibblesMin => {}
                }
                let t = _mm256_mul_ps(
                    _mm256_mul_ps(dw, _mm256_set1_ps(dx)),
                    _mm256_cvtepi32_ps(is),
                );
                *f = _mm256_add_ps(*f, t);
                if w.packing.has_min() {
                    *f = _mm256_add_ps(*f, _mm256_mul_ps(mw, _mm256_set1_ps(dx * sx as f32)));
                }
            }
        }
        for (out, v) in acc.iter_mut().zip(facc) {
            _mm256_storeu_ps(out.as_mut_ptr(), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::quant::dequantize;

    /// Deterministic pseudo-random bytes / values.
    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    /// Random ggml blocks: random bytes, with small f16 scales (about 2^-12..2^-7) and
    /// minimums (about −(2^-12..2^-6)) where the type keeps them.
    fn random_blocks(dtype: GgmlType, rows: usize, cols: usize, seed: &mut u64) -> Vec<u8> {
        let nb = rows * cols / dtype.block_values();
        let bb = dtype.block_bytes();
        let (scale_at, min_at): (usize, Option<usize>) = match dtype {
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => (0, Some(2)),
            GgmlType::Q6_K => (208, None),
            _ => (0, None),
        };
        let mut out = Vec::with_capacity(nb * bb);
        for _ in 0..nb {
            let mut b: Vec<u8> = (0..bb).map(|_| lcg(seed) as u8).collect();
            let scale = 0x1000u16 + (lcg(seed) % 0x1400) as u16;
            b[scale_at..scale_at + 2].copy_from_slice(&scale.to_le_bytes());
            if let Some(at) = min_at {
                // Q4_K/Q5_K subtract their (positive) super-minimum; Q4_1/Q5_1 add theirs.
                let sign = if dtype.block_values() == QK {
                    0x8000
                } else {
                    0
                };
                let m = sign | (0x1000u16 + (lcg(seed) % 0x1800) as u16);
                b[at..at + 2].copy_from_slice(&m.to_le_bytes());
            }
            out.extend(b);
        }
        out
    }

    fn random_x(n: usize, seed: &mut u64) -> Vec<f32> {
        (0..n)
            .map(|_| (lcg(seed) % 20001) as f32 / 10000.0 - 1.0)
            .collect()
    }

    const TYPES: [GgmlType; 8] = [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ];

    /// Types whose values the kernels hold exactly.
    fn exact(dtype: GgmlType) -> bool {
        dtype.block_values() == QK
    }

    /// `cols` rounded up to whole blocks of `dtype`.
    fn whole(dtype: GgmlType, cols: usize) -> usize {
        cols.next_multiple_of(dtype.block_values())
    }

    #[test]
    fn matches_the_dequantised_product_within_8_bit_activation_error() {
        let mut seed = 7;
        for dtype in TYPES {
            for (rows, cols, n) in [(1, 32, 1), (5, 64, 3), (13, 96, 7), (64, 256, 70)] {
                let cols = whole(dtype, cols);
                let bytes = random_blocks(dtype, rows, cols, &mut seed);
                let w = QMatrix::from_ggml(dtype, rows, cols, &bytes).unwrap();
                let mut wf = vec![0f32; rows * cols];
                dequantize(dtype, &bytes, &mut wf).unwrap();
                let x = random_x(n * cols, &mut seed);
                let mut y = vec![0f32; n * rows];
                qmatmul(&w, &x, n, &mut y).unwrap();
                let mut held = vec![0f32; cols];
                for r in 0..rows {
                    let wr = &wf[r * cols..][..cols];
                    w.dequantize_row(r, &mut held);
                    // Each activation moves by ≤ half a step (max|x|/254 ≤ 1/254), and each
                    // weight by what the packing changed (nothing for the exact types).
                    let moved: f64 = wr
                        .iter()
                        .zip(&held)
                        .map(|(a, b)| (a - b).abs() as f64)
                        .sum();
                    let bound: f64 =
                        wr.iter().map(|v| v.abs() as f64).sum::<f64>() / 254.0 + moved + 1e-5;
                    for i in 0..n {
                        let xr = &x[i * cols..][..cols];
                        let exact: f64 =
                            xr.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum();
                        let got = y[i * rows + r] as f64;
                        assert!(
                            (got - exact).abs() <= bound,
                            "{dtype} [{rows},{cols}] n={n} ({i},{r}): {got} vs {exact} (bound {bound})"
                        );
                    }
                }
                // Row by row gives the same bits.
                for i in [0, n - 1] {
                    let mut y1 = vec![0f32; rows];
                    qmatmul(&w, &x[i * cols..][..cols], 1, &mut y1).unwrap();
                    assert_eq!(y1, y[i * rows..][..rows], "{dtype}: row {i} alone differs");
                }
            }
        }
    }

    #[test]
    fn simd_equals_scalar_bit_for_bit_and_batches_do_not_change_rows() {
        let mut seed = 11;
        for dtype in TYPES {
            let (rows, cols, n) = (23, whole(dtype, 160), 7);
            let bytes = random_blocks(dtype, rows, cols, &mut seed);
            let w = QMatrix::from_ggml(dtype, rows, cols, &bytes).unwrap();
            let x = random_x(n * cols, &mut seed);
            let mut scalar = vec![0f32; n * rows];
            qmatmul_with(QKernel::Scalar, &w, &x, n, &mut scalar).unwrap();
            for kernel in QKernel::available() {
                let mut y = vec![0f32; n * rows];
                qmatmul_with(kernel, &w, &x, n, &mut y).unwrap();
                assert_eq!(scalar, y, "{dtype}: {kernel:?} differs from scalar");
            }
            let mut best = vec![0f32; n * rows];
            qmatmul(&w, &x, n, &mut best).unwrap();
            for i in 0..n {
                let mut one = vec![0f32; rows];
                qmatmul(&w, &x[i * cols..][..cols], 1, &mut one).unwrap();
                assert_eq!(one, best[i * rows..][..rows], "{dtype}: row {i} n=1 vs n=7");
            }
        }
    }

    #[test]
    fn packed_values_equal_dequantize_exactly_or_within_the_stated_rounding() {
        let mut seed = 3;
        for dtype in TYPES {
            let (rows, cols) = (6, whole(dtype, 64));
            let bytes = random_blocks(dtype, rows, cols, &mut seed);
            let w = QMatrix::from_ggml(dtype, rows, cols, &bytes).unwrap();
            let mut all = vec![0f32; rows * cols];
            dequantize(dtype, &bytes, &mut all).unwrap();
            for r in 0..rows {
                let mut row = vec![0f32; cols];
                w.dequantize_row(r, &mut row);
                let want = &all[r * cols..][..cols];
                if exact(dtype) {
                    assert_eq!(row, want, "{dtype} row {r}");
                    continue;
                }
                // K types: f16 scales (relative 2^-12 of a block's range and minimum), Q6_K
                // requantised (half an 8-bit step): within a 250th of the block's max |value|.
                for (b, (got, want)) in row.chunks(QK).zip(want.chunks(QK)).enumerate() {
                    let amax = want.iter().fold(0f32, |a, v| a.max(v.abs()));
                    for (g, v) in got.iter().zip(want) {
                        assert!(
                            (g - v).abs() <= amax / 250.0,
                            "{dtype} row {r} block {b}: {g} vs {v} (max {amax})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn bad_shapes_and_types_are_errors() {
        assert!(QMatrix::from_ggml(GgmlType::Q8_0, 2, 48, &[0; 2 * 34]).is_err());
        assert!(QMatrix::from_ggml(GgmlType::Q8_0, 2, 32, &[0; 34]).is_err());
        assert!(QMatrix::from_ggml(GgmlType::Q4_K, 1, 288, &[0; 144]).is_err());
        let e = QMatrix::from_ggml(GgmlType::F16, 1, 32, &[0; 64]).unwrap_err();
        assert!(e.to_string().contains("no quantised matmul for F16"), "{e}");
        // A Q4_K super-scale of 65504 times a sub-scale of 63 has no f16.
        let mut k = vec![0u8; 144];
        k[0..2].copy_from_slice(&0x7bffu16.to_le_bytes());
        k[4] = 63;
        let e = QMatrix::from_ggml(GgmlType::Q4_K, 1, 256, &k).unwrap_err();
        assert!(e.to_string().contains("outside f16's range"), "{e}");
        let w = QMatrix::from_ggml(GgmlType::Q8_0, 2, 32, &[0; 68]).unwrap();
        assert!(qmatmul(&w, &[0.0; 31], 1, &mut [0.0; 2]).is_err());
    }
}
