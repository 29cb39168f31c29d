//! Transformer language models on one skeleton: token embedding → positions → blocks →
//! (final norm) → head over the vocabulary. Two configurations:
//!
//! * `GptConfig`: a GPT decoder shaped like nanoGPT's `model.py` (pre-norm, GELU, learned
//!   positions, final `ln_f`, head tied to `wte`), with nanoGPT's parameter names.
//! * `EncoderLmConfig`: the `nn.TransformerEncoder` language model of PyTorch's tutorial
//!   ("Language Modeling with nn.Transformer"), done right — embedding ×√d + sinusoidal encoding,
//!   `nlayers` post-norm ReLU `nn.TransformerEncoderLayer`s, optional causal mask, linear head
//!   `decoder`, with PyTorch's names (`transformer_encoder.layers.0.self_attn.in_proj_weight`, …).

use crate::backend::{dropout_backward, dropout_forward, sinusoidal_table, Gemm};
use crate::nn::{
    params, Activation, Block, BlockStyle, Embedding, Forward, GradsReady, KvCache, LayerNorm,
    Linear, Module,
};
use crate::rng::Rng;
use crate::tensor::ensure_len;
use crate::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Positions {
    /// A trained table `wpe` [block_size, C] added to the embeddings.
    Learned,
    /// The fixed sin/cos table of "Attention Is All You Need", added to the embeddings.
    Sinusoidal,
    /// Rotary embeddings applied to queries and keys in every layer.
    Rotary,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    /// 0: taken from the tokenizer of the data.
    pub vocab_size: usize,
    pub block_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    /// MLP hidden width (nanoGPT: 4·n_embd).
    pub ff: usize,
    pub dropout: f32,
    pub positions: Positions,
    pub activation: Activation,
    pub tie_weights: bool,
}

impl Default for GptConfig {
    fn default() -> Self {
        GptConfig {
            vocab_size: 0,
            block_size: 128,
            n_layer: 4,
            n_head: 8,
            n_embd: 256,
            ff: 1024,
            dropout: 0.0,
            positions: Positions::Learned,
            activation: Activation::Gelu,
            tie_weights: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderLmConfig {
    /// 0: taken from the tokenizer of the data.
    pub ntoken: usize,
    pub d_model: usize,
    pub nhead: usize,
    /// `dim_feedforward` of each encoder layer.
    pub d_hid: usize,
    pub nlayers: usize,
    pub dropout: f32,
    /// Longest sequence (size of the sinusoidal table and of training windows).
    pub max_len: usize,
    /// Mask future positions (a language model needs it).
    pub causal: bool,
}

impl Default for EncoderLmConfig {
    fn default() -> Self {
        EncoderLmConfig {
            ntoken: 0,
            d_model: 256,
            nhead: 8,
            d_hid: 1024,
            nlayers: 4,
            dropout: 0.1,
            max_len: 128,
            causal: true,
        }
    }
}

/// The skeleton's settings, derived from either config.
#[derive(Clone, Debug, PartialEq)]
pub struct LmSpec {
    /// Whose parameter names (and head bias) the model has: nanoGPT's or PyTorch's encoder's.
    pub style: BlockStyle,
    pub vocab_size: usize,
    pub block_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub ff: usize,
    pub dropout: f32,
    pub positions: Positions,
    pub activation: Activation,
    pub norm_first: bool,
    pub final_norm: bool,
    pub tie_weights: bool,
    pub embed_scale: bool,
    pub causal: bool,
}

impl GptConfig {
    pub fn spec(&self) -> LmSpec {
        LmSpec {
            style: BlockStyle::Gpt,
            vocab_size: self.vocab_size,
            block_size: self.block_size,
            n_layer: self.n_layer,
            n_head: self.n_head,
            n_embd: self.n_embd,
            ff: self.ff,
            dropout: self.dropout,
            positions: self.positions,
            activation: self.activation,
            norm_first: true,
            final_norm: true,
            tie_weights: self.tie_weights,
            embed_scale: false,
            causal: true,
        }
    }
}

impl EncoderLmConfig {
    pub fn spec(&self) -> LmSpec {
        LmSpec {
            style: BlockStyle::TorchEncoder,
            vocab_size: self.ntoken,
            block_size: self.max_len,
            n_layer: self.nlayers,
            n_head: self.nhead,
            n_embd: self.d_model,
            ff: self.d_hid,
            dropout: self.dropout,
            positions: Positions::Sinusoidal,
            activation: Activation::Relu,
            norm_first: false,
            final_norm: false,
            tie_weights: false,
            embed_scale: true,
            causal: self.causal,
        }
    }
}

impl LmSpec {
    pub fn validate(&self) -> Result<()> {
        if self.vocab_size == 0 || self.block_size == 0 || self.n_layer == 0 || self.n_head == 0 {
            bail!("model: vocabulary, block size, layers and heads must be ≥ 1 ({self:?})");
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            bail!(
                "model: n_embd {} is not divisible by n_head {}",
                self.n_embd,
                self.n_head
            );
        }
        if self.positions == Positions::Rotary && !(self.n_embd / self.n_head).is_multiple_of(2) {
            bail!(
                "model: rotary positions need an even head size, got {}",
                self.n_embd / self.n_head
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("model: dropout must be in [0, 1), got {}", self.dropout);
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default)]
struct Saved {
    b: usize,
    t: usize,
    ids: Vec<u32>,
    /// Residual stream at each block boundary: x[0] embeddings … x[L] last block's output.
    xs: Vec<Vec<f32>>,
    normed: Vec<f32>,
    logits: Vec<f32>,
    dropout_seed: u64,
    train: bool,
    /// Backward: the gradient of the residual stream where backward has reached [B,T,C] …
    d_resid: Vec<f32>,
    /// … and of the boundary below it, being computed (then the two swap).
    d_resid_below: Vec<f32>,
}

#[derive(Clone, Debug)]
pub struct TransformerLm {
    pub spec: LmSpec,
    pub wte: Embedding,
    pub wpe: Option<Embedding>,
    /// Fixed sinusoidal table [block_size, C] (not a parameter).
    pe: Vec<f32>,
    pub blocks: Vec<Block>,
    pub ln_f: Option<LayerNorm>,
    /// Present when the head is not tied to `wte`.
    pub head: Option<Linear>,
    s: Saved,
}

impl TransformerLm {
    pub fn new(spec: LmSpec) -> Result<Self> {
        spec.validate()?;
        let (c, v) = (spec.n_embd, spec.vocab_size);
        let style = spec.style;
        let blocks = (0..spec.n_layer)
            .map(|_| {
                let mut b = Block::new(
                    c,
                    spec.n_head,
                    spec.ff,
                    spec.causal,
                    spec.positions == Positions::Rotary,
                    spec.norm_first,
                    style,
                );
                b.activation = spec.activation;
                b.dropout = spec.dropout;
                b.attn.dropout = spec.dropout;
                b
            })
            .collect();
        Ok(TransformerLm {
            wte: Embedding::new(v, c),
            wpe: (spec.positions == Positions::Learned).then(|| Embedding::new(spec.block_size, c)),
            pe: if spec.positions == Positions::Sinusoidal {
                sinusoidal_table(spec.block_size, c)
            } else {
                Vec::new()
            },
            blocks,
            ln_f: spec.final_norm.then(|| LayerNorm::new(c, 1e-5)),
            // nanoGPT's untied head has no bias; the encoder's `decoder` has one.
            head: (!spec.tie_weights)
                .then(|| Linear::new(c, v, spec.style == BlockStyle::TorchEncoder)),
            spec,
            s: Saved::default(),
        })
    }

    /// nanoGPT's init: N(0, 0.02) for weights and embeddings, zero biases, residual projections
    /// scaled by 1/√(2·n_layer); layer norms start at (1, 0).
    pub fn init(&mut self, rng: &mut Rng) {
        let resid_std = 0.02 / ((2 * self.spec.n_layer) as f32).sqrt();
        for (name, p) in self.params_mut() {
            let is_norm = name.contains("ln_") || name.contains("norm");
            if is_norm {
                continue;
            }
            if name.ends_with("bias") {
                p.value.data.fill(0.0);
                continue;
            }
            let std = if name.ends_with("c_proj.weight")
                || name.ends_with("out_proj.weight")
                || name.ends_with("linear2.weight")
            {
                resid_std
            } else {
                0.02
            };
            p.value
                .data
                .iter_mut()
                .for_each(|v| *v = rng.normal() * std);
        }
    }

    fn embed(&self, ids: &[u32], t: usize, start: usize, x: &mut [f32]) -> Result<()> {
        let c = self.spec.n_embd;
        self.wte.forward(ids, x)?;
        let scale = if self.spec.embed_scale {
            (c as f32).sqrt()
        } else {
            1.0
        };
        for (i, row) in x.chunks_exact_mut(c).enumerate() {
            let pos = start + i % t;
            let table: Option<&[f32]> = match (&self.wpe, self.pe.is_empty()) {
                (Some(wpe), _) => Some(&wpe.weight.value.data[pos * c..(pos + 1) * c]),
                (None, false) => Some(&self.pe[pos * c..(pos + 1) * c]),
                _ => None,
            };
            match table {
                Some(p) => row
                    .iter_mut()
                    .zip(p)
                    .for_each(|(x, &p)| *x = *x * scale + p),
                None => row.iter_mut().for_each(|x| *x *= scale),
            }
        }
        Ok(())
    }

    fn head_forward(&self, x: &[f32], rows: usize, logits: &mut [f32]) {
        match &self.head {
            Some(h) => h.forward(x, rows, logits),
            None => {
                // Tied to the token embedding: logits [rows, V] = x [rows, C] · wteᵀ.
                let (c, v) = (self.spec.n_embd, self.spec.vocab_size);
                Gemm::nt(rows, v, c).run(x, &self.wte.weight.value.data, logits);
            }
        }
    }

    /// ids [B,T] → logits [B,T,V]; attention skips the keys `pass.key_padding` marks.
    pub fn forward(&mut self, ids: &[u32], pass: Forward) -> Result<&[f32]> {
        let (b, t, train, dropout_seed) = (pass.batch, pass.time, pass.train, pass.dropout_seed);
        if t > self.spec.block_size {
            bail!(
                "sequence of {t} tokens is longer than the model's block size {}",
                self.spec.block_size
            );
        }
        let (c, v) = (self.spec.n_embd, self.spec.vocab_size);
        let n = b * t * c;
        let mut s = std::mem::take(&mut self.s);
        s.b = b;
        s.t = t;
        s.train = train;
        s.dropout_seed = dropout_seed;
        s.ids.clear();
        s.ids.extend_from_slice(&ids[..b * t]);
        s.xs.resize(self.blocks.len() + 1, Vec::new());
        for x in s.xs.iter_mut() {
            ensure_len(x, n);
        }
        if let Err(e) = self.embed(&s.ids, t, 0, &mut s.xs[0]) {
            self.s = s;
            return Err(e);
        }
        let p = if train { self.spec.dropout } else { 0.0 };
        dropout_forward(&mut s.xs[0], p, dropout_seed);
        for (l, block) in self.blocks.iter_mut().enumerate() {
            let (before, after) = s.xs.split_at_mut(l + 1);
            let seed =
                dropout_seed.wrapping_add((l as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            block.forward(&before[l], pass.reseeded(seed), &mut after[0]);
        }
        ensure_len(&mut s.normed, n);
        ensure_len(&mut s.logits, b * t * v);
        let last = &s.xs[self.blocks.len()];
        let head_in: &[f32] = match &mut self.ln_f {
            Some(ln) => {
                ln.forward(last, b * t, &mut s.normed);
                &s.normed
            }
            None => last,
        };
        self.head_forward(head_in, b * t, &mut s.logits);
        self.s = s;
        Ok(&self.s.logits)
    }

    /// dlogits [B,T,V] from the last forward → gradients of every parameter (added to them).
    pub fn backward(&mut self, dlogits: &[f32]) {
        self.backward_impl(dlogits, None);
    }

    /// [`TransformerLm::backward`] that reports its progress: after the untied head, after
    /// the final layer norm and after each block (last block first), and at the end with 0,
    /// it calls `on_ready(w, params)` with a watermark w: every parameter with index ≥ w in
    /// `params` (`params_mut` order: token and position embeddings, blocks, `ln_f`, head) has
    /// its final gradient of this backward, which the rest of it does not touch. The
    /// embeddings, and the head tied to the token embedding, come first, so they count as
    /// final only at the end. Data-parallel training starts the gradient all-reduce of a
    /// bucket as soon as the watermark has passed it.
    pub fn backward_with(&mut self, dlogits: &[f32], on_ready: &mut GradsReady<'_>) {
        self.backward_impl(dlogits, Some(on_ready));
    }

    /// Indices in `params_mut` order of the first parameter of each block, of `ln_f` and of
    /// the untied head (each the number of parameters before it).
    fn param_starts(&self) -> (Vec<usize>, usize, usize) {
        let mut at = self.wte.num_tensors() + self.wpe.as_ref().map_or(0, |p| p.num_tensors());
        let blocks = self
            .blocks
            .iter()
            .map(|b| {
                let start = at;
                at += b.num_tensors();
                start
            })
            .collect();
        let ln_f = at;
        let head = at + self.ln_f.as_ref().map_or(0, |l| l.num_tensors());
        (blocks, ln_f, head)
    }

    fn backward_impl(&mut self, dlogits: &[f32], mut on_ready: Option<&mut GradsReady<'_>>) {
        let starts = on_ready.is_some().then(|| self.param_starts());
        let mut report = |m: &mut Self, w: usize| {
            if let Some(f) = on_ready.as_mut() {
                f(w, &mut m.params_mut());
            }
        };
        let mut s = std::mem::take(&mut self.s);
        let (c, v) = (self.spec.n_embd, self.spec.vocab_size);
        let rows = s.b * s.t;
        let n = rows * c;
        ensure_len(&mut s.d_resid, n);
        ensure_len(&mut s.d_resid_below, n);
        let last = &s.xs[self.blocks.len()];
        let head_in: &[f32] = if self.ln_f.is_some() { &s.normed } else { last };
        // Head: d(head input) into d_resid.
        match &mut self.head {
            Some(h) => h.backward(head_in, dlogits, rows, Some(&mut s.d_resid)),
            None => {
                let wte = &mut self.wte.weight;
                Gemm::nn(rows, c, v).run(dlogits, &wte.value.data, &mut s.d_resid);
                Gemm::tn(v, c, rows)
                    .accumulate()
                    .run(dlogits, head_in, &mut wte.grad);
            }
        }
        if let (Some(st), Some(_)) = (&starts, &self.head) {
            report(self, st.2);
        }
        if let Some(ln) = &mut self.ln_f {
            ln.backward(last, &s.d_resid, rows, &mut s.d_resid_below);
            std::mem::swap(&mut s.d_resid, &mut s.d_resid_below);
            if let Some(st) = &starts {
                report(self, st.1);
            }
        }
        for l in (0..self.blocks.len()).rev() {
            self.blocks[l].backward(&s.xs[l], &s.d_resid, &mut s.d_resid_below);
            std::mem::swap(&mut s.d_resid, &mut s.d_resid_below);
            if let Some(st) = &starts {
                report(self, st.0[l]);
            }
        }
        let p = if s.train { self.spec.dropout } else { 0.0 };
        dropout_backward(&mut s.d_resid, p, s.dropout_seed);
        if let Some(wpe) = &mut self.wpe {
            for (i, row) in s.d_resid.chunks_exact(c).enumerate() {
                let pos = i % s.t;
                for (g, &d) in wpe.weight.grad[pos * c..(pos + 1) * c].iter_mut().zip(row) {
                    *g += d;
                }
            }
        }
        if self.spec.embed_scale {
            let scale = (c as f32).sqrt();
            s.d_resid.iter_mut().for_each(|g| *g *= scale);
        }
        self.wte.backward(&s.ids, &s.d_resid);
        self.s = s;
        if starts.is_some() {
            report(self, 0);
        }
    }

    /// After `backward`: the gradient with respect to each position's token embedding row
    /// (`wte[id]`, before scaling and positions), [B, T, C]. What gradient × input needs.
    pub fn token_embedding_grad(&self) -> &[f32] {
        &self.s.d_resid[..self.s.b * self.s.t * self.spec.n_embd]
    }

    /// New caches for one sequence, one per layer.
    pub fn new_cache(&self) -> Vec<KvCache> {
        let d = self.spec.n_embd / self.spec.n_head;
        (0..self.spec.n_layer)
            .map(|_| KvCache::new(self.spec.n_head, self.spec.block_size, d))
            .collect()
    }

    /// Feeds `ids` (one sequence) after the cached positions; returns the logits of the last one.
    pub fn forward_cached(&self, ids: &[u32], cache: &mut [KvCache]) -> Result<Vec<f32>> {
        let mut logits = self.forward_cached_batch(&[ids], &mut [cache])?;
        Ok(logits.pop().expect("one sequence"))
    }

    /// Feeds new tokens of several sequences at once — prompts being prefilled and single
    /// decoded tokens alike — each after its own cached positions; returns each sequence's
    /// logits at its last new position. The linear layers see all new tokens as one batch
    /// (continuous batching); attention reads each sequence's own cache.
    pub fn forward_cached_batch(
        &self,
        seqs: &[&[u32]],
        caches: &mut [&mut [KvCache]],
    ) -> Result<Vec<Vec<f32>>> {
        let (c, v) = (self.spec.n_embd, self.spec.vocab_size);
        let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        for (&tn, cache) in lens.iter().zip(caches.iter()) {
            if tn == 0 || cache[0].len + tn > self.spec.block_size {
                bail!(
                    "KV cache of {} positions holding {} cannot take {tn} more",
                    self.spec.block_size,
                    cache[0].len
                );
            }
        }
        let rows: usize = lens.iter().sum();
        let mut x = vec![0.0; rows * c];
        let mut row = 0;
        for (ids, cache) in seqs.iter().zip(caches.iter()) {
            let tn = ids.len();
            self.embed(ids, tn, cache[0].len, &mut x[row * c..(row + tn) * c])?;
            row += tn;
        }
        let mut y = vec![0.0; rows * c];
        for (l, block) in self.blocks.iter().enumerate() {
            let mut layer: Vec<&mut KvCache> = caches.iter_mut().map(|s| &mut s[l]).collect();
            block.forward_cached(&x, &lens, &mut layer, &mut y);
            std::mem::swap(&mut x, &mut y);
        }
        // The last new position of each sequence: [S, C] → head → [S, V] in one GEMM.
        let mut last = Vec::with_capacity(seqs.len() * c);
        let mut end = 0;
        for &tn in &lens {
            end += tn;
            last.extend_from_slice(&x[(end - 1) * c..end * c]);
        }
        let mut normed = vec![0.0; last.len()];
        let head_in: &[f32] = match &self.ln_f {
            Some(ln) => {
                ln.infer(&last, seqs.len(), &mut normed);
                &normed
            }
            None => &last,
        };
        let mut logits = vec![0.0; seqs.len() * v];
        self.head_forward(head_in, seqs.len(), &mut logits);
        Ok(logits.chunks_exact(v).map(<[f32]>::to_vec).collect())
    }
}

impl LmSpec {
    /// Name prefixes of (embedding, learned positions, layers, head): nanoGPT's or PyTorch's.
    fn param_prefixes(&self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self.style {
            BlockStyle::Gpt => (
                "transformer.wte",
                "transformer.wpe",
                "transformer.h",
                "lm_head",
            ),
            BlockStyle::TorchEncoder => (
                "embedding",
                "pos_embedding",
                "transformer_encoder.layers",
                "decoder",
            ),
        }
    }
}

impl Module for TransformerLm {
    params!(Self { spec, wte, wpe, blocks, ln_f, head, .. }, v => {
        let (emb, pos, layers, head_name) = spec.param_prefixes();
        v.child(emb, wte);
        if let Some(wpe) = wpe {
            v.child(pos, wpe);
        }
        for (i, block) in std::iter::zip(0.., blocks) {
            v.child(&format!("{layers}.{i}"), block);
        }
        if let Some(ln) = ln_f {
            v.child("transformer.ln_f", ln);
        }
        if let Some(h) = head {
            v.child(head_name, h);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `backward_with` and checks, at each report, that the gradients of the parameters
    /// ≥ the watermark already hold their final values, and that the watermarks fall to 0.
    fn check_watermarks(spec: LmSpec, name: &str) {
        let mut m = TransformerLm::new(spec).unwrap();
        m.init(&mut Rng::new(7));
        let (b, t, v) = (2, 5, m.spec.vocab_size);
        let ids: Vec<u32> = (0..b * t).map(|i| (i * 7 % v) as u32).collect();
        let logits = m.forward(&ids, Forward::train(b, t, 3)).unwrap().to_vec();
        let dlogits: Vec<f32> = logits.iter().map(|x| x.sin() * 0.1).collect();
        // Some gradient from an earlier micro-batch, to which backward adds.
        for (_, p) in m.params_mut() {
            p.grad
                .iter_mut()
                .enumerate()
                .for_each(|(i, g)| *g = i as f32 * 1e-3);
        }
        let n = m.params().len();
        let mut seen: Vec<(usize, Vec<Vec<f32>>)> = Vec::new();
        m.backward_with(&dlogits, &mut |w, params| {
            assert_eq!(params.len(), n);
            seen.push((w, params[w..].iter().map(|(_, p)| p.grad.clone()).collect()));
        });
        let fin: Vec<Vec<f32>> = m.params().iter().map(|(_, p)| p.grad.clone()).collect();
        let ws: Vec<usize> = seen.iter().map(|(w, _)| *w).collect();
        assert_eq!(ws.last(), Some(&0), "{name}: {ws:?}");
        assert!(ws.windows(2).all(|p| p[0] > p[1]), "{name}: {ws:?}");
        // One report per block, for ln_f and for an untied head, and the last one.
        let expect =
            m.spec.n_layer + usize::from(m.ln_f.is_some()) + usize::from(m.head.is_some()) + 1;
        assert_eq!(ws.len(), expect, "{name}: {ws:?}");
        let names: Vec<String> = m.params().into_iter().map(|(k, _)| k).collect();
        for (w, grads) in &seen {
            for (i, g) in grads.iter().enumerate() {
                assert!(
                    g == &fin[w + i],
                    "{name}: {} changed after watermark {w}",
                    names[w + i]
                );
            }
        }
        // The watermark after block l (reported last block first) is its first parameter.
        let layers = if m.spec.style == BlockStyle::Gpt {
            "transformer.h"
        } else {
            "transformer_encoder.layers"
        };
        for l in 0..m.spec.n_layer {
            let w = ws[ws.len() - 2 - l];
            assert!(
                names[w].starts_with(&format!("{layers}.{l}.")),
                "{name}: {}",
                names[w]
            );
            assert!(!names[w - 1].starts_with(&format!("{layers}.{l}.")));
        }
        // The plain backward gives the same gradients.
        let mut plain = TransformerLm::new(m.spec.clone()).unwrap();
        plain.init(&mut Rng::new(7));
        plain.forward(&ids, Forward::train(b, t, 3)).unwrap();
        for (_, p) in plain.params_mut() {
            p.grad
                .iter_mut()
                .enumerate()
                .for_each(|(i, g)| *g = i as f32 * 1e-3);
        }
        plain.backward(&dlogits);
        for ((k, p), f) in plain.params().iter().zip(&fin) {
            assert!(&p.grad == f, "{name}: {k}");
        }
    }

    #[test]
    fn backward_reports_watermarks_below_which_no_gradient_changes() {
        let gpt = |positions, tie_weights| GptConfig {
            vocab_size: 11,
            block_size: 8,
            n_layer: 3,
            n_head: 2,
            n_embd: 8,
            ff: 16,
            dropout: 0.1,
            positions,
            activation: Activation::Gelu,
            tie_weights,
        };
        check_watermarks(gpt(Positions::Learned, true).spec(), "gpt tied");
        check_watermarks(gpt(Positions::Learned, false).spec(), "gpt untied");
        check_watermarks(gpt(Positions::Rotary, true).spec(), "gpt rotary");
        let encoder = EncoderLmConfig {
            ntoken: 11,
            d_model: 8,
            nhead: 2,
            d_hid: 16,
            nlayers: 2,
            dropout: 0.1,
            max_len: 8,
            causal: true,
        };
        check_watermarks(encoder.spec(), "encoder lm");
    }
}
