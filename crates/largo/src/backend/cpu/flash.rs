//! Attention tile by tile (FlashAttention-2's algorithm on the CPU): the T×T probabilities are
//! never stored, so memory stays linear in the sequence length.
//!
//! Forward, for each tile of queries, walks the tiles of keys keeping per row the running max
//! `m`, the running sum `l` of `exp(s − m)` and the unnormalised output; when a later tile raises
//! the max, what was accumulated is rescaled by `exp(m_old − m_new)`. It saves the row's
//! log-sum-exp `lse = m + ln l` [B,H,T]. Backward recomputes each probability tile from `lse`
//! (`p = exp(s − lse)`), and uses `Dᵢ = rowsum(dOᵢ ⊙ Oᵢ)` in place of `rowsum(dPᵢ ⊙ Pᵢ)`.
//! Tiles wholly in the future of a causal query tile are skipped.
//!
//! Same layouts, masks and dropout stream as `attention.rs` (dropout index `bh·T·Tk + i·Tk + j`),
//! so the two kernels agree to rounding; the plain one stays for callers that want the
//! probabilities (attention maps).

use super::attention::{max_of, AttnDropout, AttnShape};
use super::gemm::Gemm;
use super::math::{exp_fast, lanes_sum};
use rayon::prelude::*;

/// Query rows and key columns per tile.
#[derive(Clone, Copy, Debug)]
pub struct FlashTiles {
    pub q: usize,
    pub k: usize,
}

impl Default for FlashTiles {
    fn default() -> Self {
        FlashTiles { q: 64, k: 64 }
    }
}

/// The key range query row `i` (of `t`, with `tk − t` earlier keys) may see, and its pad mask.
struct Mask<'a> {
    causal: bool,
    offset: usize,
    tk: usize,
    pad: Option<&'a [u8]>,
}

impl Mask<'_> {
    /// Keys at or past this index are in query i's future.
    fn limit(&self, i: usize) -> usize {
        if self.causal {
            (i + self.offset + 1).min(self.tk)
        } else {
            self.tk
        }
    }

    /// How many of the keys `j0..j0+cols` query i can see before its future starts, and the
    /// padding flags of those keys.
    fn live(&self, i: usize, j0: usize, cols: usize) -> (usize, Option<&[u8]>) {
        let live = self.limit(i).saturating_sub(j0).min(cols);
        (live, self.pad.map(|p| &p[j0..j0 + live]))
    }

    /// Key tiles from `j0` on hold no key visible to query tile rows `i0..i0+rows`.
    fn tile_in_future(&self, i0: usize, rows: usize, j0: usize) -> bool {
        j0 >= self.limit(i0 + rows - 1)
    }
}

/// x[j] = value where the key j is padding.
#[inline(always)]
fn set_padded(x: &mut [f32], pad: Option<&[u8]>, value: f32) {
    if let Some(p) = pad {
        x.iter_mut()
            .zip(p)
            .filter(|(_, &flag)| flag != 0)
            .for_each(|(x, _)| *x = value);
    }
}

avx512_dispatch! {
    /// One row of a score tile → unnormalised probabilities `exp(s·scale − m)`, in place, with
    /// the running max `m` and sum `l` updated; returns the factor `exp(m_old − m_new)` that
    /// rescales what earlier tiles accumulated. Keys past `live` (the causal future) and padded
    /// keys get 0.
    fn online_softmax_row(
        row: &mut [f32],
        live: usize,
        pad: Option<&[u8]>,
        scale: f32,
        m: &mut f32,
        l: &mut f32,
    ) -> f32 {
        let (seen, future) = row.split_at_mut(live);
        future.fill(0.0);
        // Padded keys: −∞ before the max, so they neither win it nor add to the sum.
        set_padded(seen, pad, f32::NEG_INFINITY);
        let tile_max = max_of(seen) * scale;
        let m_new = m.max(tile_max);
        if m_new == f32::NEG_INFINITY {
            seen.fill(0.0); // nothing visible to this query yet
            return 1.0;
        }
        // exp_fast clamps its argument, which takes −∞ (padded keys) to 0 up to 1e-38: zero them.
        seen.iter_mut()
            .for_each(|x| *x = exp_fast(*x * scale - m_new));
        set_padded(seen, pad, 0.0);
        let alpha = if *m == f32::NEG_INFINITY {
            0.0
        } else {
            exp_fast(*m - m_new)
        };
        *l = *l * alpha + lanes_sum(seen, |x| x);
        *m = m_new;
        alpha
    }
}

avx512_dispatch! {
    /// One row of a score tile → the probabilities `exp(s·scale − lse)` forward normalised
    /// with, in place; keys past `live` and padded keys get 0, as does a row that saw no key
    /// (lse = −∞).
    fn probs_from_lse_row(
        row: &mut [f32],
        live: usize,
        pad: Option<&[u8]>,
        scale: f32,
        lse: f32,
    ) {
        let live = if lse == f32::NEG_INFINITY { 0 } else { live };
        let (seen, future) = row.split_at_mut(live);
        future.fill(0.0);
        seen.iter_mut()
            .for_each(|x| *x = exp_fast(*x * scale - lse));
        set_padded(seen, pad, 0.0);
    }
}

/// Forward. q [B,H,T,D], k and v [B,H,Tk,D] (heads `kv_head_stride` apart); writes
/// o [B,H,T,D] and lse [B,H,T]. A row whose keys are all masked gets zero output and
/// `lse = −∞` (PyTorch would give NaN).
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: AttnShape,
    causal: bool,
    key_padding: Option<&[u8]>,
    dropout: AttnDropout,
    tiles: FlashTiles,
    lse: &mut [f32],
    o: &mut [f32],
) {
    let _span = crate::backend::profile::span("flash attention forward");
    let (t, tk, d) = (s.t, s.tk, s.head_dim);
    let scale = 1.0 / (d as f32).sqrt();
    let (br, bc) = (tiles.q.max(1), tiles.k.max(1));
    o.par_chunks_mut(t * d)
        .zip(lse.par_chunks_mut(t))
        .enumerate()
        .for_each_init(
            || (vec![0f32; br * bc], vec![0f32; br], vec![0f32; br]),
            |(sc, m, l), (bh, (o, lse))| {
                let kv = bh * s.kv_head_stride;
                let (kh, vh) = (&k[kv..kv + tk * d], &v[kv..kv + tk * d]);
                let b = bh / s.heads;
                let mask = Mask {
                    causal,
                    offset: tk - t,
                    tk,
                    pad: key_padding.map(|p| &p[b * tk..(b + 1) * tk]),
                };
                for i0 in (0..t).step_by(br) {
                    let rows = br.min(t - i0);
                    let qt = &q[(bh * t + i0) * d..(bh * t + i0 + rows) * d];
                    let ot = &mut o[i0 * d..(i0 + rows) * d];
                    ot.fill(0.0);
                    m[..rows].fill(f32::NEG_INFINITY);
                    l[..rows].fill(0.0);
                    for j0 in (0..tk).step_by(bc) {
                        if mask.tile_in_future(i0, rows, j0) {
                            break;
                        }
                        let cols = bc.min(tk - j0);
                        let st = &mut sc[..rows * cols];
                        // S = Q·Kᵀ for this tile [rows, cols].
                        let kt = &kh[j0 * d..(j0 + cols) * d];
                        Gemm::nt(rows, cols, d).run_serial(qt, kt, st);
                        for (r, srow) in st.chunks_exact_mut(cols).enumerate() {
                            let i = i0 + r;
                            let (live, pad) = mask.live(i, j0, cols);
                            // P = exp(S·scale − m_new) in place; rescale earlier tiles' sums.
                            let alpha =
                                online_softmax_row(srow, live, pad, scale, &mut m[r], &mut l[r]);
                            if alpha != 1.0 {
                                ot[r * d..(r + 1) * d].iter_mut().for_each(|y| *y *= alpha);
                            }
                            if dropout.p > 0.0 {
                                dropout.apply(srow, (bh * t + i) * tk + j0);
                            }
                        }
                        // O += P·V [rows, D].
                        let vt = &vh[j0 * d..(j0 + cols) * d];
                        Gemm::nn(rows, d, cols).accumulate().run_serial(st, vt, ot);
                    }
                    for r in 0..rows {
                        let inv = if l[r] > 0.0 { 1.0 / l[r] } else { 0.0 };
                        ot[r * d..(r + 1) * d].iter_mut().for_each(|y| *y *= inv);
                        lse[i0 + r] = if l[r] > 0.0 {
                            m[r] + l[r].ln()
                        } else {
                            f32::NEG_INFINITY
                        };
                    }
                }
            },
        );
}

/// Backward of `flash_attention_forward` (training: Tk = T). `o` and `lse` are forward's
/// outputs; writes dq, dk, dv [B,H,T,D].
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    lse: &[f32],
    dout: &[f32],
    s: AttnShape,
    causal: bool,
    key_padding: Option<&[u8]>,
    dropout: AttnDropout,
    tiles: FlashTiles,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let _span = crate::backend::profile::span("flash attention backward");
    let (t, d) = (s.t, s.head_dim);
    assert_eq!(s.tk, t, "flash attention backward needs Tk = T");
    let scale = 1.0 / (d as f32).sqrt();
    let (br, bc) = (tiles.q.max(1), tiles.k.max(1));
    dq.par_chunks_mut(t * d)
        .zip(dk.par_chunks_mut(t * d).zip(dv.par_chunks_mut(t * d)))
        .enumerate()
        .for_each_init(
            || {
                (
                    vec![0f32; br * bc],
                    vec![0f32; br * bc],
                    vec![0f32; br * bc],
                    vec![0f32; t],
                )
            },
            |(p, dp, dropped, rowdot), (bh, (dq, (dk, dv)))| {
                let at = bh * t * d;
                let span = at..at + t * d;
                let (qh, kh, vh) = (&q[span.clone()], &k[span.clone()], &v[span.clone()]);
                let (oh, doh) = (&o[span.clone()], &dout[span]);
                let lse = &lse[bh * t..(bh + 1) * t];
                let b = bh / s.heads;
                let mask = Mask {
                    causal,
                    offset: 0,
                    tk: t,
                    pad: key_padding.map(|p| &p[b * t..(b + 1) * t]),
                };
                // Dᵢ = dOᵢ·Oᵢ = Σⱼ Pᵢⱼ dPᵢⱼ (also with dropout, since O used the dropped P).
                for (r, x) in rowdot.iter_mut().enumerate() {
                    let (o_r, do_r) = (&oh[r * d..(r + 1) * d], &doh[r * d..(r + 1) * d]);
                    *x = o_r.iter().zip(do_r).map(|(a, b)| a * b).sum();
                }
                dq.fill(0.0);
                dk.fill(0.0);
                dv.fill(0.0);
                for i0 in (0..t).step_by(br) {
                    let rows = br.min(t - i0);
                    let (qt, dot) = (&qh[i0 * d..(i0 + rows) * d], &doh[i0 * d..(i0 + rows) * d]);
                    for j0 in (0..t).step_by(bc) {
                        if mask.tile_in_future(i0, rows, j0) {
                            break;
                        }
                        let cols = bc.min(t - j0);
                        let (pt, dpt) = (&mut p[..rows * cols], &mut dp[..rows * cols]);
                        let (kt, vt) = (&kh[j0 * d..(j0 + cols) * d], &vh[j0 * d..(j0 + cols) * d]);
                        // P = exp(S·scale − lse), recomputed; dP = dO·Vᵀ.
                        Gemm::nt(rows, cols, d).run_serial(qt, kt, pt);
                        Gemm::nt(rows, cols, d).run_serial(dot, vt, dpt);
                        for (r, prow) in pt.chunks_exact_mut(cols).enumerate() {
                            let (live, pad) = mask.live(i0 + r, j0, cols);
                            probs_from_lse_row(prow, live, pad, scale, lse[i0 + r]);
                        }
                        let dvt = &mut dv[j0 * d..(j0 + cols) * d];
                        if dropout.p > 0.0 {
                            // O used D(P): dV = D(P)ᵀ·dO, and dP = D(dP) through the same mask.
                            let dropped = &mut dropped[..rows * cols];
                            dropped.copy_from_slice(pt);
                            for r in 0..rows {
                                let first = (bh * t + i0 + r) * t + j0;
                                dropout.apply(&mut dropped[r * cols..(r + 1) * cols], first);
                                dropout.apply(&mut dpt[r * cols..(r + 1) * cols], first);
                            }
                            Gemm::tn(cols, d, rows)
                                .accumulate()
                                .run_serial(dropped, dot, dvt);
                        } else {
                            Gemm::tn(cols, d, rows)
                                .accumulate()
                                .run_serial(pt, dot, dvt);
                        }
                        // dS = P ⊙ (dP − Dᵢ), with the 1/√D of the scores folded in.
                        for (r, (ds, prow)) in dpt
                            .chunks_exact_mut(cols)
                            .zip(pt.chunks_exact(cols))
                            .enumerate()
                        {
                            let di = rowdot[i0 + r];
                            for (x, &pv) in ds.iter_mut().zip(prow) {
                                *x = pv * (*x - di) * scale;
                            }
                        }
                        let dqt = &mut dq[i0 * d..(i0 + rows) * d];
                        Gemm::nn(rows, d, cols)
                            .accumulate()
                            .run_serial(dpt, kt, dqt);
                        let dkt = &mut dk[j0 * d..(j0 + cols) * d];
                        Gemm::tn(cols, d, rows)
                            .accumulate()
                            .run_serial(dpt, qt, dkt);
                    }
                }
            },
        );
}

#[cfg(test)]
mod tests {
    use super::super::attention::{attention_backward, attention_forward};
    use super::*;
    use crate::rng::Rng;

    fn random(n: usize, rng: &mut Rng) -> Vec<f32> {
        (0..n).map(|_| rng.normal()).collect()
    }

    fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol * (1.0 + w.abs()),
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    /// Tiled forward and backward equal the plain kernel's for every mask, dropout, and tile
    /// shapes that do and don't divide T (including one tile bigger than T).
    #[test]
    fn tiled_attention_matches_the_plain_kernel() {
        let mut rng = Rng::new(7);
        let (b, h, t, d) = (2, 3, 37, 8);
        let s = AttnShape::new(b, h, t, d);
        let n = b * h * t * d;
        let (q, k, v, dout) = (
            random(n, &mut rng),
            random(n, &mut rng),
            random(n, &mut rng),
            random(n, &mut rng),
        );
        // Batch 0 pads its last 5 keys; batch 1 pads keys 0..3 (causal row 0..2 see nothing).
        let mut pad = vec![0u8; b * t];
        pad[t - 5..t].fill(1);
        pad[t..t + 3].fill(1);
        for causal in [false, true] {
            for padded in [false, true] {
                for p in [0.0, 0.3] {
                    let drop = AttnDropout { p, seed: 11 };
                    let kp = padded.then_some(pad.as_slice());
                    let mut att = vec![0.0; b * h * t * t];
                    let mut o_ref = vec![0.0; n];
                    attention_forward(&q, &k, &v, s, causal, kp, drop, &mut att, &mut o_ref);
                    let (mut dq_ref, mut dk_ref, mut dv_ref) =
                        (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
                    let mut datt = vec![0.0; att.len()];
                    attention_backward(
                        &q,
                        &k,
                        &v,
                        &att,
                        &dout,
                        s,
                        drop,
                        &mut datt,
                        &mut dq_ref,
                        &mut dk_ref,
                        &mut dv_ref,
                    );
                    for tiles in [
                        FlashTiles { q: 8, k: 16 },
                        FlashTiles { q: 5, k: 3 },
                        FlashTiles { q: 64, k: 64 },
                    ] {
                        let what = format!("causal {causal} padded {padded} p {p} {tiles:?}");
                        let (mut o, mut lse) = (vec![0.0; n], vec![0.0; b * h * t]);
                        flash_attention_forward(
                            &q, &k, &v, s, causal, kp, drop, tiles, &mut lse, &mut o,
                        );
                        assert_close(&format!("o, {what}"), &o, &o_ref, 1e-5);
                        let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
                        flash_attention_backward(
                            &q, &k, &v, &o, &lse, &dout, s, causal, kp, drop, tiles, &mut dq,
                            &mut dk, &mut dv,
                        );
                        assert_close(&format!("dq, {what}"), &dq, &dq_ref, 1e-5);
                        assert_close(&format!("dk, {what}"), &dk, &dk_ref, 1e-5);
                        assert_close(&format!("dv, {what}"), &dv, &dv_ref, 1e-5);
                    }
                }
            }
        }
    }

    /// Decoding: new queries after cached keys (Tk > T, heads a cache capacity apart).
    #[test]
    fn tiled_attention_over_a_kv_cache_matches_the_plain_kernel() {
        let mut rng = Rng::new(3);
        let (h, t, tk, cap, d) = (2, 3, 20, 32, 4);
        let s = AttnShape {
            batch: 1,
            heads: h,
            t,
            tk,
            head_dim: d,
            kv_head_stride: cap * d,
        };
        let q = random(h * t * d, &mut rng);
        let (k, v) = (random(h * cap * d, &mut rng), random(h * cap * d, &mut rng));
        let mut att = vec![0.0; h * t * tk];
        let mut o_ref = vec![0.0; h * t * d];
        attention_forward(
            &q,
            &k,
            &v,
            s,
            true,
            None,
            AttnDropout::NONE,
            &mut att,
            &mut o_ref,
        );
        let (mut o, mut lse) = (vec![0.0; h * t * d], vec![0.0; h * t]);
        let tiles = FlashTiles { q: 2, k: 6 };
        flash_attention_forward(
            &q,
            &k,
            &v,
            s,
            true,
            None,
            AttnDropout::NONE,
            tiles,
            &mut lse,
            &mut o,
        );
        assert_close("o", &o, &o_ref, 1e-5);
    }
}
