use super::{params, Activation, Forward, KvCache, LayerNorm, Linear, Module, MultiHeadAttention};
use crate::backend::{add_assign, dropout_backward, dropout_forward};
use crate::tensor::ensure_len;

/// Which parameter names a block uses (and so which PyTorch module it mirrors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockStyle {
    /// nanoGPT: `ln_1`, `attn.c_attn`, `attn.c_proj`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`.
    Gpt,
    /// `nn.TransformerEncoderLayer`: `self_attn.in_proj_weight`, `self_attn.out_proj`, `norm1`,
    /// `linear1`, `linear2`, `norm2`.
    TorchEncoder,
}

/// A Transformer block: attention and an MLP, each in a residual branch.
/// Pre-norm (`norm_first`): x + attn(ln1(x)), then + mlp(ln2(·)).
/// Post-norm: ln1(x + attn(x)), then ln2(· + mlp(·)).
#[derive(Clone, Debug)]
pub struct Block {
    pub ln1: LayerNorm,
    pub attn: MultiHeadAttention,
    pub ln2: LayerNorm,
    pub fc: Linear,
    pub proj: Linear,
    pub activation: Activation,
    pub norm_first: bool,
    /// Dropout on each branch's output before it joins the residual stream.
    pub dropout: f32,
    pub style: BlockStyle,
    s: Saved,
}

/// What backward needs from the last forward, and backward's scratch; sized for its batch.
#[derive(Clone, Debug, Default)]
struct Saved {
    rows: usize,
    /// Dropout seeds of the attention and the MLP branch.
    seeds: (u64, u64),
    train: bool,
    /// Pre-norm: ln1(x), the attention's input (post-norm feeds it x itself).
    h1: Vec<f32>,
    attn_out: Vec<f32>,
    /// Residual stream between the branches (before ln1 in post-norm).
    mid: Vec<f32>,
    /// Post-norm: ln1(mid), the MLP's input and the second residual's base.
    mid_norm: Vec<f32>,
    /// Pre-norm: ln2(mid), the MLP's input.
    h2: Vec<f32>,
    mlp_out: Vec<f32>,
    /// Post-norm: the sum before ln2.
    r2: Vec<f32>,
    mlp: MlpSaved,
    // backward scratch, each [B,T,C]
    /// Gradient of the residual stream (post-norm: first of r2, then of mid).
    d_resid: Vec<f32>,
    /// Gradient of a branch's output, then through its dropout.
    d_branch_out: Vec<f32>,
    /// Gradient of a branch's input (ln1's or ln2's output, or mid_norm).
    d_branch_in: Vec<f32>,
}

/// The MLP's hidden activations and their gradients, each [B,T,F].
#[derive(Clone, Debug, Default)]
struct MlpSaved {
    /// fc's output, the activation's input.
    pre_act: Vec<f32>,
    /// act(pre_act) after hidden dropout, proj's input.
    act: Vec<f32>,
    d_act: Vec<f32>,
    d_pre_act: Vec<f32>,
}

/// The MLP branch borrowed from its block: fc → activation → hidden dropout → proj.
struct FeedForward<'a> {
    fc: &'a mut Linear,
    proj: &'a mut Linear,
    activation: Activation,
    /// Hidden dropout probability (0 outside training) and its mask seed.
    dropout: f32,
    seed: u64,
    saved: &'a mut MlpSaved,
}

impl FeedForward<'_> {
    /// x [rows, C] → out [rows, C].
    fn forward(&mut self, x: &[f32], rows: usize, out: &mut [f32]) {
        let s = &mut *self.saved;
        let f = self.fc.out_features;
        ensure_len(&mut s.pre_act, rows * f);
        ensure_len(&mut s.act, rows * f);
        self.fc.forward(x, rows, &mut s.pre_act);
        self.activation.forward(&s.pre_act, &mut s.act);
        dropout_forward(&mut s.act, self.dropout, self.seed);
        self.proj.forward(&s.act, rows, out);
    }

    /// Adds into parameter grads; writes the gradient of the MLP's input `x` into `dx`.
    fn backward(&mut self, x: &[f32], dout: &[f32], rows: usize, dx: &mut [f32]) {
        let s = &mut *self.saved;
        ensure_len(&mut s.d_act, s.act.len());
        ensure_len(&mut s.d_pre_act, s.act.len());
        self.proj.backward(&s.act, dout, rows, Some(&mut s.d_act));
        dropout_backward(&mut s.d_act, self.dropout, self.seed);
        self.activation
            .backward(&s.pre_act, &s.d_act, &mut s.d_pre_act);
        self.fc.backward(x, &s.d_pre_act, rows, Some(dx));
    }
}

impl Block {
    pub fn new(
        c: usize,
        heads: usize,
        ff: usize,
        causal: bool,
        rotary: bool,
        norm_first: bool,
        style: BlockStyle,
    ) -> Self {
        Block {
            ln1: LayerNorm::new(c, 1e-5),
            attn: MultiHeadAttention::new(c, heads, causal, rotary),
            ln2: LayerNorm::new(c, 1e-5),
            fc: Linear::new(c, ff, true),
            proj: Linear::new(ff, c, true),
            activation: Activation::Gelu,
            norm_first,
            dropout: 0.0,
            style,
            s: Saved::default(),
        }
    }

    /// Dropout on the MLP's hidden layer: `nn.TransformerEncoderLayer` has it, nanoGPT not.
    fn hidden_dropout(&self, train: bool) -> f32 {
        match (self.style, train) {
            (BlockStyle::TorchEncoder, true) => self.dropout,
            _ => 0.0,
        }
    }

    /// x [B,T,C] → y [B,T,C].
    pub fn forward(&mut self, x: &[f32], pass: Forward, y: &mut [f32]) {
        let c = self.ln1.dim();
        let rows = pass.rows();
        let n = rows * c;
        let p = if pass.train { self.dropout } else { 0.0 };
        let hidden_p = self.hidden_dropout(pass.train);
        let Block {
            ln1,
            attn,
            ln2,
            fc,
            proj,
            activation,
            norm_first,
            s,
            ..
        } = self;
        s.rows = rows;
        s.train = pass.train;
        s.seeds = (pass.dropout_seed, pass.dropout_seed ^ 0x5851_F42D_4C95_7F2D);
        // Pre-norm keeps h1 and h2, post-norm mid_norm and r2.
        let (norm_a, norm_b) = if *norm_first {
            (&mut s.h1, &mut s.h2)
        } else {
            (&mut s.mid_norm, &mut s.r2)
        };
        for buf in [&mut s.attn_out, &mut s.mid, &mut s.mlp_out, norm_a, norm_b] {
            ensure_len(buf, n);
        }
        let attn_pass = pass.reseeded(s.seeds.0 ^ ATTN_SEED);
        let mut mlp = FeedForward {
            fc,
            proj,
            activation: *activation,
            dropout: hidden_p,
            seed: s.seeds.1 ^ HIDDEN_SEED,
            saved: &mut s.mlp,
        };
        if *norm_first {
            // mid = x + drop(attn(ln1(x))); y = mid + drop(mlp(ln2(mid))).
            ln1.forward(&x[..n], rows, &mut s.h1);
            attn.forward(&s.h1, attn_pass, &mut s.attn_out);
            dropout_forward(&mut s.attn_out, p, s.seeds.0);
            add(&x[..n], &s.attn_out, &mut s.mid);
            ln2.forward(&s.mid, rows, &mut s.h2);
            mlp.forward(&s.h2, rows, &mut s.mlp_out);
            dropout_forward(&mut s.mlp_out, p, s.seeds.1);
            add(&s.mid, &s.mlp_out, &mut y[..n]);
        } else {
            // mid = x + drop(attn(x)); r2 = ln1(mid) + drop(mlp(ln1(mid))); y = ln2(r2).
            attn.forward(&x[..n], attn_pass, &mut s.attn_out);
            dropout_forward(&mut s.attn_out, p, s.seeds.0);
            add(&x[..n], &s.attn_out, &mut s.mid);
            ln1.forward(&s.mid, rows, &mut s.mid_norm);
            mlp.forward(&s.mid_norm, rows, &mut s.mlp_out);
            dropout_forward(&mut s.mlp_out, p, s.seeds.1);
            add(&s.mid_norm, &s.mlp_out, &mut s.r2);
            ln2.forward(&s.r2, rows, &mut y[..n]);
        }
    }

    /// dy [B,T,C] → dx [B,T,C], adding into every parameter's grad. `x` is forward's input
    /// (the model keeps the residual stream, so the block does not copy it).
    pub fn backward(&mut self, x: &[f32], dy: &[f32], dx: &mut [f32]) {
        let train = self.s.train;
        let p = if train { self.dropout } else { 0.0 };
        let hidden_p = self.hidden_dropout(train);
        let Block {
            ln1,
            attn,
            ln2,
            fc,
            proj,
            activation,
            norm_first,
            s,
            ..
        } = self;
        let rows = s.rows;
        let n = s.mid.len();
        let (seed_attn, seed_mlp) = s.seeds;
        for buf in [&mut s.d_resid, &mut s.d_branch_out, &mut s.d_branch_in] {
            ensure_len(buf, n);
        }
        let mut mlp = FeedForward {
            fc,
            proj,
            activation: *activation,
            dropout: hidden_p,
            seed: seed_mlp ^ HIDDEN_SEED,
            saved: &mut s.mlp,
        };
        let (d_resid, d_out, d_in) = (&mut s.d_resid, &mut s.d_branch_out, &mut s.d_branch_in);
        if *norm_first {
            // y = mid + drop(mlp(h2)), h2 = ln2(mid); mid = x + drop(attn(h1)), h1 = ln1(x).
            d_out.copy_from_slice(&dy[..n]);
            dropout_backward(d_out, p, seed_mlp);
            mlp.backward(&s.h2, d_out, rows, d_in);
            // d mid = dy + ln2ᵀ(d h2)
            ln2.backward(&s.mid, d_in, rows, d_resid);
            add_assign(d_resid, &dy[..n]);
            // attention branch
            d_out.copy_from_slice(d_resid);
            dropout_backward(d_out, p, seed_attn);
            attn.backward(&s.h1, d_out, d_in);
            ln1.backward(&x[..n], d_in, rows, &mut dx[..n]);
            add_assign(&mut dx[..n], d_resid);
        } else {
            // y = ln2(r2), r2 = h + drop(mlp(h)), h = ln1(mid), mid = x + drop(attn(x)).
            ln2.backward(&s.r2, dy, rows, d_resid);
            d_out.copy_from_slice(d_resid);
            dropout_backward(d_out, p, seed_mlp);
            mlp.backward(&s.mid_norm, d_out, rows, d_in);
            add_assign(d_in, d_resid);
            // d mid = ln1ᵀ(d h)
            ln1.backward(&s.mid, d_in, rows, d_resid);
            d_out.copy_from_slice(d_resid);
            dropout_backward(d_out, p, seed_attn);
            attn.backward(&x[..n], d_out, &mut dx[..n]);
            add_assign(&mut dx[..n], d_resid);
        }
    }

    /// Inference on new positions of several sequences, each with its own KV cache:
    /// x [N,C] (`lens[i]` rows of sequence i, in order) → y [N,C].
    pub fn forward_cached(
        &self,
        x: &[f32],
        lens: &[usize],
        caches: &mut [&mut KvCache],
        y: &mut [f32],
    ) {
        let n = x.len();
        let rows: usize = lens.iter().sum();
        let mut a = vec![0.0; n];
        let mut h = vec![0.0; n];
        let mut wide = vec![0.0; rows * self.fc.out_features];
        let mut wide_act = vec![0.0; wide.len()];
        let mut mlp = |inp: &[f32], out: &mut [f32]| {
            self.fc.forward(inp, rows, &mut wide);
            self.activation.forward(&wide, &mut wide_act);
            self.proj.forward(&wide_act, rows, out);
        };
        if self.norm_first {
            self.ln1.infer(x, rows, &mut h);
            self.attn.forward_cached(&h, lens, caches, &mut a);
            let mid: Vec<f32> = x.iter().zip(&a).map(|(p, q)| p + q).collect();
            self.ln2.infer(&mid, rows, &mut h);
            mlp(&h, &mut a);
            add(&mid, &a, y);
        } else {
            self.attn.forward_cached(x, lens, caches, &mut a);
            let mid: Vec<f32> = x.iter().zip(&a).map(|(p, q)| p + q).collect();
            self.ln1.infer(&mid, rows, &mut h);
            mlp(&h, &mut a);
            let r2: Vec<f32> = h.iter().zip(&a).map(|(p, q)| p + q).collect();
            self.ln2.infer(&r2, rows, y);
        }
    }
}

/// Separates the hidden-layer mask from the residual one drawn from the same seed.
const HIDDEN_SEED: u64 = 0x2545_F491_4F6C_DD1D;
/// Separates the attention-probability mask from the residual one.
const ATTN_SEED: u64 = 0x9E6C_63D0_676A_9A99;

fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
}

impl Module for Block {
    // nanoGPT's and PyTorch's names, each in its module's order.
    params!(Self { ln1, attn, ln2, fc, proj, style, .. }, v => {
        let MultiHeadAttention { qkv, proj: attn_proj, .. } = attn;
        let Linear { weight: qkv_weight, bias: qkv_bias, .. } = qkv;
        match style {
            BlockStyle::Gpt => {
                v.child("ln_1", ln1);
                v.param("attn.c_attn.weight", qkv_weight);
                if let Some(b) = qkv_bias {
                    v.param("attn.c_attn.bias", b);
                }
                v.child("attn.c_proj", attn_proj);
                v.child("ln_2", ln2);
                v.child("mlp.c_fc", fc);
                v.child("mlp.c_proj", proj);
            }
            BlockStyle::TorchEncoder => {
                v.param("self_attn.in_proj_weight", qkv_weight);
                if let Some(b) = qkv_bias {
                    v.param("self_attn.in_proj_bias", b);
                }
                v.child("self_attn.out_proj", attn_proj);
                v.child("linear1", fc);
                v.child("linear2", proj);
                v.child("norm1", ln1);
                v.child("norm2", ln2);
            }
        }
    });
}
