//! BERT encoder (Hugging Face `BertModel`), for inference, with the parameter names of its
//! `state_dict` (`embeddings.word_embeddings.weight`, `encoder.layer.0.attention.self.query.weight`, …).
//!
//! A batch is packed, not padded: the sequences' tokens are stacked into one [N, C] matrix for
//! every linear layer and layer norm, and attention runs per sequence over its own length. The
//! result equals a padded batch with an attention mask, without computing the padding.

use crate::backend::{add_assign, attention_packed_forward};
use crate::nn::{params, Activation, Embedding, LayerNorm, Linear, Module};
use crate::tensor::ensure_len;
use crate::{bail, Result};
use serde::{Deserialize, Serialize};

/// The fields of a Hugging Face BERT `config.json` that the computation depends on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

impl BertConfig {
    pub fn validate(&self) -> Result<()> {
        let c = self;
        if c.vocab_size == 0 || c.hidden_size == 0 || c.num_hidden_layers == 0 {
            bail!("vocab_size, hidden_size and num_hidden_layers must be ≥ 1");
        }
        if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            bail!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                c.hidden_size,
                c.num_attention_heads
            );
        }
        self.activation()?;
        match c.position_embedding_type.as_deref() {
            None | Some("absolute") => Ok(()),
            Some(other) => {
                bail!("position_embedding_type {other:?} is not supported (expected \"absolute\")")
            }
        }
    }

    /// HF's `hidden_act` names: "gelu" is the exact (erf) GELU.
    pub fn activation(&self) -> Result<Activation> {
        Ok(match self.hidden_act.as_str() {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => bail!(
                "hidden_act {other:?} is not supported (expected gelu, gelu_new, gelu_pytorch_tanh or relu)"
            ),
        })
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// One post-norm encoder layer: attention, add & norm, feed-forward, add & norm.
#[derive(Clone, Debug)]
pub struct BertLayer {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub attn_out: Linear,
    pub attn_norm: LayerNorm,
    pub intermediate: Linear,
    pub output: Linear,
    pub out_norm: LayerNorm,
}

impl BertLayer {
    fn new(cfg: &BertConfig) -> Self {
        let (c, f, eps) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.layer_norm_eps as f32,
        );
        BertLayer {
            query: Linear::new(c, c, true),
            key: Linear::new(c, c, true),
            value: Linear::new(c, c, true),
            attn_out: Linear::new(c, c, true),
            attn_norm: LayerNorm::new(c, eps),
            intermediate: Linear::new(c, f, true),
            output: Linear::new(f, c, true),
            out_norm: LayerNorm::new(c, eps),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Bert {
    pub cfg: BertConfig,
    pub word: Embedding,
    pub position: Embedding,
    pub token_type: Embedding,
    pub emb_norm: LayerNorm,
    pub layers: Vec<BertLayer>,
    act: Activation,
}

/// Buffers for one forward pass, reused across batches (grow-only).
#[derive(Default, Debug)]
pub struct BertScratch {
    x: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    merged: Vec<f32>,
    sum: Vec<f32>,
    hidden: Vec<f32>,
}

/// Attention probabilities kept for inspection: per layer, per sequence, [H, T, T].
pub type AttentionMaps = Vec<Vec<Vec<f32>>>;

impl Bert {
    pub fn new(cfg: BertConfig) -> Result<Self> {
        cfg.validate()?;
        let c = cfg.hidden_size;
        Ok(Bert {
            word: Embedding::new(cfg.vocab_size, c),
            position: Embedding::new(cfg.max_position_embeddings, c),
            token_type: Embedding::new(cfg.type_vocab_size, c),
            emb_norm: LayerNorm::new(c, cfg.layer_norm_eps as f32),
            layers: (0..cfg.num_hidden_layers)
                .map(|_| BertLayer::new(&cfg))
                .collect(),
            act: cfg.activation()?,
            cfg,
        })
    }

    /// Packs every linear layer's weight for the matmul precision in force (see
    /// `Linear::pack_for_inference`): at high or medium precision each forward pass then reads
    /// the packed weights instead of packing them again.
    pub fn pack_for_inference(&mut self) {
        for l in &mut self.layers {
            for lin in [
                &mut l.query,
                &mut l.key,
                &mut l.value,
                &mut l.attn_out,
                &mut l.intermediate,
                &mut l.output,
            ] {
                lin.pack_for_inference();
            }
        }
    }

    /// Last hidden states of each sequence, packed: `seqs` [Σ Tᵢ tokens] → [Σ Tᵢ, C] in `s.x`
    /// (returned). Sequences are single segments (token type 0). With `maps`, the attention
    /// probabilities of every layer are kept.
    pub fn forward<'s>(
        &self,
        seqs: &[&[u32]],
        s: &'s mut BertScratch,
        mut maps: Option<&mut AttentionMaps>,
    ) -> Result<&'s [f32]> {
        let c = self.cfg.hidden_size;
        let n: usize = seqs.iter().map(|t| t.len()).sum();
        let max_t = seqs.iter().map(|t| t.len()).max().unwrap_or(0);
        if max_t > self.cfg.max_position_embeddings {
            bail!(
                "a sequence of {max_t} tokens is longer than max_position_embeddings {}",
                self.cfg.max_position_embeddings
            );
        }
        let f = self.cfg.intermediate_size;
        for buf in [
            &mut s.x,
            &mut s.q,
            &mut s.k,
            &mut s.v,
            &mut s.merged,
            &mut s.sum,
        ] {
            ensure_len(buf, n * c);
        }
        ensure_len(&mut s.hidden, n * f);

        // Embeddings: word + position + token type 0, then layer norm. [N, C]
        let ids: Vec<u32> = seqs.iter().flat_map(|t| t.iter().copied()).collect();
        self.word.forward(&ids, &mut s.sum)?;
        let pos = &self.position.weight.value.data;
        let type0 = &self.token_type.weight.value.data[..c];
        let mut rows = s.sum.chunks_exact_mut(c);
        for seq in seqs {
            for (t, row) in (0..seq.len()).zip(&mut rows) {
                let p = &pos[t * c..(t + 1) * c];
                row.iter_mut()
                    .zip(p.iter().zip(type0))
                    .for_each(|(x, (p, ty))| *x += p + ty);
            }
        }
        self.emb_norm.infer(&s.sum, n, &mut s.x);

        for layer in &self.layers {
            let probs = self.attention(layer, seqs, s, maps.is_some());
            if let Some(m) = maps.as_deref_mut() {
                m.push(probs);
            }
            // x = LayerNorm(x + Attention(x))
            layer.attn_out.forward(&s.merged, n, &mut s.sum);
            add_assign(&mut s.sum[..n * c], &s.x[..n * c]);
            layer.attn_norm.infer(&s.sum, n, &mut s.x);
            // x = LayerNorm(x + W₂·act(W₁·x))   [N,C] → [N,F] → [N,C]
            layer
                .intermediate
                .forward_act(&s.x, n, &mut s.hidden, self.act);
            layer.output.forward(&s.hidden, n, &mut s.sum);
            add_assign(&mut s.sum[..n * c], &s.x[..n * c]);
            layer.out_norm.infer(&s.sum, n, &mut s.x);
        }
        Ok(&s.x[..n * c])
    }

    /// Self-attention of each sequence over its own tokens: s.x → s.merged [N, C]. With
    /// `keep_probs`, returns each sequence's probabilities [H, T, T].
    fn attention(
        &self,
        layer: &BertLayer,
        seqs: &[&[u32]],
        s: &mut BertScratch,
        keep_probs: bool,
    ) -> Vec<Vec<f32>> {
        let lens: Vec<usize> = seqs.iter().map(|t| t.len()).collect();
        let n: usize = lens.iter().sum();
        let c = self.cfg.hidden_size;
        layer.query.forward(&s.x, n, &mut s.q);
        layer.key.forward(&s.x, n, &mut s.k);
        layer.value.forward(&s.x, n, &mut s.v);
        attention_packed_forward(
            &s.q[..n * c],
            &s.k[..n * c],
            &s.v[..n * c],
            &lens,
            self.cfg.num_attention_heads,
            &mut s.merged[..n * c],
            keep_probs,
        )
    }
}

impl Module for BertLayer {
    params!(Self {
        query,
        key,
        value,
        attn_out,
        attn_norm,
        intermediate,
        output,
        out_norm,
    }, v => {
        v.child("attention.self.query", query);
        v.child("attention.self.key", key);
        v.child("attention.self.value", value);
        v.child("attention.output.dense", attn_out);
        v.child("attention.output.LayerNorm", attn_norm);
        v.child("intermediate.dense", intermediate);
        v.child("output.dense", output);
        v.child("output.LayerNorm", out_norm);
    });
}

impl Module for Bert {
    params!(Self { word, position, token_type, emb_norm, layers, .. }, v => {
        v.child("embeddings.word_embeddings", word);
        v.child("embeddings.position_embeddings", position);
        v.child("embeddings.token_type_embeddings", token_type);
        v.child("embeddings.LayerNorm", emb_norm);
        for (i, layer) in std::iter::zip(0.., layers) {
            v.child(&format!("encoder.layer.{i}"), layer);
        }
    });
}
