//! Scaled dot-product attention, `softmax(Q·Kᵀ/√D + mask)·V`, per (batch, head), with causal and
//! key-padding masks; plus the head permutations around it and rotary position embeddings.
//!
//! Layouts: fused `qkv` [B,T,3C] as a `Linear(C,3C)` writes it (q | k | v, head h at channels
//! h·D..(h+1)·D of each); per-head `q`, `k`, `v`, `o` [B,H,T,D]; probabilities `att` [B,H,T,T].
//! This version keeps the T×T probabilities (memory quadratic in T): attention maps read them.
//! Training and generation use the tiled kernel of `flash.rs`, which never stores them.

use super::gemm::{matmul_rows_serial, Gemm, Trans};
use super::math::{dot, exp_fast, lanes_sum};
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
    permute_heads(o, s, y, false);
}

pub fn split_heads(y: &[f32], s: AttnShape, o: &mut [f32]) {
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

/// Where one head's keys (or values) lie in a KV cache kept in blocks of `block_rows`
/// positions, each position `row_width` values: values offset..offset + d of positions 0..n.
#[derive(Clone, Copy, Debug)]
pub struct CachedHead {
    pub block_rows: usize,
    pub row_width: usize,
    pub offset: usize,
    pub d: usize,
    pub n: usize,
}

avx512_dispatch! {
    /// Decoding one query row: out [d] = softmax(scale·q·Kᵀ)·V over a head's cached keys and
    /// values, read in their blocks (nothing gathered). `scores` holds at least n values.
    pub fn attend_cached_head(
        keys: &[&[f32]],
        values: &[&[f32]],
        head: CachedHead,
        q: &[f32],
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        // The usual head sizes get a fixed-size body the compiler keeps in registers.
        match head.d {
            64 => attend_head_fixed::<64>(keys, values, head, q, scale, scores, out),
            128 => attend_head_fixed::<128>(keys, values, head, q, scale, scores, out),
            _ => attend_head_any(keys, values, head, q, scale, scores, out),
        }
    }
}

/// [`attend_cached_head`] for head size D.
#[inline(always)]
fn attend_head_fixed<const D: usize>(
    keys: &[&[f32]],
    values: &[&[f32]],
    head: CachedHead,
    q: &[f32],
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let CachedHead {
        block_rows,
        row_width,
        offset,
        n,
        ..
    } = head;
    let at = |pos: usize| (pos / block_rows, (pos % block_rows) * row_width + offset);
    let q: &[f32; D] = q[..D].try_into().expect("D values");
    #[cfg(target_arch = "x86_64")]
    let wide = std::arch::is_x86_feature_detected!("avx512f");
    for (pos, s) in scores[..n].iter_mut().enumerate() {
        let (b, o) = at(pos);
        let k: &[f32; D] = keys[b][o..o + D].try_into().expect("D values");
        #[cfg(target_arch = "x86_64")]
        if wide {
            // SAFETY: the CPU has AVX-512 F (checked above); q and k hold D values, a
            // multiple of 16 (D is 64 or 128), the kernel's contract.
            *s = unsafe { dot_avx512::<D>(q, k) };
            continue;
        }
        *s = dot(q, k);
    }
    softmax_row_scaled(&mut scores[..n], scale);
    let mut sum = [0f32; D];
    for (pos, &p) in scores[..n].iter().enumerate() {
        let (b, o) = at(pos);
        let v: &[f32; D] = values[b][o..o + D].try_into().expect("D values");
        for (s, &v) in sum.iter_mut().zip(v) {
            *s += p * v;
        }
    }
    out[..D].copy_from_slice(&sum);
}

/// Σ q·k over D values (a multiple of 16): four independent 16-lane products, one
/// horizontal sum (compilers leave a 16-lane reduction partly scalar).
///
/// # Safety
/// The CPU supports AVX-512 F; D is a multiple of 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512<const D: usize>(q: &[f32; D], k: &[f32; D]) -> f32 {
    use std::arch::x86_64::*;
    let (qp, kp) = (q.as_ptr(), k.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut c = 0;
    while c < D / 16 {
        // SAFETY: c < D/16, so the 16 values at 16c lie inside both arrays.
        let (x, y) = unsafe {
            (
                _mm512_loadu_ps(qp.add(16 * c)),
                _mm512_loadu_ps(kp.add(16 * c)),
            )
        };
        acc[c % 4] = _mm512_fmadd_ps(x, y, acc[c % 4]);
        c += 1;
    }
    let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(sum)
}

/// [`attend_cached_head`] for any head size.
#[inline(always)]
fn attend_head_any(
    keys: &[&[f32]],
    values: &[&[f32]],
    head: CachedHead,
    q: &[f32],
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let CachedHead {
        block_rows,
        row_width,
        offset,
        d,
        n,
    } = head;
    let at = |pos: usize| (pos / block_rows, (pos % block_rows) * row_width + offset);
    for (pos, s) in scores[..n].iter_mut().enumerate() {
        let (b, o) = at(pos);
        *s = dot(&q[..d], &keys[b][o..o + d]);
    }
    softmax_row_scaled(&mut scores[..n], scale);
    let out = &mut out[..d];
    out.fill(0.0);
    for (pos, &p) in scores[..n].iter().enumerate() {
        let (b, o) = at(pos);
        for (o, &v) in out.iter_mut().zip(&values[b][o..o + d]) {
            *o += p * v;
        }
    }
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
    rope_rotate(x, t, d, cos, sin, 1.0);
}

/// The rotation's transpose (rotation by the opposite angle), in place on dx.
pub fn rope_backward(dx: &mut [f32], t: usize, d: usize, cos: &[f32], sin: &[f32]) {
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
                    x1[j] = a * c[j] - b * s[j];
                    x2[j] = b * c[j] + a * s[j];
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
    fn cached_head_attention_equals_the_plain_formula_for_every_head_size() {
        let mut seed = 5u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        // 64 and 128 take the fixed-size (and AVX-512) path, 8 and 80 the general one.
        for d in [8, 64, 128, 80] {
            let (block_rows, heads, n, h) = (4usize, 3, 11usize, 2);
            let row_width = heads * d;
            let mut fill = || -> Vec<Vec<f32>> {
                (0..n.div_ceil(block_rows))
                    .map(|_| (0..block_rows * row_width).map(|_| rnd()).collect())
                    .collect()
            };
            let (kb, vb) = (fill(), fill());
            let q: Vec<f32> = (0..d).map(|_| rnd()).collect();
            let keys: Vec<&[f32]> = kb.iter().map(Vec::as_slice).collect();
            let values: Vec<&[f32]> = vb.iter().map(Vec::as_slice).collect();
            let head = CachedHead {
                block_rows,
                row_width,
                offset: h * d,
                d,
                n,
            };
            let (mut scores, mut out) = (vec![0.0; n], vec![0.0; d]);
            let scale = 1.0 / (d as f32).sqrt();
            attend_cached_head(&keys, &values, head, &q, scale, &mut scores, &mut out);
            // The formula in f64 over the gathered rows.
            let row = |blocks: &[Vec<f32>], p: usize| -> Vec<f64> {
                let o = (p % block_rows) * row_width + h * d;
                blocks[p / block_rows][o..o + d]
                    .iter()
                    .map(|&v| v as f64)
                    .collect()
            };
            let s: Vec<f64> = (0..n)
                .map(|p| {
                    let dot: f64 = row(&kb, p).iter().zip(&q).map(|(k, &q)| k * q as f64).sum();
                    dot * scale as f64
                })
                .collect();
            let m = s.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
            for (j, &got) in out.iter().enumerate() {
                let want: f64 = (0..n).map(|p| (s[p] - m).exp() / z * row(&vb, p)[j]).sum();
                assert!(
                    (got as f64 - want).abs() < 1e-5,
                    "d {d}, {j}: {got} vs {want}"
                );
            }
        }
    }
}
