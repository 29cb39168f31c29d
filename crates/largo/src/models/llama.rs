//! Llama-family decoders: Llama 2/3, SmolLM, TinyLlama (`llama`) and Qwen2 (`qwen2`, with
//! query/key/value biases). Token embedding → layers of (RMSNorm → grouped-query attention
//! with rotary positions → residual, RMSNorm → SwiGLU MLP → residual) → RMSNorm → head (tied
//! to the embedding or separate).
//!
//! Every weight inside has Hugging Face's name and layout, whatever file it came from (GGUF's
//! permuted query/key rows are put back at load), and rotary positions use Hugging Face's
//! half-split convention. Inference here (fine-tuning with LoRA: `llama_train.rs`); a KV cache of
//! fixed-size blocks holds the keys and values of the positions seen so far.

use super::llama_cache::LayerView;
pub use super::llama_cache::{KvPool, KvType, LlamaCache, BLOCK_TOKENS};
use crate::backend::cpu::qmatmul::{qmatmul, qmatmul_many, QMatrix};
use crate::backend::{
    add_assign, rms_norm_forward as rms_norm, rope_rows_forward as rope_rows, softmax_row_scaled,
    swiglu_forward, Gemm,
};
use crate::{bail, Error, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Which Hugging Face class (and GGUF `general.architecture`) a decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LlamaArch {
    /// `LlamaForCausalLM`, GGUF `llama`.
    Llama,
    /// `Qwen2ForCausalLM`, GGUF `qwen2`: biases on the query, key and value projections.
    Qwen2,
}

impl LlamaArch {
    pub const SUPPORTED: &'static str = "LlamaForCausalLM (llama), Qwen2ForCausalLM (qwen2)";

    pub fn hf_class(self) -> &'static str {
        match self {
            LlamaArch::Llama => "LlamaForCausalLM",
            LlamaArch::Qwen2 => "Qwen2ForCausalLM",
        }
    }
}

/// How rotary frequencies are stretched for contexts longer than training's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RopeScaling {
    /// Positions divided by `factor` (every frequency divided by it).
    Linear { factor: f64 },
    /// Llama 3.1's: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// The decoder's sizes, named as Hugging Face's `config.json` names them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub arch: LlamaArch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on q, k and v (Qwen2; Llama's `attention_bias`).
    pub attention_bias: bool,
}

impl LlamaConfig {
    pub fn validate(&self) -> Result<()> {
        let c = self;
        if c.vocab_size == 0 || c.hidden_size == 0 || c.num_hidden_layers == 0 {
            bail!("llama config: vocab_size, hidden_size and num_hidden_layers must be ≥ 1");
        }
        if c.num_attention_heads == 0
            || c.num_key_value_heads == 0
            || !c.num_attention_heads.is_multiple_of(c.num_key_value_heads)
        {
            bail!(
                "llama config: num_attention_heads = {} must be a multiple of num_key_value_heads = {}",
                c.num_attention_heads,
                c.num_key_value_heads
            );
        }
        if c.head_dim == 0 || !c.head_dim.is_multiple_of(2) {
            bail!(
                "llama config: head_dim = {} must be even and ≥ 2",
                c.head_dim
            );
        }
        if !(c.rms_norm_eps > 0.0 && c.rope_theta > 0.0) {
            bail!("llama config: rms_norm_eps and rope_theta must be > 0");
        }
        Ok(())
    }

    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// The inverse frequency of each of the head_dim/2 rotary pairs, after scaling.
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim;
        (0..d / 2)
            .map(|i| {
                let f = 1.0 / self.rope_theta.powf(2.0 * i as f64 / d as f64);
                match &self.rope_scaling {
                    None => f,
                    Some(RopeScaling::Linear { factor }) => f / factor,
                    Some(RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position_embeddings,
                    }) => {
                        let old = *original_max_position_embeddings as f64;
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < old / high_freq_factor {
                            f
                        } else if wavelen > old / low_freq_factor {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    }
                }
            })
            .collect()
    }
}

/// A weight matrix [rows = out features, cols = in features], row-major (PyTorch's layout).
#[derive(Clone, Debug)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub weights: Weights,
    /// A LoRA adapter applied without merging: every product adds its low-rank update.
    pub adapter: Option<LowRank>,
}

/// A trained low-rank update of a [`Matrix`]: W' = W + scale·B·A (a LoRA adapter).
#[derive(Clone, Debug)]
pub struct LowRank {
    /// `lora_A.weight` [r, cols].
    pub a: Vec<f32>,
    /// `lora_B.weight` [rows, r].
    pub b: Vec<f32>,
    pub rank: usize,
    /// alpha / r.
    pub scale: f32,
}

impl LowRank {
    /// y [n, rows] += scale · (x [n, cols] · Aᵀ) · Bᵀ.
    fn add_product(&self, x: &[f32], n: usize, rows: usize, cols: usize, y: &mut [f32]) {
        let r = self.rank;
        let mut xa = vec![0f32; n * r];
        Gemm::nt(n, r, cols).run(&x[..n * cols], &self.a, &mut xa);
        xa.iter_mut().for_each(|v| *v *= self.scale);
        Gemm::nt(n, rows, r)
            .accumulate()
            .run(&xa, &self.b, &mut y[..n * rows]);
    }

    /// w [rows, cols] += scale · B·A: the update merged into f32 weights.
    pub fn merge_into(&self, w: &mut [f32], rows: usize, cols: usize) {
        let mut ba = vec![0f32; rows * cols];
        Gemm::nn(rows, cols, self.rank).run(&self.b, &self.a, &mut ba);
        w.iter_mut()
            .zip(&ba)
            .for_each(|(w, &d)| *w += self.scale * d);
    }
}

/// How a [`Matrix`] holds its values.
#[derive(Clone, Debug)]
pub enum Weights {
    /// f32 values, multiplied with the f32 GEMM.
    F32(Vec<f32>),
    /// ggml blocks, multiplied by the integer kernels (activations quantised to 8 bits).
    Quant(QMatrix),
}

impl Matrix {
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        if data.len() != rows * cols {
            bail!(
                "a [{rows}, {cols}] matrix needs {} values, got {}",
                rows * cols,
                data.len()
            );
        }
        Ok(Matrix {
            rows,
            cols,
            weights: Weights::F32(data),
            adapter: None,
        })
    }

    /// A quantised matrix.
    pub fn quantized(q: QMatrix) -> Self {
        Matrix {
            rows: q.rows,
            cols: q.cols,
            weights: Weights::Quant(q),
            adapter: None,
        }
    }

    /// Bytes a product reads.
    pub fn bytes(&self) -> usize {
        match &self.weights {
            Weights::F32(d) => d.len() * 4,
            Weights::Quant(q) => q.bytes(),
        }
    }

    /// Whether the weights are quantised.
    pub fn is_quantized(&self) -> bool {
        matches!(self.weights, Weights::Quant(_))
    }

    /// Row `r` as f32 into `out` (an embedding lookup).
    pub fn row(&self, r: usize, out: &mut [f32]) {
        match &self.weights {
            Weights::F32(d) => out.copy_from_slice(&d[r * self.cols..(r + 1) * self.cols]),
            Weights::Quant(q) => q.dequantize_row(r, out),
        }
    }

    /// ys[m] [n, rows_m] = x [n, cols] · ms[m]ᵀ: quantised matrices in one pass (see
    /// [`qmatmul_many`]), f32 ones one GEMM each.
    fn forward_many(ms: &[&Matrix], x: &[f32], n: usize, ys: &mut [&mut [f32]]) {
        let quants: Option<Vec<&QMatrix>> = ms
            .iter()
            .map(|m| match &m.weights {
                Weights::Quant(q) => Some(q),
                Weights::F32(_) => None,
            })
            .collect();
        match quants {
            Some(qs) => {
                qmatmul_many(&qs, x, n, ys).expect("shapes checked when the model was built");
                for (m, y) in ms.iter().zip(ys.iter_mut()) {
                    if let Some(lr) = &m.adapter {
                        lr.add_product(x, n, m.rows, m.cols, y);
                    }
                }
            }
            None => {
                for (m, y) in ms.iter().zip(ys.iter_mut()) {
                    m.forward(x, n, y);
                }
            }
        }
    }

    /// y [n, rows] = x [n, cols] · selfᵀ.
    fn forward(&self, x: &[f32], n: usize, y: &mut [f32]) {
        match &self.weights {
            Weights::F32(d) => Gemm::nt(n, self.rows, self.cols).run(x, d, &mut y[..n * self.rows]),
            Weights::Quant(q) => {
                qmatmul(q, x, n, y).expect("shapes checked when the model was built")
            }
        }
        if let Some(lr) = &self.adapter {
            lr.add_product(x, n, self.rows, self.cols, y);
        }
    }

    /// The weights as f32 [rows, cols] (quantised ones dequantised), with the adapter, if
    /// any, merged in.
    pub fn merged_f32(&self) -> Vec<f32> {
        let mut w = match &self.weights {
            Weights::F32(d) => d.clone(),
            Weights::Quant(q) => {
                let mut w = vec![0f32; self.rows * self.cols];
                Self::dequantize_rows(q, 0, &mut w);
                w
            }
        };
        if let Some(lr) = &self.adapter {
            lr.merge_into(&mut w, self.rows, self.cols);
        }
        w
    }
}

/// Values a training product dequantises at a time (4 MiB of f32: most of a layer's matrices in
/// one tile, so each is one GEMM): whole rows of the matrix.
const DEQUANT_TILE_VALUES: usize = 1 << 20;

impl Matrix {
    /// Rows per dequantised tile.
    fn tile_rows(&self) -> usize {
        (DEQUANT_TILE_VALUES / self.cols.max(1)).clamp(1, self.rows.max(1))
    }

    /// Rows r0..r1 as f32 into `out` [r1 − r0, cols].
    fn dequantize_rows(q: &QMatrix, r0: usize, out: &mut [f32]) {
        out.par_chunks_mut(q.cols)
            .enumerate()
            .for_each(|(i, row)| q.dequantize_row(r0 + i, row));
    }

    /// y [n, rows] = x [n, cols] · selfᵀ in f32 arithmetic: what training differentiates.
    /// Quantised weights are dequantised a tile of rows at a time (never the whole matrix) and
    /// multiplied by the f32 GEMM, so the product is exactly that of the dequantised matrix;
    /// inference's integer kernels round the activations to 8 bits instead.
    pub fn forward_f32(&self, x: &[f32], n: usize, y: &mut [f32]) {
        let (rows, cols) = (self.rows, self.cols);
        match &self.weights {
            Weights::F32(d) => Gemm::nt(n, rows, cols).run(x, d, &mut y[..n * rows]),
            Weights::Quant(q) => {
                let tile = self.tile_rows();
                let mut w = vec![0f32; tile * cols];
                let mut part = vec![0f32; n * tile];
                for r0 in (0..rows).step_by(tile) {
                    let m = tile.min(rows - r0);
                    Self::dequantize_rows(q, r0, &mut w[..m * cols]);
                    // part [n, m] = x · W[r0..r0+m]ᵀ, then into columns r0.. of y.
                    Gemm::nt(n, m, cols).run(x, &w[..m * cols], &mut part[..n * m]);
                    for (yr, pr) in y.chunks_exact_mut(rows).zip(part.chunks_exact(m)) {
                        yr[r0..r0 + m].copy_from_slice(pr);
                    }
                }
            }
        }
        if let Some(lr) = &self.adapter {
            lr.add_product(x, n, rows, cols, y);
        }
    }

    /// dx [n, cols] = dy [n, rows] · self (added into dx with `accumulate`): the input's
    /// gradient through a frozen matrix. Quantised weights are dequantised a tile of rows at a
    /// time, each tile's share dy[:, tile] · W[tile] summed into dx.
    pub fn backward_input(&self, dy: &[f32], n: usize, dx: &mut [f32], accumulate: bool) {
        let (rows, cols) = (self.rows, self.cols);
        let dx = &mut dx[..n * cols];
        match &self.weights {
            Weights::F32(d) => {
                let g = Gemm::nn(n, cols, rows);
                let g = if accumulate { g.accumulate() } else { g };
                g.run(dy, d, dx);
            }
            Weights::Quant(q) => {
                let tile = self.tile_rows();
                let mut w = vec![0f32; tile * cols];
                let mut dy_tile = vec![0f32; n * tile];
                for r0 in (0..rows).step_by(tile) {
                    let m = tile.min(rows - r0);
                    Self::dequantize_rows(q, r0, &mut w[..m * cols]);
                    for (t, d) in dy_tile.chunks_exact_mut(m).zip(dy.chunks_exact(rows)) {
                        t.copy_from_slice(&d[r0..r0 + m]);
                    }
                    let g = Gemm::nn(n, cols, m);
                    let g = if accumulate || r0 > 0 {
                        g.accumulate()
                    } else {
                        g
                    };
                    g.run(&dy_tile[..n * m], &w[..m * cols], dx);
                }
            }
        }
        if let Some(lr) = &self.adapter {
            // dx += scale · (dy·B)·A
            let mut dyb = vec![0f32; n * lr.rank];
            Gemm::nn(n, lr.rank, rows).run(&dy[..n * rows], &lr.b, &mut dyb);
            dyb.iter_mut().for_each(|v| *v *= lr.scale);
            Gemm::nn(n, cols, lr.rank).accumulate().run(&dyb, &lr.a, dx);
        }
    }
}

/// One decoder layer's weights (Hugging Face: `model.layers.{i}.…`).
#[derive(Clone, Debug)]
pub struct LlamaLayer {
    pub input_layernorm: Vec<f32>,
    pub q_proj: Matrix,
    pub k_proj: Matrix,
    pub v_proj: Matrix,
    /// Qwen2's (and `attention_bias` Llamas') q, k, v biases.
    pub qkv_bias: Option<[Vec<f32>; 3]>,
    pub o_proj: Matrix,
    pub post_attention_layernorm: Vec<f32>,
    pub gate_proj: Matrix,
    pub up_proj: Matrix,
    pub down_proj: Matrix,
}

/// A Llama-family decoder ready to run.
#[derive(Clone, Debug)]
pub struct Llama {
    pub config: LlamaConfig,
    /// `model.embed_tokens.weight` [vocab, hidden].
    pub embed_tokens: Matrix,
    pub layers: Vec<LlamaLayer>,
    /// `model.norm.weight`.
    pub norm: Vec<f32>,
    /// `lm_head.weight`; `None` when tied to the embedding.
    pub lm_head: Option<Matrix>,
    inv_freq: Vec<f64>,
}

/// Buffers of one forward pass, reused across its layers.
#[derive(Default)]
struct Scratch {
    normed: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
}

/// Up to this many rows, attention reads the cache in place rather than gathering heads for
/// GEMMs (whose packing only pays over many rows).
const DECODE_ROWS: usize = 4;

/// Query rows per prompt-attention task.
const QUERY_TILE: usize = 64;

impl Llama {
    pub fn new(
        config: LlamaConfig,
        embed_tokens: Matrix,
        layers: Vec<LlamaLayer>,
        norm: Vec<f32>,
        lm_head: Option<Matrix>,
    ) -> Result<Self> {
        config.validate()?;
        let inv_freq = config.rope_inv_freq();
        Ok(Llama {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq,
        })
    }

    /// Bytes of the weights a token's forward pass reads (the embedding row aside).
    pub fn weight_bytes(&self) -> usize {
        let matrices: usize = self
            .layers
            .iter()
            .map(|l| {
                [
                    &l.q_proj,
                    &l.k_proj,
                    &l.v_proj,
                    &l.o_proj,
                    &l.gate_proj,
                    &l.up_proj,
                    &l.down_proj,
                ]
                .iter()
                .map(|m| m.bytes())
                .sum::<usize>()
            })
            .sum();
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens).bytes();
        matrices + head
    }

    /// The weight types of the matrices, e.g. `f32` or `Q4_1 + Q8_0 (quantised)`.
    pub fn weight_types(&self) -> String {
        let mut types = std::collections::BTreeSet::new();
        let head = self
            .lm_head
            .iter()
            .chain(std::iter::once(&self.embed_tokens));
        let layers = self.layers.iter().flat_map(|l| {
            [
                &l.q_proj,
                &l.k_proj,
                &l.v_proj,
                &l.o_proj,
                &l.gate_proj,
                &l.up_proj,
                &l.down_proj,
            ]
        });
        for m in head.chain(layers) {
            types.insert(match &m.weights {
                Weights::F32(_) => "f32".to_string(),
                Weights::Quant(q) => q.dtype.name().to_string(),
            });
        }
        types.into_iter().collect::<Vec<_>>().join(" + ")
    }

    /// The inverse frequency of each rotary pair, scaling and `rope_freqs` applied.
    pub fn rope_inv_freq(&self) -> &[f64] {
        &self.inv_freq
    }

    /// Divides each rotary frequency by its factor (GGUF's `rope_freqs.weight`, Llama 3's
    /// scaling as stored by llama.cpp).
    pub fn divide_rope_frequencies(&mut self, factors: &[f32]) -> Result<()> {
        if factors.len() != self.inv_freq.len() {
            bail!(
                "rope_freqs.weight has {} factors, the head needs {}",
                factors.len(),
                self.inv_freq.len()
            );
        }
        for (f, &d) in self.inv_freq.iter_mut().zip(factors) {
            *f /= d as f64;
        }
        Ok(())
    }

    /// Runs `ids` at the positions after those in `cache` (a prompt, or the next token) and
    /// returns the logits [rows, vocab] of every position (`all`) or of the last one only.
    pub fn forward(&self, ids: &[u32], cache: &mut LlamaCache, all: bool) -> Result<Vec<f32>> {
        let mut out = self.forward_batch(&[ids], &mut [cache], all)?;
        Ok(out.pop().expect("one sequence"))
    }

    /// Several sequences in one pass (continuous batching): sequence i runs `seqs[i]` after
    /// the positions in `caches[i]`. Their rows share every matrix product; attention is per
    /// sequence. Returns per sequence the logits of all its rows (`all`) or of its last one.
    /// Each row's result does not depend on the other sequences in the batch.
    pub fn forward_batch(
        &self,
        seqs: &[&[u32]],
        caches: &mut [&mut LlamaCache],
        all: bool,
    ) -> Result<Vec<Vec<f32>>> {
        // On a pool worker: a caller outside the pool would otherwise run the serial parts
        // while every worker spins waiting for work, one thread more than there are cores.
        if rayon::current_thread_index().is_none() {
            return rayon::scope(|_| self.forward_on_worker(seqs, caches, all));
        }
        self.forward_on_worker(seqs, caches, all)
    }

    fn forward_on_worker(
        &self,
        seqs: &[&[u32]],
        caches: &mut [&mut LlamaCache],
        all: bool,
    ) -> Result<Vec<Vec<f32>>> {
        let cfg = &self.config;
        let c = cfg.hidden_size;
        if seqs.len() != caches.len() {
            bail!("{} sequences but {} caches", seqs.len(), caches.len());
        }
        let mut spans = Vec::with_capacity(seqs.len());
        let mut rows = 0;
        for (ids, cache) in seqs.iter().zip(caches.iter()) {
            let (t, start) = (ids.len(), cache.len());
            if t == 0 {
                bail!("no tokens to run");
            }
            if start + t > cfg.max_position_embeddings {
                return Err(Error::Invalid(format!(
                    "{} positions exceed the model's context of {} (max_position_embeddings)",
                    start + t,
                    cfg.max_position_embeddings
                )));
            }
            spans.push(Span {
                row: rows,
                t,
                start,
            });
            rows += t;
        }
        // x: [rows, C], the residual stream of every sequence's rows, one after another.
        let mut x = vec![0f32; rows * c];
        for (row, &id) in x
            .chunks_exact_mut(c)
            .zip(seqs.iter().flat_map(|s| s.iter()))
        {
            let id = id as usize;
            if id >= cfg.vocab_size {
                bail!(
                    "token id {id} is outside the vocabulary of {}",
                    cfg.vocab_size
                );
            }
            self.embed_tokens.row(id, row);
        }
        let mut s = Scratch::default();
        // Rotary tables row by row: each sequence at its own positions.
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for sp in &spans {
            let (c_, s_) = rope_cos_sin(&self.inv_freq, sp.start, sp.t);
            cos.extend(c_);
            sin.extend(s_);
        }
        for (l, layer) in self.layers.iter().enumerate() {
            self.attention_block(l, layer, &mut x, &spans, caches, &cos, &sin, &mut s);
            self.mlp_block(layer, &mut x, rows, &mut s);
        }
        for (cache, sp) in caches.iter_mut().zip(&spans) {
            cache.advance(sp.t);
        }
        // Final norm and head over the rows asked for: [kept, C] → [kept, vocab].
        let keep: Vec<std::ops::Range<usize>> = spans
            .iter()
            .map(|sp| {
                if all {
                    sp.row..sp.row + sp.t
                } else {
                    sp.row + sp.t - 1..sp.row + sp.t
                }
            })
            .collect();
        let kept: usize = keep.iter().map(|r| r.len()).sum();
        let mut last = Vec::with_capacity(kept * c);
        for r in &keep {
            last.extend_from_slice(&x[r.start * c..r.end * c]);
        }
        let mut normed = vec![0f32; kept * c];
        rms_norm(&last, &self.norm, cfg.rms_norm_eps as f32, &mut normed);
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        let v = cfg.vocab_size;
        let mut logits = vec![0f32; kept * v];
        head.forward(&normed, kept, &mut logits);
        let mut out = Vec::with_capacity(spans.len());
        let mut at = 0;
        for r in &keep {
            out.push(logits[at * v..(at + r.len()) * v].to_vec());
            at += r.len();
        }
        Ok(out)
    }

    /// x += o_proj(attention(rope(q), rope(k), v)) over each sequence's cached positions and
    /// its new rows.
    #[allow(clippy::too_many_arguments)]
    fn attention_block(
        &self,
        l: usize,
        layer: &LlamaLayer,
        x: &mut [f32],
        spans: &[Span],
        caches: &mut [&mut LlamaCache],
        cos: &[f32],
        sin: &[f32],
        s: &mut Scratch,
    ) {
        let cfg = &self.config;
        let (c, d) = (cfg.hidden_size, cfg.head_dim);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let (heads, kv_heads) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let t = x.len() / c;
        s.normed.resize(t * c, 0.0);
        rms_norm(
            x,
            &layer.input_layernorm,
            cfg.rms_norm_eps as f32,
            &mut s.normed,
        );
        // q: [rows, H·D], k, v: [rows, KVH·D].
        s.q.resize(t * qd, 0.0);
        s.k.resize(t * kvd, 0.0);
        s.v.resize(t * kvd, 0.0);
        Matrix::forward_many(
            &[&layer.q_proj, &layer.k_proj, &layer.v_proj],
            &s.normed,
            t,
            &mut [&mut s.q, &mut s.k, &mut s.v],
        );
        if let Some([bq, bk, bv]) = &layer.qkv_bias {
            add_row_bias(&mut s.q, bq);
            add_row_bias(&mut s.k, bk);
            add_row_bias(&mut s.v, bv);
        }
        rope_rows(&mut s.q, heads, d, cos, sin);
        rope_rows(&mut s.k, kv_heads, d, cos, sin);
        for (cache, sp) in caches.iter_mut().zip(spans) {
            let (r0, r1) = (sp.row, sp.row + sp.t);
            cache.store(l, &s.k[r0 * kvd..r1 * kvd], &s.v[r0 * kvd..r1 * kvd], sp.t);
        }
        s.attn.resize(t * qd, 0.0);
        let group = heads / kv_heads;
        let scale = 1.0 / (d as f32).sqrt();
        let caches: Vec<&LlamaCache> = caches.iter().map(|c| &**c).collect();
        // Rows of sequences with a few new rows (decoding): one pass over every (row, key/value
        // head), each reading its keys and values in place once for the query heads sharing
        // them (their q and output rows sit side by side: [group, D]).
        let row_seq: Vec<(usize, usize)> = spans
            .iter()
            .enumerate()
            .flat_map(|(k, sp)| (0..sp.t).map(move |i| (k, i)))
            .collect();
        let views: Vec<Option<LayerView>> = caches
            .iter()
            .zip(spans)
            .map(|(c, sp)| (sp.t <= DECODE_ROWS).then(|| c.layer_view(l)))
            .collect();
        let q = &s.q;
        s.attn
            .par_chunks_mut(group * d)
            .enumerate()
            .filter(|(row_head, _)| spans[row_seq[row_head / kv_heads].0].t <= DECODE_ROWS)
            .for_each_init(Vec::new, |scratch, (row_head, out)| {
                let (row, kvh) = (row_head / kv_heads, row_head % kv_heads);
                let (k, i) = row_seq[row];
                let n = spans[k].start + i + 1;
                let qg = &q[row * qd + kvh * group * d..][..group * d];
                let view = views[k].as_ref().expect("a decoding sequence has a view");
                view.attend(kvh, d, n, qg, scale, scratch, out);
            });
        // Sequences with many new rows (prompts): tiles of query rows over gathered heads.
        for (k, sp) in spans.iter().enumerate() {
            if sp.t > DECODE_ROWS {
                let (r0, r1) = (sp.row, sp.row + sp.t);
                prompt_attention(
                    caches[k],
                    l,
                    cfg,
                    sp.start,
                    &s.q[r0 * qd..r1 * qd],
                    &mut s.attn[r0 * qd..r1 * qd],
                );
            }
        }
        s.proj.resize(t * c, 0.0);
        layer.o_proj.forward(&s.attn, t, &mut s.proj);
        add_assign(x, &s.proj);
    }

    /// x += down(silu(gate(n)) ⊙ up(n)), n = rms_norm(x).
    fn mlp_block(&self, layer: &LlamaLayer, x: &mut [f32], t: usize, s: &mut Scratch) {
        let cfg = &self.config;
        let (c, f) = (cfg.hidden_size, cfg.intermediate_size);
        s.normed.resize(t * c, 0.0);
        rms_norm(
            x,
            &layer.post_attention_layernorm,
            cfg.rms_norm_eps as f32,
            &mut s.normed,
        );
        s.gate.resize(t * f, 0.0);
        s.up.resize(t * f, 0.0);
        Matrix::forward_many(
            &[&layer.gate_proj, &layer.up_proj],
            &s.normed,
            t,
            &mut [&mut s.gate, &mut s.up],
        );
        swiglu_forward(&mut s.gate, &s.up);
        s.proj.resize(t * c, 0.0);
        layer.down_proj.forward(&s.gate, t, &mut s.proj);
        add_assign(x, &s.proj);
    }
}

/// Where a sequence's rows sit in a batched pass: rows row..row + t, at positions
/// start..start + t.
struct Span {
    row: usize,
    t: usize,
    start: usize,
}

/// Attention of one sequence's many new rows (a prompt) at positions start..start + t, whose
/// keys and values are already in `cache`: q [t, H·D] → attn [t, H·D]. Each key/value head is
/// gathered once into [n, D], then tasks of (query head, tile of query rows) run over only the
/// keys their rows see (causal: a tile ending at row i1 needs positions < start + i1, half the
/// square for a prompt).
fn prompt_attention(
    cache: &LlamaCache,
    l: usize,
    cfg: &LlamaConfig,
    start: usize,
    q: &[f32],
    attn: &mut [f32],
) {
    let d = cfg.head_dim;
    let qd = cfg.q_dim();
    let (heads, kv_heads) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    let group = heads / kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let t = q.len() / qd;
    let n = start + t;
    let gathered: Vec<(Vec<f32>, Vec<f32>)> = (0..kv_heads)
        .into_par_iter()
        .map(|kvh| {
            let mut keys = vec![0f32; n * d];
            let mut values = vec![0f32; n * d];
            cache.gather_head(l, false, kvh, n, &mut keys);
            cache.gather_head(l, true, kvh, n, &mut values);
            (keys, values)
        })
        .collect();
    let tiles = t.div_ceil(QUERY_TILE);
    let outs: Vec<Vec<f32>> = (0..heads * tiles)
        .into_par_iter()
        .map(|task| {
            let (h, tile) = (task / tiles, task % tiles);
            let (i0, i1) = (tile * QUERY_TILE, ((tile + 1) * QUERY_TILE).min(t));
            let (rows, seen) = (i1 - i0, start + i1);
            let (keys, values) = &gathered[h / group];
            let mut qh = vec![0f32; rows * d];
            for (i, qrow) in qh.chunks_exact_mut(d).enumerate() {
                qrow.copy_from_slice(&q[(i0 + i) * qd + h * d..][..d]);
            }
            // scores: [rows, seen] = q_tile · K[..seen]ᵀ; softmax over each row's visible
            // positions; out: [rows, D] = scores · V[..seen].
            let mut scores = vec![0f32; rows * seen];
            Gemm::nt(rows, seen, d).run_serial(&qh, &keys[..seen * d], &mut scores);
            for (i, row) in scores.chunks_exact_mut(seen).enumerate() {
                let visible = start + i0 + i + 1;
                softmax_row_scaled(&mut row[..visible], scale);
                row[visible..].fill(0.0);
            }
            let mut out = vec![0f32; rows * d];
            Gemm::nn(rows, d, seen).run_serial(&scores, &values[..seen * d], &mut out);
            out
        })
        .collect();
    for (task, out) in outs.iter().enumerate() {
        let (h, i0) = (task / tiles, (task % tiles) * QUERY_TILE);
        for (i, orow) in out.chunks_exact(d).enumerate() {
            attn[(i0 + i) * qd + h * d..][..d].copy_from_slice(orow);
        }
    }
}

/// cos and sin [t, D/2] of positions start..start+t.
pub(crate) fn rope_cos_sin(inv_freq: &[f64], start: usize, t: usize) -> (Vec<f32>, Vec<f32>) {
    let mut cos = Vec::with_capacity(t * inv_freq.len());
    let mut sin = Vec::with_capacity(t * inv_freq.len());
    for pos in start..start + t {
        for &f in inv_freq {
            // Hugging Face computes the angle in f32 (inv_freq and positions as f32).
            let angle = (pos as f32) * (f as f32);
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    (cos, sin)
}

pub(crate) fn add_row_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}
