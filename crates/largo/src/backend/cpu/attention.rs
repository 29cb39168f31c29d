//! Scaled dot-product attention, `softmax(Q·Kᵀ/√D + mask)·V`, per (batch, head), with causal and
//! key-padding masks; plus the head permutations around it and rotary position embeddings.
//!
//! Layouts: fused `qkv` [B,T,3C] as a `Linear(C,3C)` writes it (q | k | v, head h at channels
//! h·D..(h+1)·D of each); per-head `q`, `k`, `v`, `o` [B,H,T,D]; probabilities `att` [B,H,T,T].
//! This version keeps the T×T probabilities (memory quadratic in T): attention maps read them.
//! Training and generation use the tiled kernel of `flash.rs`, which never stores them.

use super::gemm::{matmul_rows_serial, Gemm, Trans};
use super::math::{exp_fast, lanes_sum};
use rayon::prelude::*;

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub batch: usize,
    pub heads: usize,
    /// Query positions.
    pub t: usize,
    /// Key positions (= t in training; the cache length when decoding).
    pub tk: usize,
    pub head_dim: usize,
    /// Distance between heads in k and v: tk·D, or the cache capacity·D when decoding.
    pub kv_head_stride: usize,
}

impl AttnShape {
    /// Self-attention over `t` positions with contiguous k and v.
    pub fn new(batch: usize, heads: usize, t: usize, head_dim: usize) -> Self {
        AttnShape {
            batch,
            heads,
            t,
            tk: t,
            head_dim,
            kv_head_stride: t * head_dim,
        }
    }

    pub fn channels(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// [B,T,3C] → q, k, v [B,H,T,D].
pub fn split_qkv_heads(qkv: &[f32], s: AttnShape, q: &mut [f32], k: &mut [f32], v: &mut [f32]) {
    let _span = crate::backend::profile::span("split qkv heads");
    let (c, d, t) = (s.channels(), s.head_dim, s.t);
    let per_batch = s.heads * t * d;
    q.par_chunks_mut(per_batch)
        .zip(k.par_chunks_mut(per_batch))
        .zip(v.par_chunks_mut(per_batch))
        .zip(qkv.par_chunks(t * 3 * c))
        .for_each(|(((q, k), v), x)| {
            for (ti, row) in x.chunks_exact(3 * c).enumerate() {
                for h in 0..s.heads {
                    let dst = (h * t + ti) * d;
                    q[dst..dst + d].copy_from_slice(&row[h * d..(h + 1) * d]);
                    k[dst..dst + d].copy_from_slice(&row[c + h * d..c + (h + 1) * d]);
                    v[dst..dst + d].copy_from_slice(&row[2 * c + h * d..2 * c + (h + 1) * d]);
                }
            }
        });
}

/// The inverse permutation, for gradients: dq, dk, dv [B,H,T,D] → dqkv [B,T,3C].
pub fn merge_qkv_heads(dq: &[f32], dk: &[f32], dv: &[f32], s: AttnShape, dqkv: &mut [f32]) {
    let _span = crate::backend::profile::span("merge qkv heads");
    let (c, d, t) = (s.channels(), s.head_dim, s.t);
    let per_batch = s.heads * t * d;
    dqkv.par_chunks_mut(t * 3 * c)
        .zip(dq.par_chunks(per_batch))
        .zip(dk.par_chunks(per_batch))
        .zip(dv.par_chunks(per_batch))
        .for_each(|(((x, q), k), v)| {
            for (ti, row) in x.chunks_exact_mut(3 * c).enumerate() {
                for h in 0..s.heads {
                    let src = (h * t + ti) * d;
                    row[h * d..(h + 1) * d].copy_from_slice(&q[src..src + d]);
                    row[c + h * d..c + (h + 1) * d].copy_from_slice(&k[src..src + d]);
                    row[2 * c + h * d..2 * c + (h + 1) * d].copy_from_slice(&v[src..src + d]);
                }
            }
        });
}

/// o [B,H,T,D] → y [B,T,C] (heads side by side), or back with `to_heads`.
pub fn merge_heads(o: &[f32], s: AttnShape, y: &mut [f32]) {
    let _span = crate::backend::profile::span("merge heads");
    permute_heads(o, s, y, false);
}

pub fn split_heads(y: &[f32], s: AttnShape, o: &mut [f32]) {
    let _span = crate::backend::profile::span("split heads");
    permute_heads(y, s, o, true);
}

fn permute_heads(src: &[f32], s: AttnShape, dst: &mut [f32], to_heads: bool) {
    let (c, d, t) = (s.channels(), s.head_dim, s.t);
    dst.par_chunks_mut(t * c)
        .zip(src.par_chunks(t * c))
        .for_each(|(dst, src)| {
            for h in 0..s.heads {
                for ti in 0..t {
                    let (heads_at, merged_at) = ((h * t + ti) * d, ti * c + h * d);
                    if to_heads {
                        dst[heads_at..heads_at + d].copy_from_slice(&src[merged_at..merged_at + d]);
                    } else {
                        dst[merged_at..merged_at + d].copy_from_slice(&src[heads_at..heads_at + d]);
                    }
                }
            }
        });
}

avx512_dispatch! {
    /// In place: p = softmax(scale·s) over the keys not marked in `padded`; all-masked rows
    /// give 0. The unpadded case is a plain loop the compiler vectorises.
    fn softmax_row(row: &mut [f32], scale: f32, padded: Option<&[u8]>) {
        let max = match padded {
            None => max_of(row),
            Some(p) => row
                .iter()
                .zip(p)
                .filter(|(_, &m)| m == 0)
                .fold(f32::NEG_INFINITY, |a, (&x, _)| a.max(x)),
        };
        if max == f32::NEG_INFINITY {
            row.fill(0.0);
            return;
        }
        row.iter_mut()
            .for_each(|x| *x = exp_fast((*x - max) * scale));
        if let Some(p) = padded {
            row.iter_mut()
                .zip(p)
                .filter(|(_, &m)| m != 0)
                .for_each(|(x, _)| *x = 0.0);
        }
        let sum = lanes_sum(row, |x| x);
        let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
        row.iter_mut().for_each(|x| *x *= inv);
    }
}

/// In place: p = softmax(scale·s) over one row of scores (a decoder's causal row cut to the
/// positions it sees).
pub fn softmax_row_scaled(row: &mut [f32], scale: f32) {
    softmax_row(row, scale, None);
}

avx512_dispatch! {
    /// In place: each of the rows of `att` (`t` wide) becomes softmax(scale·row). The exp runs
    /// once over the whole block rather than row by row, so only one short tail is left scalar
    /// (rows of a sentence's length are rarely a multiple of 16).
    fn softmax_rows(att: &mut [f32], t: usize, scale: f32) {
        for row in att.chunks_exact_mut(t) {
            let max = max_of(row);
            row.iter_mut().for_each(|x| *x = (*x - max) * scale);
        }
        att.iter_mut().for_each(|x| *x = exp_fast(*x));
        for row in att.chunks_exact_mut(t) {
            let inv = 1.0 / lanes_sum(row, |x| x);
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

/// Positions per block of a KV cache read by [`attend_cached_group`].
pub const KV_BLOCK_ROWS: usize = 32;

/// Where one key/value head lies in a KV cache kept in blocks of [`KV_BLOCK_ROWS`] positions:
/// in each block, the head's keys transposed at offset.. ([d, KV_BLOCK_ROWS]: a position per
/// column, so scores come out a block of positions at a time, no horizontal sums) and its
/// values at offset.. ([KV_BLOCK_ROWS, d]); positions 0..n.
#[derive(Clone, Copy, Debug)]
pub struct CachedHead {
    pub offset: usize,
    pub d: usize,
    pub n: usize,
}

/// What a KV cache stores: f32, or f16 held as its bits.
pub trait KvElement: Copy + Send + Sync {
    /// `src` as f32: itself, or widened into `buf` (at least as long).
    fn as_f32<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32];
}

impl KvElement for f32 {
    #[inline(always)]
    fn as_f32<'a>(src: &'a [f32], _: &'a mut [f32]) -> &'a [f32] {
        src
    }
}

impl KvElement for u16 {
    #[inline(always)]
    fn as_f32<'a>(src: &'a [u16], buf: &'a mut [f32]) -> &'a [f32] {
        let buf = &mut buf[..src.len()];
        super::half::f16_slice_to_f32(src, buf);
        buf
    }
}

/// Decoding one row's query heads that share a key/value head (grouped-query attention):
/// q [group, d] → out [group, d], each head softmax(scale·q·Kᵀ)·V over the head's cached
/// positions, read block by block where they lie (nothing gathered) and each key and value
/// row read once for the whole group. `scratch` grows to group·n + block_rows·d.
#[allow(clippy::too_many_arguments)]
pub fn attend_cached_group<E: KvElement>(
    keys: &[&[E]],
    values: &[&[E]],
    head: CachedHead,
    q: &[f32],
    scale: f32,
    scratch: &mut Vec<f32>,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::isa::avx512() {
            // SAFETY: isa::avx512 checked the CPU for AVX-512 F, the feature enabled.
            return unsafe { attend_group_avx512(keys, values, head, q, scale, scratch, out) };
        }
        if super::isa::avx2() {
            // SAFETY: isa::avx2 checked the CPU for AVX2 and FMA, the features enabled.
            return unsafe { attend_group_avx2(keys, values, head, q, scale, scratch, out) };
        }
    }
    attend_group_sized(keys, values, head, q, scale, scratch, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
fn attend_group_avx512<E: KvElement>(
    keys: &[&[E]],
    values: &[&[E]],
    head: CachedHead,
    q: &[f32],
    scale: f32,
    scratch: &mut Vec<f32>,
    out: &mut [f32],
) {
    attend_group_sized(keys, values, head, q, scale, scratch, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
fn attend_group_avx2<E: KvElement>(
    keys: &[&[E]],
    values: &[&[E]],
    head: CachedHead,
    q: &[f32],
    scale: f32,
    scratch: &mut Vec<f32>,
    out: &mut [f32],
) {
    attend_group_sized(keys, values, head, q, scale, scratch, out)
}

/// The usual head sizes get a body whose row length the compiler knows.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_group_sized<E: KvElement>(
    keys: &[&[E]],
    values: &[&[E]],
    head: CachedHead,
    q: &[f32],
    scale: f32,
    scratch: &mut Vec<f32>,
    out: &mut [f32],
) {
    match head.d {
        64 => attend_group::<E, 64>(keys, values, head, q, scale, scratch, out),
        128 => attend_group::<E, 128>(keys, values, head, q, scale, scratch, out),
        _ => attend_group::<E, 0>(keys, values, head, q, scale, scratch, out),
    }
}

/// [`attend_cached_group`] with rows of D values (0: head.d, known only at run time).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_group<E: KvElement, const D: usize>(
    keys: &[&[E]],
    values: &[&[E]],
    head: CachedHead,
    q: &[f32],
    scale: f32,
    scratch: &mut Vec<f32>,
    out: &mut [f32],
) {
    const B: usize = KV_BLOCK_ROWS;
    let CachedHead { offset, n, .. } = head;
    let d = if D == 0 { head.d } else { D };
    let group = q.len() / d;
    scratch.resize(group * n + B * d, 0.0);
    // scores: [group, n]; wide: one block of the head as f32 when the cache holds f16.
    let (scores, wide) = scratch.split_at_mut(group * n);
    let blocks = n.div_ceil(B);
    // Up to 4 query heads per pass over the keys: 8 independent sums of 16 lanes.
    let mut g = 0;
    while g < group {
        let take = (group - g).min(4);
        let (qs, at) = (&q[g * d..(g + take) * d], &mut scores[g * n..]);
        let keys = &keys[..blocks];
        match take {
            1 => head_scores::<E, 1>(qs, keys, offset, d, n, wide, at),
            2 => head_scores::<E, 2>(qs, keys, offset, d, n, wide, at),
            3 => head_scores::<E, 3>(qs, keys, offset, d, n, wide, at),
            _ => head_scores::<E, 4>(qs, keys, offset, d, n, wide, at),
        }
        g += take;
    }
    for row in scores.chunks_exact_mut(n) {
        softmax_row_scaled(row, scale);
    }
    let out = &mut out[..group * d];
    out.fill(0.0);
    for (b, block) in values[..blocks].iter().enumerate() {
        let (p0, rows) = (b * B, B.min(n - b * B));
        let v = E::as_f32(&block[offset..offset + rows * d], wide);
        for (g, og) in out.chunks_exact_mut(d).enumerate() {
            let og = &mut og[..d];
            let p = &scores[g * n + p0..][..rows];
            for (vrow, &p) in v.chunks_exact(d).zip(p) {
                for (o, &x) in og.iter_mut().zip(&vrow[..d]) {
                    *o += p * x;
                }
            }
        }
    }
}

/// Scores of G query heads (q [G, d]) against the keys of positions 0..n, block by block
/// ([d, B] each at `offset`, a position per column): head g's go to scores[g·n..g·n + n].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn head_scores<E: KvElement, const G: usize>(
    q: &[f32],
    keys: &[&[E]],
    offset: usize,
    d: usize,
    n: usize,
    wide: &mut [f32],
    scores: &mut [f32],
) {
    const B: usize = KV_BLOCK_ROWS;
    // qt: [d, G], the heads' i-th values side by side.
    let qt: Vec<[f32; G]> = (0..d)
        .map(|i| std::array::from_fn(|g| q[g * d + i]))
        .collect();
    for (b, block) in keys.iter().enumerate() {
        let (p0, rows) = (b * B, B.min(n - b * B));
        let kt = E::as_f32(&block[offset..offset + d * B], wide);
        let acc = block_scores::<G>(&qt, &kt[..d * B]);
        for (g, acc) in acc.iter().enumerate() {
            scores[g * n + p0..g * n + p0 + rows].copy_from_slice(&acc[..rows]);
        }
    }
}

/// acc[g][r] = Σ_i qt[i][g]·kt[i·B + r]: G heads' scores against one block of transposed
/// keys kt [d, B]. Broadcast q values times key rows: sums stay in vector lanes.
#[inline(always)]
fn block_scores<const G: usize>(qt: &[[f32; G]], kt: &[f32]) -> [[f32; KV_BLOCK_ROWS]; G] {
    #[cfg(target_arch = "x86_64")]
    {
        if super::isa::avx512() {
            // SAFETY: isa::avx512 checked the CPU for AVX-512 F; kt holds qt.len() rows of B (asserted).
            return unsafe { block_scores_avx512::<G>(qt, kt) };
        }
        if super::isa::avx2() {
            // SAFETY: isa::avx2 checked the CPU for AVX2 and FMA; kt as above.
            return unsafe { block_scores_avx2::<G>(qt, kt) };
        }
    }
    let mut acc = [[0f32; KV_BLOCK_ROWS]; G];
    for (col, qi) in kt.chunks_exact(KV_BLOCK_ROWS).zip(qt) {
        for (a, &qv) in acc.iter_mut().zip(qi) {
            for (x, &k) in a.iter_mut().zip(col) {
                *x += qv * k;
            }
        }
    }
    acc
}

/// [`block_scores`] in 512-bit registers: 2·G sums of 16 lanes.
///
/// # Safety
/// The CPU supports AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_scores_avx512<const G: usize>(
    qt: &[[f32; G]],
    kt: &[f32],
) -> [[f32; KV_BLOCK_ROWS]; G] {
    use std::arch::x86_64::*;
    const B: usize = KV_BLOCK_ROWS;
    assert!(B == 32 && kt.len() >= qt.len() * B);
    let mut acc = [[_mm512_setzero_ps(); 2]; G];
    for (i, qi) in qt.iter().enumerate() {
        // SAFETY: row i of kt holds B = 32 values (asserted above): two loads of 16.
        let (k0, k1) = unsafe {
            let at = kt.as_ptr().add(i * B);
            (_mm512_loadu_ps(at), _mm512_loadu_ps(at.add(16)))
        };
        for (a, &qv) in acc.iter_mut().zip(qi) {
            let qv = _mm512_set1_ps(qv);
            a[0] = _mm512_fmadd_ps(qv, k0, a[0]);
            a[1] = _mm512_fmadd_ps(qv, k1, a[1]);
        }
    }
    let mut out = [[0f32; B]; G];
    for (o, a) in out.iter_mut().zip(&acc) {
        // SAFETY: o holds 32 values: two stores of 16.
        unsafe {
            _mm512_storeu_ps(o.as_mut_ptr(), a[0]);
            _mm512_storeu_ps(o.as_mut_ptr().add(16), a[1]);
        }
    }
    out
}

/// [`block_scores`] in 256-bit registers, half a block (16 positions) per pass so the 2·G
/// sums and the loads fit the 16 registers.
///
/// # Safety
/// The CPU supports AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_scores_avx2<const G: usize>(
    qt: &[[f32; G]],
    kt: &[f32],
) -> [[f32; KV_BLOCK_ROWS]; G] {
    use std::arch::x86_64::*;
    const B: usize = KV_BLOCK_ROWS;
    assert!(B == 32 && kt.len() >= qt.len() * B);
    let mut out = [[0f32; B]; G];
    for half in [0, 16] {
        let mut acc = [[_mm256_setzero_ps(); 2]; G];
        for (i, qi) in qt.iter().enumerate() {
            // SAFETY: row i of kt holds B = 32 values (asserted): 16 from `half` on.
            let (k0, k1) = unsafe {
                let at = kt.as_ptr().add(i * B + half);
                (_mm256_loadu_ps(at), _mm256_loadu_ps(at.add(8)))
            };
            for (a, &qv) in acc.iter_mut().zip(qi) {
                let qv = _mm256_set1_ps(qv);
                a[0] = _mm256_fmadd_ps(qv, k0, a[0]);
                a[1] = _mm256_fmadd_ps(qv, k1, a[1]);
            }
        }
        for (o, a) in out.iter_mut().zip(&acc) {
            // SAFETY: o holds 32 values; 16 written from `half` on.
            unsafe {
                _mm256_storeu_ps(o.as_mut_ptr().add(half), a[0]);
                _mm256_storeu_ps(o.as_mut_ptr().add(half + 8), a[1]);
            }
        }
    }
    out
}

/// The max in 16 lanes, like `math::lanes_sum`.
const LANES: usize = 16;

#[inline(always)]
pub(crate) fn max_of(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    tail.iter()
        .chain(&acc)
        .fold(f32::NEG_INFINITY, |a, &x| a.max(x))
}

/// Forward. q [B,H,T,D], k and v [B,H,Tk,D]; writes att [B,H,T,Tk] and o [B,H,T,D].
/// `key_padding` [B,Tk]: non-zero marks a padded key. A row whose keys are all masked gets
/// zero output (PyTorch would give NaN).
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: AttnShape,
    causal: bool,
    key_padding: Option<&[u8]>,
    dropout: AttnDropout,
    att: &mut [f32],
    o: &mut [f32],
) {
    let _span = crate::backend::profile::span("attention forward");
    let (t, tk, d) = (s.t, s.tk, s.head_dim);
    let scale = 1.0 / (d as f32).sqrt();
    let offset = tk - t;
    att.par_chunks_mut(t * tk)
        .zip(o.par_chunks_mut(t * d))
        .enumerate()
        .for_each(|(bh, (att, o))| {
            let b = bh / s.heads;
            let kv = bh * s.kv_head_stride;
            let (qh, kh, vh) = (&q[bh * t * d..], &k[kv..kv + tk * d], &v[kv..kv + tk * d]);
            let pad = key_padding.map(|p| &p[b * tk..(b + 1) * tk]);
            // Scores S = Q·Kᵀ [T,Tk], then a masked, scaled softmax per row, in place.
            Gemm::nt(t, tk, d).run_serial(qh, kh, att);
            for (i, row) in att.chunks_exact_mut(tk).enumerate() {
                // Keys past `limit` are in the future of query i.
                let limit = if causal { (i + offset + 1).min(tk) } else { tk };
                let (live, future) = row.split_at_mut(limit);
                future.fill(0.0);
                softmax_row(live, scale, pad.map(|p| &p[..limit]));
            }
            // O = P·V [T,D], with dropout on P when training (att keeps P for backward).
            if dropout.p > 0.0 {
                let mut dropped = att.to_vec();
                dropout.apply(&mut dropped, bh * t * tk);
                Gemm::nn(t, d, tk).run_serial(&dropped, vh, o);
            } else {
                Gemm::nn(t, d, tk).run_serial(att, vh, o);
            }
        });
}

/// Inference over packed sequences of different lengths, none padded: `q`, `k`, `v` and `o` are
/// [N, C] with sequence i at the rows after those of sequences 0..i (`lens[i]` rows), head h at
/// columns h·D..(h+1)·D. No mask: each sequence attends to all of its own tokens and nothing
/// else. One task per sequence (all its heads), so threads never split a small GEMM. With
/// `keep_probs`, returns each sequence's probabilities [H, T, T].
pub fn attention_packed_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    lens: &[usize],
    heads: usize,
    o: &mut [f32],
    keep_probs: bool,
) -> Vec<Vec<f32>> {
    let _span = crate::backend::profile::span("attention packed forward");
    let c = o.len() / lens.iter().sum::<usize>().max(1);
    let d = c / heads;
    let scale = 1.0 / (d as f32).sqrt();
    // (first row, this sequence's output rows)
    let mut spans = Vec::with_capacity(lens.len());
    let (mut rest, mut row) = (o, 0);
    for &t in lens {
        let (span, tail) = rest.split_at_mut(t * c);
        spans.push((row, span));
        (rest, row) = (tail, row + t);
    }
    spans
        .into_par_iter()
        .map_init(Vec::new, |att, (row, out)| {
            let t = out.len() / c;
            att.resize(t * t, 0.0);
            let mut probs = Vec::new();
            for h in 0..heads {
                // Head h of this sequence's rows: [T, D] views with row stride C.
                let at = row * c + h * d;
                // P = softmax(Q·Kᵀ/√D) [T,T]; O = P·V [T,D], into the head's columns of out.
                matmul_rows_serial(Trans::T, t, t, d, &q[at..], c, &k[at..], c, att, t);
                softmax_rows(att, t, scale);
                matmul_rows_serial(Trans::N, t, d, t, att, t, &v[at..], c, &mut out[h * d..], c);
                if keep_probs {
                    probs.extend_from_slice(att);
                }
            }
            probs
        })
        .collect()
}

/// Dropout on attention probabilities (PyTorch's `attn_dropout` / `MultiheadAttention(dropout)`),
/// with a counter-based mask that backward regenerates.
#[derive(Clone, Copy, Debug)]
pub struct AttnDropout {
    pub p: f32,
    pub seed: u64,
}

impl AttnDropout {
    pub const NONE: AttnDropout = AttnDropout { p: 0.0, seed: 0 };

    /// Scales kept entries by 1/(1−p) and zeroes the others; `offset` is the block's first index.
    pub(crate) fn apply(&self, x: &mut [f32], offset: usize) {
        let scale = 1.0 / (1.0 - self.p);
        for (i, v) in x.iter_mut().enumerate() {
            let keep = crate::rng::hash_uniform(self.seed, (offset + i) as u64) >= self.p;
            *v = if keep { *v * scale } else { 0.0 };
        }
    }
}

/// Backward of `attention_forward` (training: Tk = T). `datt` [B,H,T,T] is scratch.
/// dP = dO·Vᵀ, dV = Pᵀ·dO, dS = P ⊙ (dP − rowsum(dP ⊙ P)), dQ = dS·K/√D, dK = dSᵀ·Q/√D.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    att: &[f32],
    dout: &[f32],
    s: AttnShape,
    dropout: AttnDropout,
    datt: &mut [f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let _span = crate::backend::profile::span("attention backward");
    let (t, d) = (s.t, s.head_dim);
    let scale = 1.0 / (d as f32).sqrt();
    datt.par_chunks_mut(t * t)
        .zip(dq.par_chunks_mut(t * d))
        .zip(dk.par_chunks_mut(t * d).zip(dv.par_chunks_mut(t * d)))
        .enumerate()
        .for_each(|(bh, ((ds, dq), (dk, dv)))| {
            let at = bh * t * d;
            let (qh, kh, vh, doh) = (
                &q[at..at + t * d],
                &k[at..at + t * d],
                &v[at..at + t * d],
                &dout[at..at + t * d],
            );
            let p = &att[bh * t * t..(bh + 1) * t * t];
            Gemm::nt(t, t, d).run_serial(doh, vh, ds);
            if dropout.p > 0.0 {
                // O used D(P): dV = D(P)ᵀ·dO, and dP = D(dP) through the same mask.
                let mut dropped = p.to_vec();
                dropout.apply(&mut dropped, bh * t * t);
                Gemm::tn(t, d, t).run_serial(&dropped, doh, dv);
                dropout.apply(ds, bh * t * t);
            } else {
                Gemm::tn(t, d, t).run_serial(p, doh, dv);
            }
            // Softmax backward, row by row; the 1/√D of the scores folds in here.
            for (ds, p) in ds.chunks_exact_mut(t).zip(p.chunks_exact(t)) {
                let dot: f32 = ds.iter().zip(p).map(|(a, b)| a * b).sum();
                for (x, &pv) in ds.iter_mut().zip(p) {
                    *x = pv * (*x - dot) * scale;
                }
            }
            Gemm::nn(t, d, t).run_serial(ds, kh, dq);
            Gemm::tn(t, d, t).run_serial(ds, qh, dk);
        });
}

/// cos and sin tables [T,D/2] for rotary embeddings at positions start..start+T.
pub fn rope_tables(start: usize, t: usize, d: usize, base: f32) -> (Vec<f32>, Vec<f32>) {
    let half = d / 2;
    let mut cos = Vec::with_capacity(t * half);
    let mut sin = Vec::with_capacity(t * half);
    for pos in start..start + t {
        for i in 0..half {
            let inv_freq = 1.0 / (base as f64).powf(2.0 * i as f64 / d as f64);
            let angle = pos as f64 * inv_freq;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

/// Rotary embedding (rotate-half convention, as Hugging Face's Llama), in place on x [B,H,T,D]:
/// (x₁, x₂) → (x₁·cos − x₂·sin, x₂·cos + x₁·sin) for the two halves of each head.
pub fn rope_forward(x: &mut [f32], t: usize, d: usize, cos: &[f32], sin: &[f32]) {
    let _span = crate::backend::profile::span("rope forward");
    rope_rotate(x, t, d, cos, sin, 1.0);
}

/// The rotation's transpose (rotation by the opposite angle), in place on dx.
pub fn rope_backward(dx: &mut [f32], t: usize, d: usize, cos: &[f32], sin: &[f32]) {
    let _span = crate::backend::profile::span("rope backward");
    rope_rotate(dx, t, d, cos, sin, -1.0);
}

fn rope_rotate(x: &mut [f32], t: usize, d: usize, cos: &[f32], sin: &[f32], sign: f32) {
    let half = d / 2;
    x.par_chunks_mut(t * d).for_each(|head| {
        for (ti, row) in head.chunks_exact_mut(d).enumerate() {
            let (c, s) = (
                &cos[ti * half..(ti + 1) * half],
                &sin[ti * half..(ti + 1) * half],
            );
            let (x1, x2) = row.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                x1[i] = a * c[i] - sign * b * s[i];
                x2[i] = b * c[i] + sign * a * s[i];
            }
        }
    });
}

/// Rotary embedding of rows laid out [t, heads·D] (a projection's output, position i in row i),
/// in place, with cos/sin [t, D/2]: the half-split pairs (j, j + D/2) of each head, as Hugging
/// Face's `rotate_half`.
pub fn rope_rows_forward(x: &mut [f32], heads: usize, d: usize, cos: &[f32], sin: &[f32]) {
    rope_rows_rotate(x, heads, d, cos, sin, 1.0);
}

/// Backward of [`rope_rows_forward`], in place on dx [t, heads·D]: the rotation's transpose,
/// a rotation by −θ.
pub fn rope_rows_backward(dx: &mut [f32], heads: usize, d: usize, cos: &[f32], sin: &[f32]) {
    rope_rows_rotate(dx, heads, d, cos, sin, -1.0);
}

fn rope_rows_rotate(x: &mut [f32], heads: usize, d: usize, cos: &[f32], sin: &[f32], sign: f32) {
    let half = d / 2;
    x.par_chunks_mut(heads * d)
        .enumerate()
        .for_each(|(i, row)| {
            let (c, s) = (
                &cos[i * half..(i + 1) * half],
                &sin[i * half..(i + 1) * half],
            );
            for head in row.chunks_exact_mut(d) {
                let (x1, x2) = head.split_at_mut(half);
                for j in 0..half {
                    let (a, b) = (x1[j], x2[j]);
                    let sn = sign * s[j];
                    x1[j] = a * c[j] - b * sn;
                    x2[j] = b * c[j] + a * sn;
                }
            }
        });
}

/// The sinusoidal position table of "Attention Is All You Need" [max_len, d]:
/// even channels sin(pos·ω), odd channels cos(pos·ω), ω = 10000^(−2i/d).
pub fn sinusoidal_table(max_len: usize, d: usize) -> Vec<f32> {
    let mut pe = vec![0.0; max_len * d];
    for pos in 0..max_len {
        for i in (0..d).step_by(2) {
            let w = (-(i as f64) * (10000f64).ln() / d as f64).exp();
            pe[pos * d + i] = (pos as f64 * w).sin() as f32;
            if i + 1 < d {
                pe[pos * d + i + 1] = (pos as f64 * w).cos() as f32;
            }
        }
    }
    pe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_rows_backward_is_the_transpose_of_forward() {
        // <R·x, y> = <x, Rᵀ·y> for 3 rows of 2 heads of D = 4.
        let (t, heads, d) = (3, 2, 4);
        let (cos, sin) = rope_tables(5, t, d, 10000.0);
        let x: Vec<f32> = (0..t * heads * d)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let y: Vec<f32> = (0..t * heads * d)
            .map(|i| (i as f32 * 0.71).cos())
            .collect();
        let mut rx = x.clone();
        rope_rows_forward(&mut rx, heads, d, &cos, &sin);
        let mut rty = y.clone();
        rope_rows_backward(&mut rty, heads, d, &cos, &sin);
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(p, q)| (p * q) as f64).sum::<f64>();
        assert!((dot(&rx, &y) - dot(&x, &rty)).abs() < 1e-5);
        rope_rows_backward(&mut rx, heads, d, &cos, &sin);
        assert!(rx.iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-6));
    }

    #[test]
    fn cached_group_attention_equals_the_plain_formula_for_every_head_size_and_type() {
        let mut seed = 5u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        // 64 and 128 take the fixed-size path, 8 and 80 the general one; 11 positions end
        // inside a block.
        for d in [8, 64, 128, 80] {
            // 75 positions: two full blocks and one ending inside.
            let (b_rows, kv_heads, n, h, group) = (KV_BLOCK_ROWS, 3, 75usize, 2, 3);
            // A block: keys [kv_heads, d, B] then values [kv_heads, B, d] of one layer.
            let fill = |rnd: &mut dyn FnMut() -> f32| -> Vec<Vec<f32>> {
                (0..n.div_ceil(b_rows))
                    .map(|_| (0..kv_heads * b_rows * d).map(|_| rnd()).collect())
                    .collect()
            };
            let (kb, vb) = (fill(&mut rnd), fill(&mut rnd));
            let q: Vec<f32> = (0..group * d).map(|_| rnd()).collect();
            let head = CachedHead {
                offset: h * b_rows * d,
                d,
                n,
            };
            let scale = 1.0 / (d as f32).sqrt();
            let to_f16 = |blocks: &[Vec<f32>]| -> Vec<Vec<u16>> {
                blocks
                    .iter()
                    .map(|b| {
                        b.iter()
                            .map(|&x| super::super::half::f32_to_f16(x))
                            .collect()
                    })
                    .collect()
            };
            let (kh, vh) = (to_f16(&kb), to_f16(&vb));
            let mut scratch = Vec::new();
            let mut out32 = vec![0.0; group * d];
            let (k32, v32): (Vec<&[f32]>, Vec<&[f32]>) = (
                kb.iter().map(Vec::as_slice).collect(),
                vb.iter().map(Vec::as_slice).collect(),
            );
            attend_cached_group(&k32, &v32, head, &q, scale, &mut scratch, &mut out32);
            let mut out16 = vec![0.0; group * d];
            let (k16, v16): (Vec<&[u16]>, Vec<&[u16]>) = (
                kh.iter().map(Vec::as_slice).collect(),
                vh.iter().map(Vec::as_slice).collect(),
            );
            attend_cached_group(&k16, &v16, head, &q, scale, &mut scratch, &mut out16);
            // The formula in f64 over the rows (f16: the rows as stored).
            let widen = |b: &[Vec<u16>]| -> Vec<Vec<f32>> {
                b.iter()
                    .map(|b| {
                        b.iter()
                            .map(|&x| super::super::half::f16_to_f32(x))
                            .collect()
                    })
                    .collect()
            };
            for (got, kb, vb) in [
                (&out32, kb.clone(), vb.clone()),
                (&out16, widen(&kh), widen(&vh)),
            ] {
                let key = |p: usize| -> Vec<f64> {
                    let (blk, r) = (&kb[p / b_rows], p % b_rows);
                    (0..d)
                        .map(|i| blk[h * b_rows * d + i * b_rows + r] as f64)
                        .collect()
                };
                let value = |p: usize| -> Vec<f64> {
                    let o = h * b_rows * d + (p % b_rows) * d;
                    vb[p / b_rows][o..o + d].iter().map(|&v| v as f64).collect()
                };
                for g in 0..group {
                    let qg = &q[g * d..(g + 1) * d];
                    let s: Vec<f64> = (0..n)
                        .map(|p| {
                            let dot: f64 = key(p).iter().zip(qg).map(|(k, &q)| k * q as f64).sum();
                            dot * scale as f64
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                    for j in 0..d {
                        let want: f64 = (0..n).map(|p| (s[p] - m).exp() / z * value(p)[j]).sum();
                        let got = got[g * d + j] as f64;
                        assert!(
                            (got - want).abs() < 1e-5,
                            "d {d}, head {g}, {j}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
