use super::{Forward, Linear};
use crate::backend::{
    attention_backward, attention_forward, flash_attention_backward, flash_attention_forward,
    merge_heads, merge_qkv_heads, rope_backward, rope_forward, rope_tables, split_heads,
    split_qkv_heads, AttnDropout, AttnShape, FlashTiles,
};
use crate::tensor::ensure_len;

/// Multi-head self-attention with a fused QKV projection: `Concat(head₁…head_h)·Wᴼ`.
#[derive(Clone, Debug)]
pub struct MultiHeadAttention {
    /// x → [q | k | v]: `Linear(C, 3C)`.
    pub qkv: Linear,
    /// Concatenated heads → output: `Linear(C, C)`.
    pub proj: Linear,
    pub heads: usize,
    pub causal: bool,
    /// Rotary position embeddings applied to q and k.
    pub rotary: bool,
    /// Dropout on the attention probabilities (training only).
    pub dropout: f32,
    /// Keep the [B,H,T,T] probabilities of the next forwards for `attention_probs` (attention
    /// maps). Off, attention runs tile by tile and its memory is linear in T.
    pub keep_probs: bool,
    saved: Saved,
}

/// Activations from forward, and gradient scratch, sized for the current batch.
#[derive(Clone, Debug, Default)]
struct Saved {
    shape: Option<AttnShape>,
    drop: Option<AttnDropout>,
    /// Key padding of the last forward, [B,T], when it had one (the tiled backward re-masks).
    has_pad: bool,
    pad: Vec<u8>,
    /// Whether the last forward kept the probabilities in `att` (else `lse` for the tiles).
    kept_probs: bool,
    lse: Vec<f32>,
    qkv: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    merged: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    // backward scratch
    d_merged: Vec<f32>,
    d_o: Vec<f32>,
    d_att: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    d_qkv: Vec<f32>,
}

impl MultiHeadAttention {
    pub fn new(channels: usize, heads: usize, causal: bool, rotary: bool) -> Self {
        MultiHeadAttention {
            qkv: Linear::new(channels, 3 * channels, true),
            proj: Linear::new(channels, channels, true),
            heads,
            causal,
            rotary,
            dropout: 0.0,
            keep_probs: false,
            saved: Saved::default(),
        }
    }

    pub fn channels(&self) -> usize {
        self.proj.out_features
    }

    /// The attention probabilities of the last forward, [B, H, T, T] (query row, key column),
    /// before dropout; empty unless `keep_probs` was set for that forward.
    pub fn attention_probs(&self) -> &[f32] {
        match self.saved.shape {
            Some(sh) if self.saved.kept_probs => {
                &self.saved.att[..sh.batch * sh.heads * sh.t * sh.t]
            }
            _ => &[],
        }
    }

    /// x [B,T,C] → out [B,T,C], skipping the keys `pass.key_padding` marks. In training,
    /// attention probabilities are dropped with `self.dropout` (mask from `pass.dropout_seed`).
    pub fn forward(&mut self, x: &[f32], pass: Forward, out: &mut [f32]) {
        let (b, t, key_padding) = (pass.batch, pass.time, pass.key_padding);
        let drop = if pass.train && self.dropout > 0.0 {
            AttnDropout {
                p: self.dropout,
                seed: pass.dropout_seed,
            }
        } else {
            AttnDropout::NONE
        };
        let c = self.channels();
        let shape = AttnShape::new(b, self.heads, t, c / self.heads);
        let s = &mut self.saved;
        let n = b * t * c;
        for buf in [&mut s.q, &mut s.k, &mut s.v, &mut s.o, &mut s.merged] {
            ensure_len(buf, n);
        }
        ensure_len(&mut s.qkv, 3 * n);
        self.qkv.forward(x, b * t, &mut s.qkv);
        split_qkv_heads(&s.qkv, shape, &mut s.q, &mut s.k, &mut s.v);
        if self.rotary {
            (s.cos, s.sin) = rope_tables(0, t, shape.head_dim, 10_000.0);
            rope_forward(&mut s.q, t, shape.head_dim, &s.cos, &s.sin);
            rope_forward(&mut s.k, t, shape.head_dim, &s.cos, &s.sin);
        }
        let (q, k, v) = (&s.q, &s.k, &s.v);
        if self.keep_probs {
            ensure_len(&mut s.att, b * self.heads * t * t);
            let causal = self.causal;
            attention_forward(
                q,
                k,
                v,
                shape,
                causal,
                key_padding,
                drop,
                &mut s.att,
                &mut s.o,
            );
        } else {
            ensure_len(&mut s.lse, b * self.heads * t);
            let (causal, tiles) = (self.causal, FlashTiles::default());
            flash_attention_forward(
                q,
                k,
                v,
                shape,
                causal,
                key_padding,
                drop,
                tiles,
                &mut s.lse,
                &mut s.o,
            );
        }
        merge_heads(&s.o, shape, &mut s.merged);
        self.proj.forward(&s.merged, b * t, out);
        s.shape = Some(shape);
        s.drop = Some(drop);
        s.kept_probs = self.keep_probs;
        s.has_pad = key_padding.is_some();
        if let Some(p) = key_padding {
            s.pad.clear();
            s.pad.extend_from_slice(&p[..b * t]);
        }
    }

    /// Adds parameter gradients; writes dx [B,T,C]. `x` is forward's input.
    pub fn backward(&mut self, x: &[f32], dout: &[f32], dx: &mut [f32]) {
        let s = &mut self.saved;
        let shape = s.shape.expect("attention backward before forward");
        let (rows, d) = (shape.batch * shape.t, shape.head_dim);
        let n = rows * shape.channels();
        for buf in [&mut s.d_merged, &mut s.d_o, &mut s.dq, &mut s.dk, &mut s.dv] {
            ensure_len(buf, n);
        }
        ensure_len(&mut s.d_qkv, 3 * n);
        self.proj
            .backward(&s.merged, dout, rows, Some(&mut s.d_merged));
        split_heads(&s.d_merged, shape, &mut s.d_o);
        let drop = s.drop.unwrap_or(AttnDropout::NONE);
        let (q, k, v, d_o) = (&s.q, &s.k, &s.v, &s.d_o);
        let (dq, dk, dv) = (&mut s.dq, &mut s.dk, &mut s.dv);
        if s.kept_probs {
            ensure_len(&mut s.d_att, s.att.len());
            attention_backward(q, k, v, &s.att, d_o, shape, drop, &mut s.d_att, dq, dk, dv);
        } else {
            let (pad, tiles) = (s.has_pad.then_some(&s.pad[..]), FlashTiles::default());
            flash_attention_backward(
                q,
                k,
                v,
                &s.o,
                &s.lse,
                d_o,
                shape,
                self.causal,
                pad,
                drop,
                tiles,
                dq,
                dk,
                dv,
            );
        }
        if self.rotary {
            rope_backward(&mut s.dq, shape.t, d, &s.cos, &s.sin);
            rope_backward(&mut s.dk, shape.t, d, &s.cos, &s.sin);
        }
        merge_qkv_heads(&s.dq, &s.dk, &s.dv, shape, &mut s.d_qkv);
        self.qkv.backward(x, &s.d_qkv, rows, Some(dx));
    }

    /// Inference for new positions of several sequences at once, each reading and extending its
    /// own KV cache: x [N,C] holds `lens[i]` rows for sequence i, one after the other (a prompt
    /// being prefilled or one decoded token) → out [N,C]. The projections run once over all N
    /// rows; attention runs per sequence over its cache.
    pub fn forward_cached(
        &self,
        x: &[f32],
        lens: &[usize],
        caches: &mut [&mut KvCache],
        out: &mut [f32],
    ) {
        let c = self.channels();
        let (h, d) = (self.heads, c / self.heads);
        let rows: usize = lens.iter().sum();
        let mut qkv = vec![0.0; 3 * rows * c];
        self.qkv.forward(x, rows, &mut qkv);
        let mut merged = vec![0.0; rows * c];
        let mut row = 0;
        for (&tn, cache) in lens.iter().zip(caches.iter_mut()) {
            let start = cache.len;
            assert!(start + tn <= cache.capacity, "KV cache overflow");
            let shape_new = AttnShape::new(1, h, tn, d);
            let (mut q, mut k, mut v) = (vec![0.0; tn * c], vec![0.0; tn * c], vec![0.0; tn * c]);
            split_qkv_heads(
                &qkv[3 * row * c..3 * (row + tn) * c],
                shape_new,
                &mut q,
                &mut k,
                &mut v,
            );
            if self.rotary {
                let (cos, sin) = rope_tables(start, tn, d, 10_000.0);
                rope_forward(&mut q, tn, d, &cos, &sin);
                rope_forward(&mut k, tn, d, &cos, &sin);
            }
            // Append the new keys and values, head by head, after the cached ones.
            for head in 0..h {
                let dst = (head * cache.capacity + start) * d;
                let src = head * tn * d..(head + 1) * tn * d;
                cache.k[dst..dst + tn * d].copy_from_slice(&k[src.clone()]);
                cache.v[dst..dst + tn * d].copy_from_slice(&v[src]);
            }
            cache.len += tn;
            let shape = AttnShape {
                batch: 1,
                heads: h,
                t: tn,
                tk: cache.len,
                head_dim: d,
                kv_head_stride: cache.capacity * d,
            };
            let (mut lse, mut o) = (vec![0.0; h * tn], vec![0.0; tn * c]);
            let (causal, tiles) = (self.causal, FlashTiles::default());
            let (kc, vc) = (&cache.k, &cache.v);
            let none = AttnDropout::NONE;
            flash_attention_forward(
                &q, kc, vc, shape, causal, None, none, tiles, &mut lse, &mut o,
            );
            merge_heads(&o, shape_new, &mut merged[row * c..(row + tn) * c]);
            row += tn;
        }
        self.proj.forward(&merged, rows, out);
    }
}

/// Keys and values of one layer for one sequence: [H, capacity, D] each.
#[derive(Clone, Debug)]
pub struct KvCache {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub len: usize,
    pub capacity: usize,
}

impl KvCache {
    pub fn new(heads: usize, capacity: usize, head_dim: usize) -> Self {
        KvCache {
            k: vec![0.0; heads * capacity * head_dim],
            v: vec![0.0; heads * capacity * head_dim],
            len: 0,
            capacity,
        }
    }
}
