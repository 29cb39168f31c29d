//! Fine-tuning a Llama-family decoder with LoRA: the full-sequence causal forward over a batch
//! [B, T] of token ids with its activations saved, the cross-entropy loss, and the backward
//! pass down to the adapters. The base model ([`Llama`], f32 or quantised) is frozen: only the
//! adapters' A and B get gradients, but the gradient flows through every frozen matrix
//! (dx = dy·W, quantised ones dequantised a tile at a time).
//!
//! Per layer, forward and backward:
//!
//! ```text
//! n = rms_norm(x)                          dx += rms_norm_backward(x, dn)
//! q, k, v = n·Wqᵀ, n·Wkᵀ, n·Wvᵀ (+ LoRA)     dn = dq·Wq + dk·Wk + dv·Wv (+ LoRA)
//! q, k = rope(q), rope(k)                  dq, dk = rope⁻¹(dq), rope⁻¹(dk) (rotation by −θ)
//! o = causal_attention(q, k, v)            dq, dk, dv = flash backward (k, v repeated per
//!                                                       query head; dk, dv summed back)
//! x = x + o·Woᵀ (+ LoRA)                   do = dx·Wo (+ LoRA)
//! n = rms_norm(x)                          dx += rms_norm_backward(x, dn)
//! h = silu(n·Wgᵀ) ⊙ (n·Wuᵀ) (+ LoRA)        dg, du = swiglu_backward(dh); dn = dg·Wg + du·Wu
//! x = x + h·Wdᵀ (+ LoRA)                   dh = dx·Wd (+ LoRA)
//! ```
//!
//! Parameters are named as PEFT names them (`base_model.model.model.layers.{i}.self_attn.
//! q_proj.lora_A.weight`), so an adapter moves between largo and PEFT as it is.

use super::llama::{add_row_bias, rope_cos_sin, Llama, LlamaConfig, LlamaLayer, LowRank, Matrix};
use super::lora::{LoraConfig, LoraLinear, LoraTarget};
use crate::backend::{
    add_assign, cross_entropy_backward, cross_entropy_forward, flash_attention_backward,
    flash_attention_forward, rms_norm_backward, rms_norm_forward, rope_rows_backward,
    rope_rows_forward, swiglu_backward, swiglu_forward, AttnDropout, AttnShape, FlashTiles,
};
use crate::io::TensorFile;
use crate::nn::{params, Module};
use crate::rng::{splitmix64, Rng};
use crate::{bail, Error, Result};

pub use crate::data::finetune::IGNORE_INDEX;

/// transformers' `labels` [B, T] → the target of each position: position t predicts
/// labels[t + 1] of its sequence, and the last position of each sequence predicts nothing
/// (what `LlamaForCausalLM` does to its labels before the loss).
pub fn shift_labels(labels: &[i64], batch: usize) -> Result<Vec<i64>> {
    if batch == 0 || !labels.len().is_multiple_of(batch) {
        bail!(
            "{} labels do not split into {batch} sequences",
            labels.len()
        );
    }
    let t = labels.len() / batch;
    let mut targets = vec![IGNORE_INDEX; labels.len()];
    for (tg, lb) in targets.chunks_exact_mut(t).zip(labels.chunks_exact(t)) {
        tg[..t - 1].copy_from_slice(&lb[1..]);
    }
    Ok(targets)
}

/// The adapters of one decoder layer, one slot per [`LoraTarget`] (in `LoraTarget::ALL`'s
/// order, which is PEFT's).
#[derive(Clone, Debug)]
pub struct LoraLayer {
    pub adapters: [Option<LoraLinear>; 7],
}

impl Module for LoraLayer {
    params!(Self { adapters }, v => {
        for (target, adapter) in std::iter::zip(LoraTarget::ALL, adapters) {
            if let Some(a) = adapter {
                v.child(target.module(), a);
            }
        }
    });
}

/// What one layer's forward keeps for backward. Rows are the B·T positions. What is cheap to
/// recompute is not kept: the norms' outputs, silu(gate) ⊙ up, and the key/value heads
/// repeated for the query heads that share them.
struct LayerActs {
    /// The residual stream entering the layer [rows, C].
    x: Vec<f32>,
    /// Rotated queries [B, H, T, D]; rotated keys and values [rows, KVH·D].
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention's output [B, H, T, D] and each row's log-sum-exp [B, H, T].
    o: Vec<f32>,
    lse: Vec<f32>,
    /// The residual stream after attention [rows, C].
    x_mid: Vec<f32>,
    /// gate and up before the product [rows, F].
    gate: Vec<f32>,
    up: Vec<f32>,
}

/// What forward kept of one layer: everything backward needs, or with checkpointing only the
/// layer's input, from which backward runs the layer's forward again.
enum Saved {
    All(Box<LayerActs>),
    Input(Vec<f32>),
}

/// Everything forward saved: per layer, then the final norm's input and the loss gradient of
/// its output (computed with the loss, through the frozen head: nothing of the vocabulary's
/// size is kept).
struct Acts {
    pass: Pass,
    layers: Vec<Saved>,
    x_final: Vec<f32>,
    /// [rows, C].
    dnormed: Vec<f32>,
}

/// Logits computed at a time by the loss (64 MiB of f32, and as much for their gradient):
/// each chunk dequantises a quantised head once more, so not too few rows either.
const LOGITS_CHUNK_VALUES: usize = 1 << 24;

/// A frozen Llama-family decoder with trainable LoRA adapters.
pub struct LoraLlama {
    pub base: Llama,
    pub lora: LoraConfig,
    pub layers: Vec<LoraLayer>,
    /// Keep only each layer's input and recompute its activations during backward (gradient
    /// checkpointing per block): memory for one layer's activations instead of all of them,
    /// for a second forward pass's work. The gradients are the same either way.
    pub checkpoint_activations: bool,
    acts: Option<Acts>,
}

impl Module for LoraLlama {
    params!(Self { layers, .. }, v => {
        for (i, layer) in std::iter::zip(0.., layers) {
            v.child(&format!("base_model.model.model.layers.{i}"), layer);
        }
    });
}

/// The base matrix a target adapts.
fn base_matrix(layer: &super::llama::LlamaLayer, target: LoraTarget) -> &Matrix {
    match target {
        LoraTarget::Q => &layer.q_proj,
        LoraTarget::K => &layer.k_proj,
        LoraTarget::V => &layer.v_proj,
        LoraTarget::O => &layer.o_proj,
        LoraTarget::Gate => &layer.gate_proj,
        LoraTarget::Up => &layer.up_proj,
        LoraTarget::Down => &layer.down_proj,
    }
}

fn base_matrix_mut(layer: &mut super::llama::LlamaLayer, target: LoraTarget) -> &mut Matrix {
    match target {
        LoraTarget::Q => &mut layer.q_proj,
        LoraTarget::K => &mut layer.k_proj,
        LoraTarget::V => &mut layer.v_proj,
        LoraTarget::O => &mut layer.o_proj,
        LoraTarget::Gate => &mut layer.gate_proj,
        LoraTarget::Up => &mut layer.up_proj,
        LoraTarget::Down => &mut layer.down_proj,
    }
}

/// Reads the PEFT adapter directory `dir` (`adapter_config.json`, `adapter_model.safetensors`)
/// and sets each adapter on its matrix of `base`, applied without merging (see
/// [`Matrix::adapter`]). Tensors that do not fit the base are refused by name.
pub fn load_adapted(base: Llama, dir: &std::path::Path) -> Result<Llama> {
    let config = LoraConfig::from_peft_config(&dir.join("adapter_config.json"))?;
    let file = TensorFile::load(&dir.join("adapter_model.safetensors"))?;
    let mut model = LoraLlama::new(base, config, 0)?;
    model.load_adapter_weights(&file)?;
    Ok(model.into_adapted())
}

/// y [rows, out] = x·Wᵀ, plus the adapter's update where the projection has one.
fn project(
    base: &Matrix,
    lora: &mut Option<LoraLinear>,
    x: &[f32],
    rows: usize,
    seed: u64,
    y: &mut [f32],
) {
    match lora {
        Some(l) => l.forward(base, x, rows, seed, y),
        None => base.forward_f32(x, rows, y),
    }
}

/// dx [rows, in] (+)= dy·W (and the adapter's share; its A and B gradients accumulate).
fn project_backward(
    base: &Matrix,
    lora: &mut Option<LoraLinear>,
    x: &[f32],
    dy: &[f32],
    rows: usize,
    dx: &mut [f32],
    accumulate: bool,
) {
    match lora {
        Some(l) => l.backward(base, x, dy, rows, dx, accumulate),
        None => base.backward_input(dy, rows, dx, accumulate),
    }
}

/// rows [B·T, n·D] → heads [B, n·rep, T, D], head h of the output taken from head h / rep (a
/// key/value head repeated for the `rep` query heads that share it, as transformers'
/// `repeat_kv`).
fn rows_to_heads(rows: &[f32], b: usize, t: usize, n: usize, d: usize, rep: usize) -> Vec<f32> {
    let h = n * rep;
    let mut out = vec![0f32; b * h * t * d];
    for (bh, head) in out.chunks_exact_mut(t * d).enumerate() {
        let (bi, src) = (bh / h, (bh % h) / rep);
        for (i, row) in head.chunks_exact_mut(d).enumerate() {
            let at = (bi * t + i) * n * d + src * d;
            row.copy_from_slice(&rows[at..at + d]);
        }
    }
    out
}

/// The transpose of [`rows_to_heads`]: heads [B, n·rep, T, D] → rows [B·T, n·D], the `rep`
/// copies of a head summed (the gradient of a repeat).
fn heads_to_rows(heads: &[f32], b: usize, t: usize, n: usize, d: usize, rep: usize) -> Vec<f32> {
    let h = n * rep;
    let mut out = vec![0f32; b * t * n * d];
    for (bh, head) in heads.chunks_exact(t * d).enumerate() {
        let (bi, dst) = (bh / h, (bh % h) / rep);
        for (i, row) in head.chunks_exact(d).enumerate() {
            let at = (bi * t + i) * n * d + dst * d;
            out[at..at + d]
                .iter_mut()
                .zip(row)
                .for_each(|(o, &v)| *o += v);
        }
    }
    out
}

/// The dropout seed of one adapter in one pass.
fn adapter_seed(seed: u64, layer: usize, target: LoraTarget) -> u64 {
    let mut s =
        seed ^ ((layer * 8 + target as usize) as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    splitmix64(&mut s)
}

/// The rotary tables, batch shape and dropout seed of one pass, shared by its layers.
struct Pass {
    batch: usize,
    t: usize,
    seed: u64,
    /// cos and sin [B·T, D/2]: each sequence at positions 0..t.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// One layer's forward over the residual stream x [rows, C], in place; returns what its
/// backward needs. Deterministic: run again on the same x (a checkpointed layer during
/// backward) it gives the same values, adapters' saved inputs included.
fn layer_forward(
    cfg: &LlamaConfig,
    layer: &LlamaLayer,
    lora: &mut LoraLayer,
    l: usize,
    pass: &Pass,
    x: &mut [f32],
) -> LayerActs {
    let (c, d, f) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
    let (heads, kv_heads) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    let (qd, kvd, group) = (cfg.q_dim(), cfg.kv_dim(), heads / kv_heads);
    let eps = cfg.rms_norm_eps as f32;
    let (b, t, seed) = (pass.batch, pass.t, pass.seed);
    let (cos, sin) = (&pass.cos, &pass.sin);
    let rows = b * t;
    let shape = AttnShape::new(b, heads, t, d);
    let [aq, ak, av, ao, ag, au, ad] = &mut lora.adapters;
    let seed_of = |target| adapter_seed(seed, l, target);
    use LoraTarget::{Down, Gate, Up, K, O, Q, V};
    // Attention: q, k, v [rows, H·D | KVH·D] of n = rms_norm(x), rotated, then attention in the
    // heads layout, back to rows for o_proj.
    let x_in = x.to_vec();
    let mut normed = vec![0f32; rows * c];
    rms_norm_forward(x, &layer.input_layernorm, eps, &mut normed);
    let n = &normed;
    let mut q = vec![0f32; rows * qd];
    let mut k = vec![0f32; rows * kvd];
    let mut v = vec![0f32; rows * kvd];
    project(&layer.q_proj, aq, n, rows, seed_of(Q), &mut q);
    project(&layer.k_proj, ak, n, rows, seed_of(K), &mut k);
    project(&layer.v_proj, av, n, rows, seed_of(V), &mut v);
    if let Some([bq, bk, bv]) = &layer.qkv_bias {
        add_row_bias(&mut q, bq);
        add_row_bias(&mut k, bk);
        add_row_bias(&mut v, bv);
    }
    rope_rows_forward(&mut q, heads, d, cos, sin);
    rope_rows_forward(&mut k, kv_heads, d, cos, sin);
    let q = rows_to_heads(&q, b, t, heads, d, 1);
    let mut o = vec![0f32; b * heads * t * d];
    let mut lse = vec![0f32; b * heads * t];
    let (tiles, no_dropout) = (FlashTiles::default(), AttnDropout::NONE);
    {
        let kh = rows_to_heads(&k, b, t, kv_heads, d, group);
        let vh = rows_to_heads(&v, b, t, kv_heads, d, group);
        flash_attention_forward(
            &q, &kh, &vh, shape, true, None, no_dropout, tiles, &mut lse, &mut o,
        );
    }
    let attn = heads_to_rows(&o, b, t, heads, d, 1);
    let mut proj = vec![0f32; rows * c];
    project(&layer.o_proj, ao, &attn, rows, seed_of(O), &mut proj);
    add_assign(x, &proj);
    let x_mid = x.to_vec();
    // MLP: h = silu(gate) ⊙ up of n = rms_norm(x), then down.
    rms_norm_forward(x, &layer.post_attention_layernorm, eps, &mut normed);
    let n = &normed;
    let mut gate = vec![0f32; rows * f];
    let mut up = vec![0f32; rows * f];
    project(&layer.gate_proj, ag, n, rows, seed_of(Gate), &mut gate);
    project(&layer.up_proj, au, n, rows, seed_of(Up), &mut up);
    let mut hidden = gate.clone();
    swiglu_forward(&mut hidden, &up);
    project(
        &layer.down_proj,
        ad,
        &hidden,
        rows,
        seed_of(Down),
        &mut proj,
    );
    add_assign(x, &proj);
    LayerActs {
        x: x_in,
        q,
        k,
        v,
        o,
        lse,
        x_mid,
        gate,
        up,
    }
}

/// Backward of [`layer_forward`]: with dx [rows, C] the gradient of the layer's output, adds
/// the adapters' gradients and turns dx into the gradient of the layer's input, in place.
fn layer_backward(
    cfg: &LlamaConfig,
    layer: &LlamaLayer,
    lora: &mut LoraLayer,
    a: &LayerActs,
    pass: &Pass,
    dx: &mut [f32],
) {
    let (c, d, f) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
    let (heads, kv_heads) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    let (qd, group) = (cfg.q_dim(), heads / kv_heads);
    let eps = cfg.rms_norm_eps as f32;
    let (b, t) = (pass.batch, pass.t);
    let (cos, sin) = (&pass.cos, &pass.sin);
    let rows = b * t;
    let shape = AttnShape::new(b, heads, t, d);
    let [aq, ak, av, ao, ag, au, ad] = &mut lora.adapters;
    // MLP: x_out = x_mid + down(silu(gate(n)) ⊙ up(n)), n = rms_norm(x_mid). The residual
    // passes dx on unchanged; the branch adds its share.
    let mut dhidden = vec![0f32; rows * f];
    {
        let mut hidden = a.gate.clone();
        swiglu_forward(&mut hidden, &a.up);
        project_backward(&layer.down_proj, ad, &hidden, dx, rows, &mut dhidden, false);
    }
    let mut dgate = vec![0f32; rows * f];
    let mut dup = vec![0f32; rows * f];
    swiglu_backward(&a.gate, &a.up, &dhidden, &mut dgate, &mut dup);
    drop(dhidden);
    let mut n = vec![0f32; rows * c];
    rms_norm_forward(&a.x_mid, &layer.post_attention_layernorm, eps, &mut n);
    let mut dn = vec![0f32; rows * c];
    project_backward(&layer.gate_proj, ag, &n, &dgate, rows, &mut dn, false);
    project_backward(&layer.up_proj, au, &n, &dup, rows, &mut dn, true);
    drop((dgate, dup));
    let w = &layer.post_attention_layernorm;
    rms_norm_backward(&a.x_mid, w, eps, &dn, dx);
    // Attention: x_mid = x + o_proj(attention(rope(q(n)), rope(k(n)), v(n))), n = rms_norm(x).
    let attn = heads_to_rows(&a.o, b, t, heads, d, 1);
    let mut dattn = vec![0f32; rows * qd];
    project_backward(&layer.o_proj, ao, &attn, dx, rows, &mut dattn, false);
    let dout = rows_to_heads(&dattn, b, t, heads, d, 1);
    let k = rows_to_heads(&a.k, b, t, kv_heads, d, group);
    let v = rows_to_heads(&a.v, b, t, kv_heads, d, group);
    let mut dqh = vec![0f32; a.q.len()];
    let mut dkh = vec![0f32; k.len()];
    let mut dvh = vec![0f32; v.len()];
    let (tiles, no_dropout) = (FlashTiles::default(), AttnDropout::NONE);
    let (q, o, lse) = (&a.q, &a.o, &a.lse);
    flash_attention_backward(
        q, &k, &v, o, lse, &dout, shape, true, None, no_dropout, tiles, &mut dqh, &mut dkh,
        &mut dvh,
    );
    drop((k, v));
    // Back to rows; the repeated key/value heads' gradients summed; rotations undone.
    let mut dq = heads_to_rows(&dqh, b, t, heads, d, 1);
    let mut dk = heads_to_rows(&dkh, b, t, kv_heads, d, group);
    let dv = heads_to_rows(&dvh, b, t, kv_heads, d, group);
    rope_rows_backward(&mut dq, heads, d, cos, sin);
    rope_rows_backward(&mut dk, kv_heads, d, cos, sin);
    rms_norm_forward(&a.x, &layer.input_layernorm, eps, &mut n);
    project_backward(&layer.q_proj, aq, &n, &dq, rows, &mut dn, false);
    project_backward(&layer.k_proj, ak, &n, &dk, rows, &mut dn, true);
    project_backward(&layer.v_proj, av, &n, &dv, rows, &mut dn, true);
    rms_norm_backward(&a.x, &layer.input_layernorm, eps, &dn, dx);
}

/// The head and the loss, `chunk` rows at a time: each chunk's logits give its losses and
/// their gradient, taken through the frozen head at once, so neither the logits nor their
/// gradient [rows, vocab] are ever held whole. normed: [rows, C]; `valid` targets are not
/// [`IGNORE_INDEX`]. Returns the mean loss and, with `grad`, its gradient with respect to
/// `normed` (else an empty vector: validation needs no gradient).
fn loss_through_head(
    head: &Matrix,
    normed: &[f32],
    targets: &[i64],
    vocab: usize,
    valid: usize,
    chunk: usize,
    grad: bool,
) -> Result<(f32, Vec<f32>)> {
    let (rows, c) = (targets.len(), head.cols);
    let chunk = chunk.clamp(1, rows.max(1));
    let mut logits = vec![0f32; chunk * vocab];
    let mut dlogits = vec![0f32; if grad { chunk * vocab } else { 0 }];
    let mut row_losses = vec![0f32; rows];
    let mut dnormed = vec![0f32; if grad { rows * c } else { 0 }];
    for r0 in (0..rows).step_by(chunk) {
        let m = chunk.min(rows - r0);
        let tg = &targets[r0..r0 + m];
        let z = &mut logits[..m * vocab];
        head.forward_f32(&normed[r0 * c..(r0 + m) * c], m, z);
        cross_entropy_forward(z, tg, vocab, IGNORE_INDEX, 0.0, &mut row_losses[r0..r0 + m])?;
        if !grad {
            continue;
        }
        let dz = &mut dlogits[..m * vocab];
        // The kernel divides by the chunk's valid rows; the mean is over the batch's.
        let in_chunk = tg.iter().filter(|&&t| t != IGNORE_INDEX).count();
        let scale = in_chunk as f32 / valid.max(1) as f32;
        cross_entropy_backward(z, tg, vocab, IGNORE_INDEX, 0.0, scale, dz)?;
        head.backward_input(dz, m, &mut dnormed[r0 * c..(r0 + m) * c], false);
    }
    let total: f64 = row_losses.iter().map(|&l| l as f64).sum();
    let loss = if valid == 0 {
        0.0
    } else {
        (total / valid as f64) as f32
    };
    Ok((loss, dnormed))
}

impl LoraLlama {
    /// Adapters on `lora.targets` of every layer, initialised as PEFT does from `seed`.
    pub fn new(base: Llama, lora: LoraConfig, seed: u64) -> Result<Self> {
        // A rank past a matrix's own adds nothing, and the adapters are allocated from it.
        for layer in base.layers.iter().take(1) {
            for &t in &lora.targets {
                let m = base_matrix(layer, t);
                let most = m.rows.min(m.cols);
                if lora.r > most {
                    bail!(
                        "lora.r = {} exceeds the rank of {} ([{}, {}]): at most {most}",
                        lora.r,
                        t.proj(),
                        m.rows,
                        m.cols
                    );
                }
            }
        }
        let mut rng = Rng::new(seed);
        let layers = base
            .layers
            .iter()
            .map(|layer| LoraLayer {
                adapters: LoraTarget::ALL.map(|t| {
                    lora.targets
                        .contains(&t)
                        .then(|| LoraLinear::new(base_matrix(layer, t), &lora, &mut rng))
                }),
            })
            .collect();
        Ok(LoraLlama {
            base,
            lora,
            layers,
            checkpoint_activations: false,
            acts: None,
        })
    }

    /// The base with each trained adapter set on its matrix, for inference (unmerged).
    pub fn into_adapted(self) -> Llama {
        let mut base = self.base;
        for (layer, lora) in base.layers.iter_mut().zip(self.layers) {
            for (target, adapter) in std::iter::zip(LoraTarget::ALL, lora.adapters) {
                if let Some(a) = adapter {
                    base_matrix_mut(layer, target).adapter = Some(LowRank {
                        a: a.a.value.data,
                        b: a.b.value.data,
                        rank: a.rank,
                        scale: a.scale,
                    });
                }
            }
        }
        base
    }

    /// Sets every adapter weight from `file` (PEFT's `adapter_model.safetensors` names). A
    /// missing tensor, a shape that does not fit the base, or a tensor with no adapter to go
    /// to is an error naming it.
    pub fn load_adapter_weights(&mut self, file: &TensorFile) -> Result<()> {
        let mut unused: std::collections::BTreeSet<&str> =
            file.tensors.keys().map(String::as_str).collect();
        let mut result = Ok(());
        self.visit_params_mut(&mut |name, p| {
            if result.is_err() {
                return;
            }
            unused.remove(name);
            result = file.get(name).and_then(|t| {
                if t.shape != p.value.shape {
                    return Err(Error::format(
                        &file.path,
                        format!(
                            "adapter tensor {name} has shape {:?}, the base model needs {:?}",
                            t.shape, p.value.shape
                        ),
                    ));
                }
                p.value.data.copy_from_slice(&t.data);
                Ok(())
            });
        });
        result?;
        if let Some(name) = unused.first() {
            return Err(Error::format(
                &file.path,
                format!(
                    "adapter tensor {name} matches no adapter of this model (targets {})",
                    self.lora
                        .targets
                        .iter()
                        .map(|t| t.name())
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            ));
        }
        Ok(())
    }

    /// Writes the adapters as PEFT does (`adapter_config.json`, `adapter_model.safetensors`
    /// with PEFT's tensor names) into `dir`, which is created if needed; `base_model` goes to
    /// `base_model_name_or_path`.
    pub fn save_adapter(&self, dir: &std::path::Path, base_model: Option<&str>) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let config = serde_json::to_string_pretty(&self.lora.to_peft_config(base_model))
            .expect("a JSON value serialises");
        crate::io::write_atomic(&dir.join("adapter_config.json"), config.as_bytes())?;
        let tensors: Vec<(String, &crate::tensor::Tensor)> = self
            .params()
            .into_iter()
            .map(|(name, p)| (name, &p.value))
            .collect();
        let metadata = std::collections::HashMap::from([("format".into(), "pt".into())]);
        crate::io::save_safetensors(
            &dir.join("adapter_model.safetensors"),
            &tensors,
            Some(metadata),
        )
    }

    /// The mean cross-entropy of `targets` (next-token ids per position, [`IGNORE_INDEX`] to
    /// leave one out; see [`shift_labels`]) over a batch of `batch` sequences of `ids`, all
    /// starting at position 0. Saves the activations [`backward`](Self::backward) needs;
    /// `seed` draws the adapters' dropout masks.
    pub fn forward(
        &mut self,
        ids: &[u32],
        targets: &[i64],
        batch: usize,
        seed: u64,
    ) -> Result<f32> {
        self.forward_pass(ids, targets, batch, seed, true)
    }

    /// [`forward`](Self::forward); with `train` false nothing is kept for backward and the
    /// loss's gradient is not taken.
    fn forward_pass(
        &mut self,
        ids: &[u32],
        targets: &[i64],
        batch: usize,
        seed: u64,
        train: bool,
    ) -> Result<f32> {
        let cfg = &self.base.config;
        let (c, vocab) = (cfg.hidden_size, cfg.vocab_size);
        let eps = cfg.rms_norm_eps as f32;
        if batch == 0 || ids.is_empty() || !ids.len().is_multiple_of(batch) {
            bail!(
                "{} token ids do not split into {batch} sequences",
                ids.len()
            );
        }
        if targets.len() != ids.len() {
            bail!(
                "{} targets for {} token ids: one per position needed",
                targets.len(),
                ids.len()
            );
        }
        let (b, t, rows) = (batch, ids.len() / batch, ids.len());
        if t > cfg.max_position_embeddings {
            bail!(
                "sequences of {t} tokens exceed the model's context of {} (max_position_embeddings)",
                cfg.max_position_embeddings
            );
        }
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            bail!("token id {id} is outside the vocabulary of {vocab}");
        }
        let valid = crate::backend::check_targets(targets, vocab, IGNORE_INDEX)?;
        self.acts = None;

        // Rotary tables for every row: each sequence at positions 0..t.
        let (cos_t, sin_t) = rope_cos_sin(self.base.rope_inv_freq(), 0, t);
        let (cos, sin) = (cos_t.repeat(b), sin_t.repeat(b));
        let mut x = vec![0f32; rows * c];
        for (row, &id) in x.chunks_exact_mut(c).zip(ids) {
            self.base.embed_tokens.row(id as usize, row);
        }
        let pass = Pass {
            batch: b,
            t,
            seed,
            cos,
            sin,
        };
        let mut saved = Vec::with_capacity(self.layers.len());
        let layers = self.base.layers.iter().zip(&mut self.layers);
        for (l, (layer, lora)) in layers.enumerate() {
            let acts = layer_forward(cfg, layer, lora, l, &pass, &mut x);
            if !train {
                continue;
            }
            saved.push(if self.checkpoint_activations {
                Saved::Input(acts.x)
            } else {
                Saved::All(Box::new(acts))
            });
        }
        // Final norm, then head and loss.
        let mut normed = vec![0f32; rows * c];
        rms_norm_forward(&x, &self.base.norm, eps, &mut normed);
        let head = self
            .base
            .lm_head
            .as_ref()
            .unwrap_or(&self.base.embed_tokens);
        let chunk = LOGITS_CHUNK_VALUES / vocab;
        let (loss, dnormed) =
            loss_through_head(head, &normed, targets, vocab, valid, chunk, train)?;
        if !train {
            return Ok(loss);
        }
        self.acts = Some(Acts {
            pass,
            layers: saved,
            x_final: x,
            dnormed,
        });
        Ok(loss)
    }

    /// The mean loss of `targets`, as [`forward`](Self::forward) computes it but with the
    /// adapters' dropout off and nothing kept for backward (validation), and the number of
    /// targets it is the mean of.
    pub fn evaluate(&mut self, ids: &[u32], targets: &[i64], batch: usize) -> Result<(f32, usize)> {
        self.set_dropout(0.0);
        let loss = self.forward_pass(ids, targets, batch, 0, false);
        self.set_dropout(self.lora.dropout);
        let counted = targets.iter().filter(|&&t| t != IGNORE_INDEX).count();
        Ok((loss?, counted))
    }

    fn set_dropout(&mut self, p: f32) {
        let adapters = self.layers.iter_mut().flat_map(|l| l.adapters.iter_mut());
        adapters.flatten().for_each(|a| a.dropout = p);
    }

    /// Adds the gradient of the last forward's loss into every adapter's A and B (zero them
    /// first with `zero_grad`), and frees the saved activations.
    pub fn backward(&mut self) -> Result<()> {
        let Some(acts) = self.acts.take() else {
            bail!("LoRA backward needs a forward pass first");
        };
        let cfg = &self.base.config;
        let c = cfg.hidden_size;
        let eps = cfg.rms_norm_eps as f32;
        let rows = acts.pass.batch * acts.pass.t;
        // Final norm (the head's part was done with the loss): dx is the residual stream's
        // gradient from here down.
        let mut dx = vec![0f32; rows * c];
        rms_norm_backward(&acts.x_final, &self.base.norm, eps, &acts.dnormed, &mut dx);
        let layers = self.base.layers.iter().zip(&mut self.layers);
        for (l, ((layer, lora), saved)) in layers.zip(acts.layers).enumerate().rev() {
            let a = match saved {
                Saved::All(a) => *a,
                Saved::Input(mut x) => layer_forward(cfg, layer, lora, l, &acts.pass, &mut x),
            };
            layer_backward(cfg, layer, lora, &a, &acts.pass, &mut dx);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_shift_left_and_the_last_position_predicts_nothing() {
        let t = shift_labels(&[5, 6, 7, -100, 8, 9], 2).unwrap();
        assert_eq!(t, [6, 7, -100, 8, 9, -100]);
        assert!(shift_labels(&[1, 2, 3], 2).is_err());
    }

    #[test]
    fn heads_to_rows_is_the_transpose_of_rows_to_heads() {
        // Repeating 2 heads 3 times, then summing the copies back, triples each value.
        let (b, t, n, d, rep) = (2, 3, 2, 4, 3);
        let rows: Vec<f32> = (0..b * t * n * d).map(|i| i as f32).collect();
        let heads = rows_to_heads(&rows, b, t, n, d, rep);
        assert_eq!(heads.len(), b * n * rep * t * d);
        // Batch 1, output head 4 (from head 1), position 2: row 1·3 + 2 = 5, columns 4..8.
        let at = ((n * rep + 4) * t + 2) * d;
        assert_eq!(&heads[at..at + d], &rows[5 * n * d + d..5 * n * d + 2 * d]);
        let back = heads_to_rows(&heads, b, t, n, d, rep);
        assert!(back.iter().zip(&rows).all(|(a, r)| *a == 3.0 * r));
    }

    #[test]
    fn the_loss_in_chunks_of_rows_is_the_loss_of_the_whole_batch() {
        let (rows, c, vocab) = (7, 32, 11);
        let values = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin()).collect::<Vec<_>>();
        let head = Matrix::new(vocab, c, values(vocab * c, 0.37)).unwrap();
        let normed = values(rows * c, 0.91);
        let targets = [3, IGNORE_INDEX, 0, 10, 4, IGNORE_INDEX, 7];
        let whole = loss_through_head(&head, &normed, &targets, vocab, 5, rows, true).unwrap();
        for chunk in [1, 2, 3] {
            let parts = loss_through_head(&head, &normed, &targets, vocab, 5, chunk, true).unwrap();
            assert!(
                (parts.0 - whole.0).abs() < 1e-6,
                "{} vs {}",
                parts.0,
                whole.0
            );
            let close = parts
                .1
                .iter()
                .zip(&whole.1)
                .all(|(a, b)| (a - b).abs() < 1e-6);
            assert!(close, "chunks of {chunk}");
        }
        assert!(whole.1.iter().any(|&g| g != 0.0));
        // Rows left out of the loss get no gradient.
        assert!(whole.1[c..2 * c].iter().all(|&g| g == 0.0));
    }
}
