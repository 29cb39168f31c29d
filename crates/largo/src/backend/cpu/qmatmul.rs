//! Matrix products with quantised weights (Q8_0, Q4_0, Q4_1) that never expand the weights
//! to f32: the activations are quantised per 32-value block to 8 bits (scale max|x|/127, the
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

use super::quant::GgmlType;
use crate::io::f16_to_f32;
use crate::{Error, Result};
use rayon::prelude::*;

/// Values per block of the quantised types handled here (and of the activation blocks).
pub const QK: usize = 32;
/// Output rows per packed group.
const GROUP: usize = 8;

/// A weight matrix [rows, cols] in one of the types [`QMatrix::supports`] lists, repacked for
/// the kernels (see the module documentation).
#[derive(Clone, Debug)]
pub struct QMatrix {
    pub dtype: GgmlType,
    pub rows: usize,
    pub cols: usize,
    /// [groups][blocks][4 (Q4) or 8 (Q8) chunks][8 rows][4 bytes].
    qs: Vec<u8>,
    /// f16 scales [groups][blocks][8 rows].
    d: Vec<u16>,
    /// f16 minimums (Q4_1 only), laid out as `d`.
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

impl QMatrix {
    /// Whether `dtype` has integer kernels here.
    pub fn supports(dtype: GgmlType) -> bool {
        matches!(dtype, GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1)
    }

    /// Bytes of integers per block.
    fn qbytes(dtype: GgmlType) -> usize {
        if dtype == GgmlType::Q8_0 {
            32
        } else {
            16
        }
    }

    /// Repacks ggml blocks: `bytes` holds `rows` rows of `cols / 32` blocks of `dtype`.
    pub fn from_ggml(dtype: GgmlType, rows: usize, cols: usize, bytes: &[u8]) -> Result<Self> {
        if !Self::supports(dtype) {
            return Err(Error::Invalid(format!(
                "no quantised matmul for {dtype}: supported are Q8_0, Q4_0, Q4_1"
            )));
        }
        if cols == 0 || !cols.is_multiple_of(QK) {
            return Err(Error::Invalid(format!(
                "a quantised [{rows}, {cols}] matrix needs cols a nonzero multiple of {QK}"
            )));
        }
        let nb = cols / QK;
        let bb = dtype.block_bytes();
        if bytes.len() != rows * nb * bb {
            return Err(Error::Invalid(format!(
                "{dtype} [{rows}, {cols}]: {} bytes, expected {}",
                bytes.len(),
                rows * nb * bb
            )));
        }
        let qb = Self::qbytes(dtype);
        let groups = rows.div_ceil(GROUP);
        let mut qs = vec![0u8; groups * nb * GROUP * qb];
        let mut d = vec![0u16; groups * nb * GROUP];
        let mut m = if dtype == GgmlType::Q4_1 {
            vec![0u16; groups * nb * GROUP]
        } else {
            Vec::new()
        };
        // Where a block's integers start inside it.
        let q_off = bb - qb;
        for r in 0..rows {
            let (g, lane) = (r / GROUP, r % GROUP);
            for b in 0..nb {
                let src = &bytes[(r * nb + b) * bb..][..bb];
                let at = (g * nb + b) * GROUP + lane;
                d[at] = u16::from_le_bytes([src[0], src[1]]);
                if dtype == GgmlType::Q4_1 {
                    m[at] = u16::from_le_bytes([src[2], src[3]]);
                }
                let gb = (g * nb + b) * GROUP * qb;
                for (c, piece) in src[q_off..].chunks_exact(4).enumerate() {
                    let to = gb + c * GROUP * 4 + lane * 4;
                    qs[to..to + 4].copy_from_slice(piece);
                }
            }
        }
        Ok(QMatrix {
            dtype,
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
        let qb = Self::qbytes(self.dtype);
        let gb = (g * (self.cols / QK) + b) * GROUP * qb;
        let mut out = [0u8; 32];
        for c in 0..qb / 4 {
            let from = gb + c * GROUP * 4 + lane * 4;
            out[c * 4..c * 4 + 4].copy_from_slice(&self.qs[from..from + 4]);
        }
        out
    }

    /// Row `r` as f32 (for embedding lookups), as [`super::quant::dequantize`] gives it.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let nb = self.cols / QK;
        let qb = Self::qbytes(self.dtype);
        let (g, lane) = (r / GROUP, r % GROUP);
        for (b, y) in out[..self.cols].chunks_exact_mut(QK).enumerate() {
            let at = (g * nb + b) * GROUP + lane;
            let q = self.row_bytes(g, b, lane);
            let q = &q[..qb];
            let d = f16_to_f32(self.d[at]);
            match self.dtype {
                GgmlType::Q8_0 => {
                    for (v, &x) in y.iter_mut().zip(q) {
                        *v = x as i8 as f32 * d;
                    }
                }
                GgmlType::Q4_0 => {
                    for j in 0..16 {
                        y[j] = d * ((q[j] & 0x0f) as i32 - 8) as f32;
                        y[j + 16] = d * ((q[j] >> 4) as i32 - 8) as f32;
                    }
                }
                _ => {
                    let m = f16_to_f32(self.m[at]);
                    for j in 0..16 {
                        y[j] = d * (q[j] & 0x0f) as f32 + m;
                        y[j + 16] = d * (q[j] >> 4) as f32 + m;
                    }
                }
            }
        }
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

    /// The best this CPU supports (detected once), capped by the environment variable
    /// `LARGO_QKERNEL` = `scalar` or `avx2` (to measure or test the lesser kernels).
    pub fn detect() -> QKernel {
        static K: std::sync::OnceLock<QKernel> = std::sync::OnceLock::new();
        *K.get_or_init(|| {
            let cap = std::env::var("LARGO_QKERNEL").unwrap_or_default();
            if cap == "scalar" {
                return QKernel::Scalar;
            }
            #[cfg(target_arch = "x86_64")]
            if cap == "avx2" && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c")
            {
                return QKernel::Avx2;
            }
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c") {
                if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
                    return QKernel::Avx512Vnni;
                }
                return QKernel::Avx2;
            }
            QKernel::Scalar
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
    // Tasks: runs of output-row groups of one matrix, about 8 per thread over all matrices.
    let total: usize = ws.iter().map(|w| w.rows.div_ceil(GROUP)).sum();
    let threads = rayon::current_num_threads().max(1);
    let per_task = (total / (threads * 8)).clamp(1, 16);
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
            let isum: i32 = match w.dtype {
                GgmlType::Q8_0 => q
                    .iter()
                    .zip(xq)
                    .map(|(&w, &x)| w as i8 as i32 * x as i32)
                    .sum(),
                _ => {
                    let mut s = 0i32;
                    for j in 0..16 {
                        s += (q[j] & 0x0f) as i32 * xq[j] as i32;
                        s += (q[j] >> 4) as i32 * xq[j + 16] as i32;
                    }
                    if w.dtype == GgmlType::Q4_0 {
                        s - 8 * sx
                    } else {
                        s
                    }
                }
            };
            let dw = f16_to_f32(w.d[at]);
            *acc += (dw * dx) * isum as f32;
            if w.dtype == GgmlType::Q4_1 {
                *acc += f16_to_f32(w.m[at]) * (dx * sx as f32);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{QActs, QMatrix, GROUP, QK};
    use crate::backend::cpu::quant::GgmlType;
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
        let qb = QMatrix::qbytes(w.dtype);
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
            if w.dtype == GgmlType::Q8_0 {
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
            let mw = if w.dtype == GgmlType::Q4_1 {
                _mm256_cvtph_ps(_mm_loadu_si128(w.m.as_ptr().add(gb) as *const __m128i))
            } else {
                _mm256_setzero_ps()
            };
            for (k, (f, mut is)) in facc.iter_mut().zip(isum).enumerate() {
                let row = (i + k) * nb + b;
                let dx = *a.d.get_unchecked(row);
                let sx = *a.s.get_unchecked(row);
                if w.dtype == GgmlType::Q4_0 {
                    is = _mm256_sub_epi32(is, _mm256_set1_epi32(8 * sx));
                }
                let t = _mm256_mul_ps(
                    _mm256_mul_ps(dw, _mm256_set1_ps(dx)),
                    _mm256_cvtepi32_ps(is),
                );
                *f = _mm256_add_ps(*f, t);
                if w.dtype == GgmlType::Q4_1 {
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
        let qb = QMatrix::qbytes(w.dtype);
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
            if w.dtype == GgmlType::Q8_0 {
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
            let mw = if w.dtype == GgmlType::Q4_1 {
                _mm256_cvtph_ps(_mm_loadu_si128(w.m.as_ptr().add(gb) as *const __m128i))
            } else {
                _mm256_setzero_ps()
            };
            for (k, (f, mut is)) in facc.iter_mut().zip(isum).enumerate() {
                let row = (i + k) * nb + b;
                let dx = *a.d.get_unchecked(row);
                let sx = *a.s.get_unchecked(row);
                match w.dtype {
                    GgmlType::Q4_0 => is = _mm256_sub_epi32(is, _mm256_set1_epi32(8 * sx)),
                    GgmlType::Q8_0 => is = _mm256_sub_epi32(is, _mm256_set1_epi32(128 * sx)),
                    _ => {}
                }
                let t = _mm256_mul_ps(
                    _mm256_mul_ps(dw, _mm256_set1_ps(dx)),
                    _mm256_cvtepi32_ps(is),
                );
                *f = _mm256_add_ps(*f, t);
                if w.dtype == GgmlType::Q4_1 {
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

    /// Random ggml blocks with small f16 scales and minimums.
    fn random_blocks(dtype: GgmlType, rows: usize, cols: usize, seed: &mut u64) -> Vec<u8> {
        let nb = rows * cols / QK;
        let bb = dtype.block_bytes();
        let mut out = Vec::with_capacity(nb * bb);
        for _ in 0..nb {
            // f16 bit patterns: scales about 2^-12..2^-7, minimums about −(2^-12..2^-6).
            let scale = 0x1000u16 + (lcg(seed) % 0x1400) as u16;
            out.extend(scale.to_le_bytes());
            if dtype == GgmlType::Q4_1 {
                let m = 0x9000u16 + (lcg(seed) % 0x1800) as u16;
                out.extend(m.to_le_bytes());
            }
            for _ in 0..QMatrix::qbytes(dtype) {
                out.push(lcg(seed) as u8);
            }
        }
        out
    }

    fn random_x(n: usize, seed: &mut u64) -> Vec<f32> {
        (0..n)
            .map(|_| (lcg(seed) % 20001) as f32 / 10000.0 - 1.0)
            .collect()
    }

    const TYPES: [GgmlType; 3] = [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1];

    #[test]
    fn matches_the_dequantised_product_within_8_bit_activation_error() {
        let mut seed = 7;
        for dtype in TYPES {
            for (rows, cols, n) in [(1, 32, 1), (5, 64, 3), (13, 96, 7), (64, 256, 70)] {
                let bytes = random_blocks(dtype, rows, cols, &mut seed);
                let w = QMatrix::from_ggml(dtype, rows, cols, &bytes).unwrap();
                let mut wf = vec![0f32; rows * cols];
                dequantize(dtype, &bytes, &mut wf).unwrap();
                let x = random_x(n * cols, &mut seed);
                let mut y = vec![0f32; n * rows];
                qmatmul(&w, &x, n, &mut y).unwrap();
                for i in 0..n {
                    for r in 0..rows {
                        let (xr, wr) = (&x[i * cols..][..cols], &wf[r * cols..][..cols]);
                        let exact: f64 =
                            xr.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum();
                        // Each activation moves by ≤ half a step (max|x|/254 ≤ 1/254).
                        let bound: f64 =
                            wr.iter().map(|v| v.abs() as f64).sum::<f64>() / 254.0 + 1e-5;
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
            let (rows, cols, n) = (23, 160, 7);
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
    fn dequantize_row_equals_dequantize() {
        let mut seed = 3;
        for dtype in TYPES {
            let (rows, cols) = (6, 64);
            let bytes = random_blocks(dtype, rows, cols, &mut seed);
            let w = QMatrix::from_ggml(dtype, rows, cols, &bytes).unwrap();
            let mut all = vec![0f32; rows * cols];
            dequantize(dtype, &bytes, &mut all).unwrap();
            for r in 0..rows {
                let mut row = vec![0f32; cols];
                w.dequantize_row(r, &mut row);
                assert_eq!(row, all[r * cols..][..cols]);
            }
        }
    }

    #[test]
    fn bad_shapes_and_types_are_errors() {
        assert!(QMatrix::from_ggml(GgmlType::Q8_0, 2, 48, &[0; 2 * 34]).is_err());
        assert!(QMatrix::from_ggml(GgmlType::Q8_0, 2, 32, &[0; 34]).is_err());
        assert!(QMatrix::from_ggml(GgmlType::Q4_K, 1, 256, &[0; 144]).is_err());
        let w = QMatrix::from_ggml(GgmlType::Q8_0, 2, 32, &[0; 68]).unwrap();
        assert!(qmatmul(&w, &[0.0; 31], 1, &mut [0.0; 2]).is_err());
    }
}
